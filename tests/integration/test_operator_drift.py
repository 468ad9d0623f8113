"""Hand changes to what a model owns are undone, although the operator skips re-applying unchanged objects."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.operator import OperatorProcess
from tests.support.scenario import Scenario, eventually

pytestmark = pytest.mark.integration

MANAGED_BY = "app.kubernetes.io/managed-by"


def test_a_removed_label_a_scaled_deployment_and_a_deleted_certificate_come_back(scenario: Scenario) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)
    ns = scenario.namespace
    # The operator watches its objects by this label: without it the object leaves the watch.
    scenario.net.patch_namespaced_network_policy(
        "samd-fraud-detection-isolation", ns, {"metadata": {"labels": {MANAGED_BY: None}}}
    )
    scenario.apps.patch_namespaced_deployment("fraud-detection", ns, {"spec": {"replicas": 5}})
    scenario.core.delete_namespaced_secret("fraud-detection-tls", ns)

    def restored() -> bool:
        policy = scenario.net.read_namespaced_network_policy("samd-fraud-detection-isolation", ns)
        deployment = scenario.apps.read_namespaced_deployment("fraud-detection", ns)
        secrets = {secret.metadata.name for secret in scenario.core.list_namespaced_secret(ns).items}
        return (
            (policy.metadata.labels or {}).get(MANAGED_BY) == "samd-operator"
            and deployment.spec.replicas == 2
            and "fraud-detection-tls" in secrets
        )

    eventually(restored, 30, "the label, the replica count and the TLS Secret to be restored")
    certificates = scenario.wait_condition("fraud-detection", "CertificatesReady", "True")
    assert certificates["reason"] == "Issued"


def test_after_an_upgrade_the_objects_an_earlier_version_owned_are_pruned(
    scenario: Scenario, operator: OperatorProcess
) -> None:
    """Earlier versions wrote three NetworkPolicies per model; a restarted operator keeps only its one."""
    scenario.apply_model(scenario.example())
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)
    ns = scenario.namespace
    model = scenario.model("fraud-detection")
    owner = {
        "apiVersion": model["apiVersion"],
        "kind": "SecureModel",
        "name": "fraud-detection",
        "uid": model["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    isolation = scenario.net.read_namespaced_network_policy("samd-fraud-detection-isolation", ns)
    operator.stop()
    try:
        for old in ("samd-fraud-detection-default-deny", "samd-fraud-detection-egress"):
            policy: Any = {
                "metadata": {
                    "name": old,
                    "labels": isolation.metadata.labels,
                    "ownerReferences": [owner],
                },
                "spec": {"podSelector": {"matchLabels": {"samd.dev/model": "fraud-detection"}}},
            }
            scenario.net.create_namespaced_network_policy(ns, policy)
    finally:
        operator.start()

    def only_the_current_policy() -> bool:
        policies = scenario.net.list_namespaced_network_policy(ns).items
        return {p.metadata.name for p in policies} == {"samd-fraud-detection-isolation"}

    eventually(only_the_current_policy, 60, "the earlier version's NetworkPolicies to be pruned")

    def pruned_event() -> bool:  # kopf posts events in the background
        events = scenario.core.list_namespaced_event(ns).items
        return any(
            e.reason == "Pruned" and "samd-fraud-detection-default-deny" in (e.message or "") for e in events
        )

    eventually(pruned_event, 30, "a Pruned event naming the removed policy")
