"""The operator's API wrapper skips re-applying unchanged objects, but never keeps a hand edit in place."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import httpx2
import kopf
import pytest

from samd.operator.config import OperatorConfig
from samd.operator.kube import AppliedCache, Kube
from samd.operator.reconcile import Reconciler
from samd.operator.steps.owned import Change
from tests.support.memory_kube import Stored

pytestmark = pytest.mark.unit


class FakeClient:
    """Records server-side applies; each one gets a new resourceVersion, as the API server gives."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None  # when set, applies wait for it
        self.failure: Exception | None = None

    async def patch(self, resource: Any, name: str, body: dict[str, Any], **_: Any) -> Stored:
        if self.failure is not None:
            raise self.failure
        if self.gate is not None:
            await self.gate.wait()
        self.applied.append(body)
        version = str(len(self.applied))
        return Stored({**body, "metadata": {**body["metadata"], "resourceVersion": version, "generation": 1}})


def role(verbs: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "samd-m-deployer", "namespace": "ns"},
        "rules": [{"apiGroups": ["samd.dev"], "resources": ["securemodels"], "verbs": verbs}],
    }


def kube_with(client: FakeClient, max_age: datetime.timedelta = datetime.timedelta(hours=1)) -> Kube:
    return Kube(client, AppliedCache(max_age))  # type: ignore[arg-type] # a stand-in for lightkube's client


async def test_an_unchanged_manifest_is_applied_once_and_a_changed_one_again() -> None:
    client = FakeClient()
    kube = kube_with(client)
    first = await kube.apply(role(["get"]))
    assert first is not None
    assert first["metadata"]["resourceVersion"] == "1"
    assert await kube.apply(role(["get"])) is None
    assert len(client.applied) == 1
    await kube.apply(role(["get", "list"]))
    assert [body["rules"][0]["verbs"] for body in client.applied] == [["get"], ["get", "list"]]


async def test_after_forget_the_same_manifest_is_applied_again() -> None:
    client = FakeClient()
    kube = kube_with(client)
    await kube.apply(role(["get"]))
    kube.forget("Role", "ns", "samd-m-deployer")
    assert await kube.apply(role(["get"])) is not None
    assert len(client.applied) == 2


async def test_a_change_seen_while_the_apply_is_in_flight_is_not_forgotten() -> None:
    client = FakeClient()
    client.gate = asyncio.Event()
    kube = kube_with(client)
    apply = asyncio.create_task(kube.apply(role(["get"])))
    await asyncio.sleep(0)  # the request is on its way
    kube.forget("Role", "ns", "samd-m-deployer")  # someone edited it meanwhile
    client.gate.set()
    await apply
    assert kube.last_applied("Role", "ns", "samd-m-deployer") is None
    assert await kube.apply(role(["get"])) is not None
    assert len(client.applied) == 2


async def test_old_records_are_not_trusted() -> None:
    client = FakeClient()
    kube = kube_with(client, max_age=datetime.timedelta(0))
    await kube.apply(role(["get"]))
    await kube.apply(role(["get"]))
    assert len(client.applied) == 2


async def test_a_failed_apply_leaves_nothing_remembered() -> None:
    client = FakeClient()
    kube = kube_with(client)
    await kube.apply(role(["get"]))
    client.failure = httpx2.ReadTimeout("the API server is busy")
    with pytest.raises(kopf.TemporaryError) as raised:
        await kube.apply(role(["get", "list"]))
    assert "did not answer" in str(raised.value)
    assert raised.value.delay is not None
    assert raised.value.delay < 60  # kopf's default for an unexpected error is a minute
    assert kube.last_applied("Role", "ns", "samd-m-deployer") is None


async def test_the_echo_of_our_own_apply_needs_no_reconcile_but_a_hand_edit_does() -> None:
    client = FakeClient()
    kube = kube_with(client)
    reconciler = Reconciler(kube=kube, config=OperatorConfig())
    stored = await kube.apply(role(["get"]))
    assert stored is not None
    assert reconciler.changed_by_others(stored) is Change.NONE

    edited = {**stored, "metadata": {**stored["metadata"], "resourceVersion": "99"}}
    edited["rules"] = [{**edited["rules"][0], "verbs": ["get", "delete"]}]
    assert reconciler.changed_by_others(edited) is Change.DRIFT
    # ... and the next reconcile applies the Role again, undoing the edit.
    assert await kube.apply(role(["get"])) is not None
    assert len(client.applied) == 2
