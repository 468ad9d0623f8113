"""Regenerate what the Helm chart copies from its one source (DESIGN §5.6).

- ``charts/samd/crds/*.yaml`` from ``crds/*.yaml``;
- ``charts/samd/files/webhooks.json`` from the webhook configuration builder
  (``samd.webhook.configuration``): rules, matchConditions and policies; the chart template adds
  the clientConfig (its Service and CA) and the namespaceSelector (its own namespace);
- ``charts/samd/files/prometheus-rules.yaml`` from ``deploy/prometheus/samd-alerts.yaml`` (the
  PrometheusRule template carries its groups) and ``charts/samd/files/grafana-dashboard.json`` from
  ``deploy/grafana/samd-dashboard.json`` (the dashboard ConfigMap).

``tests/unit/test_chart.py`` fails when the committed copies differ from what this writes.
Usage: ``hack/generate-chart [--check]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from samd.webhook.configuration import WebhookService, build_webhook_configuration

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "samd"
GENERATED = "# GENERATED from {source} by hack/generate-chart: edit the source, then run the script.\n"
PLACEHOLDER_CA = (
    b"-----BEGIN CERTIFICATE-----\nplaceholder: the chart fills in its CA\n-----END CERTIFICATE-----\n"
)


def expected_files() -> dict[Path, str]:
    files = {}
    for source in sorted((REPO / "crds").glob("*.yaml")):
        relative = source.relative_to(REPO)
        files[CHART / "crds" / source.name] = GENERATED.format(source=relative) + source.read_text()
    configuration = build_webhook_configuration(
        name="samd",
        service=WebhookService(namespace="placeholder", name="placeholder"),
        ca_bundle=PLACEHOLDER_CA,
    )
    webhooks = [
        {key: value for key, value in webhook.items() if key not in ("clientConfig", "namespaceSelector")}
        for webhook in configuration["webhooks"]
    ]
    files[CHART / "files" / "webhooks.json"] = json.dumps(webhooks, indent=2, sort_keys=True) + "\n"
    rules = REPO / "deploy" / "prometheus" / "samd-alerts.yaml"
    files[CHART / "files" / "prometheus-rules.yaml"] = (
        GENERATED.format(source=rules.relative_to(REPO)) + rules.read_text()
    )
    dashboard = REPO / "deploy" / "grafana" / "samd-dashboard.json"
    # JSON has no comments: the copy is the source, byte for byte.
    files[CHART / "files" / "grafana-dashboard.json"] = dashboard.read_text()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that would change")
    args = parser.parse_args()
    stale = [path for path, text in expected_files().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(REPO)} (run hack/generate-chart)", file=sys.stderr)
        return 1 if stale else 0
    for path in (CHART / "crds").glob("*.yaml"):
        path.unlink()
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
