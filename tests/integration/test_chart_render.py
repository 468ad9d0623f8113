"""The chart's values and what they render: the schema refuses wrong values with a clear message,
every option reaches the objects it is for, the GitOps render is deterministic, and the real API
server accepts every object the options produce (a server-side dry run)."""

from __future__ import annotations

import base64
import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.chart import CHART, ca_pem, helm_run, one, render, template, tool
from tests.support.cluster import REPO, Cluster
from tests.support.crds import ALL_CRDS, load_crd
from tests.support.scenario import eventually

pytestmark = pytest.mark.integration

NS = "samd-system"


def secret_source(ca: str) -> tuple[str, ...]:
    return (
        "--set", "webhook.certificate.source=secret",
        "--set", "webhook.certificate.secretName=samd-webhook-cert",
        "--set-string", f"webhook.certificate.caBundle={ca}",
    )  # fmt: skip


CERT_MANAGER = ("--set", "webhook.certificate.source=cert-manager")


# --- lint and the values schema ------------------------------------------------------------------------


def test_helm_lint_strict_passes_for_every_certificate_source() -> None:
    for values in ((), secret_source(ca_pem()), CERT_MANAGER):
        linted = helm_run("lint", "--strict", str(CHART), *values)
        assert linted.returncode == 0, linted.stdout + linted.stderr
        assert "0 chart(s) failed" in linted.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("--set", "webhook.replicas=0"), "at '/webhook/replicas': minimum: got 0, want 1"),
        (("--set", "operator.replicas=-1"), "at '/operator/replicas': minimum: got -1, want 0"),
        (("--set", "webhook.timeoutSeconds=60"), "at '/webhook/timeoutSeconds': maximum: got 60, want 30"),
        (("--set", "image.tag=1"), "at '/image/tag': got number, want string"),
        (("--set", "webhook.certificate.source=vault"), "at '/webhook/certificate/source': value must be one of"),
        # The key of the chart's first version: refused by name, not silently ignored.
        (("--set", "webhook.existingCertSecret=tls"), "additional properties 'existingCertSecret' not allowed"),
        (("--set", "operator.logLevel=LOUD"), "at '/operator/logLevel': value must be one of"),
        (("--set-json", 'webhook.tolerations=[{"operator":"Maybe"}]'), "at '/webhook/tolerations/0/operator'"),
        (("--set-json", 'operator.extraEnv=[{"value":"x"}]'), "at '/operator/extraEnv/0': missing property 'name'"),
        (("--set", "webhook.priorityClassName=Not_A_Name"), "at '/webhook/priorityClassName'"),
        (
            ("--set", "webhook.certificate.source=secret"),
            "webhook.certificate.secretName is required when webhook.certificate.source is secret",
        ),
        (
            ("--set", "webhook.certificate.source=secret", "--set", "webhook.certificate.secretName=tls"),
            "webhook.certificate.caBundle is required when webhook.certificate.source is secret",
        ),
        (
            (
                "--set", "webhook.certificate.source=secret", "--set", "webhook.certificate.secretName=tls",
                "--set", "webhook.certificate.caBundle=not-a-certificate",
            ),
            "webhook.certificate.caBundle must be a PEM certificate",
        ),
    ],
)  # fmt: skip
def test_wrong_values_fail_with_a_message_naming_them(values: tuple[str, ...], message: str) -> None:
    rendered = template("samd", NS, *values)

    assert rendered.returncode != 0
    assert message in rendered.stderr, rendered.stderr


def test_top_level_values_of_other_parts_are_allowed() -> None:
    """Other parts of the chart (monitoring, audit, events) add top-level values of their own."""
    documents = render("samd", NS, "--set-json", 'monitoring={"enabled":false}', "--set", "audit.schedule=x")
    assert one(documents, "Deployment", "samd-webhook")


# --- what the options render ---------------------------------------------------------------------------

