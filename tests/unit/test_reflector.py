"""The list+watch shared by the operator's owned-object index and the webhook's watched state:
it watches from the list's version, lists again at once after 410 Gone, after a backoff after any
other failure, and after each resync period; `listed` is set only once a list was handed over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from samd.reflector import Listing, Reflector, exponential_backoff, is_gone, stepped_backoff

pytestmark = pytest.mark.unit


def obj(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}}


def gone() -> ApiError:
    return ApiError(status=Status(code=410, reason="Expired", message="too old resource version"))


class FakeApi:
    """Lists answer from `listings` in turn; each watch plays the next script of events or error."""

    def __init__(self, listings: list[Listing | Exception], watches: list[list[Any]]) -> None:
        self.listings = listings
        self.watches = watches
        self.watched_from: list[str | None] = []
        self.done = asyncio.Event()

    async def list_objects(self) -> Listing:
        answer = self.listings.pop(0) if self.listings else ([], "99")
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def watch_from(self, version: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.watched_from.append(version)
        if not self.watches:
            self.done.set()
            await asyncio.Event().wait()  # a quiet watch, until cancelled
        for step in self.watches.pop(0):
            if isinstance(step, BaseException):
                raise step
            yield step


class Backoff:
    """Records the failure counts it is asked about; no waiting."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def __call__(self, failures: int) -> float:
        self.asked.append(failures)
        return 0.0


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def listed(self, objects: list[dict[str, Any]]) -> None:
        self.seen.append(("listed", [o["metadata"]["name"] for o in objects]))

    def event(self, change: str, item: dict[str, Any]) -> None:
        self.seen.append((change, item["metadata"]["name"]))


def reflector(api: FakeApi, recorder: Recorder, **options: Any) -> Reflector:
    return Reflector(
        "Thing",
        list_objects=api.list_objects,
        watch_from=api.watch_from,
        on_listed=recorder.listed,
        on_event=recorder.event,
        **options,
    )


async def run_until_quiet(subject: Reflector, api: FakeApi) -> None:
    subject.start()
    try:
        await asyncio.wait_for(api.done.wait(), timeout=5)
    finally:
        await subject.stop()


async def test_it_watches_from_the_lists_version_and_follows_the_events() -> None:
    api = FakeApi([([obj("a", "5")], "10")], [[("ADDED", obj("b", "11")), ("MODIFIED", obj("a", "12"))]])
    recorder = Recorder()
    subject = reflector(api, recorder)
    await run_until_quiet(subject, api)
    assert recorder.seen[:3] == [("listed", ["a"]), ("ADDED", "b"), ("MODIFIED", "a")]
    # The watch ended without an error: listed again, watched from the new list's version.
    assert api.watched_from == ["10", "99"]
    assert (subject.lists, subject.failures) == (2, 0)


async def test_410_gone_lists_again_at_once_also_when_wrapped() -> None:
    wrapped = kopf.PermanentError("watching Thing: too old (HTTP 410)")
    wrapped.__cause__ = gone()
    api = FakeApi([([], "1"), ([], "2"), ([], "3")], [[gone()], [wrapped]])
    backoff = Backoff()
    subject = reflector(api, Recorder(), backoff=backoff)
    await run_until_quiet(subject, api)
    assert api.watched_from == ["1", "2", "3"]
    assert backoff.asked == []
    assert subject.failures == 0


async def test_any_other_failure_backs_off_and_a_good_list_resets_the_count() -> None:
    api = FakeApi(
        [RuntimeError("refused"), RuntimeError("refused"), ([], "7")],
        [[ConnectionResetError("peer closed")]],
    )
    backoff = Backoff()
    subject = reflector(api, Recorder(), backoff=backoff)
    await run_until_quiet(subject, api)
    assert backoff.asked == [1, 2, 1]  # two failed lists in a row, then one failed watch after a good list
    assert subject.failures == 0


async def test_listed_is_set_only_once_a_list_was_handed_over() -> None:
    gate = asyncio.Event()

    async def list_objects() -> Listing:
        await gate.wait()
        return [obj("a", "1")], "1"

    api = FakeApi([], [])
    recorder = Recorder()
    subject = Reflector(
        "Thing",
        list_objects=list_objects,
        watch_from=api.watch_from,
        on_listed=recorder.listed,
        on_event=recorder.event,
    )
    subject.start()
    try:
        await asyncio.sleep(0.01)
        assert not subject.listed.is_set()
        gate.set()
        await asyncio.wait_for(subject.listed.wait(), timeout=5)
        assert recorder.seen == [("listed", ["a"])]
    finally:
        await subject.stop()


async def test_a_watch_is_replaced_by_a_fresh_list_every_resync_period() -> None:
    api = FakeApi([], [])  # every watch stays quiet
    subject = reflector(api, Recorder(), resync_period=0.05)
    subject.start()
    try:
        async with asyncio.timeout(5):
            while subject.lists < 3:
                await asyncio.sleep(0.01)
    finally:
        await subject.stop()
    assert subject.failures == 0


def test_the_backoffs() -> None:
    assert [exponential_backoff(0.5, 30.0)(n) for n in (1, 2, 3, 8)] == [0.5, 1.0, 2.0, 30.0]
    assert [stepped_backoff((1.0, 2.0, 5.0))(n) for n in (1, 2, 3, 4, 9)] == [1.0, 2.0, 5.0, 5.0, 5.0]
    assert is_gone(gone())
    assert not is_gone(ApiError(status=Status(code=500, message="oops")))
