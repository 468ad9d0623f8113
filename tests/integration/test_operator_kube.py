"""The operator's API wrapper against the real API server, through its aiohttp transport: lists come
a page at a time and without managedFields, and a watch from a list's version sees what follows."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest
from kubernetes import client
from kubernetes.client import ApiClient

from samd.operator import kube as wrapper
from samd.operator.kube import connect
from samd.operator.transport import AiohttpTransport
from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration

LABELS = {"samd.dev/test": "paged"}


def _config_map(name: str) -> Any:  # the client takes a dict for its model
    return {"metadata": {"name": name, "labels": LABELS}, "data": {"model": "x" * 100}}


@pytest.fixture
def requests_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of every request the wrapper sends."""
    sent: list[str] = []
    send = AiohttpTransport.handle_async_request

    async def counting(self: AiohttpTransport, request: httpx2.Request) -> httpx2.Response:
        sent.append(str(request.url))
        return await send(self, request)

    monkeypatch.setattr(AiohttpTransport, "handle_async_request", counting)
    return sent


async def test_a_list_is_read_a_page_at_a_time_without_managed_fields(
    cluster: Cluster,
    k8s: ApiClient,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    requests_sent: list[str],
) -> None:
    core = client.CoreV1Api(k8s)
    names = {f"paged-{index}" for index in range(5)}
    for name in names:
        core.create_namespaced_config_map(namespace, _config_map(name))
    monkeypatch.setattr(wrapper, "LIST_PAGE", 2)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))

    async with connect() as kube:
        here = await kube.list_in("v1", "ConfigMap", namespace, LABELS)
        everywhere, version = await kube.list_everywhere("v1", "ConfigMap", LABELS)

    assert {item["metadata"]["name"] for item in here} == names
    assert {item["metadata"]["name"] for item in everywhere} >= names
    for item in [*here, *everywhere]:
        assert (item["apiVersion"], item["kind"]) == ("v1", "ConfigMap")
        assert "managedFields" not in item["metadata"]
        assert item["data"] == {"model": "x" * 100}
    assert version is not None
    in_namespace = [url for url in requests_sent if f"/namespaces/{namespace}/configmaps" in url]
    assert len(in_namespace) == 3  # pages of 2, 2 and 1
    assert all("limit=2" in url for url in in_namespace)


async def test_a_watch_from_a_list_sees_the_changes_that_follow(
    cluster: Cluster, k8s: ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    core = client.CoreV1Api(k8s)
    async with connect() as kube:
        _, version = await kube.list_everywhere("v1", "ConfigMap", LABELS)

        async def first_change() -> tuple[str, str]:
            async for change, obj in kube.watch_everywhere("v1", "ConfigMap", LABELS, version):
                if obj["metadata"]["namespace"] == namespace:
                    return change, obj["metadata"]["name"]
            raise AssertionError("the watch ended")

        watching = asyncio.create_task(first_change())
        await asyncio.to_thread(core.create_namespaced_config_map, namespace, _config_map("after-list"))
        assert await asyncio.wait_for(watching, timeout=30) == ("ADDED", "after-list")
