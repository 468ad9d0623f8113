"""Leader election rules, against an in-memory Lease store with the API server's optimistic concurrency."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from lightkube.resources.coordination_v1 import Lease

from samd.operator.leader import ElectionConfig, LeaderElector

pytestmark = pytest.mark.unit


class LeaseStore:
    """The API server's part that matters here: 404, 409 on create, 409 on a stale resourceVersion."""

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.version = 0

    @staticmethod
    def _error(code: int) -> ApiError:
        return ApiError(status=Status(code=code, message=f"HTTP {code}"))

    async def get(self, _kind: Any, _name: str, *, namespace: str) -> Lease:
        if self.lease is None:
            raise self._error(404)
        return copy.deepcopy(self.lease)

    def _store(self, lease: Lease) -> None:
        self.version += 1
        assert lease.metadata is not None
        lease.metadata.resourceVersion = str(self.version)
        self.lease = copy.deepcopy(lease)

    async def create(self, lease: Lease) -> None:
        if self.lease is not None:
            raise self._error(409)
        self._store(lease)

    async def replace(self, lease: Lease) -> None:
        assert self.lease is not None
        assert self.lease.metadata is not None
        assert lease.metadata is not None
        if lease.metadata.resourceVersion != self.lease.metadata.resourceVersion:
            raise self._error(409)
        self._store(lease)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("samd.operator.leader.time.monotonic", fake)
    return fake


def elector(store: LeaseStore, identity: str) -> LeaderElector:
    config = ElectionConfig(identity=identity, lease_duration=15, renew_deadline=10, retry_period=2)
    return LeaderElector(store, config)  # type: ignore[arg-type]


def holder(store: LeaseStore) -> str | None:
    assert store.lease is not None
    assert store.lease.spec is not None
    return store.lease.spec.holderIdentity


async def test_a_standby_waits_out_a_live_leader_and_takes_over_an_expired_one(clock: Clock) -> None:
    store = LeaseStore()
    a, b = elector(store, "a"), elector(store, "b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    for _ in range(10):  # a renews every 2 s: b never takes over however long that lasts
        clock.now += 2
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
    # a dies. b measures from the last change it saw, on its own clock.
    clock.now += 14
    assert not await b.try_acquire_or_renew()
    clock.now += 1
    assert await b.try_acquire_or_renew()
    assert holder(store) == "b"
    assert store.lease is not None
    assert store.lease.spec is not None
    assert store.lease.spec.leaseTransitions == 1
    # The old leader, back from a pause, finds the Lease taken and does not lead.
    assert not await a.try_acquire_or_renew()


async def test_a_restarted_replica_takes_its_own_lease_back_at_once(clock: Clock) -> None:
    store = LeaseStore()
    assert await elector(store, "pod-a").try_acquire_or_renew()
    clock.now += 1
    assert await elector(store, "pod-a").try_acquire_or_renew()  # a new process, the same pod
    assert store.lease is not None
    assert store.lease.spec is not None
    assert store.lease.spec.leaseTransitions == 0


async def test_a_released_lease_is_taken_at_the_next_attempt(clock: Clock) -> None:
    store = LeaseStore()
    a, b = elector(store, "a"), elector(store, "b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert holder(store) is None
    assert await b.try_acquire_or_renew()


async def test_two_standbys_racing_for_an_expired_lease_cannot_both_win(clock: Clock) -> None:
    store = LeaseStore()
    assert await elector(store, "a").try_acquire_or_renew()
    b, c = elector(store, "b"), elector(store, "c")
    assert not await b.try_acquire_or_renew()
    assert not await c.try_acquire_or_renew()
    clock.now += 16
    stale = await store.get(Lease, "samd-operator", namespace="samd-system")
    assert await b.try_acquire_or_renew()

    async def read_stale(*_: Any, **__: Any) -> Lease:
        return copy.deepcopy(stale)  # c read the Lease before b wrote it

    store_get = store.get
    store.get = read_stale  # type: ignore[method-assign]
    assert not await c.try_acquire_or_renew()
    store.get = store_get  # type: ignore[method-assign]
    assert holder(store) == "b"


def test_the_leader_must_give_up_before_a_standby_may_take_over() -> None:
    with pytest.raises(ValueError, match="RENEW_DEADLINE < SAMD_LEADER_LEASE_DURATION"):
        ElectionConfig(lease_duration=10, renew_deadline=10, retry_period=2)


def test_timings_are_read_as_seconds_or_durations() -> None:
    config = ElectionConfig.from_env(
        {
            "SAMD_LEADER_LEASE_DURATION": "1m",
            "SAMD_LEADER_RENEW_DEADLINE": "20",
            "SAMD_LEADER_RETRY_PERIOD": "0.5",
        }
    )
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (60, 20, 0.5)
    assert config.takeover_bound == 61
    with pytest.raises(ValueError, match="SAMD_LEADER_RETRY_PERIOD='soon'"):
        ElectionConfig.from_env({"SAMD_LEADER_RETRY_PERIOD": "soon"})
    with pytest.raises(ValueError, match="SAMD_LEADER_ELECTION='maybe'"):
        ElectionConfig.from_env({"SAMD_LEADER_ELECTION": "maybe"})
