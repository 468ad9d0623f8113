"""The Helm chart on the real node: the operator and the webhook run from SAMD's image, and recover.

The pods reach the API server through the `kubernetes` Service (the control plane advertises the
node's bridge address), and the API server reaches the webhook through its Service.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import REPO, scratch_namespace
from tests.support.node import RealNode, helm, kubectl
from tests.support.scenario import eventually

pytestmark = pytest.mark.real

RELEASE = "samd"
DEPLOYMENTS = ("samd-operator", "samd-webhook")


@pytest.fixture
def release(node: RealNode, k8s: client.ApiClient) -> Iterator[str]:
    """The chart installed (and waited for) in a namespace of its own; uninstalled afterwards."""
    endpoints = client.DiscoveryV1Api(k8s).list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=kubernetes"
    )
    addresses = {a for s in endpoints.items for e in s.endpoints or [] for a in e.addresses}
    assert addresses == {node.ip}, (
        f"the API server advertises {addresses}, which pods cannot reach: restart the local control "
        f"plane with SAMD_CLUSTER_ADVERTISE_ADDRESS={node.ip}"
    )
    with scratch_namespace(k8s, prefix="samd-chart") as namespace:
        try:
            helm(
                "install",
                RELEASE,
                str(REPO / "charts" / "samd"),
                "-n",
                namespace,
                # The tier installed the CRDs itself: the release takes them over (docs/install.md).
                "--take-ownership",
                "--wait",
                "--timeout",
                "180s",
            )
            yield namespace
        finally:  # removes the webhook configuration too
            helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)


def available(apps: client.AppsV1Api, namespace: str) -> bool:
    for name in DEPLOYMENTS:
        status = apps.read_namespaced_deployment(name, namespace).status
        if (status.available_replicas or 0) < (status.replicas or 1) or (status.updated_replicas or 0) < (
            status.replicas or 1
        ):
            return False
    return True


def ready_pods(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, client.V1Pod]:
    """The Deployment's pods that run with every container ready (not those being deleted)."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/name={name}").items
    return {
        str(p.metadata.name): p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and p.status.pod_ip
        and p.status.container_statuses
        and all(c.ready for c in p.status.container_statuses)
    }


def test_the_chart_runs_the_operator_and_webhook_from_the_image_and_they_survive_deletion(
    release: str, node: RealNode, k8s: client.ApiClient
) -> None:
    core, apps = client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    assert available(apps, release)
    before = {name: ready_pods(core, release, name) for name in DEPLOYMENTS}
    for pods in before.values():
        assert pods
        for pod in pods.values():
            assert pod.spec.node_name == node.name
            assert all(c.ready for c in pod.status.container_statuses)
    # The operator replicas elect one leader, which talks to the API server (kopf logged in and started).
    operator_pod = wait_for_leader(core, release, exclude=None)
    # The API server calls the webhook pods over TLS through their Service.
    assert_the_api_server_calls_the_webhook(core, release)

    kubectl("delete", "pod", "-n", release, operator_pod, next(iter(before["samd-webhook"])), "--wait=false")
    eventually(
        lambda: (
            available(apps, release)
            and all(set(ready_pods(core, release, name)) - set(before[name]) for name in DEPLOYMENTS)
        ),
        120,
        "new operator and webhook pods to be ready",
    )
    # The standby (or the new pod) took over from the deleted leader.
    wait_for_leader(core, release, exclude=operator_pod)
    assert_the_api_server_calls_the_webhook(core, release)


def wait_for_leader(core: client.CoreV1Api, namespace: str, *, exclude: str | None) -> str:
    """The operator pod (other than `exclude`) whose kopf started: the one holding the Lease."""
    started: list[str] = []

    def led() -> bool:
        started[:] = [
            pod
            for pod in ready_pods(core, namespace, "samd-operator")
            if pod != exclude and "Activity 'configure' succeeded" in kubectl("logs", "-n", namespace, pod)
        ]
        return len(started) == 1

    # Lease duration plus two retry periods (docs/operator.md), with room for the pod to start.
    eventually(led, 60, "one operator replica to lead and start")
    return started[0]


def decisions(namespace: str, pods: list[str]) -> float:
    """Admission decisions the webhook pods counted (their /metrics, read through the API server's proxy)."""
    total = 0.0
    for pod in pods:
        metrics = kubectl(
            "get", "--raw", f"/api/v1/namespaces/{namespace}/pods/https:{pod}:8443/proxy/metrics"
        )
        total += sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("samd_webhook_admission_decisions_total{")
        )
    return total


def assert_the_api_server_calls_the_webhook(core: client.CoreV1Api, namespace: str) -> None:
    """A SecureModel created (dry run) in another namespace is sent to the webhook pods, which decide.

    (SecureModels are sent from every namespace: one is what makes a namespace protected. `default`
    has no policy, so the decision may be either way; what is counted is that one was made.)
    """
    webhooks = list(ready_pods(core, namespace, "samd-webhook"))
    before = decisions(namespace, webhooks)
    model = yaml.safe_load((REPO / "examples" / "fraud-detection" / "securemodel.yaml").read_text())
    model["metadata"] = {"name": "admission-probe", "namespace": "default"}
    custom = client.CustomObjectsApi(core.api_client)
    with contextlib.suppress(ApiException):  # refused or allowed: both are decisions
        custom.create_namespaced_custom_object(
            "samd.dev", "v1alpha1", "default", "securemodels", model, dry_run="All"
        )
    eventually(lambda: decisions(namespace, webhooks) > before, 10, "the webhook to count the admission")
