"""Regenerate what the Helm chart copies from its one source (docs/architecture.md, style rule 6).

- ``charts/samd/templates/crds/*.yaml`` from ``crds/*.yaml``: templates of the release, so that
  ``helm upgrade`` upgrades them, with ``helm.sh/resource-policy: keep`` so that ``helm uninstall``
  leaves them (and every SecureModel) in place; ``crds.install: false`` leaves them out;
- ``charts/samd/files/webhooks.json`` from the webhook configuration builder
  (``samd.webhook.configuration``): rules, matchConditions, policies and each webhook's own
  namespaceSelector (pods and workloads: protected namespaces only); the chart template adds the
  clientConfig (its Service and CA) and the namespaces never sent (kube-system, its own);
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


KEEP = """  annotations:
    # helm uninstall leaves the CRD, and so every SecureModel and ModelTrustPolicy, in place.
    helm.sh/resource-policy: keep
"""


def crd_template(source: str, relative: Path) -> str:
    """The CRD as a chart template: installed unless crds.install is false, kept on uninstall."""
    if "{{" in source or "}}" in source:
        raise ValueError(f"{relative} contains {{{{ or }}}}, which Helm would read as a template")
    lines = source.splitlines(keepends=True)
    at = lines.index("metadata:\n") + 1
    if any(line.startswith("  annotations:") for line in lines[at:]):
        raise ValueError(f"{relative} has annotations of its own: merge the keep annotation into them")
    return (
        "{{- if .Values.crds.install }}\n"
        + GENERATED.format(source=relative)
        + "".join([*lines[:at], KEEP, *lines[at:]])
        + "{{- end }}\n"
    )


def expected_files() -> dict[Path, str]:
    files = {}
    for source in sorted((REPO / "crds").glob("*.yaml")):
        relative = source.relative_to(REPO)
        files[CHART / "templates" / "crds" / source.name] = crd_template(source.read_text(), relative)
    configuration = build_webhook_configuration(
        name="samd",
        service=WebhookService(namespace="placeholder", name="placeholder"),
        ca_bundle=PLACEHOLDER_CA,
        namespace_exclusions=(),  # the chart adds its own namespace and excludedNamespaces
    )
    webhooks = [
        {key: value for key, value in webhook.items() if key != "clientConfig"}
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
    for path in (CHART / "templates" / "crds").glob("*.yaml"):
        path.unlink()
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
