"""SAMD's alert rules in a real Prometheus, shared by `make demo` and the alerting end-to-end test:
the rules with `for:` shortened, a Prometheus configuration that scrapes SAMD's endpoints, and the
alerts Prometheus reports as firing."""

from __future__ import annotations

import copy
import json
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "samd-alerts.yaml"


def shortened_rules(document: Mapping[str, Any], *, hold: str = "2s", interval: str = "1s") -> dict[str, Any]:
    """The rules as shipped, with `for:` shortened to `hold` and every group evaluated each
    `interval`, so an alert fires in seconds, not minutes; the absent() alerts keep their `for:`,
    as they hold until the first scrape of a target that has just started."""
    shortened = copy.deepcopy(dict(document))
    for group in shortened["groups"]:
        group["interval"] = interval
        for rule in group["rules"]:
            if "for" in rule and "absent(" not in rule["expr"]:
                rule["for"] = hold
    return shortened


def write_shortened_rules(target: Path, *, hold: str = "2s", interval: str = "1s") -> Path:
    """deploy/prometheus/samd-alerts.yaml, shortened, written to `target`."""
    target.write_text(
        yaml.safe_dump(shortened_rules(yaml.safe_load(RULES.read_text()), hold=hold, interval=interval))
    )
    return target


@dataclass(frozen=True)
class ScrapeJob:
    """One endpoint Prometheus scrapes; `ca_file` and `server_name` for an https one (the webhook)."""

    name: str
    target: str  # host:port
    ca_file: Path | None = None
    server_name: str | None = None


def prometheus_config(
    jobs: Sequence[ScrapeJob],
    *,
    rule_file: str,
    alertmanager: str | None = None,
    interval: str = "1s",
) -> dict[str, Any]:
    """prometheus.yml: scrape `jobs` and evaluate `rule_file` each `interval`, alerts to `alertmanager`."""
    scrape_configs = []
    for job in jobs:
        config: dict[str, Any] = {
            "job_name": job.name,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "static_configs": [{"targets": [job.target]}],
        }
        if job.ca_file is not None:
            config["scheme"] = "https"
            config["tls_config"] = {"ca_file": str(job.ca_file)}
            if job.server_name is not None:
                config["tls_config"]["server_name"] = job.server_name
        scrape_configs.append(config)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [rule_file],
        "scrape_configs": scrape_configs,
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def alertmanager_config(webhook_url: str | None = None) -> dict[str, Any]:
    """alertmanager.yml: every alert to one receiver, grouped by name, sent within a second; the
    receiver posts to `webhook_url`, or nowhere (the alerts are then only listed by Alertmanager)."""
    receiver: dict[str, Any] = {"name": "samd"}
    if webhook_url is not None:
        receiver["webhook_configs"] = [{"url": webhook_url}]
    return {
        "route": {
            "receiver": "samd",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [receiver],
    }


def alertmanager_alerts(alertmanager: str) -> list[dict[str, Any]]:
    """The alerts `alertmanager` (http://host:port) holds: labels, annotations, status."""
    with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts", timeout=5) as answer:  # noqa: S310 - our URL
        return [dict(alert) for alert in json.load(answer)]


def firing_alerts(prometheus: str) -> list[dict[str, Any]]:
    """The alerts `prometheus` (http://host:port) reports as firing: labels, annotations, activeAt."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/alerts", timeout=5) as answer:  # noqa: S310 - our URL
        alerts = json.load(answer)["data"]["alerts"]
    return [dict(alert) for alert in alerts if alert.get("state") == "firing"]
