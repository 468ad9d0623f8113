"""A bounded, expiring cache of signature verifications with single-flight misses.

The admission path must not verify the same bundle again for every pod of a Deployment: a
verification costs milliseconds of CPU, a cached answer microseconds. Entries are keyed by the
bundle's SHA-256 and the policy (name and generation) it was verified under, so a changed policy
is a different key; `invalidate_policy` drops a policy's entries at once when it changes or goes,
and an entry also expires after a TTL so that a trusted key removed elsewhere stops being trusted.

Concurrent identical misses run the computation ONCE: the first caller starts it as a task that
runs the CPU work in a thread (`asyncio.to_thread`), and later callers await the same task.

Errors: a `VerificationError` (the bundle does not verify under this policy generation: the same
input always gives the same answer) is cached for a short time (`error_ttl`, 10 s by default) so
that a stream of pods with a bad signature cannot make the webhook verify it again for each one;
every other exception is never cached, and the next caller tries again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from samd.errors import VerificationError

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_TTL_SECONDS = 300.0
DEFAULT_ERROR_TTL_SECONDS = 10.0


@dataclass(frozen=True)
class VerificationKey:
    """What a verification depends on: the exact bundle bytes and the exact policy generation."""

    bundle_sha256: str
    policy_name: str
    policy_generation: int

    @classmethod
    def of(cls, bundle: bytes, policy_name: str, policy_generation: int) -> VerificationKey:
        return cls(hashlib.sha256(bundle).hexdigest(), policy_name, policy_generation)


@dataclass(frozen=True)
class CacheStats:
    hits: int  # answered from a stored entry (including a cached VerificationError)
    misses: int  # started a computation
    coalesced: int  # waited for a computation another caller had started (no work done)
    evictions: int  # entries dropped because the cache was full
    entries: int


@dataclass
class _Entry(Generic[T]):
    expires: float
    value: T | None = None
    error: BaseException | None = None


class VerificationCache(Generic[T]):
    """LRU (at most `max_entries`) with a TTL; single-flight `get_or_compute`.

    `clock` returns seconds (monotonic); tests pass a fake one. Use from one event loop.
    """

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl: float = DEFAULT_TTL_SECONDS,
        error_ttl: float = DEFAULT_ERROR_TTL_SECONDS,
        cacheable_errors: tuple[type[BaseException], ...] = (VerificationError,),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if ttl <= 0 or error_ttl < 0:
            raise ValueError("ttl must be positive and error_ttl not negative")
        self.max_entries = max_entries
        self.ttl = ttl
        self.error_ttl = error_ttl
        self._cacheable_errors = cacheable_errors
        self._clock = clock
        self._entries: OrderedDict[VerificationKey, _Entry[T]] = OrderedDict()
        self._inflight: dict[VerificationKey, asyncio.Task[T]] = {}
        # Bumped by invalidate_policy so that a computation started before the invalidation
        # does not store its (possibly stale) answer after it.
        self._epochs: dict[str, int] = {}
        self._hits = self._misses = self._coalesced = self._evictions = 0

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._coalesced, self._evictions, len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_compute(self, key: VerificationKey, compute: Callable[[], T]) -> T:
        """The cached answer for `key`, or `compute()` run once in a thread (shared by concurrent callers).

        Raises what `compute` raised. A caller that is cancelled while waiting does not cancel the
        computation the other callers wait for.
        """
        entry = self._lookup(key)
        if entry is not None:
            self._hits += 1
            if entry.error is not None:
                raise entry.error.with_traceback(None)
            return entry.value  # type: ignore[return-value]  # a value entry holds a T
        task = self._inflight.get(key)
        if task is not None:
            self._coalesced += 1
        else:
            self._misses += 1
            task = asyncio.create_task(self._compute(key, compute))
            self._inflight[key] = task
        return await asyncio.shield(task)

    def invalidate_policy(self, policy_name: str) -> int:
        """Drop every entry verified under `policy_name` (any generation); returns how many."""
        self._epochs[policy_name] = self._epochs.get(policy_name, 0) + 1
        stale = [key for key in self._entries if key.policy_name == policy_name]
        for key in stale:
            del self._entries[key]
        return len(stale)

    def clear(self) -> None:
        """Drop everything (for example when a trusted key changed and the policy name is not known)."""
        for name in {key.policy_name for key in (*self._entries, *self._inflight)}:
            self._epochs[name] = self._epochs.get(name, 0) + 1
        self._entries.clear()

    def _lookup(self, key: VerificationKey) -> _Entry[T] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    async def _compute(self, key: VerificationKey, compute: Callable[[], T]) -> T:
        epoch = self._epochs.get(key.policy_name, 0)
        try:
            value = await asyncio.to_thread(compute)
        except self._cacheable_errors as error:
            if self.error_ttl > 0 and self._epochs.get(key.policy_name, 0) == epoch:
                self._store(key, _Entry(expires=self._clock() + self.error_ttl, error=error))
            raise
        finally:
            self._inflight.pop(key, None)
        if self._epochs.get(key.policy_name, 0) == epoch:
            self._store(key, _Entry(expires=self._clock() + self.ttl, value=value))
        return value

    def _store(self, key: VerificationKey, entry: _Entry[T]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1
