"""What the operator tells incident tooling: its reconcile events that are security events, the
thresholds of the trust policies crossed at the served models, and the loader's failures.

The reconciler's events become Kubernetes Events on the SecureModel (handlers.py); those that are
security events (a signature that fails, a key rotation that fails, a quarantine set or cleared)
also become CloudEvents (`samd.events`), each with one decision log line.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from samd.errors import IntegrityError, KeyProviderError, StorageError, UsageError, VerificationError
from samd.events import EventDispatcher, EventType, SecurityEvent, Sink, emit
from samd.logs import decision_fields
from samd.operator.builders.metadata import MODEL_LABEL
from samd.operator.builders.names import DNS_SUBDOMAIN_MAX, fit_name, model_label_value
from samd.operator.builders.serving import FETCH_CONTAINER
from samd.operator.config import OperatorConfig
from samd.operator.kube import Kube
from samd.operator.metrics import OperatorMetrics
from samd.operator.steps.shared import Event, EventReason
from samd.policy import TrustPolicy
from samd.spec import API_VERSION, PolicyEventSink
from samd.storage.guard import policy_allowances

log = logging.getLogger(__name__)

SECURITY_REASONS: dict[EventReason, EventType] = {
    EventReason.SIGNATURE_INVALID: EventType.SIGNATURE_FAILED,
    EventReason.ARTIFACT_INVALID: EventType.SIGNATURE_FAILED,
    EventReason.VERSION_NOT_SIGNED: EventType.SIGNATURE_FAILED,
    EventReason.VERSION_MISMATCH: EventType.SIGNATURE_FAILED,
    EventReason.KEY_ROTATION_FAILED: EventType.KEY_ROTATION_FAILED,
    EventReason.QUARANTINED: EventType.MODEL_QUARANTINED,
    EventReason.QUARANTINE_CLEARED: EventType.QUARANTINE_CLEARED,
}


def security_event(namespace: str, name: str, event: Event) -> SecurityEvent | None:
    """The CloudEvent a reconcile event stands for, or None when it is not a security event."""
    kind = SECURITY_REASONS.get(event.reason)
    if kind is None:
        return None
    return SecurityEvent(kind, "operator", event.reason, event.message, namespace=namespace, name=name)


def record_outcome_events(namespace: str, name: str, events: Iterable[Event]) -> list[SecurityEvent]:
    """Emit the security events among a reconcile's events (enqueued: never blocks the reconcile)."""
    emitted = []
    for event in events:
        found = security_event(namespace, name, event)
        if found is not None:
            emit(found)
            emitted.append(found)
    return emitted


# --- thresholds: the operator reads each served model's metrics -------------------------------------
#
# On its own timer (SAMD_INCIDENT_CHECK_INTERVAL) the operator reads the metrics endpoint of each
# running pod of every model whose covering policies set spec.responses, and compares what changed
# since the last reading with the thresholds. Pulled, not pushed: a model's pods cannot make the
# operator act on another model, nor quarantine anything by sending it a message.

UNAUTHORIZED_COUNTERS = ("samd_serving_forbidden_total", "samd_serving_refused_handshakes_total")
DRIFT_GAUGE = "samd_drift_population_stability_index"  # {direction, feature}; NaN until warm
METRICS_PORT_NAME = "metrics"
DEFAULT_METRICS_PORT = 9090


@dataclass(frozen=True)
class Thresholds:
    """The strictest thresholds of the policies covering a model, and whether any asks for quarantine."""

    unauthorized_per_minute: int | None = None
    drift_psi: float | None = None
    quarantine: bool = False

    @classmethod
    def of(cls, policies: Iterable[TrustPolicy]) -> Thresholds:
        per_minute = [p.spec.responses.unauthorized_per_minute for p in policies]
        psi = [p.spec.responses.drift_psi for p in policies]
        return cls(
            unauthorized_per_minute=min((v for v in per_minute if v is not None), default=None),
            drift_psi=min((v for v in psi if v is not None), default=None),
            quarantine=any(p.spec.responses.quarantine for p in policies),
        )

    @property
    def any(self) -> bool:
        return self.unauthorized_per_minute is not None or self.drift_psi is not None


