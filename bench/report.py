"""Result tables: printed to the terminal and written as one section of docs/benchmarks.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"

DOC_HEADER = """# SAMD benchmarks

Written by `make bench` (`python -m bench [SUITE...]`); each suite rewrites only its own section.
Absolute figures drift on shared machines, so every figure stands beside a reference measured in
the same run on the same machine, and the targets are ratios to those references where possible
(docs/architecture.md, performance measurements). Timed tests are not used anywhere else.
"""


@dataclass(frozen=True)
class Row:
    """One line of a table. `passed` is None for figures that have no target."""

    figure: str
    value: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    passed: bool | None = None

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return ""
        return "PASS" if self.passed else "MISS"


COLUMNS = ("figure", "value", "reference", "ratio", "target", "result")


def _cells(row: Row) -> tuple[str, ...]:
    return (row.figure, row.value, row.reference, row.ratio, row.target, row.verdict)


def text_table(rows: Sequence[Row]) -> str:
    widths = [max(len(COLUMNS[i]), *(len(_cells(row)[i]) for row in rows)) for i in range(len(COLUMNS))]
    lines = ["  ".join(name.ljust(width) for name, width in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend(
        "  ".join(cell.ljust(width) for cell, width in zip(_cells(row), widths, strict=True)) for row in rows
    )
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Row]) -> str:
    def escape(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    lines.extend("| " + " | ".join(escape(cell) for cell in _cells(row)) + " |" for row in rows)
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    return f"{os.cpu_count()} CPUs (`nproc`), {cpu_model()}, Python {platform.python_version()}, {platform.system()}"


def write_section(suite: str, title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the `suite` section of docs/benchmarks.md, keeping everything else."""
    start, end = f"<!-- bench:{suite}:start -->", f"<!-- bench:{suite}:end -->"
    section = f"{start}\n## {title}\n\n{body.strip()}\n{end}"
    current = path.read_text() if path.exists() else DOC_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(current):
        updated = pattern.sub(lambda _: section, current)
    else:
        updated = current.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated)


def run_stamp(command: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"Command: `{command}` · date: {now} · machine: {machine()}"
