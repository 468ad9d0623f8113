"""The local control plane is real: controllers, garbage collection, admission of CRDs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import REPO, Cluster

pytestmark = pytest.mark.integration


def eventually(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


def test_kubectl_readyz_prints_ok(cluster: Cluster) -> None:
    kubectl = subprocess.run(
        [str(REPO / "hack" / "build-control-plane")], capture_output=True, text=True, check=True
    ).stdout.strip()
    result = subprocess.run(
        [f"{kubectl}/kubectl", f"--kubeconfig={cluster.kubeconfig}", "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "ok"


def test_deployment_becomes_available_on_the_fake_node(k8s: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(k8s)
    labels = {"app": "web"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx:1.27")]),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("web", namespace).status
        return (status.available_replicas or 0) == 2

    eventually(available, what="Deployment web to have 2 available replicas")
    pods = client.CoreV1Api(k8s).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    assert {pod.spec.node_name for pod in pods} == {"kwok-node-0"}
    assert {pod.status.phase for pod in pods} == {"Running"}


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(
    k8s: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"k": "v"})
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid, block_owner_deletion=True
    )
    for index in range(3):
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"dependent-{index}", owner_references=[reference])
            ),
        )
    unrelated = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="unrelated"))
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependents_gone() -> bool:
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return not any(name.startswith("dependent-") for name in names)

    eventually(dependents_gone, what="the garbage collector to delete the dependents")
    assert core.read_namespaced_config_map("unrelated", namespace).metadata.uid == unrelated.metadata.uid


WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.harness.samd.dev"},
    "spec": {
        "group": "harness.samd.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1},
                                    "max": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {"rule": "self.size <= self.max", "message": "size must not exceed max"}
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_schema_and_cel_rule_are_enforced_by_the_api_server(
    k8s: client.ApiClient, namespace: str
) -> None:
    extensions = client.ApiextensionsV1Api(k8s)
    try:
        extensions.create_custom_resource_definition(WIDGET_CRD)  # type: ignore[arg-type] # dicts are accepted
    except ApiException as error:
        if error.status != 409:
            raise

    def established() -> bool:
        crd = extensions.read_custom_resource_definition("widgets.harness.samd.dev")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    eventually(established, what="the Widget CRD to be Established")
    custom = client.CustomObjectsApi(k8s)

    def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "harness.samd.dev/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }

    def create(body: dict[str, Any]) -> object:
        return custom.create_namespaced_custom_object("harness.samd.dev", "v1", namespace, "widgets", body)

    # The API server may need a moment before it serves the new resource.
    eventually(lambda: _try(lambda: create(widget("fits", {"size": 2, "max": 3}))), what="a valid Widget")

    with pytest.raises(ApiException) as cel:
        create(widget("too-big", {"size": 5, "max": 3}))
    assert cel.value.status == 422
    assert "size must not exceed max" in str(cel.value.body)

    with pytest.raises(ApiException) as schema:
        create(widget("negative", {"size": 0, "max": 3}))
    assert schema.value.status == 422
    assert "spec.size" in str(schema.value.body)

    with pytest.raises(ApiException) as missing:
        create(widget("no-size", {"max": 3}))
    assert missing.value.status == 422
    assert "Required value" in str(missing.value.body)


def _try(action: Callable[[], object]) -> bool:
    try:
        action()
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def test_namespace_deletion_completes(k8s: client.ApiClient) -> None:
    core = client.CoreV1Api(k8s)
    name = f"samd-doomed-{time.monotonic_ns() % 100000}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content")))
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    eventually(gone, what=f"namespace {name} to be deleted (namespace controller)")
