"""Security events: CloudEvents 1.0 in structured mode, HMAC-signed, delivered in the background.

The sink is a real HTTP server on loopback (allowed explicitly, as an installer would for an
in-cluster receiver); the receiver side verifies with `samd.events.verify`, as docs/events.md shows.
"""

from __future__ import annotations

import json
import threading
import time
import typing
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from samd.events import (
    SIGNATURE_HEADER,
    EventConfigError,
    EventDispatcher,
    EventType,
    RetryPolicy,
    SecurityEvent,
    SignatureError,
    Sink,
    sign,
    verify,
)
from samd.events.dispatch import DROPPED, parse_sinks
from samd.spec import EventTypeName

pytestmark = pytest.mark.unit

KEY = b"shared-hmac-key"
FAST = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05)


class Receiver:
    """A sink: records each POST; answers with the statuses queued in `answers` (then 204)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.hold.wait(10)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers.items()), body))
                status = receiver.answers.pop(0) if receiver.answers else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} events arrived"
            time.sleep(0.01)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.thread.start()
    yield running
    running.hold.set()
    running.server.shutdown()
    running.server.server_close()


def local_sink(receiver: Receiver, **changes: Any) -> Sink:
    settings: dict[str, Any] = {
        "name": "soar",
        "url": receiver.url,
        "key": KEY,
        "allow_internal": True,
        "allow_http": True,
        **changes,
    }
    return Sink(**settings)


def bypass_event(name: str = "fraud") -> SecurityEvent:
    return SecurityEvent(
        EventType.BYPASS_ATTEMPTED,
        "webhook",
        "IdentityClaimed",
        "pod mallory in ml-prod claims SecureModel fraud's identity",
        namespace="ml-prod",
        name=name,
        user="mallory@example.com",
        details={"kind": "Pod"},
    )


def dropped(reason: str) -> float:
    value = DROPPED.labels(reason)._value.get()
    return float(value)


def test_an_event_arrives_as_a_structured_cloudevent_the_receiver_can_verify(receiver: Receiver) -> None:
    dispatcher = EventDispatcher([local_sink(receiver)], retry=FAST).start()
    try:
        dispatcher.emit(bypass_event())
        receiver.wait_for(1)
    finally:
        dispatcher.stop()

    headers, body = receiver.received[0]
    verify(KEY, headers[SIGNATURE_HEADER], body)  # raises unless signed with the shared key, recently
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    event = json.loads(body)
    assert event["specversion"] == "1.0"
    assert event["type"] == "dev.samd.bypass.attempted"
    assert event["source"] == "/samd/webhook"
    assert event["subject"] == "ml-prod/fraud"
    assert event["id"]
    assert event["time"].endswith("Z")
    assert event["data"]["reason"] == "IdentityClaimed"
    assert event["data"]["user"] == "mallory@example.com"
    assert event["data"]["model"] == {"namespace": "ml-prod", "name": "fraud"}
    assert event["data"]["kind"] == "Pod"


def test_a_signature_from_another_key_a_changed_body_or_an_old_time_is_refused() -> None:
    body = b'{"type": "dev.samd.bypass.attempted"}'
    header = sign(KEY, body, now=1_000_000)

    verify(KEY, header, body, now=1_000_100)
    with pytest.raises(SignatureError, match="does not match"):
        verify(b"another-key", header, body, now=1_000_100)
    with pytest.raises(SignatureError, match="does not match"):
        verify(KEY, header, body.replace(b"bypass", b"drift"), now=1_000_100)
    with pytest.raises(SignatureError, match="replay"):
        verify(KEY, header, body, now=1_000_000 + 301)
    with pytest.raises(SignatureError, match="no X-SAMD-Signature"):
        verify(KEY, None, body)
    with pytest.raises(SignatureError, match="malformed"):
        verify(KEY, "v1=abc", body)


def test_a_failing_sink_is_retried_with_backoff_until_it_accepts(receiver: Receiver) -> None:
    receiver.answers = [503, 500]
    dispatcher = EventDispatcher([local_sink(receiver)], retry=FAST).start()
    try:
        dispatcher.emit(bypass_event())
        receiver.wait_for(3)
    finally:
        dispatcher.stop()

    bodies = {body for _, body in receiver.received}
    assert len(bodies) == 1  # the same event each time
    assert len(receiver.received) == 3


def test_an_event_the_sink_still_refuses_after_the_last_retry_is_dropped_and_counted(
    receiver: Receiver,
) -> None:
    receiver.answers = [503, 503, 503]
    before = dropped("delivery_failed")
    dispatcher = EventDispatcher([local_sink(receiver)], retry=FAST).start()
    try:
        dispatcher.emit(bypass_event())
        receiver.wait_for(3)
    finally:
        dispatcher.stop()

    assert len(receiver.received) == 3
    assert dropped("delivery_failed") == before + 1


def test_the_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(attempts=8, first_delay=0.5, max_delay=4.0)

    assert [policy.delay(n, rng=lambda: 1.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [policy.delay(n, rng=lambda: 0.0) for n in range(3)] == [0.25, 0.5, 1.0]


def test_emit_never_blocks_and_a_full_queue_drops_and_counts(receiver: Receiver) -> None:
    receiver.hold.clear()  # the sink hangs: nothing leaves the queue after the first event
    before = dropped("queue_full")
    dispatcher = EventDispatcher([local_sink(receiver)], queue_size=2, retry=FAST).start()
    try:
        started = time.monotonic()
        for _ in range(10):
            dispatcher.emit(bypass_event())
        elapsed = time.monotonic() - started
    finally:
        receiver.hold.set()
        dispatcher.stop()

    assert elapsed < 0.5  # ten emits against a hanging sink return at once
    # One event is in flight, two wait in the queue; the other seven are dropped.
    assert dropped("queue_full") - before >= 7


def test_a_sink_at_an_internal_address_is_refused_unless_allowed(receiver: Receiver) -> None:
    before = dropped("address_refused")
    dispatcher = EventDispatcher(
        [local_sink(receiver, allow_internal=False, allow_http=False)], retry=FAST
    ).start()
    try:
        dispatcher.emit(bypass_event())
    finally:
        dispatcher.stop()

    assert receiver.received == []
    assert dropped("address_refused") == before + 1


def test_a_sink_gets_only_the_types_it_asked_for(receiver: Receiver) -> None:
    sink = local_sink(receiver, types=frozenset({EventType.DRIFT_DETECTED}))
    dispatcher = EventDispatcher([sink], retry=FAST).start()
    try:
        dispatcher.emit(bypass_event("ignored"))
        dispatcher.emit(
            SecurityEvent(
                EventType.DRIFT_DETECTED, "server", "DriftOverThreshold", "psi 0.4", "ml-prod", "fraud"
            )
        )
        receiver.wait_for(1)
    finally:
        dispatcher.stop()

    assert [json.loads(body)["type"] for _, body in receiver.received] == ["dev.samd.drift.detected"]


def test_the_sink_configuration_names_what_is_wrong() -> None:
    good = '[{"name": "soar", "url": "https://soar.example.com/hook", "types": ["dev.samd.drift.detected"]}]'
    [sink] = parse_sinks(good, {"SAMD_EVENT_SINK_0_KEY": "k"})
    assert sink.types == frozenset({EventType.DRIFT_DETECTED})
    assert sink.key == b"k"

    with pytest.raises(EventConfigError, match="SAMD_EVENT_SINK_0_KEY"):
        parse_sinks(good, {})
    with pytest.raises(
        EventConfigError, match=r"SAMD_EVENT_SINKS\[0\].url 'ftp://x' is not an http\(s\) URL"
    ):
        parse_sinks('[{"url": "ftp://x"}]', {"SAMD_EVENT_SINK_0_KEY": "k"})
    with pytest.raises(EventConfigError, match=r"known types: dev\.samd\.signature\.failed"):
        parse_sinks('[{"url": "https://x", "types": ["drift"]}]', {"SAMD_EVENT_SINK_0_KEY": "k"})
    with pytest.raises(EventConfigError, match="is not JSON"):
        parse_sinks("[{", {})


def test_the_receivers_recipe_in_the_docs_accepts_a_signed_body_and_refuses_a_changed_one() -> None:
    text = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    recipe = next(block for block in text.split("```python\n")[1:] if "def verify(" in block).split("```")[0]
    namespace: dict[str, Any] = {}
    exec(recipe, namespace)  # noqa: S102 - the documentation's own snippet, run as a reader would
    body = b'{"type": "dev.samd.model.quarantined"}'
    header = sign(KEY, body)

    namespace["verify"](KEY, header, body)
    with pytest.raises(ValueError, match="bad signature"):
        namespace["verify"](KEY, header, body + b" ")


def test_the_trust_policys_sink_types_are_the_event_types() -> None:
    assert set(typing.get_args(EventTypeName)) == {kind.value for kind in EventType}
