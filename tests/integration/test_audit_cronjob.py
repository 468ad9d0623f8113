"""The chart's audit CronJob identity: `samd audit` runs with exactly the rights the chart grants it,
stores its report, history and metrics in its one ConfigMap, and may not read Secrets or write elsewhere."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from samd.audit import CHECK_NAMES
from tests.integration.test_chart import tool
from tests.support.audit import run_audit
from tests.support.cluster import REPO, Cluster
from tests.support.crds import install_crds
from tests.support.scenario import EXAMPLE, GROUP, VERSION

pytestmark = pytest.mark.integration


def _kubeconfig_for_token(cluster: Cluster, token: str, path: Path) -> Path:
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": "audit", "user": {"token": token}}],
        "contexts": [{"name": "audit", "context": {"cluster": "local", "user": "audit"}}],
        "current-context": "audit",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _render(release: str, namespace: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [str(tool("helm")), "template", release, str(REPO / "charts" / "samd"), "--namespace", namespace,
         "--kube-version", "1.35.4"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def _may(
    api: client.ApiClient, user: str, verb: str, resource: str, namespace: str, *, name: str = ""
) -> bool:
    review: Any = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "resourceAttributes": {"verb": verb, "resource": resource, "namespace": namespace, "name": name},
        },
    }
    answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(answer.status.allowed)


def test_the_cronjob_identity_audits_and_stores_the_report_in_its_configmap_only(  # noqa: PLR0917
    cluster: Cluster,
    k8s: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install_crds(k8s)
    release = f"rel-{uuid.uuid4().hex[:6]}"
    documents = [
        d for d in _render(release, namespace)
        if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "CronJob")
        and d["metadata"]["name"] in (f"{release}-audit", f"{release}-audit-report", "samd-audit-report")
    ]  # fmt: skip
    assert sorted(d["kind"] for d in documents) == [
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CronJob", "Role", "RoleBinding", "ServiceAccount",
    ]  # fmt: skip
    cronjob = next(d for d in documents if d["kind"] == "CronJob")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{release}-audit"
    assert pod["containers"][0]["args"][:2] == ["audit", f"--store-configmap={namespace}/samd-audit-report"]
    applied = subprocess.run(
        [str(tool("kubectl")), f"--kubeconfig={cluster.kubeconfig}", "apply", "-f", "-"],
        input=yaml.safe_dump_all(documents), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    rbac = client.RbacAuthorizationV1Api(k8s)
    model = yaml.safe_load((EXAMPLE / "securemodel.yaml").read_text())
    model["metadata"]["namespace"] = namespace
    client.CustomObjectsApi(k8s).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "securemodels", model
    )
    try:
        token: Any = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        }
        issued = client.CoreV1Api(k8s).create_namespaced_service_account_token(
            f"{release}-audit", namespace, token
        )
        kubeconfig = _kubeconfig_for_token(cluster, str(issued.status.token), tmp_path / "audit-kubeconfig")
        store = f"{namespace}/samd-audit-report"
        first = run_audit(kubeconfig, capsys, monkeypatch, "--store-configmap", store, "--fail-on", "none")
        second = run_audit(kubeconfig, capsys, monkeypatch, "--store-configmap", store, "--fail-on", "none")
        assert first.exit_code == second.exit_code == 0
        # It may list what it checks and create SubjectAccessReviews: the example model was audited.
        assert second.report["checked"]["accessReviews"] > 0
        assert second.one("namespace-pod-security", kind="Namespace", name=namespace)["severity"] == "medium"
        stored = client.CoreV1Api(k8s).read_namespaced_config_map("samd-audit-report", namespace).data
        assert json.loads(stored["report.json"])["generatedAt"] == second.report["generatedAt"]
        assert len(json.loads(stored["history.json"])) == 2
        assert "<svg" in stored["report.html"]
        assert "samd_audit_findings{" in stored["metrics.prom"]
        for check in CHECK_NAMES:  # a series for every finding class, 0 when it has no finding
            assert f'samd_audit_findings{{check="{check}",' in stored["metrics.prom"]
        user = f"system:serviceaccount:{namespace}:{release}-audit"
        assert not _may(k8s, user, "get", "secrets", namespace, name="anything")  # never key material
        assert not _may(k8s, user, "patch", "configmaps", namespace, name="another-configmap")
        assert not _may(k8s, user, "update", "securemodels", namespace)
        assert _may(k8s, user, "patch", "configmaps", namespace, name="samd-audit-report")
    finally:
        rbac.delete_cluster_role(f"{release}-audit")
        rbac.delete_cluster_role_binding(f"{release}-audit")
