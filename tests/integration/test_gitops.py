"""GitOps tools read what the operator writes: Argo CD's health checks, `kubectl wait`, observedGeneration."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.integration.test_chart import tool
from tests.support.argocd import health
from tests.support.cluster import Cluster
from tests.support.scenario import EXAMPLE, GROUP, VERSION, Scenario, eventually

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"


def kubectl(cluster: Cluster, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("kubectl")), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def test_argo_cd_health_and_kubectl_wait_follow_the_model(
    operator: object, scenario: Scenario, cluster: Cluster
) -> None:
    scenario.apply_model(scenario.example())
    waited = kubectl(
        cluster,
        "wait",
        "--for=condition=Ready",
        f"securemodel/{MODEL}",
        "-n",
        scenario.namespace,
        "--timeout=90s",
    )
    assert waited.returncode == 0, waited.stderr
    assert "condition met" in waited.stdout
    ready = scenario.model(MODEL)
    generation = ready["metadata"]["generation"]
    assert ready["status"]["observedGeneration"] == generation
    assert all(c["observedGeneration"] == generation for c in ready["status"]["conditions"])
    status, message = health(ready)
    assert status == "Healthy", message

    # A spec change the operator has not handled yet: the old Ready must not count for it.
    unseen = {**ready, "metadata": {**ready["metadata"], "generation": generation + 1}}
    assert health(unseen)[0] == "Progressing"

    # A signature that does not verify: Degraded, with the operator's reason in the message.
    scenario.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        scenario.namespace,
        "securemodels",
        MODEL,
        {"spec": {"signature": {"uri": scenario.artifacts.artifact_uri}}},
    )
    waited = kubectl(
        cluster,
        "wait",
        f"--for=jsonpath={{.status.observedGeneration}}={generation + 1}",
        f"securemodel/{MODEL}",
        "-n",
        scenario.namespace,
        "--timeout=90s",
    )
    assert waited.returncode == 0, waited.stderr
    broken = scenario.model(MODEL)
    assert broken["status"]["observedGeneration"] == broken["metadata"]["generation"] == generation + 1
    status, message = health(broken)
    assert status == "Degraded"
    assert message.startswith("Verified:")
    # `kubectl wait` for Ready does not succeed while Ready is False.
    waited = kubectl(
        cluster,
        "wait",
        "--for=condition=Ready",
        f"securemodel/{MODEL}",
        "-n",
        scenario.namespace,
        "--timeout=3s",
    )
    assert waited.returncode != 0
    assert "timed out" in waited.stderr


def test_argo_cd_health_of_trust_policies(
    operator: object, scenario: Scenario, k8s: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(k8s)

    def policy_when_handled(name: str) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def check() -> bool:
            policy = custom.get_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", name)
            assert isinstance(policy, dict)
            found.update(policy)
            return bool(found.get("status", {}).get("observedGeneration") == found["metadata"]["generation"])

        eventually(check, 30, f"the operator to check {name}")
        return found

    status, message = health(policy_when_handled(scenario.policy_name))
    assert status == "Healthy", message

    policy = yaml.safe_load((EXAMPLE / "trustpolicy.yaml").read_text())
    name = f"test-unusable-{uuid.uuid4().hex[:8]}"
    policy["metadata"]["name"] = name
    policy["spec"]["namespaceSelector"] = {"matchLabels": {"samd.dev/none": name}}  # covers nothing
    policy["spec"]["signers"][0]["publicKey"] = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    custom.create_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy)
    try:
        status, message = health(policy_when_handled(name))
        assert status == "Degraded"
        assert "signatures by these signers will be refused" in message
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", name)