@dataclass(frozen=True)
class Reading:
    """What one pod's metrics said at one moment."""

    unauthorized: float  # refused handshakes + 403 answers, since the server started
    drift_psi: float | None  # the largest PSI over its inputs and outputs, if it exports any
    at: float  # monotonic seconds


def read_metrics(text: str, at: float) -> Reading:
    """A Reading from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    unauthorized = 0.0
    drift: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in UNAUTHORIZED_COUNTERS:
                unauthorized += sample.value
            elif sample.name == DRIFT_GAUGE and not math.isnan(sample.value):
                drift = sample.value if drift is None else max(drift, sample.value)
    return Reading(unauthorized, drift, at)


@dataclass(frozen=True)
class Finding:
    kind: EventType
    reason: str
    message: str
    details: dict[str, object]


def evaluate(
    previous: Mapping[str, Reading], current: Mapping[str, Reading], thresholds: Thresholds
) -> list[Finding]:
    """What crossed a threshold between two readings of a model's pods (keyed by pod name).

    The rate counts only pods read both times (a new pod has no baseline yet); a counter that went
    down (a restarted server) counts from zero.
    """
    findings = []
    if thresholds.unauthorized_per_minute is not None:
        refused, seconds = 0.0, 0.0
        for pod, now in current.items():
            before = previous.get(pod)
            if before is None or now.at <= before.at:
                continue
            refused += (
                now.unauthorized - before.unauthorized
                if now.unauthorized >= before.unauthorized
                else now.unauthorized
            )
            seconds = max(seconds, now.at - before.at)
        if seconds > 0:
            per_minute = refused * 60 / seconds
            if per_minute >= thresholds.unauthorized_per_minute:
                findings.append(
                    Finding(
                        EventType.UNAUTHORIZED_ACCESS,
                        "UnauthorizedAccess",
                        f"{refused:.0f} refused handshakes and 403 answers in {seconds:.0f} s ({per_minute:.0f} per "
                        f"minute; the policy's threshold is {thresholds.unauthorized_per_minute})",
                        {"refused": refused, "seconds": round(seconds, 1), "perMinute": round(per_minute, 1)},
                    )
                )
    if thresholds.drift_psi is not None:
        drifts = [r.drift_psi for r in current.values() if r.drift_psi is not None]
        if drifts and max(drifts) >= thresholds.drift_psi:
            findings.append(
                Finding(
                    EventType.DRIFT_DETECTED,
                    "DriftOverThreshold",
                    f"population stability index {max(drifts):.3f} (the policy's threshold is {thresholds.drift_psi})",
                    {"psi": max(drifts)},
                )
            )
    return findings


def incident_view(pod: dict[str, Any]) -> dict[str, Any]:
    """What the incident check reads of a pod (`metrics_url`, `loader_failures`, the model label):
    a thousand whole pods held at once were the operator's high-water mark."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {key: metadata[key] for key in ("name", "uid", "labels") if key in metadata},
        "spec": {
            "containers": [
                {"ports": container["ports"]}
                for container in (pod.get("spec") or {}).get("containers") or []
                if container.get("ports")
            ]
        },
        "status": {key: status[key] for key in ("phase", "podIP", "initContainerStatuses") if key in status},
    }


def metrics_url(pod: Mapping[str, Any]) -> str | None:
    """http://<pod IP>:<its metrics port>/metrics of a running pod, or None."""
    status = pod.get("status") or {}
    address = status.get("podIP")
    if status.get("phase") != "Running" or not address:
        return None
    port = DEFAULT_METRICS_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == METRICS_PORT_NAME:
                port = int(declared["containerPort"])
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/metrics"


