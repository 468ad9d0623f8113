"""The Helm chart renders, and the real API server accepts every object in it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from samd.events.dispatch import parse_sinks
from tests.support.cluster import REPO, Cluster
from tests.support.crds import install_crds

pytestmark = pytest.mark.integration


def tool(name: str) -> Path:
    folder = subprocess.run(
        [str(REPO / "hack" / "build-control-plane")], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(folder) / name


def render(namespace: str, *extra: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [str(tool("helm")), "template", "samd", str(REPO / "charts" / "samd"), "--namespace", namespace,
         "--kube-version", "1.35.4", *extra],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def test_rendered_chart_is_accepted_by_the_api_server(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    install_crds(k8s)  # the chart's crds/ are the same files (test_chart_sources)
    documents = render(namespace)
    kinds = sorted(d["kind"] for d in documents)
    assert kinds.count("Deployment") == 2  # the webhook runs apart from the operator
    webhook = next(d for d in documents if d["kind"] == "Deployment" and "webhook" in d["metadata"]["name"])
    assert webhook["spec"]["replicas"] >= 2
    configuration = next(d for d in documents if d["kind"] == "ValidatingWebhookConfiguration")
    for hook in configuration["webhooks"]:
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert namespace in hook["namespaceSelector"]["matchExpressions"][0]["values"]
        assert "kube-system" in hook["namespaceSelector"]["matchExpressions"][0]["values"]
    # A server-side dry run: schemas, RBAC rules and the webhooks' CEL matchConditions are all checked.
    applied = subprocess.run(
        [str(tool("kubectl")), f"--kubeconfig={cluster.kubeconfig}", "apply", "--dry-run=server", "-f", "-"],
        input=yaml.safe_dump_all(documents), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert (
        "validatingwebhookconfiguration.admissionregistration.k8s.io/samd created (server dry run)"
        in applied.stdout
    )


def test_event_sinks_and_incident_responders_render_into_env_and_rbac_the_api_server_accepts(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    install_crds(k8s)
    documents = render(
        namespace,
        "--set", "events.sinks[0].name=soar",
        "--set", "events.sinks[0].url=https://soar.example.com/hooks/samd",
        "--set", "events.sinks[0].secretName=samd-soar-hmac",
        "--set", "events.sinks[0].types[0]=dev.samd.bypass.attempted",
        "--set", "incidentResponders[0].kind=Group",
        "--set", "incidentResponders[0].name=security-oncall",
    )  # fmt: skip
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        sinks = parse_sinks(env["SAMD_EVENT_SINKS"]["value"], {"SAMD_EVENT_SINK_0_KEY": "from the Secret"})
        assert [(s.name, s.url, sorted(s.types)) for s in sinks] == [
            ("soar", "https://soar.example.com/hooks/samd", ["dev.samd.bypass.attempted"])
        ]
        assert env["SAMD_EVENT_SINK_0_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "samd-soar-hmac",
            "key": "key",
        }
    responder = next(
        d
        for d in documents
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "samd-incident-responder"
    )
    writes = [rule for rule in responder["rules"] if set(rule["verbs"]) - {"get", "list", "watch"}]
    assert writes == [
        {"apiGroups": ["samd.dev"], "resources": ["securemodels/status"], "verbs": ["get", "patch"]}
    ]
    binding = next(
        d
        for d in documents
        if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == "samd-incident-responder"
    )
    assert binding["subjects"] == [
        {"kind": "Group", "name": "security-oncall", "apiGroup": "rbac.authorization.k8s.io"}
    ]
    applied = subprocess.run(
        [str(tool("kubectl")), f"--kubeconfig={cluster.kubeconfig}", "apply", "--dry-run=server", "-f", "-"],
        input=yaml.safe_dump_all(documents), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
