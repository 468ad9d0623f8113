"""`samd audit` against the real control plane: each seeded problem is found, with the right severity
and object; a clean example gives no finding beyond the test operator's unpinned image; exit codes gate."""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from samd.cli import main
from tests.support.audit import run_audit
from tests.support.cluster import Cluster
from tests.support.scenario import GROUP, VERSION, Scenario, eventually

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"
RBAC = "rbac.authorization.k8s.io"


@pytest.fixture
def ready_model(webhook: None, scenario: Scenario) -> Scenario:
    """The fraud-detection example, Ready, in a namespace that enforces the restricted Pod Security level."""
    scenario.core.patch_namespace(
        scenario.namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    scenario.apply_model(scenario.example())
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)
    return scenario


def check_clean_example(
    ready_model: Scenario,
    cluster: Cluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The clean example: no finding but the unpinned test image; exit codes; HTML with history."""
    ns = ready_model.namespace
    history = tmp_path / "history"
    history.mkdir()
    first = run_audit(cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns, "--history", str(history))
    assert first.report["checked"]["secureModels"] == 1
    assert first.report["checked"]["accessReviews"] > 3  # the RBAC graph was really asked
    # The test operator runs the loader and server as samd:0.1.0, a tag: the only finding about the example,
    # and a true one. (Cluster objects other tests of the session leave are not the example's.)
    about_example = [
        f for f in first.report["findings"] if ns in (f["object"]["namespace"], f["object"]["name"])
    ]
    assert {(f["check"], f["severity"]) for f in about_example} == {("image-not-pinned", "low")}
    assert {f["object"]["name"] for f in about_example} == {MODEL}
    assert not first.findings("webhook-missing")
    assert not [f for f in first.report["findings"] if "samd-test-webhook" in f["object"]["name"]]
    assert first.exit_code == 0  # --fail-on high by default
    html = tmp_path / "audit.html"
    gated = run_audit(
        cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns, "--fail-on", "low",
        "--history", str(history), "--html", str(html),
    )  # fmt: skip
    assert gated.exit_code == 8
    page = html.read_text()
    assert "Findings by severity" in page
    assert "<svg" in page
    assert "Findings over time" in page
    assert "<polyline" in page
    assert len(list(history.glob("samd-audit-*.json"))) == 2


@pytest.fixture
def gateway_api(k8s: client.ApiClient) -> None:
    """A minimal HTTPRoute CRD (the Gateway API's kind), for the route check; left installed (no other
    test uses the kind, and deleting a CRD takes the API server a while)."""
    extensions = client.ApiextensionsV1Api(k8s)
    name = "httproutes.gateway.networking.k8s.io"
    crd: Any = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        # The Gateway API's own CRDs carry this annotation (k8s.io groups are protected).
        "metadata": {
            "name": name,
            "annotations": {
                "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"
            },
        },
        "spec": {
            "group": "gateway.networking.k8s.io",
            "scope": "Namespaced",
            "names": {
                "plural": "httproutes",
                "singular": "httproute",
                "kind": "HTTPRoute",
                "listKind": "HTTPRouteList",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }
    try:
        extensions.create_custom_resource_definition(crd)
    except ApiException as error:
        if error.status != 409:
            raise

    def established() -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    eventually(established, 30, "the HTTPRoute CRD to be established")


def _role(ns: str, name: str, rules: list[dict[str, Any]]) -> Any:
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": ns},
        "rules": rules,
    }


def _binding(ns: str, name: str, role: str, subject: dict[str, str], **annotations: str) -> Any:
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": role},
        "subjects": [{"apiGroup": RBAC, **subject}],
    }


def _certificate(days: int) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "release signing root")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=300))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_a_clean_example_gives_no_finding_then_each_seeded_problem_is_found(  # noqa: PLR0917
    ready_model: Scenario,
    gateway_api: None,
    cluster: Cluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    check_clean_example(ready_model, cluster, capsys, monkeypatch, tmp_path)
    s = ready_model
    ns = s.namespace
    rbac, custom = client.RbacAuthorizationV1Api(s.api), s.custom
    # Who may read the key / change the model, through the real RBAC graph.
    rbac.create_namespaced_role(
        ns, _role(ns, "key-reader", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
    )
    rbac.create_namespaced_role_binding(
        ns, _binding(ns, "eve-reads-keys", "key-reader", {"kind": "User", "name": "eve@example.com"})
    )
    rbac.create_namespaced_role(
        ns,
        _role(
            ns, "model-editor", [{"apiGroups": [GROUP], "resources": ["securemodels"], "verbs": ["update"]}]
        ),
    )
    rbac.create_namespaced_role_binding(
        ns, _binding(ns, "everyone-edits", "model-editor", {"kind": "Group", "name": "system:authenticated"})
    )
    rbac.create_namespaced_role(
        ns, _role(ns, "anything", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    )
    rbac.create_namespaced_role_binding(
        ns, _binding(ns, "wild-card", "anything", {"kind": "User", "name": "wild@example.com"})
    )
    # A time-bound grant past its expiry, still bound (as if the operator had been down).
    rbac.create_namespaced_role_binding(
        ns,
        _binding(
            ns, f"samd-{MODEL}-grant-expired", f"samd-{MODEL}-reviewer", {"kind": "User", "name": "mallory@example.com"},
            **{"samd.dev/expires": "2026-01-01T00:00:00Z"},
        ),
    )  # fmt: skip
    # Exposed endpoints.
    s.core.create_namespaced_service(
        ns,
        {"metadata": {"name": "fraud-public"}, "spec": {"type": "NodePort", "selector": {"samd.dev/model": MODEL},  # type: ignore[arg-type]
         "ports": [{"port": 8443, "targetPort": 8443}]}},
    )  # fmt: skip
    s.net.create_namespaced_ingress(
        ns,
        {"metadata": {"name": "fraud-ingress"}, "spec": {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",  # type: ignore[arg-type]
         "backend": {"service": {"name": MODEL, "port": {"number": 8443}}}}]}}]}},
    )  # fmt: skip
    custom.create_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", ns, "httproutes",
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "fraud-route"},
         "spec": {"rules": [{"backendRefs": [{"name": MODEL, "port": 8443}]}]}},
    )  # fmt: skip
    s.net.create_namespaced_network_policy(
        ns,
        {"metadata": {"name": "allow-everything"}, "spec": {"podSelector": {}, "ingress": [{}]}},  # type: ignore[arg-type]
    )
    s.core.patch_namespace(ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": None}}})
    # A SAMD operator Deployment with no ready replica.
    s.apps.create_namespaced_deployment(
        ns,
        {"metadata": {"name": "samd-operator", "labels": {"app.kubernetes.io/name": "samd-operator"}},  # type: ignore[arg-type]
         "spec": {"replicas": 0, "selector": {"matchLabels": {"app.kubernetes.io/name": "samd-operator"}},
                  "template": {"metadata": {"labels": {"app.kubernetes.io/name": "samd-operator"}},
                               "spec": {"containers": [{"name": "operator", "image": "samd:0.1.0"}]}}}},
    )  # fmt: skip
    # A second webhook registration that fails open, has no CA bundle, answers nowhere and skips the namespace;
    # its rule matches no real resource, so it changes no admission.
    registrations = client.AdmissionregistrationV1Api(s.api)
    configuration = f"samd-audit-{ns}"
    registrations.create_validating_webhook_configuration(
        {"metadata": {"name": configuration}, "webhooks": [{  # type: ignore[arg-type]
            "name": "broken.webhook.samd.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            "rules": [{"apiGroups": ["audit-test.samd.dev"], "apiVersions": ["v1"], "resources": ["nothings"],
                       "operations": ["CREATE"]}],
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [ns]}]},
        }]},
    )  # fmt: skip
    # A trust policy whose signing certificate expires in five days (it covers no namespace).
    certificate_policy = f"audit-certs-{uuid.uuid4().hex[:8]}"
    custom.create_cluster_custom_object(
        GROUP, VERSION, "modeltrustpolicies",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelTrustPolicy", "metadata": {"name": certificate_policy},
         "spec": {"namespaceSelector": {"matchLabels": {"samd.dev/none": "none"}},
                  "signers": [{"name": "release", "certificateRoots": _certificate(days=5)}]}},
    )  # fmt: skip
    try:
        run = run_audit(cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns)
    finally:
        registrations.delete_validating_webhook_configuration(configuration)
        custom.delete_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", certificate_policy)
    model = {"kind": "SecureModel", "name": MODEL, "namespace": ns}
    eve = run.one("key-secret-readable", **model)
    assert "User eve@example.com may get secrets/fraud-detection-key" in eve["message"]
    assert "eve-reads-keys" in eve["message"]
    assert eve["severity"] == "high"
    everyone = [f for f in run.findings("model-updatable", ns) if "system:authenticated" in f["message"]]
    assert [f["severity"] for f in everyone] == ["critical"]
    wild = [f for f in run.findings("wildcard-grant", ns) if "wild@example.com" in f["message"]]
    assert wild
    assert {f["severity"] for f in wild} == {"high"}
    assert not any("ml-ops" in f["message"] for f in run.findings(namespace=ns))  # the model's deployers
    grant = run.one(
        "expired-grant-bound", kind="RoleBinding", name=f"samd-{MODEL}-grant-expired", namespace=ns
    )
    assert grant["severity"] == "high"
    assert "mallory@example.com" in grant["message"]
    assert run.one("service-exposed", kind="Service", name="fraud-public", namespace=ns)["severity"] == "high"
    assert (
        run.one("ingress-exposed", kind="Ingress", name="fraud-ingress", namespace=ns)["severity"] == "high"
    )
    assert (
        run.one("gateway-route-exposed", kind="HTTPRoute", name="fraud-route", namespace=ns)["severity"]
        == "high"
    )
    allow_all = run.one(
        "network-policy-allows-all", kind="NetworkPolicy", name="allow-everything", namespace=ns
    )
    assert allow_all["severity"] == "high"
    assert run.one("namespace-pod-security", kind="Namespace", name=ns)["severity"] == "medium"
    assert (
        run.one("operator-down", kind="Deployment", name="samd-operator", namespace=ns)["severity"]
        == "critical"
    )
    hook = f"{configuration} (broken.webhook.samd.dev)"
    assert run.one("webhook-fails-open", name=hook)["severity"] == "high"
    assert run.one("webhook-ca-bundle", name=hook)["severity"] == "high"
    assert run.one("webhook-skips-model-namespace", name=hook)["severity"] == "critical"
    down = run.one("webhook-down", name=configuration)
    assert down["severity"] == "critical"
    assert "127.0.0.1:1" in down["message"]
    signer = run.one("signing-certificate-expiring", kind="ModelTrustPolicy", name=certificate_policy)
    assert signer["severity"] == "medium"
    assert "release signing root" in signer["message"]
    assert run.exit_code == 8
    # The test's own webhook registration is sound: none of its findings concern it.
    assert not [f for f in run.report["findings"] if "samd-test-webhook" in f["object"]["name"]]


def _samd(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, f"samd {' '.join(args)} exited {code}: {captured.err}"
    return captured.out


def _data_key_id(capsys: pytest.CaptureFixture[str], artifact: Path) -> str:
    return str(json.loads(_samd(capsys, "inspect", str(artifact), "--json"))["header"]["key"]["data_key_id"])


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_model_key_and_webhook_findings_go_away_when_their_cause_is_fixed(  # noqa: PLR0917
    webhook: None,
    scenario: Scenario,
    cluster: Cluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """key-unverified, model-not-covered, model-not-verified, data-key-rotation-overdue and webhook-missing,
    each seeded, found with its severity and object, then fixed the way its finding says and gone.
    (Last in the module: it takes SAMD's webhook registrations away for one audit.)"""
    s, ns = scenario, scenario.namespace
    model = {"kind": "SecureModel", "name": MODEL, "namespace": ns}

    def audit() -> Any:
        return run_audit(cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns, "--fail-on", "none")

    # Seeded: the key Secret is missing and the signature is not where the SecureModel says.
    s.core.delete_namespaced_secret("fraud-detection-key", ns)
    s.apply_model(s.example(signature={"uri": f"file://{tmp_path / 'missing.sig'}"}))
    assert s.wait_condition(MODEL, "Encrypted", "False")["reason"] == "KeySecretMissing"
    verified = s.wait_condition(MODEL, "Verified", "False")
    unverified = audit()
    not_verified = unverified.one("model-not-verified", **model)
    assert not_verified["severity"] == "medium"
    assert f"Verified is not True ({verified['reason']})" in not_verified["message"]
    assert unverified.one("key-unverified", **model)["severity"] == "high"

    # Then no policy covers the namespace any more (a cluster admin narrowed the policy: the webhook
    # refuses to take coverage away through the namespace's labels).
    selector = s.custom.get_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", s.policy_name)[
        "spec"
    ]["namespaceSelector"]
    s.patch_policy({"namespaceSelector": {"matchLabels": {"samd.dev/trust": "nobody"}}})
    eventually(
        lambda: (s.condition(MODEL, "Verified") or {}).get("reason") == "NoTrustPolicy",
        30, "the operator to see that no policy covers the namespace",
    )  # fmt: skip
    uncovered = audit()
    assert uncovered.one("model-not-covered", **model)["severity"] == "high"
    assert uncovered.one("key-unverified", **model)["severity"] == "high"

    # Fixed as the findings say: a policy covering the namespace, the key Secret created, the signature's
    # real location.
    s.patch_policy({"namespaceSelector": selector})
    s.core.create_namespaced_secret(ns, s.artifacts.keyset_secret("fraud-detection-key"))
    s.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "securemodels", MODEL, {"spec": {"signature": {"uri": s.artifacts.signature_uri}}}
    )
    s.wait_condition(MODEL, "Ready", "True", timeout=90)
    fixed = audit()
    assert not {"model-not-covered", "model-not-verified", "key-unverified"} & {
        f["check"] for f in fixed.findings(namespace=ns)
    }
    # The operator records which data key encrypts the artifact (what `samd inspect` shows) and since when.
    key = s.model(MODEL)["status"]["key"]
    assert key["dataKeyId"] == _data_key_id(capsys, s.artifacts.artifact)
    first_seen = datetime.datetime.fromisoformat(key["dataKeyFirstSeen"].replace("Z", "+00:00"))
    now = datetime.datetime.now(datetime.UTC)
    assert now - datetime.timedelta(minutes=5) < first_seen <= now + datetime.timedelta(seconds=5)
    assert not fixed.findings("data-key-rotation-overdue", ns)

    # A data key in use for 40 days (rotationPeriod 720h): written as an operator that saw it then would
    # have; the operator keeps a first sighting as long as the data key is the same.
    old = _iso(now - datetime.timedelta(days=40))
    s.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "securemodels", MODEL, {"status": {"key": {"dataKeyFirstSeen": old}}}
    )
    changed = s.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "securemodels", MODEL, {"spec": {"description": "reconcile me"}}
    )
    eventually(
        lambda: s.model(MODEL)["status"].get("observedGeneration") == changed["metadata"]["generation"],
        30, "the operator to reconcile the change",
    )  # fmt: skip
    assert s.model(MODEL)["status"]["key"]["dataKeyFirstSeen"] == old
    overdue = audit().one("data-key-rotation-overdue", **model)
    assert overdue["severity"] == "medium"
    assert (
        f"data key {key['dataKeyId']} has encrypted the artifact since at least {old} (40.0 days)"
        in (overdue["message"])
    )
    assert "samd reencrypt" in overdue["fix"]

    # Fixed: re-encrypted under a fresh data key (into a new object, as a GitOps change would point to it).
    keyset = tmp_path / "keyset.json"
    keyset.write_bytes(
        base64.b64decode(s.core.read_namespaced_secret("fraud-detection-key", ns).data["keyset.json"])
    )
    keyset.chmod(0o600)
    renewed = tmp_path / "model-reencrypted.samd"
    _samd(
        capsys, "reencrypt", str(s.artifacts.artifact), "--key", f"local:{keyset}", "--output", str(renewed)
    )
    new_id = _data_key_id(capsys, renewed)
    assert new_id != key["dataKeyId"]
    s.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "securemodels", MODEL, {"spec": {"artifact": {"uri": f"file://{renewed}"}}}
    )
    eventually(
        lambda: s.model(MODEL)["status"]["key"].get("dataKeyId") == new_id, 30, "the new data key recorded"
    )
    assert s.model(MODEL)["status"]["key"]["dataKeyFirstSeen"] > old
    assert not audit().findings("data-key-rotation-overdue", ns)

    # No SAMD webhook registered at all: taken away for one audit, restored whatever happens.
    registrations = client.AdmissionregistrationV1Api(s.api)
    samd_configurations = [
        c for c in registrations.list_validating_webhook_configuration().items
        if any(h.name.endswith(".webhook.samd.dev") for h in c.webhooks or [])
    ]  # fmt: skip
    assert samd_configurations  # the module's webhook at least
    deleted: list[Any] = []
    try:
        for configuration in samd_configurations:
            registrations.delete_validating_webhook_configuration(str(configuration.metadata.name))
            deleted.append(configuration)
        missing = audit()
    finally:
        for configuration in deleted:
            configuration.metadata = client.V1ObjectMeta(
                name=configuration.metadata.name,
                labels=configuration.metadata.labels,
                annotations=configuration.metadata.annotations,
            )
            registrations.create_validating_webhook_configuration(configuration)

    def enforced_again() -> bool:
        """The API server calls the webhook again: it refuses (in a dry run) to uncover the model."""
        try:
            s.core.patch_namespace(ns, {"metadata": {"labels": {"samd.dev/trust": None}}}, dry_run="All")
        except ApiException as error:
            return error.status == 403 and "CoverageRemoved" in str(error.body)
        return False

    eventually(enforced_again, 30, "the restored webhook configurations to be in effect")
    gone = missing.one("webhook-missing", kind="ValidatingWebhookConfiguration", name="*.webhook.samd.dev")
    assert gone["severity"] == "critical"
    assert missing.exit_code == 0  # --fail-on none
    assert not audit().findings("webhook-missing")
