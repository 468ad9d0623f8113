"""Draw SAMD's Grafana dashboard as a PNG from a real Prometheus, without Grafana.

Every panel of deploy/grafana/samd-dashboard.json is drawn where its gridPos puts it, from the
results of its own queries (`/api/v1/query_range`), with its legend format and threshold lines. The
picture in docs/monitoring.md was drawn this way from the alerting end-to-end test's Prometheus
(`SAMD_DASHBOARD_PNG=docs/images/monitoring-dashboard.png pytest tests/integration/test_alerting_e2e.py`).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "samd-dashboard.json"
ROW_HEIGHT = 0.42  # inches per grid unit


def query_range(
    prometheus: str, expression: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expression, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=10) as answer:  # noqa: S310
        document = json.load(answer)
    if document.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expression!r}: {document.get('error')}")
    return list(document["data"]["result"])


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: labels.get(match.group(1), ""), template) or "value"


def render(prometheus: str, output: Path, start: float, end: float | None = None, step: float = 1.0) -> Path:
    """Query every panel's targets over [start, end] and write the PNG; returns its path."""
    import matplotlib  # noqa: PLC0415 - a dev dependency, for this picture only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    end = time.time() if end is None else end
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    height = max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in panels)
    figure = plt.figure(figsize=(16, height * ROW_HEIGHT))
    figure.suptitle(dashboard["title"], fontsize=14, fontweight="bold")
    grid = figure.add_gridspec(height, 24, hspace=4.0, wspace=1.5, top=1 - 0.6 / (height * ROW_HEIGHT))
    for panel in panels:
        position = panel["gridPos"]
        if panel["type"] == "row":
            axis = figure.add_subplot(grid[position["y"], :])
            axis.axis("off")
            axis.text(0, 0.5, panel["title"], fontsize=12, fontweight="bold", va="center")
            continue
        rows = slice(position["y"], position["y"] + position["h"] - 1)
        columns = slice(position["x"], position["x"] + position["w"])
        axis = figure.add_subplot(grid[rows, columns])
        axis.set_title(panel["title"], fontsize=10, loc="left")
        drawn = 0
        for target in panel["targets"]:
            for series in query_range(prometheus, target["expr"], start, end, step):
                points = [
                    (float(t) - start, float(v)) for t, v in series["values"] if math.isfinite(float(v))
                ]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, linewidth=1.2, label=legend(target["legendFormat"], series["metric"]))
                drawn += 1
        steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
        for threshold in steps:
            if threshold["value"] is not None:
                axis.axhline(threshold["value"], color=threshold["color"], linestyle="--", linewidth=0.8)
        if drawn:
            axis.legend(fontsize=7, loc="upper left", ncol=2 if drawn > 4 else 1, framealpha=0.6)
        else:
            axis.text(0.5, 0.5, "no data", transform=axis.transAxes, ha="center", color="grey")
        axis.tick_params(labelsize=7)
        axis.set_xlabel("seconds", fontsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if unit not in ("", "short"):
            axis.set_ylabel(unit, fontsize=7)
        axis.grid(alpha=0.3)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    plt.close(figure)
    return output
