"""An owned object the API server refuses: the status says which and why, and the model recovers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.scenario import Scenario, eventually

pytestmark = pytest.mark.integration

REFUSAL = "model Deployments in this namespace wait for a change ticket"


@pytest.fixture
def deployments_refused(scenario: Scenario) -> Iterator[str]:
    """A ValidatingAdmissionPolicy (built into the API server) that refuses Deployments in the namespace."""
    admission = client.AdmissionregistrationV1Api(scenario.api)
    name = f"refuse-{scenario.namespace}"
    policy: Any = {  # the client takes plain dicts
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": REFUSAL}],
        },
    }
    admission.create_validating_admission_policy(policy)
    binding: Any = {
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": scenario.namespace}}
            },
        },
    }
    admission.create_validating_admission_policy_binding(binding)

    def in_force() -> bool:  # the API server compiles a new policy in the background
        probe: Any = {
            "metadata": {"name": "probe"},
            "spec": {
                "selector": {"matchLabels": {"app": "probe"}},
                "template": {
                    "metadata": {"labels": {"app": "probe"}},
                    "spec": {"containers": [{"name": "c", "image": "probe"}]},
                },
            },
        }
        try:
            scenario.apps.create_namespaced_deployment(scenario.namespace, probe, dry_run="All")
        except ApiException as error:
            return REFUSAL in str(error.body)
        return False

    eventually(in_force, 30, "the admission policy to be in force")
    try:
        yield name
    finally:
        for delete in (
            admission.delete_validating_admission_policy_binding,
            admission.delete_validating_admission_policy,
        ):
            try:
                delete(name)
            except ApiException as error:
                if error.status != 404:
                    raise


def test_a_refused_deployment_is_reported_and_applied_once_allowed(
    scenario: Scenario, deployments_refused: str
) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition("fraud-detection", "Serving", "False", timeout=60)
    eventually(
        lambda: (scenario.condition("fraud-detection", "Serving") or {}).get("reason") == "ApplyFailed",
        60,
        "Serving to say the apply failed",
    )
    serving = scenario.condition("fraud-detection", "Serving") or {}
    assert "applying Deployment fraud-detection" in serving["message"]
    assert REFUSAL in serving["message"]
    assert "RBAC" not in serving["message"]  # an admission refusal, not the operator's permissions
    # Everything else was still done and reported.
    for kind in ("Verified", "Encrypted", "AccessControlled", "NetworkIsolated", "CertificatesReady"):
        assert (scenario.condition("fraud-detection", kind) or {}).get("status") == "True", kind
    ready = scenario.condition("fraud-detection", "Ready") or {}
    assert ready["status"] == "False"
    assert "Serving" in ready["message"]
    events = scenario.core.list_namespaced_event(scenario.namespace).items
    assert any(e.reason == "ApplyFailed" and REFUSAL in (e.message or "") for e in events)

    # Once the policy is gone, the retry applies the Deployment and the model becomes Ready.
    admission = client.AdmissionregistrationV1Api(scenario.api)
    admission.delete_validating_admission_policy_binding(deployments_refused)
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)