POD_SETTINGS: dict[str, Any] = {
    "imagePullSecrets": [{"name": "registry-login"}],
    "operator": {
        "serviceAccount": {
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/samd"}
        },
        "podLabels": {"azure.workload.identity/use": "true"},
        "podAnnotations": {"example.com/team": "platform"},
        "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
        "extraVolumes": [{"name": "bundle", "configMap": {"name": "trust-bundle"}}],
        "extraVolumeMounts": [{"name": "bundle", "mountPath": "/etc/ssl/extra", "readOnly": True}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}
                    ]
                }
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "samd-operator"}},
            }
        ],
        "priorityClassName": "platform-high",
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "podSecurityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    },
    "webhook": {
        "serviceAccount": {
            "annotations": {"iam.gke.io/gcp-service-account": "samd@project.iam.gserviceaccount.com"}
        },
        "extraEnv": [{"name": "SAMD_WEBHOOK_MAX_CONNECTIONS", "value": "512"}],
        "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "samd-webhook"}},
            }
        ],
    },
}


@pytest.fixture
def values_file(tmp_path: Path) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(POD_SETTINGS))
    return path


def test_identity_placement_and_pod_settings_reach_their_objects(values_file: Path) -> None:
    documents = render("samd", NS, "-f", str(values_file))
    operator = one(documents, "Deployment", "samd-operator")["spec"]["template"]
    webhook = one(documents, "Deployment", "samd-webhook")["spec"]["template"]
    wanted = POD_SETTINGS["operator"]

    assert (
        one(documents, "ServiceAccount", "samd-operator")["metadata"]["annotations"]
        == (wanted["serviceAccount"]["annotations"])
    )
    assert (
        one(documents, "ServiceAccount", "samd-webhook")["metadata"]["annotations"]
        == (POD_SETTINGS["webhook"]["serviceAccount"]["annotations"])
    )
    assert operator["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert operator["metadata"]["labels"]["app.kubernetes.io/name"] == "samd-operator"  # the selector's
    # The user's annotations beside the chart's own scrape annotations (monitoring.operatorMetricsPort).
    assert operator["metadata"]["annotations"] == {
        **wanted["podAnnotations"],
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
    }
    spec = operator["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "priorityClassName"):
        assert spec[key] == wanted[key], key
    assert spec["securityContext"] == wanted["podSecurityContext"]
    [container] = spec["containers"]
    assert container["resources"] == wanted["resources"]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in container["env"]
    assert wanted["extraVolumeMounts"][0] in container["volumeMounts"]
    assert wanted["extraVolumes"][0] in spec["volumes"]
    for pod in (operator, webhook):
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-login"}]
    assert webhook["spec"]["tolerations"] == POD_SETTINGS["webhook"]["tolerations"]
    assert (
        webhook["spec"]["topologySpreadConstraints"] == POD_SETTINGS["webhook"]["topologySpreadConstraints"]
    )
    assert {"name": "SAMD_WEBHOOK_MAX_CONNECTIONS", "value": "512"} in webhook["spec"]["containers"][0]["env"]
    # The webhook's defaults stay where the values did not replace them.
    assert webhook["spec"]["affinity"]["podAntiAffinity"]
    assert webhook["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_webhook_is_highly_available_and_cluster_critical_by_default() -> None:
    documents = render("samd", NS)
    webhook = one(documents, "Deployment", "samd-webhook")
    spec = webhook["spec"]["template"]["spec"]

    assert webhook["spec"]["replicas"] == 2
    [term] = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"] == webhook["spec"]["selector"]["matchLabels"]
    )
    pdb = one(documents, "PodDisruptionBudget", "samd-webhook")
    assert pdb["spec"] == {"minAvailable": 1, "selector": webhook["spec"]["selector"]}
    assert spec["priorityClassName"] == "system-cluster-critical"
    quota = one(documents, "ResourceQuota", "samd-webhook-critical-pods")["spec"]
    assert quota["hard"] == {"pods": "4"}
    assert quota["scopeSelector"]["matchExpressions"] == [
        {"scopeName": "PriorityClass", "operator": "In", "values": ["system-cluster-critical"]}
    ]
    # The operator is not on the admission path, and a class of one's own needs no quota.
    assert (
        "priorityClassName" not in one(documents, "Deployment", "samd-operator")["spec"]["template"]["spec"]
    )
    own_class = render("samd", NS, "--set", "webhook.priorityClassName=platform-critical")
    assert not [d for d in own_class if d["kind"] == "ResourceQuota"]


def test_pods_and_workloads_are_sent_only_from_protected_namespaces() -> None:
    documents = render("samd", NS, "--set-json", 'webhook.excludedNamespaces=["kube-system","gpu-operator"]')
    webhooks = {w["name"]: w for w in one(documents, "ValidatingWebhookConfiguration", "samd")["webhooks"]}
    never_sent = {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["gpu-operator", "kube-system", NS],
    }
    protected = {"key": "samd.dev/protected", "operator": "In", "values": ["true"]}

    for name in ("pods", "workloads", "cronjobs"):
        assert webhooks[f"{name}.webhook.samd.dev"]["namespaceSelector"] == {
            "matchExpressions": [never_sent, protected]
        }
    for name in ("securemodels", "namespaces"):
        assert webhooks[f"{name}.webhook.samd.dev"]["namespaceSelector"] == {"matchExpressions": [never_sent]}
    for webhook in webhooks.values():
        assert webhook["failurePolicy"] == "Fail"
        assert webhook["clientConfig"]["service"] == {
            "namespace": NS,
            "name": "samd-webhook",
            "path": "/validate",
            "port": 443,
        }


def test_the_crds_are_templates_that_upgrade_and_are_kept_on_uninstall() -> None:
    documents = render("samd", NS)
    for path in ALL_CRDS:
        source = load_crd(path)
        rendered = one(documents, "CustomResourceDefinition", source["metadata"]["name"])
        assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert rendered["spec"] == source["spec"]  # the one source, copied by hack/generate-chart
    without = render("samd", NS, "--set", "crds.install=false")
    assert not [d for d in without if d["kind"] == "CustomResourceDefinition"]


def test_the_gitops_render_is_deterministic_with_an_existing_secret_or_cert_manager() -> None:
    ca = ca_pem()
    for values in (secret_source(ca), CERT_MANAGER):
        first, second = template("samd", NS, *values), template("samd", NS, *values)
        assert first.returncode == 0, first.stderr
        assert first.stdout == second.stdout, values
    # The generated certificate is new on every render that cannot look the Secret up (this is why
    # GitOps tools need one of the sources above; an install or upgrade keeps it, see the lifecycle test).
    assert template("samd", NS).stdout != template("samd", NS).stdout


def test_an_existing_secret_and_its_ca_are_used_as_given() -> None:
    ca = ca_pem()
    documents = render("samd", NS, *secret_source(ca))

    assert not [d for d in documents if d["kind"] == "Secret"]  # the chart makes none
    volumes = one(documents, "Deployment", "samd-webhook")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "samd-webhook-cert"}} in volumes
    for webhook in one(documents, "ValidatingWebhookConfiguration", "samd")["webhooks"]:
        assert webhook["clientConfig"]["caBundle"] == base64.b64encode(ca.encode()).decode()


