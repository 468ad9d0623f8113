"""A version means one signed content, against the real control plane, the operator and the webhook.

The attacker is a deployer: they may update the SecureModel (it is their job) but hold no signing
key. The same CI key signed every release of the model, so an older release verifies
cryptographically; pointing spec.artifact and spec.signature at it while keeping (or raising)
spec.version must not get the older digest served.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.integration.test_webhook import kubectl, model_pod, ready_model, refusal
from tests.support.cluster import Cluster
from tests.support.models import ModelArtifacts, make_model
from tests.support.scenario import GROUP, VERSION, Scenario, eventually

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"


def older_release(scenario: Scenario, tmp_path: Path) -> ModelArtifacts:
    """Release 1.3.0 of the same model, signed by the same CI key and encrypted with the same keyset."""
    return make_model(
        tmp_path / "release-1.3.0",
        version="1.3.0",
        signing_key=scenario.artifacts.signing_key,
        keyset=scenario.artifacts.keyset,
    )


def point_at(scenario: Scenario, release: ModelArtifacts, version: str) -> None:
    """The deployer's update: artifact and signature of `release`, and spec.version `version`."""
    spec = {
        "version": version,
        "artifact": {"uri": release.artifact_uri},
        "signature": {"uri": release.signature_uri},
    }
    scenario.custom.patch_namespaced_custom_object(
        GROUP, VERSION, scenario.namespace, "securemodels", MODEL, {"spec": spec}
    )


def wait_verified_message(scenario: Scenario, status: str, fragment: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def check() -> bool:
        found.clear()
        found.update(scenario.condition(MODEL, "Verified") or {})
        return found.get("status") == status and fragment in found.get("message", "")

    try:
        eventually(check, 60, f"Verified={status} mentioning {fragment!r}")
    except AssertionError as error:
        raise AssertionError(f"{error}; last Verified: {found}") from None
    return dict(found)


def swap_release(pod: dict[str, Any], current: ModelArtifacts, release: ModelArtifacts) -> Any:
    """The operator's pod with every mention of the current release replaced by `release`'s."""
    replacements = {
        current.artifact_uri: release.artifact_uri,
        current.signature_uri: release.signature_uri,
        current.manifest_digest(): release.manifest_digest(),
    }

    def swap(value: Any) -> Any:
        if isinstance(value, str):
            return replacements.get(value, value)
        if isinstance(value, list):
            return [swap(item) for item in value]
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        return value

    return swap(pod)


def test_pointing_a_version_at_an_older_signed_release_serves_nothing_and_its_pod_is_refused(
    webhook: None, scenario: Scenario, tmp_path: Path
) -> None:
    ready_model(scenario)  # 1.4.0, signed as fraud-detection 1.4.0, served
    ns = scenario.namespace
    served = model_pod(scenario, "old-release")
    old = older_release(scenario, tmp_path)

    point_at(scenario, old, "1.4.0")  # the version kept
    verified = wait_verified_message(scenario, "False", "not fraud-detection version 1.4.0")
    assert verified["reason"] == "VersionMismatch"
    assert "requires a signed version" in verified["message"]
    assert "--model-name fraud-detection --model-version 1.4.0" in verified["message"]
    point_at(scenario, old, "1.5.0")  # the version raised
    verified = wait_verified_message(scenario, "False", "not fraud-detection version 1.5.0")
    assert verified["reason"] == "VersionMismatch"

    # What the user sees: the older digest is never rolled out; nothing is served until it verifies.
    eventually(lambda: scenario.apps.list_namespaced_deployment(ns).items == [], 60, "the Deployment removed")
    serving = scenario.wait_condition(MODEL, "Serving", "False")
    assert serving["reason"] == "NotVerified"
    assert scenario.wait_condition(MODEL, "Ready", "False")
    assert not any(
        (pod.metadata.annotations or {}).get("samd.dev/model-digest") == old.manifest_digest()
        for pod in scenario.core.list_namespaced_pod(ns).items
    )
    assert (scenario.model(MODEL)["status"].get("verification") or {}) == {}

    # A hand-made pod running the older release, exactly as the operator would build it for that
    # release's verified signature (which the operator stored for the webhook): refused.
    eventually(
        lambda: (
            old.signature.read_text()
            == scenario.core.read_namespaced_config_map(f"{MODEL}-signature", ns).data["bundle.json"]
        ),
        30,
        "the older release's bundle in the signature ConfigMap",
    )
    with pytest.raises(ApiException) as refused:
        scenario.core.create_namespaced_pod(ns, swap_release(served, scenario.artifacts, old))
    message = refusal(refused.value)
    assert 'admission webhook "pods.webhook.samd.dev" denied the request' in message
    assert "requires a signed version" in message
    assert "the signed model is not fraud-detection version 1.5.0" in message
    assert scenario.core.list_namespaced_pod(ns, field_selector="metadata.name=old-release").items == []


def test_a_warn_mode_policy_serves_an_unbound_version_with_warnings(
    webhook: None, scenario: Scenario, tmp_path: Path, cluster: Cluster
) -> None:
    ready_model(scenario)
    scenario.custom.patch_cluster_custom_object(
        GROUP, VERSION, "modeltrustpolicies", scenario.policy_name, {"spec": {"mode": "warn"}}
    )
    time.sleep(2)  # the operator's and the webhook's watches see the policy change
    old = older_release(scenario, tmp_path)

    point_at(scenario, old, "1.4.0")

    verified = wait_verified_message(scenario, "True", "warning (warn mode)")
    assert "not fraud-detection version 1.4.0" in verified["message"]
    assert scenario.model(MODEL)["status"]["verification"]["manifestDigest"] == old.manifest_digest()
    events = scenario.core.list_namespaced_event(scenario.namespace).items
    assert any(e.reason == "VersionMismatch" and e.type == "Warning" for e in events)

    eventually(
        lambda: (
            scenario.apps.read_namespaced_deployment(
                MODEL, scenario.namespace
            ).spec.template.metadata.annotations["samd.dev/model-digest"]
            == old.manifest_digest()
        ),
        60,
        "the Deployment rolled to the older release (warn mode)",
    )
    pod = model_pod(scenario, "warned-release")
    pod["metadata"]["namespace"] = scenario.namespace
    applied = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(pod))
    assert applied.returncode == 0, applied.stderr
    assert "Warning:" in applied.stderr
    assert "requires a signed version" in applied.stderr
