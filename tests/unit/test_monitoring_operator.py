"""The operator's side of monitoring: the scraper rule in each model's NetworkPolicy, its settings,
and the metrics read from watched SecureModels."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from samd.operator.builders.context import BuilderSettings
from samd.operator.builders.network import build_network_policy
from samd.operator.config import MetricsScraper, OperatorConfig
from samd.operator.metrics import OperatorMetrics
from tests.unit.test_builders_example import SETTINGS, fraud_detection

pytestmark = pytest.mark.unit

PROMETHEUS = MetricsScraper("monitoring", (("app.kubernetes.io/name", "prometheus"),))


def test_the_prometheus_pods_reach_the_metrics_port_and_nothing_else() -> None:
    settings = dataclasses.replace(SETTINGS, metrics_scrapers=(PROMETHEUS,))
    policy = build_network_policy(fraud_detection(settings=settings))
    clients, scrapers = policy["spec"]["ingress"]
    assert clients["ports"] == [{"protocol": "TCP", "port": 8443}]
    assert scrapers == {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 9090}],
    }


def test_a_model_without_clients_is_still_scraped_but_not_called() -> None:
    settings = dataclasses.replace(SETTINGS, metrics_scrapers=(PROMETHEUS,))
    policy = build_network_policy(fraud_detection({"serving": {"allowedClients": None}}, settings=settings))
    assert [rule["ports"] for rule in policy["spec"]["ingress"]] == [[{"protocol": "TCP", "port": 9090}]]


def test_the_scraper_comes_from_the_environment_and_can_be_switched_off() -> None:
    assert OperatorConfig.from_env({}).metrics_scrapers == (PROMETHEUS,)
    custom = OperatorConfig.from_env(
        {
            "SAMD_METRICS_SCRAPER_NAMESPACE": "observability",
            "SAMD_METRICS_SCRAPER_POD_LABELS": "app=prom, tier=x",
        }
    )
    assert custom.metrics_scrapers == (MetricsScraper("observability", (("app", "prom"), ("tier", "x"))),)
    # The operator itself is always let in: it compares the servers' metrics with incident thresholds.
    operator = MetricsScraper(custom.namespace, (("app.kubernetes.io/name", "samd-operator"),))
    assert BuilderSettings.of(custom).metrics_scrapers == (*custom.metrics_scrapers, operator)
    nobody = OperatorConfig.from_env({"SAMD_METRICS_SCRAPER_NAMESPACE": ""})
    assert nobody.metrics_scrapers == ()
    assert BuilderSettings.of(nobody).metrics_scrapers == (operator,)
    with pytest.raises(ValueError, match="key=value"):
        OperatorConfig.from_env({"SAMD_METRICS_SCRAPER_POD_LABELS": "prometheus"})


def test_the_metrics_port_is_a_number_or_off() -> None:
    assert OperatorConfig.from_env({}).metrics_port == 9090
    assert OperatorConfig.from_env({"SAMD_METRICS_PORT": "9400"}).metrics_port == 9400
    assert OperatorConfig.from_env({"SAMD_METRICS_PORT": "off"}).metrics_port is None
    with pytest.raises(ValueError, match="SAMD_METRICS_PORT"):
        OperatorConfig.from_env({"SAMD_METRICS_PORT": "ninety"})


def _model(conditions: dict[str, tuple[str, str, str]], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": "2026-12-01T10:00:00Z"},
        "status": {
            "conditions": [
                {"type": kind, "status": value, "reason": reason, "lastTransitionTime": when}
                for kind, (value, reason, when) in conditions.items()
            ],
            **status,
        },
    }


def _samples(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
    }


def test_watched_models_give_conditions_readiness_key_and_certificate_times() -> None:
    metrics = OperatorMetrics()
    metrics.observe_model(
        "fraud",
        "scoring",
        _model(
            {
                "Verified": ("True", "Verified", "2026-12-01T10:00:05Z"),
                "Ready": ("True", "Ready", "2026-12-01T10:00:12Z"),
            },
            key={"rotatedAt": "2026-12-01T10:00:03Z", "nextRotation": "2026-12-31T10:00:03Z"},
            certificates={"serverNotAfter": "2027-03-01T10:00:00Z"},
        ),
    )
    metrics.observe_model(
        "fraud", "churn", _model({"Ready": ("False", "NotVerified", "2026-12-01T10:00:09Z")})
    )
    samples = _samples(metrics)
    assert samples[("samd_operator_models", (("condition", "Ready"), ("status", "True")))] == 1
    assert samples[("samd_operator_models", (("condition", "Ready"), ("status", "False")))] == 1
    assert samples[("samd_operator_model_ready", (("model", "scoring"), ("namespace", "fraud")))] == 1
    assert samples[("samd_operator_model_ready", (("model", "churn"), ("namespace", "fraud")))] == 0
    next_rotation = samples[
        ("samd_operator_key_next_rotation_timestamp_seconds", (("model", "scoring"), ("namespace", "fraud")))
    ]
    assert next_rotation == datetime.datetime(2026, 12, 31, 10, 0, 3, tzinfo=datetime.UTC).timestamp()
    expiry = samples[
        ("samd_operator_certificate_expiry_timestamp_seconds", (("model", "scoring"), ("namespace", "fraud")))
    ]
    assert expiry == datetime.datetime(2027, 3, 1, 10, tzinfo=datetime.UTC).timestamp()
    assert (
        samples[("samd_operator_time_to_ready_seconds_sum", ())] == 12.0
    )  # created 10:00:00, Ready 10:00:12
    metrics.forget_model("fraud", "churn")
    assert ("samd_operator_model_ready", (("model", "churn"), ("namespace", "fraud"))) not in _samples(
        metrics
    )


def test_a_condition_turning_false_is_counted_once_with_its_reason() -> None:
    metrics = OperatorMetrics()
    verified = _model({"Verified": ("True", "Verified", "2026-12-01T10:00:05Z")})
    failed = _model({"Verified": ("False", "SignatureInvalid", "2026-12-01T11:00:00Z")})
    for body in (verified, failed, failed, verified, failed):
        metrics.observe_model("fraud", "scoring", body)
    key = (
        "samd_operator_condition_failures_total",
        (("condition", "Verified"), ("reason", "SignatureInvalid")),
    )
    assert _samples(metrics)[key] == 2
