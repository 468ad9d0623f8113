"""VerificationCache: TTL, LRU bound, single flight, error caching and invalidation."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import pytest

from samd.errors import VerificationError
from samd.webhook.cache import VerificationCache, VerificationKey

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """A computation that counts its calls and returns a value naming the call."""

    def __init__(self, value: str = "result") -> None:
        self.calls = 0
        self.value = value
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.calls += 1
            return f"{self.value}#{self.calls}"


def key(bundle: bytes = b"bundle", policy: str = "prod", generation: int = 1) -> VerificationKey:
    return VerificationKey.of(bundle, policy, generation)


def test_the_key_is_the_bundle_digest_and_the_policy_generation() -> None:
    first = key(b"bundle", "prod", 1)

    assert first.bundle_sha256 == hashlib.sha256(b"bundle").hexdigest()
    assert first == key(b"bundle", "prod", 1)
    assert first != key(b"bundle!", "prod", 1)
    assert first != key(b"bundle", "prod", 2)
    assert first != key(b"bundle", "staging", 1)


async def test_a_hit_does_not_compute_again() -> None:
    cache: VerificationCache[str] = VerificationCache()
    compute = Counting()

    first = await cache.get_or_compute(key(), compute)
    second = await cache.get_or_compute(key(), compute)

    assert first == second == "result#1"
    assert compute.calls == 1
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


async def test_an_entry_expires_after_the_ttl() -> None:
    clock = FakeClock()
    cache: VerificationCache[str] = VerificationCache(ttl=60, clock=clock)
    compute = Counting()

    await cache.get_or_compute(key(), compute)
    clock.now += 59.9
    assert await cache.get_or_compute(key(), compute) == "result#1"
    clock.now += 0.2
    assert await cache.get_or_compute(key(), compute) == "result#2"
    assert compute.calls == 2


async def test_the_least_recently_used_entry_goes_first_when_full() -> None:
    cache: VerificationCache[str] = VerificationCache(max_entries=3)
    computations = {name: Counting(name) for name in "abcd"}

    for name in "abc":
        await cache.get_or_compute(key(name.encode()), computations[name])
    await cache.get_or_compute(key(b"a"), computations["a"])  # a is now the most recent
    await cache.get_or_compute(key(b"d"), computations["d"])  # evicts b, the least recent

    assert len(cache) == 3
    assert cache.stats.evictions == 1
    for name in "acd":
        await cache.get_or_compute(key(name.encode()), computations[name])
        assert computations[name].calls == 1, name
    await cache.get_or_compute(key(b"b"), computations["b"])
    assert computations["b"].calls == 2


async def test_fifty_concurrent_identical_misses_compute_once() -> None:
    cache: VerificationCache[str] = VerificationCache()
    release = threading.Event()
    calls = 0

    def slow() -> str:
        nonlocal calls
        calls += 1
        release.wait(5)  # runs in a thread: the event loop stays free for the 49 other callers
        return "verified"

    gets = [asyncio.create_task(cache.get_or_compute(key(), slow)) for _ in range(50)]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*gets)

    assert results == ["verified"] * 50
    assert calls == 1
    assert cache.stats.misses == 1
    assert cache.stats.coalesced == 49


async def test_different_keys_compute_separately_and_concurrently() -> None:
    cache: VerificationCache[str] = VerificationCache()
    both_running = threading.Barrier(2, timeout=5)

    def compute(name: str) -> str:
        both_running.wait()  # deadlocks (BrokenBarrierError) if the two ran one after the other
        return name

    results = await asyncio.gather(
        cache.get_or_compute(key(b"one"), lambda: compute("one")),
        cache.get_or_compute(key(b"two"), lambda: compute("two")),
    )

    assert list(results) == ["one", "two"]


async def test_a_verification_error_is_cached_briefly_then_retried() -> None:
    clock = FakeClock()
    cache: VerificationCache[str] = VerificationCache(error_ttl=10, clock=clock)
    calls = 0

    def refuses() -> str:
        nonlocal calls
        calls += 1
        raise VerificationError(f"no trusted signer (attempt {calls})")

    for _ in range(3):
        with pytest.raises(VerificationError, match="attempt 1"):
            await cache.get_or_compute(key(), refuses)
    assert calls == 1
    clock.now += 10.1
    with pytest.raises(VerificationError, match="attempt 2"):
        await cache.get_or_compute(key(), refuses)


async def test_a_cached_error_does_not_grow_its_traceback() -> None:
    cache: VerificationCache[str] = VerificationCache()

    def refuses() -> str:
        raise VerificationError("bad")

    depths = []
    for _ in range(5):
        try:
            await cache.get_or_compute(key(), refuses)
        except VerificationError as error:
            depth, frame = 0, error.__traceback__
            while frame is not None:
                depth, frame = depth + 1, frame.tb_next
            depths.append(depth)
    assert depths[1] == depths[-1]


async def test_other_errors_are_never_cached() -> None:
    cache: VerificationCache[str] = VerificationCache()
    calls = 0

    def breaks() -> str:
        nonlocal calls
        calls += 1
        raise OSError("disk on fire")

    for _ in range(3):
        with pytest.raises(OSError, match="disk on fire"):
            await cache.get_or_compute(key(), breaks)
    assert calls == 3
    assert len(cache) == 0


async def test_error_caching_can_be_turned_off() -> None:
    cache: VerificationCache[str] = VerificationCache(error_ttl=0)
    calls = 0

    def refuses() -> str:
        nonlocal calls
        calls += 1
        raise VerificationError("bad")

    for _ in range(2):
        with pytest.raises(VerificationError):
            await cache.get_or_compute(key(), refuses)
    assert calls == 2


async def test_invalidating_a_policy_drops_its_entries_only() -> None:
    cache: VerificationCache[str] = VerificationCache()
    prod_1, prod_2, staging = Counting("p1"), Counting("p2"), Counting("s")
    await cache.get_or_compute(key(b"m", "prod", 1), prod_1)
    await cache.get_or_compute(key(b"m", "prod", 2), prod_2)
    await cache.get_or_compute(key(b"m", "staging", 1), staging)

    assert cache.invalidate_policy("prod") == 2

    await cache.get_or_compute(key(b"m", "prod", 1), prod_1)
    await cache.get_or_compute(key(b"m", "staging", 1), staging)
    assert prod_1.calls == 2
    assert staging.calls == 1


async def test_a_verification_finishing_after_invalidation_is_not_stored() -> None:
    cache: VerificationCache[str] = VerificationCache()
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "verified under the old trusted keys"

    pending = asyncio.create_task(cache.get_or_compute(key(), slow))
    await asyncio.to_thread(started.wait, 5)
    cache.invalidate_policy("prod")
    release.set()

    assert await pending == "verified under the old trusted keys"  # the caller that asked still gets it
    assert len(cache) == 0  # but nobody else will


async def test_clear_drops_everything() -> None:
    cache: VerificationCache[str] = VerificationCache()
    compute = Counting()
    await cache.get_or_compute(key(b"a"), compute)
    await cache.get_or_compute(key(b"b", "other"), compute)

    cache.clear()

    assert len(cache) == 0
    await cache.get_or_compute(key(b"a"), compute)
    assert compute.calls == 3


async def test_a_cancelled_caller_does_not_cancel_the_shared_verification() -> None:
    cache: VerificationCache[str] = VerificationCache()
    release = threading.Event()
    calls = 0

    def slow() -> str:
        nonlocal calls
        calls += 1
        release.wait(5)
        return "verified"

    first = asyncio.create_task(cache.get_or_compute(key(), slow))
    second = asyncio.create_task(cache.get_or_compute(key(), slow))
    await asyncio.sleep(0.05)
    first.cancel()
    await asyncio.sleep(0)
    release.set()

    assert await second == "verified"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert calls == 1
    assert await cache.get_or_compute(key(), slow) == "verified"  # and it was stored
    assert calls == 1


@pytest.mark.parametrize(
    "settings",
    [{"max_entries": 0}, {"ttl": 0}, {"ttl": -1}, {"error_ttl": -1}],
)
def test_nonsensical_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        VerificationCache(**settings)  # type: ignore[arg-type]
