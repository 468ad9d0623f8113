"""docs/playbook.md, performed: each runbook's steps on the real control plane, checking what it says
the user sees. (The webhook outage runbook is in test_playbook_webhook.py: it stops its own webhook.)
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from samd.cli import main
from samd.envelope.stream import open_artifact
from samd.keys import LocalKeyProvider
from samd.signing import Signer, sign_model
from tests.integration.test_webhook import model_pod, refusal
from tests.support.audit import run_audit
from tests.support.cluster import Cluster
from tests.support.models import MODEL_NAME, MODEL_VERSION
from tests.support.operator import OperatorProcess
from tests.support.scenario import GROUP, VERSION, Scenario, eventually
from tests.support.signing import write_key_pair

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"
RBAC = "rbac.authorization.k8s.io"


def ready(scenario: Scenario) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)


def deployment_exists(scenario: Scenario) -> bool:
    try:
        scenario.apps.read_namespaced_deployment(MODEL, scenario.namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def data_key(artifact: Path, keyset: bytes) -> bytes:
    with artifact.open("rb") as src:
        return open_artifact(src, LocalKeyProvider.from_bytes(keyset))[1]


def events(scenario: Scenario, reason: str) -> list[str]:
    return [
        str(e.message)
        for e in scenario.core.list_namespaced_event(scenario.namespace).items
        if e.reason == reason and e.involved_object.name == MODEL
    ]


def test_compromised_signing_key(  # noqa: PLR0917
    webhook: None,
    scenario: Scenario,
    cluster: Cluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ready(scenario)
    old_signer = scenario.model(MODEL)["status"]["verification"]["signer"]
    claiming_pod = model_pod(scenario, "still-claiming")
    # 1. Remove the signer from the policy, the new one in its place.
    new_key = write_key_pair(tmp_path, "ci-2027")
    scenario.patch_policy({"signers": [{"name": "ml-ci-2027", "publicKey": new_key.public_pem.read_text()}]})
    verified = scenario.wait_condition(MODEL, "Verified", "False")
    assert verified["reason"] == "SignatureInvalid"
    assert scenario.condition(MODEL, "Ready")["status"] == "False"
    eventually(
        lambda: not deployment_exists(scenario), 30, "the model's Deployment to be removed (serving stops)"
    )
    with pytest.raises(ApiException) as refused:
        scenario.core.create_namespaced_pod(scenario.namespace, claiming_pod)
    assert 'admission webhook "pods.webhook.samd.dev" denied the request' in refusal(refused.value)
    # 2. The audit lists the model: its signature no longer verifies under the policy as it is now.
    run = run_audit(
        cluster.kubeconfig, capsys, monkeypatch, "--namespace", scenario.namespace, "--fail-on", "none"
    )
    invalid = run.one("signature-invalid", name=MODEL)
    assert invalid["severity"] == "critical"
    assert "ml-ci-2027: the signature was made with another key" in invalid["message"]
    # 4. Re-sign with the new key, point the SecureModel at the new signature: served again.
    signature = tmp_path / "model-2027.sig"
    signer = Signer.from_private_key(new_key.private_pem)
    sign_model(
        scenario.artifacts.model, signature, signer, model_name=MODEL_NAME, model_version=MODEL_VERSION
    )
    scenario.custom.patch_namespaced_custom_object(
        GROUP, VERSION, scenario.namespace, "securemodels", MODEL,
        {"spec": {"signature": {"uri": f"file://{signature}"}}},
    )  # fmt: skip
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)
    assert scenario.model(MODEL)["status"]["verification"]["signer"] not in (None, old_signer)
    assert deployment_exists(scenario)


def test_leaked_data_key(
    webhook: None, scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ready(scenario)
    ns, artifact = scenario.namespace, scenario.artifacts.artifact
    before = {
        p.metadata.name
        for p in scenario.core.list_namespaced_pod(ns, label_selector=f"samd.dev/model={MODEL}").items
    }
    # 1. The key-encryption key from its Secret.
    secret = scenario.core.read_namespaced_secret("fraud-detection-key", ns)
    keyset = tmp_path / "keyset.json"
    keyset.write_bytes(base64.b64decode(secret.data["keyset.json"]))
    keyset.chmod(0o600)
    leaked = data_key(artifact, keyset.read_bytes())
    signature_before = scenario.artifacts.signature.read_bytes()
    capsys.readouterr()
    assert main(["inspect", str(artifact), "--json"]) == 0
    wrapped_before = json.loads(capsys.readouterr().out)["header"]["key"]["wrapped_key_sha256"]
    # 2. Re-encrypt under a fresh data key.
    assert main(["reencrypt", str(artifact), "--key", f"local:{keyset}"]) == 0
    out = capsys.readouterr().out
    assert "under a new data key" in out
    assert "the old data key no longer decrypts it" in out
    assert data_key(artifact, keyset.read_bytes()) != leaked
    assert main(["inspect", str(artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["header"]["key"]["wrapped_key_sha256"] != wrapped_before
    assert scenario.artifacts.signature.read_bytes() == signature_before
    # 3. Restart the pods: new ones, admitted and Running; the model stays Verified and Ready.
    scenario.core.delete_collection_namespaced_pod(ns, label_selector=f"samd.dev/model={MODEL}")

    def replaced() -> bool:
        pods = scenario.core.list_namespaced_pod(ns, label_selector=f"samd.dev/model={MODEL}").items
        names = {
            p.metadata.name for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp
        }
        return len(names) == 2 and not names & before

    eventually(replaced, 60, "two new model pods Running")
    assert scenario.condition(MODEL, "Verified")["status"] == "True"
    assert scenario.wait_condition(MODEL, "Ready", "True")["status"] == "True"


def test_model_not_ready(scenario: Scenario) -> None:
    ns = scenario.namespace
    keyset = base64.b64decode(
        scenario.core.read_namespaced_secret("fraud-detection-key", ns).data["keyset.json"]
    )
    scenario.core.delete_namespaced_secret("fraud-detection-key", ns)
    scenario.apply_model(scenario.example())
    assert scenario.wait_condition(MODEL, "Ready", "False")["status"] == "False"
    encrypted = scenario.wait_condition(MODEL, "Encrypted", "False")
    assert encrypted["reason"] == "KeySecretMissing"
    assert (
        "kubectl create secret generic fraud-detection-key --from-file=keyset.json=KEYSET"
        in encrypted["message"]
    )
    # Do what it says.
    scenario.core.create_namespaced_secret(
        ns, scenario.artifacts.keyset_secret("fraud-detection-key", keyset)
    )
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_operator_down_key_rotation_overdue_and_certificate_expiring(
    scenario: Scenario,
    operator: OperatorProcess,
    cluster: Cluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three runbooks around one outage: the operator stops, a change waits, the key and the
    certificate fall due; once it is back it catches up, and the certificate is renewed on demand."""
    ready(scenario)
    ns = scenario.namespace
    now = datetime.datetime.now(datetime.UTC)
    version_before = scenario.model(MODEL)["status"]["key"]["keyVersion"]
    operator.stop()
    try:
        scenario.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "securemodels", MODEL, {"spec": {"serving": {"replicas": 1}}}
        )
        scenario.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, "securemodels", MODEL,
            {"status": {"key": {"rotatedAt": _iso(now - datetime.timedelta(days=40)),
                                "nextRotation": _iso(now - datetime.timedelta(days=10))},
                        "certificates": {"serverNotAfter": _iso(now + datetime.timedelta(days=3))},
                        # What the operator's bucket posture check records for an insecure bucket.
                        "storage": {"encrypted": False, "publicAccessBlocked": True}}},
        )  # fmt: skip
        down = run_audit(
            cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns, "--reconcile-grace", "0s"
        )
    finally:
        operator.start()
    # Operator down: the audit says so; the model kept serving meanwhile.
    assert down.one("operator-not-reconciling", kind="SecureModel", name=MODEL)["severity"] == "high"
    assert down.one("key-rotation-overdue", name=MODEL)["severity"] == "high"
    assert down.one("certificate-expiring", name=MODEL)["severity"] == "medium"
    assert "default bucket encryption is off" in down.one("storage-insecure", name=MODEL)["message"]
    assert down.exit_code == 8

    # Restarted: it reconciles every model, rotates the overdue key and rewrites the certificate status.
    def caught_up() -> bool:
        model = scenario.model(MODEL)
        return bool(model["status"].get("observedGeneration") == model["metadata"]["generation"])

    eventually(caught_up, 60, "the operator to handle the waiting change")
    eventually(
        lambda: scenario.model(MODEL)["status"]["key"]["keyVersion"] != version_before, 60, "a key rotation"
    )
    assert int(scenario.model(MODEL)["status"]["key"]["keyVersion"]) == int(version_before) + 1
    eventually(lambda: bool(events(scenario, "KeyRotated")), 30, "a KeyRotated event")
    eventually(
        lambda: scenario.apps.read_namespaced_deployment(MODEL, ns).spec.replicas == 1, 30, "one replica"
    )
    # Certificate expiring: delete the TLS Secret, a new certificate is issued at once.
    old_certificate = scenario.core.read_namespaced_secret("fraud-detection-tls", ns).data["tls.crt"]
    scenario.core.delete_namespaced_secret("fraud-detection-tls", ns)

    def reissued() -> bool:
        try:
            secret = scenario.core.read_namespaced_secret("fraud-detection-tls", ns)
        except ApiException:
            return False
        return bool(secret.data["tls.crt"] != old_certificate)

    eventually(reissued, 30, "a new server certificate")
    not_after = scenario.model(MODEL)["status"]["certificates"]["serverNotAfter"]
    assert datetime.datetime.fromisoformat(not_after.replace("Z", "+00:00")) > now + datetime.timedelta(
        days=80
    )
    scenario.wait_condition(MODEL, "Ready", "True", timeout=60)
    after = run_audit(cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns)
    assert {f["check"] for f in after.findings()} & {
        "operator-not-reconciling", "key-rotation-overdue", "certificate-expiring"
    } == set()  # fmt: skip


