"""Run `samd audit` in-process against a cluster and read its JSON report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from samd.cli import main


@dataclass(frozen=True)
class AuditRun:
    exit_code: int
    report: dict[str, Any]

    def findings(self, check: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            f
            for f in self.report["findings"]
            if (check is None or f["check"] == check)
            and (namespace is None or f["object"]["namespace"] == namespace)
        ]

    def one(self, check: str, **object_fields: str) -> dict[str, Any]:
        """The one finding of `check` about the object with these fields (kind, name, namespace)."""
        matching = [
            f for f in self.findings(check) if all(f["object"].get(k) == v for k, v in object_fields.items())
        ]
        assert len(matching) == 1, f"{check} {object_fields}: {json.dumps(self.report['findings'], indent=1)}"
        return matching[0]


def run_audit(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> AuditRun:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    capsys.readouterr()
    code = main(["audit", "--json", *args])
    captured = capsys.readouterr()
    assert captured.out, f"samd audit printed nothing (exit {code}): {captured.err}"
    return AuditRun(code, json.loads(captured.out))
