"""The Kubernetes cluster the integration and e2e tiers run against.

Integration tests always use the local control plane (`hack/local-cluster`),
started once per session and stopped at the end if this session started it;
they never touch a cluster named by the user's KUBECONFIG. The e2e tier uses
the cluster named by KUBECONFIG when it is set (for example kind), else the
local control plane.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = REPO / "hack" / "local-cluster"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    local: bool

    def api_client(self) -> client.ApiClient:
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        return api


def local_kubeconfig() -> Path:
    return Path(os.environ.get("SAMD_LOCAL_DIR", REPO / ".local")) / "kubeconfig"


def _run_local_cluster(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOCAL_CLUSTER), command], capture_output=True, text=True, check=False)


@contextmanager
def local_control_plane() -> Iterator[Cluster]:
    """Start the local control plane unless it already runs; stop it afterwards only if we started it."""
    already_running = _run_local_cluster("status").returncode == 0
    if not already_running:
        started = _run_local_cluster("up")
        if started.returncode != 0:
            raise RuntimeError(
                "could not start the local control plane (hack/local-cluster up):\n"
                + started.stdout
                + started.stderr
            )
    try:
        yield Cluster(kubeconfig=local_kubeconfig(), local=True)
    finally:
        if not already_running:
            _run_local_cluster("down")


@contextmanager
def e2e_cluster() -> Iterator[Cluster]:
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        yield Cluster(kubeconfig=Path(kubeconfig), local=False)
        return
    with local_control_plane() as cluster:
        yield cluster


@contextmanager
def scratch_namespace(api: client.ApiClient, prefix: str = "samd-test") -> Iterator[str]:
    """A namespace of the test's own, deleted (without waiting) afterwards."""
    core = client.CoreV1Api(api)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"samd.dev/test": "true"}))
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)
