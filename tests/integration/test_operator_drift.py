"""Hand changes to what a model owns are undone, although the operator skips re-applying unchanged objects."""

from __future__ import annotations

import pytest

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
