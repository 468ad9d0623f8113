"""Status conditions in the ``metav1.Condition`` shape, set through one helper (docs/architecture.md, style rule 5)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from samd.operator.timestamps import iso


class ConditionType(StrEnum):
    VERIFIED = "Verified"
    ENCRYPTED = "Encrypted"
    STORAGE_SECURE = "StorageSecure"
    ACCESS_CONTROLLED = "AccessControlled"
    NETWORK_ISOLATED = "NetworkIsolated"
    CERTIFICATES_READY = "CertificatesReady"
    SERVING = "Serving"
    QUARANTINED = "Quarantined"  # present only once a model has been quarantined
    READY = "Ready"


# Ready summarises these, in this order (the first one not True explains why the model is not Ready).
READY_DEPENDS_ON = (
    ConditionType.VERIFIED,
    ConditionType.ENCRYPTED,
    ConditionType.STORAGE_SECURE,
    ConditionType.ACCESS_CONTROLLED,
    ConditionType.NETWORK_ISOLATED,
    ConditionType.CERTIFICATES_READY,
    ConditionType.SERVING,
)


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: bool | None  # None: Unknown
    reason: str  # CamelCase, machine-readable
    message: str  # a sentence a person can act on

    @classmethod
    def of(cls, written: Mapping[str, Any]) -> Condition:
        """A condition as a status holds it."""
        text = written.get("status")
        return cls(
            ConditionType(written["type"]),
            None if text == "Unknown" else text == "True",
            str(written.get("reason", "")),
            str(written.get("message", "")),
        )

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def merge_conditions(
    existing: Sequence[Mapping[str, Any]],
    updates: Iterable[Condition],
    *,
    generation: int,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """Apply `updates` to `existing`, keeping lastTransitionTime when a condition's status is unchanged."""
    by_type = {str(c.get("type")): dict(c) for c in existing}
    for condition in updates:
        previous = by_type.get(condition.type.value)
        changed = previous is None or previous.get("status") != condition.status_text
        by_type[condition.type.value] = {
            "type": condition.type.value,
            "status": condition.status_text,
            "reason": condition.reason,
            "message": condition.message[:32768],
            "lastTransitionTime": iso(now)
            if changed or previous is None
            else previous.get("lastTransitionTime", iso(now)),
            "observedGeneration": generation,
        }
    order = {t.value: i for i, t in enumerate(ConditionType)}
    return sorted(by_type.values(), key=lambda c: order.get(str(c["type"]), len(order)))


def ready_condition(conditions: Mapping[ConditionType, Condition]) -> Condition:
    """Ready is True only when every condition it depends on is True, and the model is not quarantined."""
    quarantined = conditions.get(ConditionType.QUARANTINED)
    if quarantined is not None and quarantined.status is True:
        return Condition(ConditionType.READY, False, "Quarantined", f"Quarantined: {quarantined.message}")
    for kind in READY_DEPENDS_ON:
        condition = conditions.get(kind)
        if condition is None:
            return Condition(
                ConditionType.READY, None, "Reconciling", f"{kind.value} has not been checked yet"
            )
        if condition.status is not True:
            return Condition(
                ConditionType.READY,
                False,
                f"{kind.value}{'Unknown' if condition.status is None else 'False'}",
                f"{kind.value}: {condition.message}",
            )
    return Condition(
        ConditionType.READY, True, "AllChecksPassed", "the model is verified, protected and served"
    )
