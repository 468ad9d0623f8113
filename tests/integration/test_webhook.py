"""The real API server calls the webhook over TLS: no pod runs a model whose signature fails verification."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import REPO, Cluster
from tests.support.scenario import GROUP, VERSION, Scenario, eventually

pytestmark = pytest.mark.integration


def kubectl(cluster: Cluster, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    folder = subprocess.run(
        [str(REPO / "hack" / "build-control-plane")], capture_output=True, text=True, check=True
    ).stdout.strip()
    return subprocess.run(
        [f"{folder}/kubectl", f"--kubeconfig={cluster.kubeconfig}", *args],
        input=stdin, capture_output=True, text=True, check=False,
    )  # fmt: skip


def model_pod(scenario: Scenario, name: str, model: str = "fraud-detection") -> Any:
    """A pod made from the operator's own template, claiming `model`."""
    template = client.AppsV1Api(scenario.api).read_namespaced_deployment(
        "fraud-detection", scenario.namespace
    )
    body = client.ApiClient().sanitize_for_serialization(template.spec.template)  # type: ignore[no-untyped-call]
    body["metadata"]["annotations"]["samd.dev/model"] = model
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**body["metadata"], "name": name},
        "spec": body["spec"],
    }


def refusal(error: ApiException) -> str:
    """The message the API server returned for a refused request."""
    return str(json.loads(error.body or "{}").get("message", ""))


def ready_model(scenario: Scenario) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)


def test_untampered_model_is_admitted_at_every_level(webhook: None, scenario: Scenario) -> None:
    # The operator's Deployment and its ReplicaSet's pods all passed the webhook to become Available.
    ready_model(scenario)
    created = scenario.core.create_namespaced_pod(scenario.namespace, model_pod(scenario, "direct"))
    assert created.metadata.annotations["samd.dev/model-digest"] == scenario.artifacts.manifest_digest()


def test_pod_for_a_tampered_signature_is_refused_with_the_webhooks_message(
    webhook: None, scenario: Scenario
) -> None:
    ready_model(scenario)
    bundle = json.loads(scenario.artifacts.signature.read_bytes())
    signature = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    signature[5] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()
    tampered = scenario.artifacts.signature.with_name("tampered.sig")
    tampered.write_text(json.dumps(bundle))
    body = scenario.example()
    body["metadata"]["name"] = "fraud-detection-tampered"
    body["spec"]["signature"] = {"uri": f"file://{tampered}"}
    scenario.apply_model(body)
    scenario.wait_condition("fraud-detection-tampered", "Verified", "False")
    eventually(
        lambda: _has_config_map(scenario, "fraud-detection-tampered-signature"), 30, "the signature ConfigMap"
    )
    pod = model_pod(scenario, "tampered", "fraud-detection-tampered")
    with pytest.raises(ApiException) as refused:
        scenario.core.create_namespaced_pod(scenario.namespace, pod)
    assert refused.value.status in (400, 403)
    message = refusal(refused.value)
    assert 'admission webhook "pods.webhook.samd.dev" denied the request' in message
    assert "does not verify" in message
    assert (
        scenario.core.list_namespaced_pod(scenario.namespace, field_selector="metadata.name=tampered").items
        == []
    )


def _has_config_map(scenario: Scenario, name: str) -> bool:
    names = {cm.metadata.name for cm in scenario.core.list_namespaced_config_map(scenario.namespace).items}
    return name in names


def test_a_deployment_with_a_bad_template_is_refused_at_the_deployment(
    webhook: None, scenario: Scenario
) -> None:
    ready_model(scenario)
    pod = model_pod(scenario, "unused")
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    deployment: Any = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "privileged-copy"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "privileged-copy"}},
            "template": {
                "metadata": {**pod["metadata"], "labels": {"app": "privileged-copy"}},
                "spec": pod["spec"],
            },
        },
    }
    del deployment["spec"]["template"]["metadata"]["name"]
    with pytest.raises(ApiException) as refused:
        scenario.apps.create_namespaced_deployment(scenario.namespace, deployment)
    message = refusal(refused.value)
    assert 'admission webhook "workloads.webhook.samd.dev" denied the request' in message
    assert "privileged" in message.lower()
    assert all(
        d.metadata.name != "privileged-copy"
        for d in scenario.apps.list_namespaced_deployment(scenario.namespace).items
    )


def test_a_pod_that_mounts_a_models_key_without_claiming_it_is_a_bypass(
    webhook: None, scenario: Scenario, cluster: Cluster
) -> None:
    ready_model(scenario)
    thief: Any = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "key-thief"},
        "spec": {
            "containers": [
                {"name": "sh", "image": "busybox", "volumeMounts": [{"name": "k", "mountPath": "/k"}]}
            ],
            "volumes": [{"name": "k", "secret": {"secretName": "fraud-detection-key"}}],
        },
    }
    with pytest.raises(ApiException) as refused:
        scenario.core.create_namespaced_pod(scenario.namespace, thief)
    assert "fraud-detection-key" in refusal(refused.value)
    # A server-side dry run is evaluated (and refused) the same way.
    dry_run = kubectl(
        cluster, "apply", "--dry-run=server", "-n", scenario.namespace, "-f", "-", stdin=json.dumps(thief)
    )
    assert dry_run.returncode != 0
    assert "denied the request" in dry_run.stderr


def test_pods_that_reach_a_models_key_without_a_secret_volume_are_refused(
    webhook: None, scenario: Scenario
) -> None:
    ready_model(scenario)
    container = {"name": "sh", "image": "busybox"}

    def pod(name: str, **spec: Any) -> Any:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [container], **spec},
        }

    # Through a volume plugin or as an image pull Secret: the matchConditions send both.
    csi = pod(
        "csi-thief",
        volumes=[
            {
                "name": "k",
                "csi": {"driver": "x.example.com", "nodePublishSecretRef": {"name": "fraud-detection-key"}},
            }
        ],
    )
    pull = pod("pull-thief", imagePullSecrets=[{"name": "fraud-detection-key"}])
    # Without naming it at all: every pod's Secret volumes are below the kubelet's directory.
    node = pod("node-reader", volumes=[{"name": "node", "hostPath": {"path": "/var/lib"}}])

    for manifest, expected in (
        (csi, "fraud-detection-key"),
        (pull, "fraud-detection-key"),
        (node, "/var/lib/kubelet"),
    ):
        with pytest.raises(ApiException) as refused:
            scenario.core.create_namespaced_pod(scenario.namespace, manifest)
        assert expected in refusal(refused.value), manifest["metadata"]["name"]
    # Another hostPath, in a pod that claims no model, is not SAMD's to refuse.
    logs = pod("log-reader", volumes=[{"name": "logs", "hostPath": {"path": "/var/log"}}])
    scenario.core.create_namespaced_pod(scenario.namespace, logs, dry_run="All")


def test_warn_mode_admits_with_a_warning(webhook: None, scenario: Scenario, cluster: Cluster) -> None:
    ready_model(scenario)
    scenario.custom.patch_cluster_custom_object(
        GROUP, VERSION, "modeltrustpolicies", scenario.policy_name, {"spec": {"mode": "warn"}}
    )
    time.sleep(2)  # the webhook's watch sees the policy change
    pod = model_pod(scenario, "warned")
    pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    pod["metadata"]["namespace"] = scenario.namespace
    applied = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(pod))
    assert applied.returncode == 0, applied.stderr
    assert "Warning:" in applied.stderr
    assert "readOnlyRootFilesystem" in applied.stderr
    assert scenario.core.read_namespaced_pod("warned", scenario.namespace)
