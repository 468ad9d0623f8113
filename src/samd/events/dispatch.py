"""Deliver security events to their sinks: HTTP POST, HMAC-signed, retried, never blocking the caller.

Each sink has its own bounded queue and its own background thread, so that a slow or dead sink
delays and drops only its own events. `EventDispatcher.emit` only enqueues: it is safe to call on
the admission path and in the server's request handling. A full queue drops the event (counted in
``samd_events_dropped_total{reason="queue_full"}``); so does a delivery that still fails after the
last retry (``reason="delivery_failed"``) and a sink whose address the URI guard refuses
(``reason="address_refused"``).

Sink addresses pass the same guard as artifact endpoints (`samd.storage.guard`): no loopback,
private, link-local (cloud metadata) or cluster-internal address unless an allowance names it, and
the connection is made to the very address checked. Redirects are not followed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter

from samd.errors import StorageError
from samd.events.cloud import SIGNATURE_HEADER, EventType, SecurityEvent, sign, structured_body
from samd.storage.guard import AddressPolicy, AllowedEndpoint, URIRefusedError, check_uri
from samd.storage.https import GuardedHTTPConnection, GuardedHTTPSConnection

log = logging.getLogger("samd.events")

EVENTS = Counter("samd_security_events_total", "Security events emitted, by CloudEvent type", ["type"])
DELIVERED = Counter("samd_events_delivered_total", "Security events a sink accepted (2xx)")
DROPPED = Counter(
    "samd_events_dropped_total",
    "Security events not delivered to a sink: queue_full, delivery_failed or address_refused",
    ["reason"],
)
for _reason in ("queue_full", "delivery_failed", "address_refused"):
    DROPPED.labels(_reason)

SINKS_ENV = "SAMD_EVENT_SINKS"
KEY_ENV = "SAMD_EVENT_SINK_{index}_KEY"


class EventConfigError(ValueError):
    """The sink configuration is unusable; the message names the entry and the fix."""


@dataclass(frozen=True)
class Sink:
    """Where events go: an http(s) URL, the HMAC key, and the event types it wants (empty: all)."""

    name: str
    url: str
    key: bytes = field(repr=False)
    types: frozenset[EventType] = frozenset()
    allow_internal: bool = False  # the installer's allowance for an in-cluster receiver
    allow_http: bool = False

    def wants(self, event: SecurityEvent) -> bool:
        return not self.types or event.type in self.types

    def address_policy(self, base: AddressPolicy) -> AddressPolicy:
        host = urllib.parse.urlsplit(self.url).hostname or ""
        if not (self.allow_internal or self.allow_http):
            return base
        return base.with_allowed(
            [AllowedEndpoint.parse(None, host, allow_http=self.allow_http, source=f"event sink {self.name}")]
        )


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Exponential backoff with jitter: between half and all of first_delay * 2**attempt (capped)."""
        ceiling: float = min(self.max_delay, self.first_delay * 2.0**attempt)
        return ceiling * (0.5 + 0.5 * rng())