def test_cert_manager_issues_the_certificate_and_injects_the_ca() -> None:
    documents = render("samd", NS, *CERT_MANAGER)

    certificate = one(documents, "Certificate", "samd-webhook")["spec"]
    assert certificate["secretName"] == "samd-webhook-tls"
    assert certificate["dnsNames"] == ["samd-webhook", f"samd-webhook.{NS}", f"samd-webhook.{NS}.svc"]
    assert certificate["issuerRef"] == {
        "name": "samd-webhook-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert one(documents, "Issuer", "samd-webhook-ca")["spec"] == {"ca": {"secretName": "samd-webhook-ca"}}
    assert one(documents, "Certificate", "samd-webhook-ca")["spec"]["isCA"] is True
    configuration = one(documents, "ValidatingWebhookConfiguration", "samd")
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NS}/samd-webhook"
    }
    assert all("caBundle" not in w["clientConfig"] for w in configuration["webhooks"])  # the cainjector's
    assert not [d for d in documents if d["kind"] == "Secret"]

    named = render(
        "samd", NS, *CERT_MANAGER,
        "--set", "webhook.certificate.certManager.issuerRef.name=platform-ca",
        "--set", "webhook.certificate.certManager.issuerRef.kind=ClusterIssuer",
    )  # fmt: skip
    assert one(named, "Certificate", "samd-webhook")["spec"]["issuerRef"] == {
        "name": "platform-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert not [d for d in named if d["kind"] == "Issuer"]  # the platform's issuer, no CA of the chart's


def test_the_test_hook_runs_the_checked_script_against_the_webhook_service() -> None:
    documents = render("samd", NS)
    pod = one(documents, "Pod", "samd-test-webhook")

    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["python", "-c", (CHART / "files" / "webhook-check.py").read_text()]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "SAMD_WEBHOOK_SERVICE": "samd-webhook",
        "SAMD_WEBHOOK_SERVER_NAME": f"samd-webhook.{NS}.svc",
        "SAMD_WEBHOOK_CA": "/etc/samd/tls/ca.crt",
    }
    assert "priorityClassName" not in pod["spec"]


