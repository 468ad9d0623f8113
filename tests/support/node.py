"""The real node (`hack/local-node`) and SAMD's image (`hack/build-image`) for the `real` tier."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import REPO, local_kubeconfig

BUILD_IMAGE = REPO / "hack" / "build-image"
LOCAL_NODE = REPO / "hack" / "local-node"
REAL_NODE_LABEL = ("samd.dev/node", "real")


@dataclass(frozen=True)
class RealNode:
    name: str
    ip: str


def _run(argv: list[str], what: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(argv)}):\n{result.stdout}{result.stderr}")
    return result.stdout


@contextmanager
def real_node(api: client.ApiClient) -> Iterator[RealNode]:
    """Build the image (cached), join the node unless it is up; take it down only if we started it."""
    _run([str(BUILD_IMAGE), "--print-path"], "building SAMD's image (hack/build-image)")
    already_up = subprocess.run([str(LOCAL_NODE), "status"], capture_output=True, check=False).returncode == 0
    # `up` also imports the image when the node already runs (a rebuilt image is imported again).
    _run([str(LOCAL_NODE), "up"], "joining the real node (hack/local-node up)")
    try:
        key, value = REAL_NODE_LABEL
        nodes = client.CoreV1Api(api).list_node(label_selector=f"{key}={value}").items
        assert len(nodes) == 1, f"expected one real node, found {[n.metadata.name for n in nodes]}"
        address = next(a.address for a in nodes[0].status.addresses if a.type == "InternalIP")
        yield RealNode(name=str(nodes[0].metadata.name), ip=str(address))
    finally:
        if not already_up:
            subprocess.run([str(LOCAL_NODE), "down"], capture_output=True, check=False)


def control_plane_tool(name: str) -> str:
    """A binary from the control plane's build cache (kubectl, helm)."""
    folder = _run([str(REPO / "hack" / "build-control-plane")], "locating the control plane's binaries")
    return f"{folder.strip().splitlines()[-1]}/{name}"


def kubectl(*args: str) -> str:
    """Run kubectl against the local control plane."""
    return _run([control_plane_tool("kubectl"), f"--kubeconfig={local_kubeconfig()}", *args], "kubectl")


def helm(*args: str, check: bool = True) -> str:
    """Run helm against the local control plane."""
    argv = [control_plane_tool("helm"), f"--kubeconfig={local_kubeconfig()}", *args]
    if check:
        return _run(argv, "helm")
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def wait_pod(
    core: client.CoreV1Api, namespace: str, name: str, check: Any, *, timeout: float = 90.0, what: str = ""
) -> client.V1Pod:
    """Poll a pod until ``check(pod)`` is true; fail with its status."""
    deadline = time.monotonic() + timeout
    pod = None
    while time.monotonic() < deadline:
        try:
            pod = core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
        if pod is not None and check(pod):
            return pod
        time.sleep(0.3)
    status = pod.status.to_dict() if pod is not None else None
    raise AssertionError(
        f"pod {namespace}/{name}: timed out waiting for {what or 'condition'}; status: {status}"
    )


def container_state(pod: client.V1Pod, name: str, *, init: bool = False) -> client.V1ContainerState | None:
    statuses = (pod.status.init_container_statuses if init else pod.status.container_statuses) or []
    for status in statuses:
        if status.name == name:
            return status.state
    return None


def last_terminated(
    pod: client.V1Pod, name: str, *, init: bool = False
) -> client.V1ContainerStateTerminated | None:
    """The container's current or last termination."""
    statuses = (pod.status.init_container_statuses if init else pod.status.container_statuses) or []
    for status in statuses:
        if status.name == name:
            if status.state and status.state.terminated:
                return status.state.terminated
            if status.last_state and status.last_state.terminated:
                return status.last_state.terminated
    return None


def exec_python(namespace: str, pod: str, container: str, code: str) -> Any:
    """Run Python inside a running container (`kubectl exec`); the code prints one JSON value."""
    output = kubectl("exec", "-n", namespace, pod, "-c", container, "--", "python", "-c", code)
    return json.loads(output.strip().splitlines()[-1])
