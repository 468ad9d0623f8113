"""Prometheus metrics of `samd serve` and `samd proxy`, in a registry of their own.

- ``samd_serving_requests_total{client, endpoint, outcome}``: outcome is ``ok``, ``invalid``
  (400), ``forbidden`` (403), ``not_found``, ``too_large`` (413), ``rate_limited`` (429),
  ``unavailable`` (503) or ``error`` (500);
- ``samd_serving_request_duration_seconds{endpoint}``: from the request's arrival to its answer;
- ``samd_serving_handshakes_total`` and ``samd_serving_refused_handshakes_total{reason}``
  (``no_certificate``, ``untrusted_certificate``, ``protocol_version``, ``timeout``, ``other``);
- ``samd_serving_forbidden_total{reason}``, ``samd_serving_rate_limited_total{client}``,
  ``samd_serving_validation_failures_total{reason}``;
- ``samd_serving_model_load_seconds`` (verification and load), ``samd_serving_ready``;
- ``samd_serving_certificate_reloads_total{result}``, ``samd_serving_certificate_expiry_timestamp_seconds``;
- ``samd_serving_inference_errors_total{reason}``: requests the model (``model_error``), the upstream
  server (``upstream``) or the server itself (``internal``) failed on;
- ``samd_serving_start_timestamp_seconds``: when this server process started (a restart changes it);
- with a signed drift baseline in the model (see `samd.drift`): ``samd_drift_population_stability_index{direction, feature}``,
  ``samd_drift_jensen_shannon_divergence{direction, feature}`` (NaN until the window is warm),
  ``samd_drift_window_rows``, ``samd_drift_observed_rows_total`` and ``samd_drift_baseline_loaded``.

``client`` is a name from the allowed clients, or ``other``: a caller cannot grow the label set;
``feature`` comes from the signed baseline, which holds at most `samd.drift.MAX_COLUMNS` columns.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from samd.drift import DriftMonitor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ENDPOINTS = frozenset({"infer", "metadata", "ready", "live", "server", "other"})
INFERENCE_ERRORS = ("model_error", "upstream", "internal")
REFUSED_HANDSHAKE_REASONS = (
    "no_certificate",
    "untrusted_certificate",
    "protocol_version",
    "timeout",
    "other",
)
FORBIDDEN_REASONS = ("no_certificate", "no_common_name", "wrong_organization", "client_not_allowed")


class DriftCollector(Collector):
    """The drift gauges, computed from the monitor's window at each scrape."""

    def __init__(self, monitor: DriftMonitor | None) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        monitor = self.monitor
        yield GaugeMetricFamily(
            "samd_drift_baseline_loaded",
            "1 if the model carries a signed drift baseline (samd-baseline.json) and drift is measured",
            value=0 if monitor is None else 1,
        )
        if monitor is None:
            return
        drift = monitor.drift()
        psi = GaugeMetricFamily(
            "samd_drift_population_stability_index",
            "PSI of the recent window against the signed baseline (0.1 moderate, 0.25 significant)",
            labels=["direction", "feature"],
        )
        divergence = GaugeMetricFamily(
            "samd_drift_jensen_shannon_divergence",
            "Jensen-Shannon divergence in bits of the recent window against the signed baseline",
            labels=["direction", "feature"],
        )
        for column in drift:
            psi.add_metric([column.direction, column.name], column.psi)
            divergence.add_metric([column.direction, column.name], column.jensen_shannon)
        yield psi
        yield divergence
        yield GaugeMetricFamily(
            "samd_drift_window_rows", "Rows in the rolling drift window", value=monitor.window_rows()
        )
        yield CounterMetricFamily(
            "samd_drift_observed_rows",
            "Rows (predictions) added to the drift window since start",
            value=monitor.observed_rows,
        )

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return iter(())


class ServingMetrics:
    def __init__(self, clients: Collection[str] = ()) -> None:
        self.clients = frozenset(clients)
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "samd_serving_requests",
            "Requests answered, by client, endpoint and outcome",
            ["client", "endpoint", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "samd_serving_request_duration_seconds",
            "Time from a request's arrival to its answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.handshakes = Counter(
            "samd_serving_handshakes", "TLS handshakes completed (connections accepted)", registry=registry
        )
        self.refused_handshakes = Counter(
            "samd_serving_refused_handshakes",
            "TLS handshakes refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.forbidden = Counter(
            "samd_serving_forbidden",
            "Requests refused with 403 (certificate of another model or of a client not allowed)",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "samd_serving_rate_limited", "Requests refused with 429, by client", ["client"], registry=registry
        )
        self.validation_failures = Counter(
            "samd_serving_validation_failures",
            "Requests refused with 400 or 413, by reason",
            ["reason"],
            registry=registry,
        )
        self.model_load_seconds = Gauge(
            "samd_serving_model_load_seconds",
            "Time to verify the model files and load the model (or reach the upstream server)",
            registry=registry,
        )
        self.ready = Gauge("samd_serving_ready", "1 once the model is loaded and verified", registry=registry)
        self.certificate_reloads = Counter(
            "samd_serving_certificate_reloads",
            "Reloads of the serving certificate, key and client CA, by result",
            ["result"],
            registry=registry,
        )
        self.certificate_expiry = Gauge(
            "samd_serving_certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires (Unix time)",
            registry=registry,
        )

        self.inference_errors = Counter(
            "samd_serving_inference_errors",
            "Checked requests the model (model_error), the upstream (upstream) or the server (internal) failed on",
            ["reason"],
            registry=registry,
        )
        # Present at 0 from the start: increase() and the alerts then see the first refusals too.
        for reason in INFERENCE_ERRORS:
            self.inference_errors.labels(reason)
        for reason in REFUSED_HANDSHAKE_REASONS:
            self.refused_handshakes.labels(reason)
        for reason in FORBIDDEN_REASONS:
            self.forbidden.labels(reason)
        for endpoint in ENDPOINTS:
            self.duration.labels(endpoint)
        self.start_time = Gauge(
            "samd_serving_start_timestamp_seconds",
            "When this server process started (Unix time); a change means a restart",
            registry=registry,
        )
        self.start_time.set(time.time())
        self.drift = DriftCollector(None)
        registry.register(self.drift)

    def client_label(self, client: str | None) -> str:
        return client if client is not None and client in self.clients else "other"

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
