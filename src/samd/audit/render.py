"""The report as a terminal table, a self-contained HTML page with SVG charts, and Prometheus metrics."""

from __future__ import annotations

import datetime
import html
import json
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from samd.audit.findings import Report
from samd.errors import UsageError

SEVERITY_COLOURS = {
    "critical": "#7b1fa2",
    "high": "#c62828",
    "medium": "#ef6c00",
    "low": "#f9a825",
    "info": "#1565c0",
}
HISTORY_LIMIT = 200
"""Runs kept in a ConfigMap's history (one per CronJob run: about a week of hourly runs)."""


@dataclass(frozen=True)
class HistoryPoint:
    generated_at: datetime.datetime
    counts: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"generatedAt": _iso(self.generated_at), "counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistoryPoint:
        return cls(_parse_time(str(data["generatedAt"])), {str(k): int(v) for k, v in data["counts"].items()})

    @classmethod
    def of(cls, report: Report) -> HistoryPoint:
        return cls(report.generated_at, report.counts())


# --- terminal -------------------------------------------------------------------------------------


def print_table(report: Report, out: TextIO) -> None:
    """A table of findings (rich when it is installed and `out` is a terminal), then the totals."""
    try:
        import rich  # noqa: F401, PLC0415
    except ImportError:
        rich_available = False
    else:
        rich_available = out.isatty()
    if rich_available:
        _rich_table(report, out)
    else:
        _plain_table(report, out)
    totals = ", ".join(f"{count} {severity}" for severity, count in report.counts().items() if count)
    checked = ", ".join(f"{v} {k}" for k, v in report.checked.items())
    out.write(f"{len(report.findings)} finding(s){': ' + totals if totals else ''}. Checked: {checked}.\n")
    for note in report.notes:
        out.write(f"note: {note}\n")


def _plain_table(report: Report, out: TextIO) -> None:
    if not report.findings:
        out.write("no findings\n")
        return
    width = max(60, shutil.get_terminal_size((120, 24)).columns)
    rows = [("SEVERITY", "CHECK", "OBJECT", "FINDING")]
    rows += [(f.severity.label, f.check, str(f.object), f.message) for f in report.findings]
    first = [max(len(row[i]) for row in rows) for i in range(3)]
    for index, row in enumerate(rows):
        head = "  ".join(cell.ljust(first[i]) for i, cell in enumerate(row[:3]))
        room = max(30, width - len(head) - 2)
        lines = textwrap.wrap(row[3], room) or [""]
        out.write(f"{head}  {lines[0]}\n")
        for line in lines[1:]:
            out.write(" " * (len(head) + 2) + line + "\n")
        if index:
            finding = report.findings[index - 1]
            pad = " " * (len(head) + 2)
            for label, text in (("why", finding.why), ("fix", finding.fix)):
                for n, line in enumerate(textwrap.wrap(f"{label}: {text}", room)):
                    out.write(pad + ("  " if n else "") + line + "\n")


def _rich_table(report: Report, out: TextIO) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.markup import escape  # noqa: PLC0415 - object names and messages may hold "[...]"
    from rich.table import Table  # noqa: PLC0415

    console = Console(file=out)
    if not report.findings:
        console.print("no findings")
        return
    table = Table(show_lines=True)
    for column in ("severity", "check", "object", "finding", "fix"):
        table.add_column(column)
    for f in report.findings:
        colour = SEVERITY_COLOURS[f.severity.label]
        table.add_row(
            f"[bold {colour}]{f.severity.label}[/]",
            escape(f.check),
            escape(str(f.object)),
            f"{escape(f.message)}\n[dim]{escape(f.why)}[/]",
            escape(f.fix),
        )
    console.print(table)


# --- JSON and metrics --------------------------------------------------------------------------


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n"


def to_metrics(report: Report, checks: Sequence[str]) -> str:
    """Prometheus text format: findings per class and severity (0 for every known class), last run time."""
    lines = [
        "# HELP samd_audit_findings Findings of the last samd audit, by finding class and severity.",
        "# TYPE samd_audit_findings gauge",
    ]
    counted = report.by_check()
    present = {check for check, _severity in counted}
    for check in sorted(set(checks) | present):
        severities = sorted({s for c, s in counted if c == check}) or ["none"]
        for severity in severities:
            value = counted.get((check, severity), 0)
            lines.append(f'samd_audit_findings{{check="{check}",severity="{severity}"}} {value}')
    lines += [
        "# HELP samd_audit_last_run_timestamp_seconds When the last samd audit ran.",
        "# TYPE samd_audit_last_run_timestamp_seconds gauge",
        f"samd_audit_last_run_timestamp_seconds {report.generated_at.timestamp():.0f}",
    ]
    return "\n".join(lines) + "\n"


# --- history ------------------------------------------------------------------------------------


def history_from_directory(directory: Path) -> list[HistoryPoint]:
    """Earlier reports: every samd audit JSON report in `directory`."""
    points = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            report = Report.from_dict(data)
        except (OSError, ValueError, KeyError, UsageError):
            continue  # not a report: other files may share the directory
        points.append(HistoryPoint.of(report))
    return sorted(points, key=lambda p: p.generated_at)


