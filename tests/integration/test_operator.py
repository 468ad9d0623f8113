"""The operator against the real control plane: a SecureModel becomes a verified, protected, served model."""

from __future__ import annotations

import base64
import copy
import datetime
import json
import time
from typing import Any

import pytest
from kubernetes import client

from samd.envelope import body_offset, read_header
from tests.support.operator import OperatorProcess
from tests.support.scenario import GROUP, VERSION, Scenario, eventually

pytestmark = pytest.mark.integration


def names(items: list[Any]) -> set[str]:
    return {item.metadata.name for item in items}


def test_example_becomes_ready_with_every_owned_object(scenario: Scenario) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)
    ns = scenario.namespace
    model = scenario.model("fraud-detection")
    status = model["status"]
    assert status["verification"]["manifestDigest"] == scenario.artifacts.manifest_digest()
    assert status["verification"]["policy"] == scenario.policy_name
    assert status["observedGeneration"] == model["metadata"]["generation"]
    assert {c["type"] for c in status["conditions"]} == {
        "Verified", "Encrypted", "StorageSecure", "AccessControlled", "NetworkIsolated",
        "CertificatesReady", "Serving", "Ready",
    }  # fmt: skip
    assert all(c["status"] == "True" for c in status["conditions"])

    deployment = scenario.apps.read_namespaced_deployment("fraud-detection", ns)
    assert deployment.status.available_replicas == 2
    template = deployment.spec.template
    assert template.metadata.annotations["samd.dev/model-digest"] == scenario.artifacts.manifest_digest()
    assert [c.name for c in template.spec.init_containers] == ["samd-fetch"]
    assert template.spec.automount_service_account_token is False
    pods = scenario.core.list_namespaced_pod(ns, label_selector="samd.dev/model=fraud-detection").items
    assert len(pods) == 2
    assert {p.status.phase for p in pods} == {"Running"}

    assert names(scenario.core.list_namespaced_service(ns).items) == {"fraud-detection"}
    assert names(scenario.net.list_namespaced_network_policy(ns).items) == {"samd-fraud-detection-isolation"}
    assert names(scenario.rbac.list_namespaced_role(ns).items) == {
        "samd-fraud-detection-deployer", "samd-fraud-detection-reviewer",
    }  # fmt: skip
    bindings = names(scenario.rbac.list_namespaced_role_binding(ns).items)
    assert {
        "samd-fraud-detection-deployer",
        "samd-fraud-detection-reviewer",
    } < bindings
    assert any(
        b.startswith("samd-fraud-detection-grant-") for b in bindings
    )  # the auditor's grant (2026-12-31)
    secrets = names(scenario.core.list_namespaced_secret(ns).items)
    assert {"fraud-detection-tls", "fraud-detection-client-payments-api", "fraud-detection-key"} <= secrets
    policy = scenario.custom.get_cluster_custom_object(
        GROUP, VERSION, "modeltrustpolicies", scenario.policy_name
    )
    assert policy["status"]["signerCount"] == 1
    assert policy["status"]["conditions"][0]["reason"] == "SignersUsable"
    signature = scenario.core.read_namespaced_config_map("fraud-detection-signature", ns)
    assert signature.data["bundle.json"] == scenario.artifacts.signature.read_text()  # for the webhook
    pdb = client.PolicyV1Api(scenario.api).read_namespaced_pod_disruption_budget("fraud-detection", ns)
    assert pdb.metadata.owner_references[0].name == "fraud-detection"


def test_tampered_signature_is_not_verified_and_nothing_is_served(scenario: Scenario) -> None:
    bundle = json.loads(scenario.artifacts.signature.read_bytes())
    signature = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    signature[10] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()
    scenario.artifacts.signature.write_text(json.dumps(bundle))

    scenario.apply_model(scenario.example())
    verified = scenario.wait_condition("fraud-detection", "Verified", "False")
    assert verified["reason"] == "SignatureInvalid"
    ready = scenario.wait_condition("fraud-detection", "Ready", "False")
    assert "Verified" in ready["message"]
    assert names(scenario.apps.list_namespaced_deployment(scenario.namespace).items) == set()
    # Isolation is still in place for whatever might run.
    assert names(scenario.net.list_namespaced_network_policy(scenario.namespace).items) == {
        "samd-fraud-detection-isolation"
    }


