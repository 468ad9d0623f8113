"""Prometheus metrics of the operator, in a registry of their own, served on SAMD_METRICS_PORT.

Counted where they happen:

- ``samd_operator_reconciles_total{result}`` (``ok``, ``retry``: a temporary error, retried;
  ``failed``: a permanent error; ``error``: an unexpected exception) and
  ``samd_operator_reconcile_duration_seconds``;
- ``samd_operator_condition_failures_total{condition, reason}``: a model's condition turned False
  (``Verified``: a signature that does not verify; ``Encrypted``: a key that cannot be read, unwrapped
  or rotated; ...); ``reason`` is the operator's CamelCase reason, a fixed set;
- ``samd_operator_time_to_ready_seconds``: from a model's creation to its first Ready;
- ``samd_operator_loader_failures_total{reason}``: a model pod's loader (the ``samd fetch`` init
  container) exited with a non-zero code, seen in the pod status by the incident check; ``reason``
  from the exit code (``usage``, ``verification``, ``integrity``, ``key_provider``, ``storage``,
  ``other``), each termination counted once.

Read from the watched SecureModels at each scrape (no API call):

- ``samd_operator_models{condition, status}``: models by condition and status;
- ``samd_operator_model_ready{namespace, model}``: 1 Ready, 0 not;
- ``samd_operator_key_age_seconds{namespace, model}`` and
  ``samd_operator_key_next_rotation_timestamp_seconds{namespace, model}``;
- ``samd_operator_certificate_expiry_timestamp_seconds{namespace, model}``: the serving certificate.

Per-model labels are bounded by the number of SecureModels, like kube-state-metrics' per-object ones.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from samd.operator.conditions import ConditionType
from samd.operator.timestamps import parse_time

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
READY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
CONDITION_TYPES = frozenset(kind.value for kind in ConditionType)
STATUSES = ("True", "False", "Unknown")
# The loader's exit codes as reasons (docs/cli.md#exit-codes); src/samd/operator/incidents.py maps them.
LOADER_FAILURE_REASONS = ("usage", "verification", "integrity", "key_provider", "storage", "other")


def _time(text: Any) -> float | None:
    moment = parse_time(text)
    return None if moment is None else moment.timestamp()


@dataclass(frozen=True)
class ModelSnapshot:
    """What the metrics need of one SecureModel, taken from a watch event."""

    conditions: Mapping[str, tuple[str, str, float | None]]  # type -> (status, reason, transition time)
    created: float | None
    key_rotated: float | None
    key_next_rotation: float | None
    certificate_not_after: float | None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ModelSnapshot:
        status = body.get("status") or {}
        conditions = {}
        for condition in status.get("conditions") or []:
            kind = condition.get("type")
            if kind in CONDITION_TYPES:
                conditions[kind] = (
                    str(condition.get("status", "Unknown")),
                    str(condition.get("reason", ""))[:64],
                    _time(condition.get("lastTransitionTime")),
                )
        key = status.get("key") or {}
        return cls(
            conditions=conditions,
            created=_time((body.get("metadata") or {}).get("creationTimestamp")),
            key_rotated=_time(key.get("rotatedAt")),
            key_next_rotation=_time(key.get("nextRotation")),
            certificate_not_after=_time((status.get("certificates") or {}).get("serverNotAfter")),
        )


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    models: dict[tuple[str, str], ModelSnapshot] = field(default_factory=dict)
    _ready_seen: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        registry = self.registry
        self.reconciles = Counter(
            "samd_operator_reconciles",
            "SecureModel reconciles, by result (ok, retry, failed, error)",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "retry", "failed", "error"):
            self.reconciles.labels(result)
        self.reconcile_duration = Histogram(
            "samd_operator_reconcile_duration_seconds",
            "Time one SecureModel reconcile took",
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.condition_failures = Counter(
            "samd_operator_condition_failures",
            "A SecureModel condition turned False (Verified: signature; Encrypted: key), by condition and reason",
            ["condition", "reason"],
            registry=registry,
        )
        for condition in (ConditionType.VERIFIED, ConditionType.ENCRYPTED):
            self.condition_failures.labels(condition.value, "")  # so increase() sees the first failure
        self.time_to_ready = Histogram(
            "samd_operator_time_to_ready_seconds",
            "From a SecureModel's creation to its first Ready (observed once per model and operator run)",
            buckets=READY_BUCKETS,
            registry=registry,
        )
        self.loader_failures = Counter(
            "samd_operator_loader_failures",
            "A model pod's loader (samd fetch) exited with a non-zero code, by reason (from the exit code)",
            ["reason"],
            registry=registry,
        )
        for reason in LOADER_FAILURE_REASONS:
            self.loader_failures.labels(reason)  # so increase() sees the first failure
        registry.register(_ModelCollector(self))

    def observe_model(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """Record a watched SecureModel; count conditions that turned False and a first Ready."""
        key = (namespace, name)
        snapshot = ModelSnapshot.of(body)
        previous = self.models.get(key)
        for kind, (status, reason, _) in snapshot.conditions.items():
            before = previous.conditions.get(kind) if previous is not None else None
            if status == "False" and kind != ConditionType.READY and (before is None or before[0] != "False"):
                self.condition_failures.labels(kind, reason).inc()
        ready = snapshot.conditions.get(ConditionType.READY)
        if ready is not None and ready[0] == "True" and key not in self._ready_seen:
            self._ready_seen.add(key)
            if snapshot.created is not None and ready[2] is not None:
                self.time_to_ready.observe(max(0.0, ready[2] - snapshot.created))
        self.models[key] = snapshot

    def forget_model(self, namespace: str, name: str) -> None:
        self.models.pop((namespace, name), None)
        self._ready_seen.discard((namespace, name))

    def exposition(self) -> bytes:
        # samd.events counts what it emits and drops in the process-wide registry.
        return generate_latest(self.registry) + generate_latest(REGISTRY)


class _ModelCollector(Collector):
    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        models = dict(self._metrics.models)
        by_condition = GaugeMetricFamily(
            "samd_operator_models", "SecureModels by condition and status", labels=["condition", "status"]
        )
        counts = {(kind, status): 0 for kind in sorted(CONDITION_TYPES) for status in STATUSES}
        ready = GaugeMetricFamily(
            "samd_operator_model_ready",
            "1 if the SecureModel is Ready, else 0",
            labels=["namespace", "model"],
        )
        key_age = GaugeMetricFamily(
            "samd_operator_key_age_seconds",
            "Time since the model's key was created or last rotated",
            labels=["namespace", "model"],
        )
        next_rotation = GaugeMetricFamily(
            "samd_operator_key_next_rotation_timestamp_seconds",
            "When the model's key is due for rotation (spec.encryption.rotationPeriod after the last)",
            labels=["namespace", "model"],
        )
        expiry = GaugeMetricFamily(
            "samd_operator_certificate_expiry_timestamp_seconds",
            "When the model's serving certificate expires (Unix time)",
            labels=["namespace", "model"],
        )
        for (namespace, name), snapshot in sorted(models.items()):
            for kind, (status, _, _) in snapshot.conditions.items():
                counts[(kind, status if status in STATUSES else "Unknown")] += 1
            is_ready = snapshot.conditions.get(ConditionType.READY, ("Unknown", "", None))[0] == "True"
            ready.add_metric([namespace, name], 1.0 if is_ready else 0.0)
            if snapshot.key_rotated is not None:
                key_age.add_metric([namespace, name], max(0.0, now - snapshot.key_rotated))
            if snapshot.key_next_rotation is not None:
                next_rotation.add_metric([namespace, name], snapshot.key_next_rotation)
            if snapshot.certificate_not_after is not None:
                expiry.add_metric([namespace, name], snapshot.certificate_not_after)
        for (kind, status), count in counts.items():
            by_condition.add_metric([kind, status], count)
        yield from (by_condition, ready, key_age, next_rotation, expiry)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


async def start_metrics_server(metrics: OperatorMetrics, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve GET /metrics over plain HTTP; returns the runner (to clean up) and the port."""

    async def endpoint(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.add_routes([web.get("/metrics", endpoint)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # Our own socket, so that the port the system chose (port 0) is known without aiohttp internals.
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    await web.SockSite(runner, listener).start()
    return runner, int(listener.getsockname()[1])
