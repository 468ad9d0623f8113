"""Security events: CloudEvents to incident tooling (SOAR) sinks, and the process's one dispatcher.

A component sets its dispatcher once at start-up (`install`); its code then calls `emit`, which
only enqueues (never blocks, never raises). Without a dispatcher (no sink configured, or a unit
test) `emit` still counts the event and logs it.

    from samd.events import EventType, SecurityEvent, emit
    emit(SecurityEvent(EventType.DRIFT_DETECTED, "server", "DriftOverThreshold", "...",
                       namespace="fraud", name="scorer", details={"feature": "amount", "psi": 0.31}))
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from samd.events.cloud import (
    REPLAY_WINDOW,
    SIGNATURE_HEADER,
    EventType,
    SecurityEvent,
    SignatureError,
    sign,
    structured_body,
    verify,
)
from samd.events.dispatch import (
    EVENTS,
    EventConfigError,
    EventDispatcher,
    RetryPolicy,
    Sink,
    dispatcher_from_env,
)
from samd.logs import decision_fields

__all__ = [
    "REPLAY_WINDOW",
    "SIGNATURE_HEADER",
    "EventConfigError",
    "EventDispatcher",
    "EventType",
    "RetryPolicy",
    "SecurityEvent",
    "SignatureError",
    "Sink",
    "add_listener",
    "dispatcher_from_env",
    "emit",
    "install",
    "remove_listener",
    "sign",
    "structured_body",
    "verify",
]

log = logging.getLogger("samd.events")

_dispatcher: list[EventDispatcher] = []  # set once at start-up by `install`
_listeners: list[Callable[[SecurityEvent], None]] = []  # e.g. the webhook's Kubernetes Event recorder


def add_listener(listener: Callable[[SecurityEvent], None]) -> None:
    """Also hand every emitted event to `listener` (it must not block: enqueue, as `emit` does)."""
    _listeners.append(listener)


def remove_listener(listener: Callable[[SecurityEvent], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def install(dispatcher: EventDispatcher) -> EventDispatcher:
    """Make `dispatcher` the one `emit` uses in this process (and start it)."""
    _dispatcher[:] = [dispatcher.start()]
    return dispatcher


def uninstall(timeout: float = 5.0) -> None:
    """Stop the process's dispatcher, delivering what is queued for up to `timeout` seconds."""
    for dispatcher in _dispatcher:
        dispatcher.stop(timeout)
    _dispatcher.clear()


def emit(event: SecurityEvent) -> None:
    """Record a security event: one decision log line, and the sinks' queues. Never blocks or raises."""
    log.warning(
        "security event %s: %s",
        event.type.value,
        event.message,
        extra=decision_fields(
            component=event.component,
            event=event.type.value,
            decision=_decision_of(event.type),
            reason=event.reason,
            user=event.user,
            model=(event.namespace, event.name) if event.name else None,
        ),
    )
    EVENTS.labels(event.type.value).inc()
    if _dispatcher:
        _dispatcher[0].emit(event)
    for listener in list(_listeners):
        try:
            listener(event)
        except Exception:  # a listener's failure must not reach the caller
            log.exception("a security event listener failed")


def _decision_of(kind: EventType) -> str:
    if kind is EventType.MODEL_QUARANTINED:
        return "quarantined"
    if kind is EventType.QUARANTINE_CLEARED:
        return "cleared"
    if kind in (EventType.DRIFT_DETECTED, EventType.KEY_ROTATION_FAILED):
        return "warned"
    return "refused"
