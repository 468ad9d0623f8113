"""Creating an owned object with a POST, then applying it: the operator's later applies still own
every field, so a field they stop sending is removed (server-side apply's pruning)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiClient

from samd.operator.kube import FIELD_MANAGER, connect
from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration


def _config_map(namespace: str, labels: dict[str, str], data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "created-first", "namespace": namespace, "labels": labels},
        "data": data,
    }


async def test_an_apply_after_a_create_removes_what_it_no_longer_sends(
    cluster: Cluster, k8s: ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    async with connect() as kube:
        created = await kube.create_owned(
            _config_map(namespace, {"keep": "yes", "drop": "yes"}, {"keep": "1", "drop": "2"})
        )
        assert created is not None
        await kube.apply(_config_map(namespace, {"keep": "yes"}, {"keep": "1"}))

    stored = client.CoreV1Api(k8s).read_namespaced_config_map("created-first", namespace)
    assert stored.metadata.labels == {"keep": "yes"}
    assert stored.data == {"keep": "1"}
    managers = {(entry.manager, entry.operation) for entry in stored.metadata.managed_fields}
    assert managers == {(FIELD_MANAGER, "Apply")}


async def test_a_create_of_a_name_someone_else_holds_reports_it_and_changes_nothing(
    cluster: Cluster, k8s: ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = client.CoreV1Api(k8s)
    theirs: Any = {
        "metadata": {"name": "created-first", "labels": {"team": "other"}},
        "data": {"theirs": "1"},
    }
    core.create_namespaced_config_map(namespace, theirs)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    async with connect() as kube:
        assert await kube.create_owned(_config_map(namespace, {"keep": "yes"}, {"keep": "1"})) is None
        assert kube.last_applied("ConfigMap", namespace, "created-first") is None

    stored = core.read_namespaced_config_map("created-first", namespace)
    assert (stored.metadata.labels, stored.data) == ({"team": "other"}, {"theirs": "1"})
    assert FIELD_MANAGER not in {entry.manager for entry in stored.metadata.managed_fields}
