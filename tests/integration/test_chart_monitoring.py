"""The chart's monitoring parts: the PrometheusRule carries exactly the plain rule file's alerts (with
the runbook base URL), the dashboard ConfigMap the dashboard, both off unless switched on; the
operator gets its metrics port and the scraper selector for the models' NetworkPolicies."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.integration.test_chart import render
from tests.support.cluster import REPO

pytestmark = pytest.mark.integration


def test_monitoring_objects_are_rendered_only_when_switched_on() -> None:
    kinds = {doc["kind"] for doc in render("samd-system")}
    assert "PrometheusRule" not in kinds
    assert not any(
        doc["kind"] == "ConfigMap" and "dashboard" in doc["metadata"]["name"] for doc in render("samd-system")
    )


def test_the_prometheus_rule_and_dashboard_carry_the_one_source() -> None:
    docs = render(
        "samd-system",
        "--set", "monitoring.prometheusRule.enabled=true",
        "--set", "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
        "--set", "monitoring.grafanaDashboard.enabled=true",
        "--set", "monitoring.runbookBaseURL=https://docs.example.org/samd/",
    )  # fmt: skip
    (rule,) = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    source = yaml.safe_load((REPO / "deploy" / "prometheus" / "samd-alerts.yaml").read_text())
    for group in source["groups"]:
        for alert in group["rules"]:
            anchor = alert["annotations"]["runbook_url"].partition("#")[2]
            alert["annotations"]["runbook_url"] = f"https://docs.example.org/samd/docs/playbook.md#{anchor}"
    assert rule["spec"]["groups"] == source["groups"]
    (dashboard,) = [
        doc for doc in docs if doc["kind"] == "ConfigMap" and "dashboard" in doc["metadata"]["name"]
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    expected = json.loads((REPO / "deploy" / "grafana" / "samd-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["samd-dashboard.json"]) == expected


def test_the_operator_serves_metrics_and_names_the_scraper() -> None:
    docs = render(
        "samd-system",
        "--set", "monitoring.scraper.namespace=observability",
        "--set", "monitoring.scraper.podLabels.app=prom",
    )  # fmt: skip
    (operator,) = [
        doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"].endswith("operator")
    ]
    container = operator["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["SAMD_METRICS_PORT"] == "9090"
    assert env["SAMD_METRICS_SCRAPER_NAMESPACE"] == "observability"
    assert set(env["SAMD_METRICS_SCRAPER_POD_LABELS"].split(",")) == {
        "app=prom",
        "app.kubernetes.io/name=prometheus",
    }
    assert {"name": "metrics", "containerPort": 9090} in container["ports"]