def parse_history(text: str | None) -> list[HistoryPoint]:
    if not text:
        return []
    try:
        return sorted((HistoryPoint.from_dict(p) for p in json.loads(text)), key=lambda p: p.generated_at)
    except (ValueError, KeyError, TypeError, AttributeError):
        return []  # a damaged history is started again rather than failing the audit


def history_json(points: Sequence[HistoryPoint]) -> str:
    return json.dumps([p.to_dict() for p in points[-HISTORY_LIMIT:]], indent=1) + "\n"


# --- HTML ---------------------------------------------------------------------------------------


def to_html(report: Report, history: Sequence[HistoryPoint]) -> str:
    """A page a person reads: summary, a chart by severity, findings over time, every finding."""
    e = html.escape
    counts = report.counts()
    rows = "\n".join(
        f'<tr><td><span class="sev" style="background:{SEVERITY_COLOURS[f.severity.label]}">'
        f"{e(f.severity.label)}</span></td><td><code>{e(f.check)}</code></td><td>{e(str(f.object))}</td>"
        f"<td>{e(f.message)}<div class=why>{e(f.why)}</div></td><td>{e(f.fix)}</td></tr>"
        for f in report.findings
    )
    table = (
        "<table><thead><tr><th>severity</th><th>check</th><th>object</th><th>finding and why it matters</th>"
        f"<th>how to fix it</th></tr></thead><tbody>{rows}</tbody></table>"
        if report.findings
        else '<p class="clean">No findings.</p>'
    )
    over_time = (
        f"<h2>Findings over time</h2>{history_svg(history)}"
        if len(history) >= 2
        else "<p>Findings over time appear once there are two reports (the CronJob keeps them).</p>"
    )
    checked = ", ".join(f"{v} {e(k)}" for k, v in report.checked.items())
    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SAMD audit {e(_iso(report.generated_at))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4em; text-align: left; vertical-align: top; }}
.sev {{ color: #fff; padding: .1em .5em; border-radius: .3em; }}
.why {{ color: #666; font-size: .9em; margin-top: .3em; }}
.clean {{ color: #2e7d32; font-weight: bold; }}
</style></head><body>
<h1>SAMD security audit</h1>
<p>Cluster <code>{e(report.cluster)}</code>, {e(_iso(report.generated_at))}.
{len(report.findings)} finding(s). Checked: {checked}.</p>
<ul>{notes}</ul>
<h2>Findings by severity</h2>
{severity_svg(counts)}
{over_time}
<h2>Findings</h2>
{table}
</body></html>
"""


def severity_svg(counts: Mapping[str, int]) -> str:
    width, bar, gap, height = 420, 40, 24, 160
    top = max([1, *counts.values()])
    parts = []
    for index, (severity, count) in enumerate(counts.items()):
        x = 30 + index * (bar + gap)
        h = round(120 * count / top)
        parts.append(
            f'<rect x="{x}" y="{140 - h}" width="{bar}" height="{h}" fill="{SEVERITY_COLOURS[severity]}">'
            f"<title>{severity}: {count}</title></rect>"
            f'<text x="{x + bar / 2}" y="{135 - h}" text-anchor="middle">{count}</text>'
            f'<text x="{x + bar / 2}" y="155" text-anchor="middle" font-size="11">{severity}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="findings by severity" font-family="sans-serif" font-size="12">{"".join(parts)}</svg>'
    )


def history_svg(history: Sequence[HistoryPoint]) -> str:
    width, height, left, bottom = 640, 220, 40, 190
    points = list(history)[-HISTORY_LIMIT:]
    top = max([1, *(v for p in points for v in p.counts.values())])
    step = (width - left - 20) / max(1, len(points) - 1)
    lines = []
    for severity, colour in SEVERITY_COLOURS.items():
        coordinates = " ".join(
            f"{left + i * step:.1f},{bottom - 170 * p.counts.get(severity, 0) / top:.1f}"
            for i, p in enumerate(points)
        )
        lines.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coordinates}">'
            f"<title>{severity}</title></polyline>"
        )
    first, last = _iso(points[0].generated_at), _iso(points[-1].generated_at)
    legend = "".join(
        f'<text x="{left + 90 * i}" y="{height - 2}" fill="{c}" font-size="11">{s}</text>'
        for i, (s, c) in enumerate(SEVERITY_COLOURS.items())
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="findings over time" font-family="sans-serif" font-size="11">'
        f'<line x1="{left}" y1="{bottom}" x2="{width - 10}" y2="{bottom}" stroke="#999"/>'
        f'<text x="2" y="{bottom - 165}">{top}</text><text x="2" y="{bottom}">0</text>'
        f"{''.join(lines)}"
        f'<text x="{left}" y="{bottom + 14}">{first}</text>'
        f'<text x="{width - 10}" y="{bottom + 14}" text-anchor="end">{last}</text>{legend}</svg>'
    )


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