ModelKey = tuple[str, str]
MAX_METRICS_BYTES = 4 * 1024 * 1024
OPERATOR_USER = "samd-operator"


async def fetch_metrics(url: str, timeout: float = 3.0) -> str:
    """GET a pod's metrics page (bounded in time and size)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url, allow_redirects=False) as response,
    ):
        if response.status != 200:
            raise aiohttp.ClientResponseError(
                response.request_info, (), status=response.status, message=f"HTTP {response.status}"
            )
        body = await response.content.read(MAX_METRICS_BYTES)
        return body.decode("utf-8", errors="replace")


class IncidentWatch:
    """One `check` per interval: the loader failures of every model's pods, and the thresholds of
    every model a policy's spec.responses covers. One pod LIST per namespace that holds SecureModels."""

    def __init__(
        self,
        kube: Kube,
        fetch: Callable[[str], Awaitable[str]] = fetch_metrics,
        sinks: PolicySinks | None = None,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.kube = kube
        self.fetch = fetch
        self.sinks = sinks
        self.metrics = metrics
        self.readings: dict[ModelKey, dict[str, Reading]] = {}
        self.crossed: dict[ModelKey, set[EventType]] = {}
        self.loader_failures = LoaderFailureLedger()

    async def check(
        self, models: Iterable[ModelKey], policies_of: Callable[[str], Sequence[TrustPolicy]]
    ) -> None:
        by_namespace: dict[str, list[str]] = {}
        for namespace, name in models:
            by_namespace.setdefault(namespace, []).append(name)
        seen: set[ModelKey] = set()
        self.loader_failures.keep_namespaces(by_namespace)
        for namespace, names in sorted(by_namespace.items()):
            try:
                # Every pod of every model here (the pods that carry the model label), listed a page
                # at a time and each cut down to what the check reads as it arrives.
                pods = await self.kube.list_in(
                    "v1", "Pod", namespace, {MODEL_LABEL: None}, keep=incident_view
                )
            except (kopf.TemporaryError, kopf.PermanentError) as error:
                log.warning("incident check of namespace %s failed: %s", namespace, error)
                seen |= {(namespace, name) for name in names}  # keep the readings for the next check
                continue
            pods_of: dict[str, list[dict[str, Any]]] = {}
            for pod in pods:
                label = ((pod.get("metadata") or {}).get("labels") or {}).get(MODEL_LABEL)
                pods_of.setdefault(str(label), []).append(pod)
            self.loader_failures.keep_only(
                namespace, {str((pod.get("metadata") or {}).get("uid", "")) for pod in pods}
            )
            covering = policies_of(namespace)
            thresholds = Thresholds.of(covering)
            for name in names:
                key = (namespace, name)
                model_pods = pods_of.get(model_label_value(name), [])
                try:
                    await self._loader_failures(key, model_pods, covering)
                    if thresholds.any:
                        seen.add(key)
                        await self._check_model(key, thresholds, covering, model_pods)
                except (kopf.TemporaryError, kopf.PermanentError) as error:
                    log.warning("incident check of %s/%s failed: %s", namespace, name, error)
        for gone in set(self.readings) - seen:
            self.readings.pop(gone, None)
            self.crossed.pop(gone, None)

    async def _loader_failures(
        self, key: ModelKey, pods: Sequence[Mapping[str, Any]], covering: Sequence[TrustPolicy]
    ) -> None:
        """Count each new loader failure; record it as an Event on the SecureModel (and, for a model
        that does not verify, as a security event)."""
        namespace, name = key
        failures = self.loader_failures.new(namespace, [f for pod in pods for f in loader_failures(pod)])
        if not failures:
            return
        for failure in failures:
            if self.metrics is not None:
                self.metrics.loader_failures.labels(failure.reason).inc()
        try:
            model = await self.kube.get(API_VERSION, "SecureModel", name, namespace)
        except (kopf.TemporaryError, kopf.PermanentError) as error:
            log.warning("cannot record the loader failures of %s/%s as Events: %s", namespace, name, error)
            model = None
        for failure in failures:
            message = failure.describe()
            log.warning(
                "loader failed for %s/%s: %s",
                namespace,
                name,
                message,
                extra=decision_fields(
                    component="operator",
                    event="loader_failure",
                    decision="refused",
                    reason=failure.reason,
                    user=OPERATOR_USER,
                    model=key,
                ),
            )
            recorded = True  # when in doubt, tell the incident tooling
            if model is not None:
                # A name fixed by the failure: after an operator restart it is not recorded twice.
                try:
                    recorded = await self.kube.create(loader_failure_event(model, failure, utc_now()))
                except (kopf.TemporaryError, kopf.PermanentError) as error:
                    log.warning(
                        "cannot record a loader failure of %s/%s as an Event: %s", namespace, name, error
                    )
            if recorded and failure.reason in SECURITY_LOADER_REASONS:
                event = SecurityEvent(
                    EventType.SIGNATURE_FAILED,
                    "operator",
                    LOADER_EVENT_REASON,
                    message,
                    namespace=namespace,
                    name=name,
                    details={
                        "pod": failure.pod,
                        "exitCode": failure.exit_code,
                        "loaderReason": failure.reason,
                    },
                )
                emit(event)
                if self.sinks is not None:
                    await self.sinks.deliver([event], covering)

    async def _check_model(
        self,
        key: ModelKey,
        thresholds: Thresholds,
        covering: Sequence[TrustPolicy],
        pods: Sequence[Mapping[str, Any]],
    ) -> None:
        namespace, name = key
        current: dict[str, Reading] = {}
        for pod in pods:
            url = metrics_url(pod)
            if url is None:
                continue
            try:
                text = await self.fetch(url)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                log.info("cannot read the metrics of %s/%s at %s: %s", namespace, name, url, error)
                continue
            current[str(pod["metadata"]["name"])] = read_metrics(text, time.monotonic())
        findings = evaluate(self.readings.get(key, {}), current, thresholds)
        self.readings[key] = current
        kinds = {finding.kind for finding in findings}
        started = kinds - self.crossed.get(key, set())
        self.crossed[key] = kinds
        for finding in findings:
            if finding.kind in started:  # once per crossing, not once per check
                event = SecurityEvent(
                    finding.kind,
                    "operator",
                    finding.reason,
                    finding.message,
                    namespace=namespace,
                    name=name,
                    details=finding.details,
                )
                emit(event)
                if self.sinks is not None:
                    await self.sinks.deliver([event], covering)
        if findings and thresholds.quarantine:
            await self._quarantine(key, findings[0])

    async def _quarantine(self, key: ModelKey, finding: Finding) -> None:
        """Set status.quarantine (once); the model's reconcile then scales it down and records it."""
        namespace, name = key
        model = await self.kube.get(API_VERSION, "SecureModel", name, namespace)
        if model is None or ((model.get("status") or {}).get("quarantine") or {}).get("active") is True:
            return
        since = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        quarantine = {
            "active": True,
            "reason": finding.reason,
            "message": f"{finding.message}; quarantined by the incident response of its trust policy",
            "since": since,
            "by": OPERATOR_USER,
        }
        await self.kube.patch_merge(
            API_VERSION, "SecureModel", name, namespace, {"status": {"quarantine": quarantine}}, status=True
        )
        log.warning(
            "quarantined %s/%s: %s",
            namespace,
            name,
            finding.message,
            extra=decision_fields(
                component="operator",
                event="quarantine",
                decision="quarantined",
                reason=finding.reason,
                user=OPERATOR_USER,
                model=key,
            ),
        )


# --- the loader: its failures read from the model pods' status --------------------------------------
#
# `samd fetch` runs as the init container FETCH_CONTAINER and has no metrics endpoint of its own; its
# exit code says what failed (docs/cli.md#exit-codes). The same pod listing that the thresholds use
# shows each termination, so the operator counts it without a watch of its own.

LOADER_REASONS: dict[int, str] = {
    UsageError.exit_code: "usage",
    VerificationError.exit_code: "verification",
    IntegrityError.exit_code: "integrity",
    KeyProviderError.exit_code: "key_provider",
    StorageError.exit_code: "storage",
}
LOADER_OTHER = "other"
LOADER_EXPLANATIONS = {
    "usage": "bad arguments or input files (the pod is not the one the operator built?)",
    "verification": "the model's signature does not verify, or its files do not match the signature",
    "integrity": "the encrypted artifact is damaged, tampered with or was decrypted with the wrong key",
    "key_provider": "the key could not unwrap the data key, or the KMS or HSM failed",
    "storage": "the artifact could not be read from storage",
    LOADER_OTHER: "an unexpected failure",
}
# The loader refused what it was given: the model was changed after it was verified (or the signer
# is not trusted). A security event, like a signature the operator itself finds invalid.
SECURITY_LOADER_REASONS = frozenset({"verification", "integrity"})
LOADER_EVENT_REASON = EventReason.LOADER_FAILED
MAX_TERMINATION_MESSAGE = 256


def loader_reason(exit_code: int) -> str:
    """The bounded reason label of a loader exit code (docs/cli.md#exit-codes), else "other"."""
    return LOADER_REASONS.get(exit_code, LOADER_OTHER)


@dataclass(frozen=True)
class LoaderFailure:
    """One termination of a pod's loader with a non-zero exit code."""

    pod: str
    uid: str
    attempt: int  # 0 for the first run of the init container, 1 for its first restart, ...
    exit_code: int
    reason: str
    message: str

    @property
    def ident(self) -> tuple[str, int]:
        return (self.uid, self.attempt)

    def describe(self) -> str:
        said = f": {self.message}" if self.message else ""
        return (
            f"the loader ({FETCH_CONTAINER}) of pod {self.pod} exited with code {self.exit_code} "
            f"({LOADER_EXPLANATIONS[self.reason]}){said}; the model is not served from this pod; "
            f"`kubectl logs {self.pod} -c {FETCH_CONTAINER}` says why"
        )


def loader_failures(pod: Mapping[str, Any]) -> list[LoaderFailure]:
    """The loader terminations with a non-zero exit code a pod's status shows.

    The status shows at most two: the current state (attempt = restartCount) and the last one
    (attempt = restartCount - 1), so a termination keeps its attempt number when it moves from the
    one to the other.
    """
    metadata = pod.get("metadata") or {}
    found = []
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if status.get("name") != FETCH_CONTAINER:
            continue
        restarts = int(status.get("restartCount") or 0)
        for state, attempt in ((status.get("state"), restarts), (status.get("lastState"), restarts - 1)):
            terminated = (state or {}).get("terminated")
            if not terminated or attempt < 0:
                continue
            code = int(terminated.get("exitCode") or 0)
            if code == 0:
                continue
            found.append(
                LoaderFailure(
                    pod=str(metadata.get("name", "")),
                    uid=str(metadata.get("uid", "")),
                    attempt=attempt,
                    exit_code=code,
                    reason=loader_reason(code),
                    message=str(terminated.get("message") or "").strip()[:MAX_TERMINATION_MESSAGE],
                )
            )
    return found


class LoaderFailureLedger:
    """Which loader failures were already counted, by namespace and (pod uid, attempt): listing a pod
    again counts nothing twice. Forgets the pods that are gone."""

    def __init__(self) -> None:
        self._seen: dict[str, set[tuple[str, int]]] = {}

    def new(self, namespace: str, failures: Iterable[LoaderFailure]) -> list[LoaderFailure]:
        seen = self._seen.setdefault(namespace, set())
        fresh = []
        for failure in failures:
            if failure.ident not in seen:
                seen.add(failure.ident)
                fresh.append(failure)
        return fresh

    def keep_only(self, namespace: str, pod_uids: set[str]) -> None:
        """After a listing of the namespace: forget the failures of pods it no longer has."""
        kept = {ident for ident in self._seen.get(namespace, set()) if ident[0] in pod_uids}
        if kept:
            self._seen[namespace] = kept
        else:
            self._seen.pop(namespace, None)

    def keep_namespaces(self, namespaces: Iterable[str]) -> None:
        """Forget the namespaces that hold no SecureModel any more."""
        wanted = set(namespaces)
        for namespace in set(self._seen) - wanted:
            del self._seen[namespace]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def loader_failure_event(
    model: Mapping[str, Any], failure: LoaderFailure, now: datetime.datetime
) -> dict[str, Any]:
    """The Warning Event on the SecureModel for one loader failure; its name is fixed by the failure."""
    metadata = model["metadata"]
    stamp = now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    name = fit_name(f"{metadata['name']}.loader-{failure.uid[:8]}-{failure.attempt}", DNS_SUBDOMAIN_MAX)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": "SecureModel",
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
        },
        "type": "Warning",
        "reason": LOADER_EVENT_REASON,
        "message": failure.describe()[:1024],
        "source": {"component": OPERATOR_USER},
        "reportingComponent": OPERATOR_USER,
        "reportingInstance": OPERATOR_USER,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


