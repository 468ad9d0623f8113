"""hack/alerting.py, shared by `make demo` and the alerting end-to-end test: the shipped rules with
`for:` shortened, and a Prometheus configuration that the real `promtool` accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from hack.alerting import RULES, ScrapeJob, prometheus_config, shortened_rules, write_shortened_rules

pytestmark = pytest.mark.unit


def rules_by_name(document: dict[str, object]) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for group in document["groups"]:  # type: ignore[attr-defined]
        for rule in group["rules"]:
            found.setdefault(rule["alert"], []).append(rule)
    return found


def test_every_for_is_shortened_but_the_absent_alerts_and_the_source_are_kept() -> None:
    shipped = yaml.safe_load(RULES.read_text())
    before = yaml.safe_dump(shipped)

    short = shortened_rules(shipped, hold="2s", interval="1s")

    assert yaml.safe_dump(shipped) == before  # the caller's document is not changed
    assert {group["interval"] for group in short["groups"]} == {"1s"}
    rules = rules_by_name(short)
    assert rules["SamdModelNotReady"][0]["for"] == "2s"  # 15m as shipped
    assert rules["SamdModelDrift"][0]["for"] == "2s"
    assert rules["SamdOperatorDown"][0]["for"] == rules_by_name(shipped)["SamdOperatorDown"][0]["for"] == "5m"
    assert "for" not in rules["SamdLoaderFailures"][0]  # a rule without `for:` gets none
    # Nothing else changes: the same alerts, expressions, labels and annotations.
    assert [
        (rule["alert"], rule["expr"], rule.get("labels"), rule.get("annotations"))
        for group in short["groups"]
        for rule in group["rules"]
    ] == [
        (rule["alert"], rule["expr"], rule.get("labels"), rule.get("annotations"))
        for group in shipped["groups"]
        for rule in group["rules"]
    ]


def test_the_rendered_configuration_and_rules_pass_promtool(tmp_path: Path) -> None:
    write_shortened_rules(tmp_path / "samd-alerts.yaml")
    ca = tmp_path / "ca.crt"
    ca.write_text("")  # promtool checks that the file exists, the TLS handshake would read it
    config = prometheus_config(
        [
            ScrapeJob("samd-operator", "127.0.0.1:9090"),
            ScrapeJob("samd-webhook", "127.0.0.1:8443", ca, "localhost"),
        ],
        rule_file="samd-alerts.yaml",
        alertmanager="127.0.0.1:9093",
    )
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    result = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "scheme" not in jobs["samd-operator"]
    assert jobs["samd-webhook"]["scheme"] == "https"
    assert jobs["samd-webhook"]["tls_config"] == {"ca_file": str(ca), "server_name": "localhost"}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    assert "alerting" not in prometheus_config([], rule_file="r.yaml")
