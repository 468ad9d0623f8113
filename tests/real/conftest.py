"""The `real` tier: pods that really run on a real node (hack/local-node) from SAMD's own image.

Session fixtures: the image (built or taken from the cache), the node joined once, an S3-compatible
server on the node's address (pods reach it under the model's NetworkPolicy), and an operator whose
storage egress names that server. This tier runs in its own pytest session (`make test` does): its
operator and the integration tier's must not run against one cluster at once.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient

from tests.support.cluster import Cluster, local_control_plane
from tests.support.moto_server import MotoServer, run_moto_server
from tests.support.node import RealNode, real_node
from tests.support.operator import OperatorProcess
from tests.support.scenario import operator_fixture


@pytest.hookimpl(trylast=True)  # after `-m` has deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    markers = {
        marker for item in items for marker in ("integration", "real") if item.get_closest_marker(marker)
    }
    if markers == {"integration", "real"}:
        raise pytest.UsageError(
            "the real and integration tiers each run an operator: run them in separate sessions "
            '(pytest -m "unit or integration"; pytest -m real), as `make test` does'
        )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The local control plane, advertising the node's bridge address to pods (the chart's pods call it).

    A control plane that is already running keeps its address; the chart test says what to do then.
    """
    subnet = ipaddress.IPv4Network(os.environ.get("SAMD_NODE_SUBNET", "10.244.0.0/24"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv(
            "SAMD_CLUSTER_ADVERTISE_ADDRESS",
            os.environ.get("SAMD_CLUSTER_ADVERTISE_ADDRESS", str(next(subnet.hosts()))),
        )
        with local_control_plane() as running:
            yield running


@pytest.fixture(scope="session")
def node(cluster: Cluster, k8s: ApiClient) -> Iterator[RealNode]:
    """The real node, joined once per session (and removed at the end if this session joined it)."""
    del cluster
    with real_node(k8s) as running:
        yield running


@pytest.fixture(scope="session")
def node_s3(node: RealNode) -> Iterator[MotoServer]:
    """An S3-compatible server on the node's address, which pods reach through the bridge."""
    with run_moto_server(host=node.ip) as server:
        yield server


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster,
    k8s: ApiClient,
    node_s3: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator, allowing model pods egress to the test's S3 server only (SAMD_STORAGE_EGRESS)."""
    endpoint = urllib.parse.urlsplit(node_s3.endpoint)
    egress = f"{endpoint.hostname}/32:{endpoint.port}"
    yield from operator_fixture(cluster, k8s, tmp_path_factory, SAMD_STORAGE_EGRESS=egress)