def test_hand_deleted_network_policy_and_hand_edited_role_come_back(scenario: Scenario) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)
    ns = scenario.namespace
    scenario.net.delete_namespaced_network_policy("samd-fraud-detection-isolation", ns)
    role = scenario.rbac.read_namespaced_role("samd-fraud-detection-deployer", ns)
    role.rules[0].verbs = [*role.rules[0].verbs, "delete"]
    scenario.rbac.replace_namespaced_role("samd-fraud-detection-deployer", ns, role)

    def restored() -> bool:
        policies = names(scenario.net.list_namespaced_network_policy(ns).items)
        verbs = scenario.rbac.read_namespaced_role("samd-fraud-detection-deployer", ns).rules[0].verbs
        return "samd-fraud-detection-isolation" in policies and "delete" not in verbs

    eventually(restored, 30, "the NetworkPolicy and the Role to be restored")


def test_deleting_the_model_removes_everything_it_owns(scenario: Scenario) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)
    model = scenario.model("fraud-detection")
    assert not model["metadata"].get("finalizers")  # nothing outside Kubernetes to clean up
    scenario.custom.delete_namespaced_custom_object(
        GROUP, VERSION, scenario.namespace, "securemodels", "fraud-detection"
    )
    ns = scenario.namespace

    def all_gone() -> bool:
        owned = "samd.dev/model=fraud-detection"
        return not any(
            [
                scenario.apps.list_namespaced_deployment(ns, label_selector=owned).items,
                scenario.core.list_namespaced_service(ns, label_selector=owned).items,
                scenario.net.list_namespaced_network_policy(ns, label_selector=owned).items,
                scenario.rbac.list_namespaced_role(ns, label_selector=owned).items,
                scenario.rbac.list_namespaced_role_binding(ns, label_selector=owned).items,
                scenario.core.list_namespaced_secret(ns, label_selector=owned).items,
                scenario.core.list_namespaced_pod(ns, label_selector=owned).items,
            ]
        )

    eventually(all_gone, 60, "garbage collection of every owned object")
    # The user's key Secret is not the operator's to delete.
    assert scenario.core.read_namespaced_secret("fraud-detection-key", ns)


def test_operator_restart_in_the_middle_converges_without_duplicates(
    scenario: Scenario, operator: OperatorProcess
) -> None:
    operator.stop(kill=True)
    try:
        scenario.apply_model(scenario.example())
        time.sleep(1)
    finally:
        operator.start()
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)
    operator.stop(kill=True)
    operator.start()
    time.sleep(3)
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=60)
    ns = scenario.namespace
    assert len(scenario.apps.list_namespaced_deployment(ns).items) == 1
    assert len(scenario.core.list_namespaced_service(ns).items) == 1
    assert len(scenario.net.list_namespaced_network_policy(ns).items) == 1
    assert len(scenario.apps.list_namespaced_replica_set(ns).items) == 1  # no needless rollout
    assert len(scenario.core.list_namespaced_pod(ns).items) == 2


def test_time_bound_grant_disappears_after_its_expiry(scenario: Scenario) -> None:
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=10)
    body = scenario.example()
    body["spec"]["access"]["grants"] = [
        {
            "subject": {"kind": "User", "name": "oncall@example.com"},
            "role": "deployer",
            "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    ]
    scenario.apply_model(body)
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)

    def grant_bindings() -> list[str]:
        items = scenario.rbac.list_namespaced_role_binding(scenario.namespace).items
        return [str(b.metadata.name) for b in items if "-grant-" in str(b.metadata.name)]

    assert len(grant_bindings()) == 1
    assert allowed(scenario, "oncall@example.com", "update", "securemodels")
    eventually(lambda: grant_bindings() == [], 40, "the expired grant's RoleBinding to be removed")
    assert not allowed(scenario, "oncall@example.com", "update", "securemodels")


def allowed(
    scenario: Scenario,
    user: str,
    verb: str,
    resource: str,
    *,
    name: str = "fraud-detection",
    groups: list[str] | None = None,
) -> bool:
    group = "" if resource == "secrets" else GROUP
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=groups or [],
            resource_attributes=client.V1ResourceAttributes(
                namespace=scenario.namespace, verb=verb, group=group, resource=resource, name=name
            ),
        )
    )
    result = client.AuthorizationV1Api(scenario.api).create_subject_access_review(review)
    return bool(result.status.allowed)


