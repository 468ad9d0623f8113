"""The audit report: severities and the CI gate, JSON round trip, metrics, HTML a person reads."""

from __future__ import annotations

import datetime
import io
import json

import pytest

from samd.audit import CHECK_NAMES, Finding, ObjectRef, Report, Severity, fails_gate
from samd.audit.render import (
    HistoryPoint,
    history_json,
    parse_history,
    print_table,
    to_html,
    to_json,
    to_metrics,
)
from samd.errors import UsageError

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)


def finding(severity: Severity, check: str = "service-exposed", name: str = "<script>x</script>") -> Finding:
    return Finding(check, severity, ObjectRef("Service", name, "ml"), "exposed", "why", "fix")


def test_the_gate_fails_at_the_threshold_and_above_only() -> None:
    report = Report(NOW, "https://k8s", [finding(Severity.MEDIUM)])
    assert fails_gate(report, Severity.MEDIUM)
    assert fails_gate(report, Severity.LOW)
    assert not fails_gate(report, Severity.HIGH)
    assert not fails_gate(report, None)
    assert not fails_gate(Report(NOW, "https://k8s", []), Severity.INFO)


def test_an_unknown_severity_is_a_usage_error_naming_the_choices() -> None:
    with pytest.raises(UsageError, match="unknown severity 'severe'") as raised:
        Severity.parse("severe")
    assert "info, low, medium, high, critical" in str(raised.value.hint)


def test_a_report_survives_json_and_counts_every_severity() -> None:
    report = Report(NOW, "https://k8s", [finding(Severity.HIGH), finding(Severity.LOW, "image-not-pinned")])
    again = Report.from_dict(json.loads(to_json(report)))
    assert again.to_dict() == report.to_dict()
    assert list(again.findings) == list(report.findings)
    assert again.counts() == {"critical": 0, "high": 1, "medium": 0, "low": 1, "info": 0}


def test_metrics_show_every_finding_class_with_zero_when_absent() -> None:
    report = Report(NOW, "https://k8s", [finding(Severity.HIGH), finding(Severity.HIGH, name="other")])
    text = to_metrics(report, CHECK_NAMES)
    assert 'samd_audit_findings{check="service-exposed",severity="high"} 2' in text
    assert 'samd_audit_findings{check="webhook-missing",severity="none"} 0' in text
    assert f"samd_audit_last_run_timestamp_seconds {NOW.timestamp():.0f}" in text


def test_the_html_page_escapes_what_it_shows_and_charts_history() -> None:
    report = Report(NOW, "https://k8s", [finding(Severity.CRITICAL)])
    earlier = HistoryPoint(NOW - datetime.timedelta(hours=1), {"critical": 0, "high": 2})
    page = to_html(report, [earlier, HistoryPoint.of(report)])
    assert "<script>x</script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert page.count("<polyline") == 5  # one line per severity
    assert "<title>critical: 1</title>" in page


def test_a_damaged_history_starts_again_and_a_good_one_round_trips() -> None:
    assert parse_history("{not json") == []
    points = [HistoryPoint(NOW, {"high": 1})]
    assert parse_history(history_json(points)) == points


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [io.StringIO, _Terminal], ids=["plain", "terminal"])
def test_the_table_shows_text_as_written_and_the_totals(stream: type[io.StringIO]) -> None:
    report = Report(NOW, "https://k8s", [finding(Severity.HIGH, name="web [public]")], {"secureModels": 1})
    out = stream()
    print_table(report, out)
    text = out.getvalue()
    assert "web [public]" in text  # not taken for markup on a terminal
    assert "1 finding(s): 1 high. Checked: 1 secureModels." in text