def parse_sinks(text: str, env: Mapping[str, str]) -> list[Sink]:
    """`SAMD_EVENT_SINKS` (a JSON list of {name, url, types?, allowInternal?, allowHttp?}); the
    HMAC key of entry i is in `SAMD_EVENT_SINK_<i>_KEY` (the chart sets it from a Secret)."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise EventConfigError(f"{SINKS_ENV} is not JSON: {error}") from error
    if not isinstance(entries, list):
        raise EventConfigError(f"{SINKS_ENV} must be a JSON list of sinks")
    sinks = []
    for index, entry in enumerate(entries):
        where = f"{SINKS_ENV}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise EventConfigError(f"{where} must be an object with a url")
        url = entry["url"]
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise EventConfigError(f"{where}.url {url!r} is not an http(s) URL")
        key = env.get(KEY_ENV.format(index=index), "")
        if not key:
            raise EventConfigError(
                f"{where} ({url}) has no HMAC key: set {KEY_ENV.format(index=index)} "
                "(the chart takes it from the Secret named in events.sinks[].secretName)"
            )
        try:
            types = frozenset(EventType(value) for value in entry.get("types") or [])
        except ValueError as error:
            known = ", ".join(t.value for t in EventType)
            raise EventConfigError(f"{where}.types: {error}; known types: {known}") from error
        sinks.append(
            Sink(
                name=str(entry.get("name") or f"sink-{index}"),
                url=url,
                key=key.encode(),
                types=types,
                allow_internal=bool(entry.get("allowInternal", False)),
                allow_http=bool(entry.get("allowHttp", False)),
            )
        )
    return sinks


class _Delivery:
    """One sink's queue and the thread that empties it."""

    def __init__(
        self, sink: Sink, *, size: int, retry: RetryPolicy, policy: AddressPolicy, timeout: float
    ) -> None:
        self.sink = sink
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=size)
        self.retry = retry
        self.policy = sink.address_policy(policy)
        self.timeout = timeout
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"samd-events-{sink.name}", daemon=True)

    def _run(self) -> None:
        while True:
            body = self.queue.get()
            if body is None:
                return
            self._deliver(body)

    def _deliver(self, body: bytes) -> None:
        for attempt in range(self.retry.attempts):
            try:
                status = self._post(body)
            except URIRefusedError as error:
                DROPPED.labels("address_refused").inc()
                log.error("event sink %s refused: %s", self.sink.name, error, extra={"sink": self.sink.name})
                return
            except (OSError, http.client.HTTPException, StorageError) as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if 200 <= status < 300:
                    DELIVERED.inc()
                    return
                problem = f"HTTP {status}"
                if status < 500 and status not in (408, 429):
                    break  # refused (or redirected, which is not followed): sending it again changes nothing
            if attempt + 1 < self.retry.attempts and not self.stopping.wait(self.retry.delay(attempt)):
                log.info(
                    "event sink %s: attempt %d failed (%s), retrying",
                    self.sink.name,
                    attempt + 1,
                    problem,
                    extra={"sink": self.sink.name},
                )
                continue
            break
        DROPPED.labels("delivery_failed").inc()
        log.warning(
            "event sink %s: giving up on an event: %s",
            self.sink.name,
            problem,
            extra={"sink": self.sink.name},
        )

    def _post(self, body: bytes) -> int:
        check_uri(self.sink.url, self.policy, field=f"event sink {self.sink.name}")
        parts = urllib.parse.urlsplit(self.sink.url)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = GuardedHTTPSConnection(
                parts.hostname or "",
                parts.port,
                timeout=self.timeout,
                context=ssl.create_default_context(),
                address_policy=self.policy,
            )
        else:
            connection = GuardedHTTPConnection(
                parts.hostname or "", parts.port, timeout=self.timeout, address_policy=self.policy
            )
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        headers = {
            "Content-Type": "application/cloudevents+json; charset=utf-8",
            SIGNATURE_HEADER: sign(self.sink.key, body),
        }
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read(64 * 1024)
            return response.status
        finally:
            connection.close()


class EventDispatcher:
    """Background delivery of security events to sinks; `emit` never blocks and never raises."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        queue_size: int = 256,
        retry: RetryPolicy | None = None,
        address_policy: AddressPolicy | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._deliveries = [
            _Delivery(
                sink,
                size=queue_size,
                retry=retry or RetryPolicy(),
                policy=address_policy or AddressPolicy(),
                timeout=timeout,
            )
            for sink in sinks
        ]

    @property
    def sinks(self) -> list[Sink]:
        return [delivery.sink for delivery in self._deliveries]

    def start(self) -> EventDispatcher:
        for delivery in self._deliveries:
            delivery.thread.start()
        return self

    def emit(self, event: SecurityEvent) -> None:
        """Enqueue `event` for each sink that wants it (`samd.events.emit` counts it, once)."""
        wanted = [delivery for delivery in self._deliveries if delivery.sink.wants(event)]
        if not wanted:
            return
        try:
            _headers, body = structured_body(event.to_cloudevent())
        except Exception as error:  # an event that cannot be written must not break its caller
            DROPPED.labels("delivery_failed").inc()
            log.error("could not write a %s event: %s", event.type.value, error)
            return
        for delivery in wanted:
            try:
                delivery.queue.put_nowait(body)
            except queue.Full:
                DROPPED.labels("queue_full").inc()
                log.warning("event sink %s: queue full, event dropped", delivery.sink.name)

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to `timeout` seconds (retries cut short), then stop."""
        for delivery in self._deliveries:
            delivery.stopping.set()
            with contextlib.suppress(queue.Full):
                delivery.queue.put(None, timeout=timeout)
        deadline = time.monotonic() + timeout
        for delivery in self._deliveries:
            delivery.thread.join(max(0.0, deadline - time.monotonic()))


def dispatcher_from_env(env: Mapping[str, str], address_policy: AddressPolicy) -> EventDispatcher:
    """The process's dispatcher from `SAMD_EVENT_SINKS` (none: events are only counted and logged)."""
    text = env.get(SINKS_ENV, "").strip()
    sinks = parse_sinks(text, env) if text else []
    return EventDispatcher(sinks, address_policy=address_policy)


def types_of(values: Iterable[str]) -> frozenset[EventType]:
    return frozenset(EventType(value) for value in values)
