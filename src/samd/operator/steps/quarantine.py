"""Quarantined: `status.quarantine`, set by the incident response or by a person, cleared only by a
person. A quarantined model is scaled to zero; its Deployment stays, with its verified template."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from samd.operator.conditions import ConditionType
from samd.operator.steps.shared import EventReason, Run

C = ConditionType


@dataclass(frozen=True)
class Quarantine:
    """`status.quarantine`: set by the incident response or by a person, cleared only by a person."""

    active: bool
    reason: str = ""
    message: str = ""
    by: str = ""

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> Quarantine:
        written = status.get("quarantine")
        if not isinstance(written, Mapping):
            return cls(active=False)
        return cls(
            active=written.get("active") is True,
            reason=str(written.get("reason") or ""),
            message=str(written.get("message") or ""),
            by=str(written.get("by") or ""),
        )


def quarantine_condition(run: Run, quarantine: Quarantine) -> None:
    """Quarantined, and its Event when it changes; absent for a model that was never quarantined."""
    previous = next(
        (c for c in run.model.status.get("conditions") or [] if c.get("type") == C.QUARANTINED.value), None
    )
    was_active = previous is not None and previous.get("status") == "True"
    who = f" (by {quarantine.by})" if quarantine.by else ""
    if quarantine.active:
        message = (
            f"{quarantine.reason or 'Manual'}: {quarantine.message or 'quarantined'}{who}; scaled to zero, "
            "new pods are refused until a person clears it (samd quarantine clear)"
        )
        run.set(C.QUARANTINED, True, quarantine.reason or "Manual", message)
        if not was_active:
            run.event(EventReason.QUARANTINED, message, warning=True)
    elif previous is not None:
        run.set(C.QUARANTINED, False, "Cleared", f"the quarantine was cleared{who}")
        if was_active:
            run.event(EventReason.QUARANTINE_CLEARED, f"the quarantine was cleared{who}; serving again")


def quarantine_pending(status: Mapping[str, Any]) -> bool:
    """Whether status.quarantine says otherwise than the Quarantined condition (a reconcile is due)."""
    active = Quarantine.of(status).active
    condition = next(
        (c for c in status.get("conditions") or [] if c.get("type") == C.QUARANTINED.value), None
    )
    applied = condition is not None and condition.get("status") == "True"
    return active != applied