def samd(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `samd ARGS` in-process as a person would; what it printed (it must succeed)."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, f"samd {' '.join(args)} exited {code}: {captured.err}"
    return captured.out


def model_pods(scenario: Scenario) -> list[Any]:
    return list(
        scenario.core.list_namespaced_pod(scenario.namespace, label_selector=f"samd.dev/model={MODEL}").items
    )


def replicas(scenario: Scenario) -> int:
    return int(scenario.apps.read_namespaced_deployment(MODEL, scenario.namespace).spec.replicas or 0)


def model_events(scenario: Scenario, reason: str) -> list[Any]:
    return list(
        scenario.core.list_namespaced_event(
            scenario.namespace, field_selector=f"involvedObject.name={MODEL},reason={reason}"
        ).items
    )


def _impersonating(cluster: Cluster, user: str) -> client.ApiClient:
    api = cluster.api_client()
    api.set_default_header("Impersonate-User", user)  # type: ignore[no-untyped-call]
    return api


def test_repeated_unauthorized_access_exfiltration_review_and_drift_check(  # noqa: PLR0917
    webhook: None,
    scenario: Scenario,
    cluster: Cluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ready(scenario)
    ns = scenario.namespace
    rbac = client.RbacAuthorizationV1Api(scenario.api)
    role: Any = {
        "metadata": {"name": "pod-maker"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}],
    }
    rbac.create_namespaced_role(ns, role)
    binding: Any = {
        "metadata": {"name": "intruder-makes-pods"},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "pod-maker"},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "intruder@example.com"}],
    }
    rbac.create_namespaced_role_binding(ns, binding)
    intruder = client.CoreV1Api(_impersonating(cluster, "intruder@example.com"))
    thief: Any = {
        "metadata": {"name": "key-thief"},
        "spec": {
            "containers": [
                {"name": "sh", "image": "busybox", "volumeMounts": [{"name": "k", "mountPath": "/k"}]}
            ],
            "volumes": [{"name": "k", "secret": {"secretName": "fraud-detection-key"}}],
        },
    }
    for _attempt in range(3):
        with pytest.raises(ApiException) as refused:
            intruder.create_namespaced_pod(ns, thief)
        assert "denied the request" in refusal(refused.value)
    # 1. The webhook's log names the user of every refusal.
    logs = list(tmp_path_factory.getbasetemp().glob("webhook*/webhook.log"))
    denials = [
        json.loads(line)
        for log in logs
        for line in log.read_text().splitlines()
        if "intruder@example.com" in line and '"denied"' in line
    ]
    assert len([d for d in denials if d.get("namespace") == ns]) >= 3
    # Exfiltration, step 2: someone could read the key Secret outside SAMD.
    reader: Any = {
        "metadata": {"name": "key-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }
    rbac.create_namespaced_role(ns, reader)
    reads: Any = {
        "metadata": {"name": "curious-reads-keys"},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "key-reader"},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "curious@example.com"}],
    }
    rbac.create_namespaced_role_binding(ns, reads)
    # 2. The audit names the binding through which the intruder may create pods (and the key reader).
    run = run_audit(cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns)
    key_reader = run.one("key-secret-readable", name=MODEL)
    assert "User curious@example.com may get secrets/fraud-detection-key" in key_reader["message"]
    assert f"RoleBinding {ns}/curious-reads-keys" in key_reader["message"]
    finding = [f for f in run.findings("pods-creatable", ns) if "intruder@example.com" in f["message"]]
    assert len(finding) == 1
    assert "RoleBinding " + ns + "/intruder-makes-pods" in finding[0]["message"]
    # 3. Take the access away: refused by RBAC before the webhook is asked (exfiltration step 4 alike).
    rbac.delete_namespaced_role_binding("intruder-makes-pods", ns)
    rbac.delete_namespaced_role_binding("curious-reads-keys", ns)

    def forbidden_by_rbac() -> bool:
        try:
            intruder.create_namespaced_pod(ns, thief)
        except ApiException as error:
            return 'cannot create resource "pods"' in refusal(error)
        return False

    eventually(forbidden_by_rbac, 10, "RBAC to refuse the intruder")
    # 4. The model may have been reached: quarantine it (exfiltration, step 1), as a cluster admin.
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    why = "INC-4711: suspected exfiltration"
    said = samd(capsys, "quarantine", "set", MODEL, "-n", ns, "--message", why)
    assert said.startswith(f"SecureModel {ns}/{MODEL} quarantined by ")
    assert said.rstrip().endswith(f": Manual: {why}")

    def quarantined() -> bool:
        ready = scenario.condition(MODEL, "Ready") or {}
        return (ready.get("status"), ready.get("reason")) == ("False", "Quarantined")

    eventually(quarantined, 30, "Ready False, reason Quarantined")
    eventually(lambda: replicas(scenario) == 0, 30, "the Deployment to be scaled to zero")
    eventually(lambda: not model_pods(scenario), 60, "the model's pods to be gone")
    assert deployment_exists(scenario)  # evidence stays

    def operators_event() -> list[Any]:
        return [e for e in model_events(scenario, "Quarantined") if f"Manual: {why} (by " in e.message]

    eventually(lambda: bool(operators_event()), 30, "a Quarantined Event on the model")
    assert operators_event()[0].type == "Warning"
    assert "scaled to zero" in operators_event()[0].message
    with pytest.raises(ApiException) as refused_copy:
        scenario.core.create_namespaced_pod(ns, model_pod(scenario, "copy-of-the-operators-pod"))
    refused_message = refusal(refused_copy.value)
    assert 'admission webhook "pods.webhook.samd.dev" denied the request' in refused_message
    assert f"SecureModel {MODEL} is quarantined (Manual: {why})" in refused_message
    assert f"(samd quarantine clear {MODEL} --namespace {ns})" in refused_message
    # Exfiltration, step 4: the audit again, until the access findings are gone.
    again = run_audit(cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns)
    assert not [f for f in again.findings(namespace=ns) if "intruder@example.com" in f["message"]]
    assert not again.findings("key-secret-readable")
    # Exfiltration, step 5: re-encrypt the artifact (leaked data key, steps 1 and 2), then clear.
    keyset = tmp_path_factory.mktemp("incident") / "keyset.json"
    keyset.write_bytes(
        base64.b64decode(scenario.core.read_namespaced_secret("fraud-detection-key", ns).data["keyset.json"])
    )
    keyset.chmod(0o600)
    leaked = data_key(scenario.artifacts.artifact, keyset.read_bytes())
    samd(capsys, "reencrypt", str(scenario.artifacts.artifact), "--key", f"local:{keyset}")
    assert data_key(scenario.artifacts.artifact, keyset.read_bytes()) != leaked
    said = samd(capsys, "quarantine", "clear", MODEL, "-n", ns, "--message", "INC-4711 closed")
    assert said.startswith(f"SecureModel {ns}/{MODEL}: quarantine cleared by ")
    eventually(lambda: replicas(scenario) == 2, 30, "the Deployment to be scaled back")
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)
    eventually(
        lambda: bool(model_events(scenario, "QuarantineCleared")),
        30,
        "a QuarantineCleared Event on the model",
    )
    assert "serving again" in model_events(scenario, "QuarantineCleared")[0].message
    assert "is not quarantined" in samd(capsys, "quarantine", "show", MODEL, "-n", ns)

    def serving_again() -> bool:
        pods = model_pods(scenario)
        return len(pods) == 2 and all(p.status.phase == "Running" for p in pods)

    eventually(serving_again, 60, "two model pods Running again")
    # Drift alert, step 1: the model served is the one signed (status, pods, audit).
    digest = scenario.artifacts.manifest_digest()
    assert scenario.model(MODEL)["status"]["verification"]["manifestDigest"] == digest
    pods = scenario.core.list_namespaced_pod(ns, label_selector=f"samd.dev/model={MODEL}").items
    assert {p.metadata.annotations["samd.dev/model-digest"] for p in pods} == {digest}
    assert not again.findings("signature-invalid")
