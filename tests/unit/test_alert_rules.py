"""SAMD's alerting rules: `promtool test rules` makes each alert fire on the signal it watches (and
stay quiet below its threshold); every alert links its runbook in docs/playbook.md."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import REPO

pytestmark = pytest.mark.unit

RULES = REPO / "deploy" / "prometheus" / "samd-alerts.yaml"
CASES = REPO / "tests" / "unit" / "prometheus" / "samd-alerts-test.yaml"
RUNBOOKS = {
    "compromised-signing-key",
    "leaked-data-key",
    "suspected-model-exfiltration",
    "drift-alert",
    "repeated-unauthorized-access",
    "webhook-outage",
    "model-not-ready",
    "key-rotation-overdue",
    "certificate-expiring",
    "operator-down",
    "inference-errors",
}


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules_and_templates() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_on_its_signal_and_not_below_its_threshold(tmp_path: Path) -> None:
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "samd-alerts.yaml").write_text(yaml.safe_dump(document))
    shutil.copy(CASES, tmp_path / CASES.name)
    result = subprocess.run(
        ["promtool", "test", "rules", CASES.name], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_and_links_a_runbook_anchor() -> None:
    cases = yaml.safe_load(CASES.read_text())["tests"]
    fired = {
        check["alertname"] for case in cases for check in case["alert_rule_test"] if check.get("exp_alerts")
    }
    names = [rule["alert"] for rule in _alerts()]
    assert sorted(set(names) - fired) == []
    for rule in _alerts():
        annotations = rule["annotations"]
        assert annotations["summary"]
        assert annotations["description"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/playbook.md"
        assert anchor in RUNBOOKS, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
