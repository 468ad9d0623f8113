"""What an audit reports: findings with a severity, the object, why it matters and how to fix it."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from samd.errors import UsageError

REPORT_FORMAT = "samd.audit-report/v1"


class Severity(IntEnum):
    """Ordered, so that a CI gate can say "high or worse"."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            raise UsageError(f"unknown severity {text!r}", hint=f"use one of {names}") from None


@dataclass(frozen=True)
class ObjectRef:
    """The Kubernetes object a finding is about (namespace empty for cluster-scoped objects)."""

    kind: str
    name: str
    namespace: str = ""

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name}


@dataclass(frozen=True)
class Finding:
    """One problem: `check` is the finding class (stable, used by metrics and suppressions)."""

    check: str
    severity: Severity
    object: ObjectRef
    message: str
    why: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity.label,
            "object": self.object.to_dict(),
            "message": self.message,
            "why": self.why,
            "fix": self.fix,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        obj = data["object"]
        return cls(
            check=str(data["check"]),
            severity=Severity.parse(str(data["severity"])),
            object=ObjectRef(kind=obj["kind"], name=obj["name"], namespace=obj.get("namespace") or ""),
            message=str(data["message"]),
            why=str(data["why"]),
            fix=str(data["fix"]),
        )


@dataclass(frozen=True)
class Report:
    generated_at: datetime.datetime
    cluster: str
    findings: Sequence[Finding]
    checked: Mapping[str, int] = field(default_factory=dict)
    """What was looked at (models, policies, subjects, ...), so that "no finding" means something."""
    notes: Sequence[str] = ()
    """Facts worth reading that are not problems (such as the namespaces the webhook skips)."""

    def counts(self) -> dict[str, int]:
        """Findings by severity, every severity present (0 when none)."""
        counted = Counter(f.severity for f in self.findings)
        return {s.label: counted.get(s, 0) for s in sorted(Severity, reverse=True)}

    def by_check(self) -> dict[tuple[str, str], int]:
        """Findings by (finding class, severity)."""
        return dict(Counter((f.check, f.severity.label) for f in self.findings))

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "generatedAt": _iso(self.generated_at),
            "cluster": self.cluster,
            "checked": dict(self.checked),
            "counts": self.counts(),
            "notes": list(self.notes),
            "findings": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        if data.get("format") != REPORT_FORMAT:
            raise UsageError(
                f"not a samd audit report (format {data.get('format')!r}, expected {REPORT_FORMAT})"
            )
        return cls(
            generated_at=datetime.datetime.fromisoformat(str(data["generatedAt"]).replace("Z", "+00:00")),
            cluster=str(data.get("cluster", "")),
            findings=[Finding.from_dict(f) for f in data.get("findings") or []],
            checked={str(k): int(v) for k, v in (data.get("checked") or {}).items()},
            notes=[str(n) for n in data.get("notes") or []],
        )


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then by object and class, so that reports diff well."""
    return sorted(
        dict.fromkeys(findings),
        key=lambda f: (-f.severity, f.object.namespace, f.object.kind, f.object.name, f.check, f.message),
    )


def fails_gate(report: Report, threshold: Severity | None) -> bool:
    """Whether any finding is at or above `threshold` (None: never)."""
    worst = report.worst()
    return threshold is not None and worst is not None and worst >= threshold


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
