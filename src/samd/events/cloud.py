"""SAMD's security events as CloudEvents 1.0 (structured JSON mode), and their HMAC signature.

Pure code: building an event, writing it as an HTTP body, signing and verifying that body. Delivery
is `samd.events.dispatch`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from cloudevents.core.bindings.http import to_structured_event
from cloudevents.core.v1.event import CloudEvent

SIGNATURE_HEADER = "X-SAMD-Signature"
"""``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``: the receiver recomputes it with the
shared key and refuses a body whose time is more than `REPLAY_WINDOW` seconds away from its clock."""
REPLAY_WINDOW = 300


class EventType(StrEnum):
    """The CloudEvent ``type`` of each security event (docs/events.md lists when each is sent)."""

    SIGNATURE_FAILED = "dev.samd.signature.failed"
    BYPASS_ATTEMPTED = "dev.samd.bypass.attempted"
    UNAUTHORIZED_ACCESS = "dev.samd.access.unauthorized"
    DRIFT_DETECTED = "dev.samd.drift.detected"
    KEY_ROTATION_FAILED = "dev.samd.key.rotation.failed"
    MODEL_QUARANTINED = "dev.samd.model.quarantined"
    QUARANTINE_CLEARED = "dev.samd.model.quarantine.cleared"


@dataclass(frozen=True)
class SecurityEvent:
    """One security event about a model (or about no model: `name` empty)."""

    type: EventType
    component: str  # who saw it: operator, webhook, server, loader
    reason: str  # CamelCase, machine-readable; also the Kubernetes Event's reason
    message: str  # a sentence a person can act on
    namespace: str = ""
    name: str = ""
    user: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)

    @property
    def subject(self) -> str | None:
        """The CloudEvent ``subject``: the SecureModel, as ``<namespace>/<name>``."""
        return f"{self.namespace}/{self.name}" if self.name else None

    def to_cloudevent(self, *, event_id: str | None = None) -> CloudEvent:
        attributes: dict[str, object] = {
            "type": self.type.value,
            "source": f"/samd/{self.component}",
            "datacontenttype": "application/json",
        }
        if event_id is not None:
            attributes["id"] = event_id
        if self.subject is not None:
            attributes["subject"] = self.subject
        data: dict[str, object] = {
            "reason": self.reason,
            "message": self.message,
            "model": {"namespace": self.namespace, "name": self.name} if self.name else None,
            "user": self.user,
            **self.details,
        }
        return CloudEvent(attributes, data)


def structured_body(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """The event in structured JSON mode: its headers (Content-Type) and body."""
    message = to_structured_event(event)
    return dict(message.headers), message.body


def sign(key: bytes, body: bytes, *, now: float | None = None) -> str:
    """The value of the `SIGNATURE_HEADER` for `body`."""
    timestamp = int(time.time() if now is None else now)
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class SignatureError(ValueError):
    """The body's signature is missing, malformed, wrong, or too old (a replay)."""


def verify(key: bytes, header: str | None, body: bytes, *, now: float | None = None) -> None:
    """What a receiver does: raise `SignatureError` unless `header` signs `body` recently with `key`."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError) as error:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header: {header!r}") from error
    moment = time.time() if now is None else now
    if abs(moment - timestamp) > REPLAY_WINDOW:
        raise SignatureError(
            f"the signature's time is {moment - timestamp:.0f} s away: a replay, or a wrong clock"
        )
    expected = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise SignatureError("the signature does not match the body")