# --- the trust policies' own sinks ------------------------------------------------------------------


class PolicySinks:
    """Also deliver the operator's security events to the `spec.eventSinks` of the policies covering
    the model. Each sink's HMAC key is read from its Secret in the operator's namespace when an event
    is sent (events are rare; a rotated key is used at once); its URL passes the operator's address
    guard with the policy's own `allowedEndpoints`, like an artifact endpoint."""

    def __init__(self, kube: Kube, config: OperatorConfig) -> None:
        self.kube = kube
        self.config = config
        self._dispatchers: dict[tuple[str, int, str, str], EventDispatcher] = {}

    async def deliver(self, events: Sequence[SecurityEvent], policies: Sequence[TrustPolicy]) -> None:
        for policy in policies:
            for sink in policy.spec.event_sinks:
                dispatcher = await self._dispatcher(policy, sink)
                if dispatcher is None:
                    continue
                for event in events:
                    dispatcher.emit(event)

    async def _dispatcher(self, policy: TrustPolicy, sink: PolicyEventSink) -> EventDispatcher | None:
        secret = await self.kube.get("v1", "Secret", sink.secret_ref.name, self.config.namespace)
        encoded = ((secret or {}).get("data") or {}).get(sink.secret_ref.key)
        if not encoded:
            # Fail closed: an event is never sent unsigned.
            log.warning(
                "ModelTrustPolicy %s: event sink %s: no HMAC key in Secret %s/%s (entry %s); events not sent",
                policy.name,
                sink.name,
                self.config.namespace,
                sink.secret_ref.name,
                sink.secret_ref.key,
            )
            return None
        key = base64.b64decode(encoded)
        ident = (policy.name, policy.generation, sink.name, hashlib.sha256(key).hexdigest())
        dispatcher = self._dispatchers.get(ident)
        if dispatcher is not None:
            return dispatcher
        for old in [k for k in self._dispatchers if k[0] == policy.name and k[2] == sink.name]:
            await asyncio.to_thread(self._dispatchers.pop(old).stop, 1.0)
        allowed, _ = policy_allowances([policy])
        dispatcher = EventDispatcher(
            [
                Sink(
                    name=f"{policy.name}/{sink.name}",
                    url=sink.url,
                    key=key,
                    types=frozenset(EventType(kind) for kind in sink.types),
                )
            ],
            address_policy=self.config.address_policy().with_allowed(allowed),
        ).start()
        self._dispatchers[ident] = dispatcher
        return dispatcher

    async def stop(self) -> None:
        for dispatcher in self._dispatchers.values():
            await asyncio.to_thread(dispatcher.stop, 2.0)
        self._dispatchers.clear()
