"""What the operator tells incident tooling: its reconcile events that are security events.

The reconciler's events become Kubernetes Events on the SecureModel (handlers.py); those that are
security events (a signature that fails, a key rotation that fails, a quarantine set or cleared)
also become CloudEvents (`samd.events`), each with one decision log line.
"""

from __future__ import annotations

from collections.abc import Iterable

from samd.events import EventType, SecurityEvent, emit
from samd.operator.reconcile import Event
from samd.policy import VERSION_MISMATCH, VERSION_NOT_SIGNED

SECURITY_REASONS: dict[str, EventType] = {
    "SignatureInvalid": EventType.SIGNATURE_FAILED,
    "ArtifactInvalid": EventType.SIGNATURE_FAILED,
    VERSION_NOT_SIGNED: EventType.SIGNATURE_FAILED,
    VERSION_MISMATCH: EventType.SIGNATURE_FAILED,
    "KeyRotationFailed": EventType.KEY_ROTATION_FAILED,
    "Quarantined": EventType.MODEL_QUARANTINED,
    "QuarantineCleared": EventType.QUARANTINE_CLEARED,
}


def security_event(namespace: str, name: str, event: Event) -> SecurityEvent | None:
    """The CloudEvent a reconcile event stands for, or None when it is not a security event."""
    kind = SECURITY_REASONS.get(event.reason)
    if kind is None:
        return None
    return SecurityEvent(kind, "operator", event.reason, event.message, namespace=namespace, name=name)


def record_outcome_events(namespace: str, name: str, events: Iterable[Event]) -> None:
    """Emit the security events among a reconcile's events (enqueued: never blocks the reconcile)."""
    for event in events:
        found = security_event(namespace, name, event)
        if found is not None:
            emit(found)
