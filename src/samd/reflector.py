"""List, then watch: one kind of Kubernetes object followed into an in-memory index (the informer
pattern), shared by the operator's owned-object index and the admission webhook's watched state.

A `Reflector` lists the kind, hands the whole list to `on_listed`, sets `listed`, then watches from
the list's resourceVersion and hands each event to `on_event`. When the watch ends it lists again:
at once after 410 Gone (the version is too old: routine) and after `resync_period` (a watch may die
without a word, which would otherwise leave the index stale for good); after a backoff for any other
failure, so that a broken API server is not hammered. The index keeps serving what it knows in the
meantime. What an event or a list means (parsing, indexing, re-queueing) stays with the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from lightkube import ApiError

log = logging.getLogger(__name__)

Listing = tuple[list[dict[str, Any]], str | None]  # the objects, and the list's resourceVersion
ListObjects = Callable[[], Awaitable[Listing]]
WatchFrom = Callable[[str | None], AsyncIterator[tuple[str, dict[str, Any]]]]  # (ADDED|MODIFIED|DELETED, obj)


def exponential_backoff(initial: float = 0.5, maximum: float = 30.0) -> Callable[[int], float]:
    """Seconds to wait after the `failures`-th failure in a row: doubling from `initial`, capped."""
    return lambda failures: min(maximum, initial * 2 ** (failures - 1))


def stepped_backoff(delays: tuple[float, ...]) -> Callable[[int], float]:
    """Seconds to wait after the `failures`-th failure in a row: the n-th delay, then the last one."""
    return lambda failures: delays[min(failures, len(delays)) - 1]


def is_gone(error: BaseException) -> bool:
    """A 410 Gone from the API server (also when wrapped): the watch's version is too old."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ApiError) and seen.status.code == 410:
            return True
        seen = seen.__cause__
    return False


class Reflector:
    """Follows one kind: list, watch from the list's version, list again when the watch ends.

    `lists` counts the lists made (1 after the first), `failures` the failures since the last good
    list (they set the backoff), `resource_version` is the last version seen, and `listed` is set
    once the first list has been handed over.
    """

    def __init__(
        self,
        name: str,
        *,
        list_objects: ListObjects,
        watch_from: WatchFrom,
        on_listed: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        resync_period: float | None = None,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self.name = name
        self._list_objects = list_objects
        self._watch_from = watch_from
        self._on_listed = on_listed
        self._on_event = on_event
        self.resync_period = resync_period
        self._backoff = backoff or exponential_backoff()
        self.lists = 0
        self.failures = 0
        self.resource_version: str | None = None
        self.listed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run in the background (in the running event loop) until `stop`."""
        self._task = asyncio.create_task(self.run(), name=f"reflector {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        """List and watch until cancelled; no failure ends it."""
        while True:
            try:
                await self._list()
                self.failures = 0
                async with asyncio.timeout(self.resync_period):
                    await self._watch()
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                log.debug("resyncing %s", self.name, extra={"kind": self.name})
            except Exception as error:  # every failure leads to a fresh list: never a silent gap
                if is_gone(error):
                    log.info(
                        "watch of %s expired (410 Gone): listing again", self.name, extra={"kind": self.name}
                    )
                    continue
                self.failures += 1
                delay = self._backoff(self.failures)
                log.warning(
                    "watch of %s failed (%s); listing again in %.1f s",
                    self.name,
                    error,
                    delay,
                    extra={"kind": self.name, "failures": self.failures},
                )
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        objects, version = await self._list_objects()
        self._on_listed(objects)
        self.resource_version = version
        self.lists += 1
        self.listed.set()
        log.info(
            "listed %d %s objects at resourceVersion %s",
            len(objects),
            self.name,
            version,
            extra={"kind": self.name, "objects": len(objects), "lists": self.lists},
        )

    async def _watch(self) -> None:
        async for change, obj in self._watch_from(self.resource_version):
            self._on_event(change, obj)
            metadata = obj.get("metadata")
            version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
            if version:
                self.resource_version = str(version)
