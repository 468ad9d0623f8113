"""Prometheus metrics of the admission webhook, in a registry of their own (no global state).

- ``samd_webhook_admission_decisions_total{result, kind}``: result is ``allowed``, ``denied``,
  ``warned`` (allowed with warnings) or ``error`` (denied because the webhook could not decide);
- ``samd_webhook_denials_total{reason}``: denials by the webhook's reason (``SignatureInvalid``,
  ``BypassAttempt``, ``KeyExposed``, ... a fixed set; anything else counts as ``other``); the reasons
  in `BYPASS_REASONS` are attempts to reach a model's key, volume or traffic around SAMD;
- ``samd_webhook_admission_duration_seconds{kind}``: time from the body read to the answer;
- ``samd_webhook_invalid_reviews_total{reason}``: bodies answered with HTTP 400, 408 (``body_timeout``)
  or 413;
- ``samd_webhook_client_resets_total{stage}``: connections the client reset or dropped during the
  TLS ``handshake`` or while sending its ``request`` (logged at debug level only);
- ``samd_webhook_connection_timeouts_total{stage}``: connections closed because the TLS
  ``handshake`` or the first request's ``headers`` took longer than the read timeout;
- ``samd_webhook_tls_handshake_failures_total``: other failed handshakes (not TLS, wrong version);
- ``samd_webhook_connections_refused_total`` (closed at once: the connection limit was reached) and
  ``samd_webhook_connections_open``;
- ``samd_webhook_verification_cache_lookups_total{result}`` (hit, miss, coalesced),
  ``samd_webhook_verification_cache_evictions_total`` and ``..._entries``;
- ``samd_webhook_certificate_reloads_total{result}`` and ``samd_webhook_certificate_expiry_timestamp_seconds``;
- ``samd_webhook_ready``: 1 once the watched state is synced.

``kind`` is bounded to the kinds the webhook configuration sends (anything else counts as
``other``), so a client cannot grow the label set without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from samd.webhook.cache import CacheStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

KNOWN_KINDS = frozenset(
    {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "SecureModel"}
)
RESULTS = ("allowed", "denied", "warned", "error")
DENIAL_REASONS = frozenset(
    {
        "MalformedObject", "InvalidPolicy", "ModelNotFound", "InvalidModel", "SignatureMissing",
        "SignatureInvalid", "DigestMismatch", "PolicyViolation", "LoaderMissing", "LoaderAltered",
        "InsecurePod", "KeyExposed", "BypassAttempt", "InvalidSpec", "PodAltered", "NotPermitted",
        "NoTrustPolicy", "CoverageRemoved", "InvalidAdmissionReview", "InternalError",
    }
)  # fmt: skip
BYPASS_REASONS = frozenset({"BypassAttempt", "KeyExposed", "LoaderMissing", "LoaderAltered", "PodAltered"})
"""Denials of a workload that tried to get at a model's key, volume or traffic around the loader."""
# Admission answers take well under a millisecond when cached; the API server gives up at 5 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def kind_label(kind: str) -> str:
    return kind if kind in KNOWN_KINDS else "other"


class _CacheCollector(Collector):
    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats()
        lookups = CounterMetricFamily(
            "samd_webhook_verification_cache_lookups",
            "Signature verification cache lookups: hit (answered from the cache), miss (verified), "
            "coalesced (waited for an identical verification in progress)",
            labels=["result"],
        )
        lookups.add_metric(["hit"], stats.hits)
        lookups.add_metric(["miss"], stats.misses)
        lookups.add_metric(["coalesced"], stats.coalesced)
        yield lookups
        yield CounterMetricFamily(
            "samd_webhook_verification_cache_evictions",
            "Entries dropped because the verification cache was full",
            value=stats.evictions,
        )
        yield GaugeMetricFamily(
            "samd_webhook_verification_cache_entries",
            "Entries in the verification cache",
            value=stats.entries,
        )

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return iter(())


class WebhookMetrics:
    def __init__(self, cache_stats: Callable[[], CacheStats] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "samd_webhook_admission_decisions",
            "Admission decisions by result (allowed, denied, warned, error) and object kind",
            ["result", "kind"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "samd_webhook_admission_duration_seconds",
            "Time to answer one AdmissionReview, from the body read to the response",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.invalid_reviews = Counter(
            "samd_webhook_invalid_reviews",
            "Bodies refused before any decision (HTTP 400 or 413), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.client_resets = Counter(
            "samd_webhook_client_resets",
            "Connections the client reset or dropped before the exchange finished, by stage "
            "(handshake, request)",
            ["stage"],
            registry=self.registry,
        )
        self.connection_timeouts = Counter(
            "samd_webhook_connection_timeouts",
            "Connections closed because the TLS handshake or the first request's headers took longer "
            "than the read timeout, by stage (handshake, headers)",
            ["stage"],
            registry=self.registry,
        )
        self.handshake_failures = Counter(
            "samd_webhook_tls_handshake_failures",
            "TLS handshakes that failed for another reason than a reset or a timeout",
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "samd_webhook_connections_refused",
            "Connections closed as soon as they were accepted because the connection limit was reached",
            registry=self.registry,
        )
        self.connections_open = Gauge(
            "samd_webhook_connections_open",
            "Client connections open now (TLS handshakes in progress included)",
            registry=self.registry,
        )
        self.certificate_reloads = Counter(
            "samd_webhook_certificate_reloads",
            "Serving certificate reloads after the files changed, by result (loaded, failed)",
            ["result"],
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "samd_webhook_certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires (Unix time)",
            registry=self.registry,
        )
        self.ready = Gauge(
            "samd_webhook_ready",
            "1 once the watched state is synced and decisions can be made",
            registry=self.registry,
        )
        self.denials = Counter(
            "samd_webhook_denials",
            "Admission denials by reason (BypassAttempt, KeyExposed, LoaderMissing, LoaderAltered and "
            "PodAltered are bypass attempts)",
            ["reason"],
            registry=self.registry,
        )
        for reason in (*sorted(DENIAL_REASONS), "other"):
            self.denials.labels(reason)
        self._decision_children: dict[tuple[str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        # Every combination exists from the start, so that rate() works before the first event.
        for result in RESULTS:
            for kind in (*sorted(KNOWN_KINDS), "other"):
                self.decisions.labels(result, kind)
        for kind in (*sorted(KNOWN_KINDS), "other"):  # so rate() and the latency alert see the first reviews
            self.duration.labels(kind)
        for result in ("loaded", "failed"):
            self.certificate_reloads.labels(result)
        for stage in ("handshake", "request"):
            self.client_resets.labels(stage)
        for stage in ("handshake", "headers"):
            self.connection_timeouts.labels(stage)
        if cache_stats is not None:
            self.registry.register(_CacheCollector(cache_stats))

    def observe_decision(self, result: str, kind: str, seconds: float) -> None:
        label = kind_label(kind)
        # The labelled children are looked up once: `labels()` costs more than the increment.
        counter = self._decision_children.get((result, label))
        if counter is None:
            counter = self._decision_children[(result, label)] = self.decisions.labels(result, label)
        histogram = self._duration_children.get(label)
        if histogram is None:
            histogram = self._duration_children[label] = self.duration.labels(label)
        counter.inc()
        histogram.observe(seconds)

    def observe_denial(self, reason: str) -> None:
        self.denials.labels(reason if reason in DENIAL_REASONS else "other").inc()

    def exposition(self) -> bytes:
        # samd.events counts what it emits and drops in the process-wide registry.
        return generate_latest(self.registry) + generate_latest(REGISTRY)