def test_rbac_deployer_reviewer_and_key_material(scenario: Scenario) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition("fraud-detection", "AccessControlled", "True", timeout=90)
    ns = scenario.namespace

    def check(user: str, groups: list[str], verb: str, resource: str, name: str = "fraud-detection") -> bool:
        return allowed(scenario, user, verb, resource, name=name, groups=groups)

    eventually(lambda: check("alice", ["ml-ops"], "update", "securemodels"), 10, "RBAC to take effect")
    assert check("alice", ["ml-ops"], "patch", "securemodels")
    assert not check("alice", ["ml-ops"], "delete", "securemodels")
    assert check("bob", ["auditors"], "get", "securemodels")
    assert not check("bob", ["auditors"], "update", "securemodels")
    assert not check("mallory", [], "get", "securemodels")
    # Nobody reads the key through the model's Roles, not even the model's own identity: the kubelet
    # mounts it into the loader.
    workload = f"system:serviceaccount:{ns}:fraud-detection-model"
    for user, groups in [
        ("alice", ["ml-ops"]),
        ("bob", ["auditors"]),
        ("mallory", []),
        (workload, ["system:serviceaccounts"]),
    ]:
        assert not check(user, groups, "get", "secrets", "fraud-detection-key"), user
    other = f"system:serviceaccount:{ns}:default"
    assert not check(other, ["system:serviceaccounts"], "get", "secrets", "fraud-detection-key")


def test_missing_key_secret_is_reported_and_retried(scenario: Scenario) -> None:
    scenario.core.delete_namespaced_secret("fraud-detection-key", scenario.namespace)
    scenario.apply_model(scenario.example())
    encrypted = scenario.wait_condition("fraud-detection", "Encrypted", "False")
    assert encrypted["reason"] == "KeySecretMissing"
    assert "kubectl create secret generic fraud-detection-key" in encrypted["message"]
    scenario.core.create_namespaced_secret(
        scenario.namespace, scenario.artifacts.keyset_secret("fraud-detection-key")
    )
    scenario.wait_condition("fraud-detection", "Encrypted", "True", timeout=60)


def test_due_rotation_rewraps_the_data_key_without_touching_the_body(scenario: Scenario) -> None:
    # A keyset whose current version is older than the rotation period.
    keyset = json.loads(scenario.artifacts.keyset)
    for version in keyset["versions"]:
        version["created"] = "2020-01-01T00:00:00+00:00"
    old = scenario.artifacts.keyset_secret("fraud-detection-key", json.dumps(keyset).encode())
    scenario.core.replace_namespaced_secret("fraud-detection-key", scenario.namespace, old)
    artifact = scenario.artifacts.artifact
    with artifact.open("rb") as src:
        before = read_header(src)
    body_before = artifact.read_bytes()[body_offset(before) :]

    body = scenario.example()
    body["spec"]["encryption"]["rotationPeriod"] = "24h"
    scenario.apply_model(body)
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)

    with artifact.open("rb") as src:
        after = read_header(src)
    assert after.key_version != before.key_version
    assert artifact.read_bytes()[body_offset(after) :] == body_before
    secret = scenario.core.read_namespaced_secret("fraud-detection-key", scenario.namespace)
    stored = json.loads(base64.b64decode(secret.data["keyset.json"]))
    assert len(stored["versions"]) == len(keyset["versions"]) + 1
    status = scenario.model("fraud-detection")["status"]["key"]
    assert status["keyVersion"] == after.key_version
    events = client.CoreV1Api(scenario.api).list_namespaced_event(scenario.namespace).items
    assert any(e.reason == "KeyRotated" for e in events)


def test_unreachable_storage_is_a_transient_condition(scenario: Scenario) -> None:
    body = copy.deepcopy(scenario.example())
    body["spec"]["signature"] = {"uri": "s3://models/fraud-detection/model.sig"}
    body["spec"]["artifact"] = {
        "uri": "s3://models/fraud-detection/model.samd",
        "endpoint": "http://127.0.0.1:9",
    }
    scenario.apply_model(body)
    verified = scenario.wait_condition("fraud-detection", "Verified", "Unknown", timeout=90)
    assert verified["reason"] == "SignatureUnreachable"
    assert "retrying" in verified["message"]