# --- the real API server accepts what the options render ----------------------------------------------


def test_every_rendered_object_is_accepted_by_the_api_server(
    cluster: Cluster, namespace: str, values_file: Path
) -> None:
    """Server-side dry run of the render with every pod setting, and with an existing Secret."""
    for values in (("-f", str(values_file)), secret_source(ca_pem())):
        documents = render("samd", namespace, *values)
        applied = subprocess.run(
            [tool("kubectl"), f"--kubeconfig={cluster.kubeconfig}", "apply", "--dry-run=server",
             "-f", "-"],
            input=yaml.safe_dump_all(documents), capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        kinds = {d["kind"] for d in documents}
        assert applied.stdout.count("(server dry run)") == len(documents), (kinds, applied.stdout)


def test_the_cert_manager_objects_are_accepted_by_cert_managers_own_crds(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    """cert-manager's CRDs (from its Go module) on the real API server check the chart's Certificate,
    Issuers and the cainjector annotation's webhook configuration; both issuer choices."""
    install_crd_files(k8s, sorted(Path(cert_manager_crds()).glob("cert-manager.io_*.yaml")))
    named = ("--set", "webhook.certificate.certManager.issuerRef.name=platform-ca",
             "--set", "webhook.certificate.certManager.issuerRef.kind=ClusterIssuer")  # fmt: skip
    for values in (CERT_MANAGER, (*CERT_MANAGER, *named)):
        documents = render("samd", namespace, *values)
        applied = subprocess.run(
            [tool("kubectl"), f"--kubeconfig={cluster.kubeconfig}", "apply", "--dry-run=server", "-f", "-"],
            input=yaml.safe_dump_all(documents), capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        assert "certificate.cert-manager.io/samd-webhook created (server dry run)" in applied.stdout
        assert applied.stdout.count("(server dry run)") == len(documents)


def cert_manager_crds() -> str:
    fetched = subprocess.run(
        [str(REPO / "hack" / "cert-manager-crds")], capture_output=True, text=True, check=False
    )
    assert fetched.returncode == 0, fetched.stderr
    return fetched.stdout.strip()


def install_crd_files(k8s: client.ApiClient, paths: list[Path]) -> None:
    """Create (or keep) each CRD and wait until the API server serves it."""
    extensions = client.ApiextensionsV1Api(k8s)
    for path in paths:
        crd = yaml.safe_load(path.read_text())
        try:
            extensions.create_custom_resource_definition(crd)
        except ApiException as error:
            if error.status != 409:
                raise
        name = crd["metadata"]["name"]
        eventually(functools.partial(established, extensions, name), 30, f"CRD {name} established")


def established(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    conditions = extensions.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)
