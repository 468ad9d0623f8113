"""Thin kopf handlers: they parse and hand typed values to the reconciler, which writes the status.

Level-based: every SecureModel is reconciled as a whole from its current state on create, update
and resume; a background loop re-queues models whose time-bound state is due (grant expiry, key
rotation, certificate renewal, periodic re-verification); changes to trust policies and to the
objects a model owns (a hand-deleted NetworkPolicy, a hand-edited Role) re-queue the model by
touching its ``samd.dev/reconcile`` annotation, so all work on one model runs through kopf's
per-object handler, one at a time. A Deployment whose rollout alone moved only updates Serving and
Ready in the status, under the same per-model lock as the reconcile. No timer or daemon runs per
model, so SecureModels carry no finalizer: nothing outside Kubernetes needs cleaning up when one is
deleted (garbage collection removes what it owns).

The objects a model owns (some 15 per model) are followed by one label-selected watch per kind that
keeps a small in-memory index, not by kopf: kopf keeps several kilobytes of state and runs its full
handling cycle for every object it watches, which made those objects most of the operator's memory
and CPU. From the index a reconcile finds what to prune without listing, and reads its Deployment's
rollout without a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, cast

import kopf
import prometheus_client

from samd import events
from samd.operator import coverage
from samd.operator.config import OperatorConfig
from samd.operator.incidents import IncidentWatch, PolicySinks, record_outcome_events
from samd.operator.kube import Kube, connect
from samd.operator.metrics import OperatorMetrics, start_metrics_server
from samd.operator.packed import Packed
from samd.operator.reconcile import Reconciler, due_at
from samd.operator.shard import NamespaceSelector
from samd.operator.steps.owned import Change
from samd.operator.steps.quarantine import quarantine_pending
from samd.operator.steps.shared import ModelObject, OwnedRef, Rollout, owning_model
from samd.policy import TrustPolicy, applicable_policies
from samd.reflector import Listing, Reflector, stepped_backoff
from samd.spec import API_VERSION, SpecError, parse_trust_policy

log = logging.getLogger(__name__)
RECONCILE_ANNOTATION = "samd.dev/reconcile"
OWNED_LABELS = {"app.kubernetes.io/managed-by": "samd-operator"}
OWNED_KINDS = (
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("policy/v1", "PodDisruptionBudget"),
)
RELIST_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
REQUEUE_BACKOFF = (1.0, 5.0)  # then the resync loop's schedule is the last resort
REQUEUES_AT_ONCE = 4


class QuietWatchHandlers(logging.Filter):
    """Drops kopf's "Handler 'keep-index' succeeded." line, logged at INFO for every SecureModel event."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or record.msg != "Handler 'keep-index' succeeded."


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ModelDiffBaseInMemory(kopf.AnnotationsDiffBaseStorage):
    """kopf's record of the last handled spec: in memory for SecureModels, in an annotation otherwise.

    The annotation copies the whole spec into the object and costs one more write per change, on
    the most written objects there are; kept in memory instead, a restart loses it, and kopf then
    treats each model as new, which runs the same reconcile as resuming it would. Policies keep the
    annotation: without it, a restart would look like a change of every policy and re-queue every
    model once per policy.
    """

    def __init__(self, *, prefix: str, key: str) -> None:
        super().__init__(prefix=prefix, key=key)
        # Packed: a parsed essence is a tree of several kilobytes per model, read once per event.
        self._models: dict[str, Packed] = {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") != "SecureModel":
            return super().fetch(body=body)
        packed = self._models.get(str(body.metadata.uid))
        return None if packed is None else cast(kopf.BodyEssence, packed.unpack())

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if body.get("kind") != "SecureModel":
            super().store(body=body, patch=patch, essence=essence)
        else:
            self._models[str(body.metadata.uid)] = Packed(essence)

    def forget(self, uid: str) -> None:
        self._models.pop(uid, None)


# --- start-up ---------------------------------------------------------------------------------------


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the API server at KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT; elsewhere KUBECONFIG.

    kopf's own service-account login names ``https://kubernetes.default.svc``, which only resolves
    where the cluster runs a DNS service; the service variables, which client-go's in-cluster
    configuration uses, are set in every pod.
    """
    info = kopf.login_with_service_account(**kwargs)
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if info is not None and host:
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return dataclasses.replace(
            info, server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        )
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = OperatorConfig.from_env()
    memo.config = config
    # kopf's bookkeeping goes to annotations: the status is typed (docs/architecture.md, style rule 10).
    # Each shard keeps its own: kopf ignores another prefix's annotations, so one instance's record
    # of a handled policy change never hides the change from the other (docs/scaling.md).
    prefix = storage_prefix(config.namespace_selector)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    memo.model_diffbase = ModelDiffBaseInMemory(prefix=prefix, key="last-handled-configuration")
    settings.persistence.diffbase_storage = memo.model_diffbase
    # Only the operator's own events become Kubernetes Events: kopf posts no log line as an Event
    # (`posting.loggers` is off, its default), and should that be turned on, only warnings and
    # errors would be (kopf's "handler succeeded" lines would be two API writes per reconcile).
    settings.posting.loggers = False
    settings.posting.level = logging.WARNING
    settings.queueing.worker_limit = None
    # One line per HTTP request, and one per SecureModel event, are the loudest and least useful
    # logs; both are kept for DEBUG.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("kopf.objects").addFilter(QuietWatchHandlers())
    memo.kube_context = connect(connections=config.workers * 2 + 8, remember_for=config.reverify_interval / 2)
    memo.kube = await memo.kube_context.__aenter__()
    memo.reconciler = Reconciler(kube=memo.kube, config=config)
    try:
        # Security events go to the sinks SAMD_EVENT_SINKS names, from a background thread; their
        # addresses pass the guard the operator applies to every endpoint.
        events.install(events.dispatcher_from_env(os.environ, config.address_policy()))
    except events.EventConfigError as error:
        raise kopf.PermanentError(f"the operator cannot start: {error}") from error
    # Resource handlers get a shallow copy of this memo, so what they must hand to the resync loop
    # goes into a container shared by all the copies, not into an attribute of their own copy.
    memo.shared_indexes = {}
    memo.shard_members = {}  # namespace -> whether this instance's selector took it, as last seen
    memo.owned = OwnedObjects(memo.kube, memo.reconciler, lambda namespace: holds(memo, namespace))
    memo.owned_watch = asyncio.create_task(memo.owned.follow())
    memo.resync = asyncio.create_task(_resync_loop(memo))
    memo.policy_sinks = PolicySinks(memo.kube, config)
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call] # no *_created series
    memo.metrics = OperatorMetrics()
    memo.incident_watch = asyncio.create_task(
        _incident_loop(memo, IncidentWatch(memo.kube, sinks=memo.policy_sinks, metrics=memo.metrics))
    )
    memo.metrics_runner = None
    if config.metrics_port is not None:
        memo.metrics_runner, metrics_port = await start_metrics_server(
            memo.metrics,
            "0.0.0.0",  # noqa: S104 - the pod's port; Prometheus scrapes it
            config.metrics_port,
        )
        log.info(
            "operator metrics served", extra={"event": "metrics_listening", "metrics_port": metrics_port}
        )
    log.info(
        "samd-operator started",
        extra={"namespace": config.namespace, "namespace_selector": config.namespace_selector.text() or None},
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    await memo.policy_sinks.stop()
    await asyncio.to_thread(events.uninstall)
    for task in (memo.resync, memo.owned_watch, memo.incident_watch):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if memo.metrics_runner is not None:
        await memo.metrics_runner.cleanup()
    await memo.kube_context.__aexit__(None, None, None)


# --- indexes: in-memory state, no API calls on the hot path ----------------------------------------
# These and the cheap watch handlers are coroutines: kopf runs plain functions in a thread pool, and
# the hand-off to a thread costs more than the work in them.


@kopf.index("samd.dev", "v1alpha1", "modeltrustpolicies")
async def trust_policies(name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any) -> dict[str, Any]:
    try:
        parsed = parse_trust_policy(spec)
    except SpecError as error:
        log.warning("ignoring invalid ModelTrustPolicy %s: %s", name, error)
        return {}
    return {name: TrustPolicy(name=name, generation=int(meta.get("generation", 0)), spec=parsed)}


@kopf.index("samd.dev", "v1alpha1", "modeltrustpolicies")
async def policy_selectors(name: str, spec: kopf.Spec, **_: Any) -> dict[str, Any]:
    """Every policy's namespaceSelector, also of policies that cannot be used (they protect too)."""
    selector = spec.get("namespaceSelector")
    return {name: dict(selector) if isinstance(selector, Mapping) else {}}


@kopf.index("", "v1", "namespaces")
async def namespace_labels(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, Any]:
    return {name: dict(labels)}


@kopf.index("samd.dev", "v1alpha1", "securemodels")
async def secure_models(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, memo: Any, **_: Any
) -> dict[Any, Any]:
    """Every model, with when its time-bound state is next due (kept small: no spec or status copy)."""
    return {(namespace, name): due_at(spec, status, memo.config)}


# --- the shard: which namespaces this instance reconciles (SAMD_NAMESPACE_SELECTOR) -----------------


def storage_prefix(selector: NamespaceSelector) -> str:
    """Where kopf keeps its records on objects: one prefix per shard, the historical one without."""
    return "kopf.samd.dev" if selector.everything else f"{selector.shard_id()}.kopf.samd.dev"


def holds(memo: Any, namespace: str, labels_index: kopf.Index[str, dict[str, str]] | None = None) -> bool:
    """Whether this instance reconciles the models of `namespace`: its labels match the selector.

    A namespace not (or no longer) in the namespace index belongs to no shard: nothing is done there.
    """
    selector: NamespaceSelector = memo.config.namespace_selector
    if selector.everything:
        return True
    index = labels_index if labels_index is not None else memo.shared_indexes.get("namespace_labels")
    if index is None:
        return False
    found = list(index.get(namespace, []))
    return bool(found) and selector.matches(found[0])


def in_this_shard(namespace: str | None, memo: Any, **kwargs: Any) -> bool:
    """kopf's filter for the SecureModel handler (kopf hands filters the indexes too)."""
    return namespace is not None and holds(memo, namespace, kwargs["namespace_labels"])


# --- the SecureModel reconcile handler --------------------------------------------------------------


@kopf.on.resume("samd.dev", "v1alpha1", "securemodels", when=in_this_shard)
@kopf.on.create("samd.dev", "v1alpha1", "securemodels", when=in_this_shard)
@kopf.on.update("samd.dev", "v1alpha1", "securemodels", when=in_this_shard)
async def reconcile_model(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    trust_policies: kopf.Index[str, TrustPolicy] = kwargs["trust_policies"]
    namespace_labels: kopf.Index[str, dict[str, str]] = kwargs["namespace_labels"]
    model = ModelObject.from_body(body)
    policies = [policy for name in trust_policies for policy in trust_policies[name]]
    labels = next(iter(namespace_labels.get(model.namespace, [])), {})
    reconciler: Reconciler = memo.reconciler
    owned_objects: OwnedObjects = memo.owned
    await owned_objects.listed.wait()  # like kopf's indexes: complete before the first reconcile
    owned = owned_objects.of(model.namespace, model.name)
    # Pods in the namespace go to the admission webhook before anything is created for the model.
    await coverage.protect(memo.kube, model.namespace, labels)
    # The reconciler writes the status itself (under the model's lock, which the rollout updates
    # of the owned-object watch share); kopf writes only its own annotations.
    metrics: OperatorMetrics = memo.metrics
    started = time.perf_counter()
    try:
        outcome = await reconciler.reconcile(
            model, policies=policies, namespace_labels=labels, now=now(), owned=owned
        )
    except (kopf.TemporaryError, kopf.PermanentError) as error:
        metrics.reconciles.labels("retry" if isinstance(error, kopf.TemporaryError) else "failed").inc()
        raise
    except Exception:
        metrics.reconciles.labels("error").inc()
        raise
    finally:
        metrics.reconcile_duration.observe(time.perf_counter() - started)
    failure = outcome.error
    result = "ok" if failure is None else ("retry" if isinstance(failure, kopf.TemporaryError) else "failed")
    metrics.reconciles.labels(result).inc()
    for event in outcome.events:
        kind = "Warning" if event.warning else "Normal"
        kopf.event(body, type=kind, reason=event.reason, message=event.message)
    security = record_outcome_events(model.namespace, model.name, outcome.events)
    if security:
        policy_sinks: PolicySinks = memo.policy_sinks
        await policy_sinks.deliver(security, applicable_policies(policies, labels))
    if outcome.error is not None:
        raise outcome.error


# --- re-queue triggers ------------------------------------------------------------------------------


async def request_reconcile(kube: Kube, namespace: str, name: str, why: str) -> None:
    """Touch the model's annotation so that kopf runs its handler (serialised per object)."""
    await kube.patch_merge(
        API_VERSION,
        "SecureModel",
        name,
        namespace,
        {"metadata": {"annotations": {RECONCILE_ANNOTATION: f"{now().isoformat()} {why}"}}},
    )


ObjectKey = tuple[str, str, str]  # (kind, namespace, name)
ModelKey = tuple[str, str]  # (namespace, SecureModel name)


class OwnedObjects:
    """The objects SecureModels own, followed by one label-selected list-and-watch per kind
    (`samd.reflector`, the same as the webhook's).

    Keeps an `OwnedRef` per object, indexed by owning model. When someone else modifies or deletes
    an owned object, its model is re-queued (a change the operator made itself, or a status update
    that changes nothing the model reports, is not). After a lost watch the kind is listed again and
    compared with the index, so that a deletion missed meanwhile still re-queues its model.
    """

    def __init__(self, kube: Kube, reconciler: Reconciler, holds: Callable[[str], bool]) -> None:
        self.kube = kube
        self.reconciler = reconciler
        # The index covers every namespace (a namespace that joins the shard has its objects known
        # at once), but only models of this instance's shard are re-queued or have status written.
        self.holds = holds
        self.listed = asyncio.Event()  # set once every kind has been listed
        self.reflectors = [self._reflector(api_version, kind) for api_version, kind in OWNED_KINDS]
        self._objects: dict[ObjectKey, tuple[ModelKey, OwnedRef, str | None]] = {}
        self._by_model: dict[ModelKey, dict[ObjectKey, OwnedRef]] = {}
        # Re-queues run beside the watches, a few at a time, so that a burst of changes (a thousand
        # Deployments becoming available) does not hold up the events behind it.
        self._requeues: set[asyncio.Task[None]] = set()
        self._requeue_slots = asyncio.Semaphore(REQUEUES_AT_ONCE)

    def _reflector(self, api_version: str, kind: str) -> Reflector:
        async def list_objects() -> Listing:
            return await self.kube.list_everywhere(api_version, kind, OWNED_LABELS)

        def watch_from(version: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
            return self.kube.watch_everywhere(api_version, kind, OWNED_LABELS, version)

        return Reflector(
            kind,
            list_objects=list_objects,
            watch_from=watch_from,
            on_listed=lambda items: self._relisted(kind, items),
            on_event=self._changed,
            # No periodic re-list: at a thousand models it would read some 15,000 objects each time.
            resync_period=None,
            backoff=stepped_backoff(RELIST_BACKOFF),
        )

    def of(self, namespace: str, model: str) -> list[OwnedRef]:
        return list(self._by_model.get((namespace, model), {}).values())

    def rollout(self, owner: ModelKey, name: str) -> Rollout | None:
        ref = self._by_model.get(owner, {}).get(("Deployment", owner[0], name))
        return None if ref is None else ref.rollout

    async def follow(self) -> None:
        """Run the watches (until cancelled); `listed` is set once each kind has been listed."""
        kinds = [
            asyncio.create_task(reflector.run(), name=f"watch {reflector.name}")
            for reflector in self.reflectors
        ]
        try:
            await asyncio.gather(*(reflector.listed.wait() for reflector in self.reflectors))
            self.listed.set()
            await asyncio.gather(*kinds)
        finally:
            for task in [*kinds, *self._requeues]:
                task.cancel()

    def _remember(self, obj: Mapping[str, Any]) -> ModelKey | None:
        meta = obj.get("metadata") or {}
        key = (str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
        self._drop(key)
        model = owning_model(meta)
        if model is None or meta.get("namespace") is None:
            return None
        owner = (str(meta["namespace"]), model)
        ref = OwnedRef.of(obj)
        self._objects[key] = (owner, ref, meta.get("resourceVersion"))
        self._by_model.setdefault(owner, {})[key] = ref
        return owner

    def _drop(self, key: ObjectKey) -> ModelKey | None:
        known = self._objects.pop(key, None)
        if known is None:
            return None
        owner = known[0]
        siblings = self._by_model.get(owner, {})
        siblings.pop(key, None)
        if not siblings:
            self._by_model.pop(owner, None)
        return owner

    def _relisted(self, kind: str, items: list[dict[str, Any]]) -> None:
        """A fresh list: what changed or vanished since the index last saw it counts as an event."""
        before = {key: rv for key, (_, _, rv) in self._objects.items() if key[0] == kind}
        seen = set()
        for obj in items:
            meta = obj.get("metadata") or {}
            key = (kind, str(meta.get("namespace")), str(meta.get("name")))
            seen.add(key)
            if key not in before:
                self._remember(obj)
            elif before[key] != meta.get("resourceVersion"):
                self._changed("MODIFIED", obj)
        for key in before.keys() - seen:
            owner = self._drop(key)
            self.kube.forget(*key)
            if owner is not None:
                self._requeue(owner, f"{kind}/{key[2]} deleted")

    def _changed(self, change: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if change == "DELETED":
            owner = self._drop((str(obj.get("kind")), str(meta.get("namespace")), str(name)))
            self.reconciler.forget(obj)
        else:
            # Indexed first: a reconcile that runs after this sees the object as it is now.
            owner = self._remember(obj)
            verdict = self.reconciler.changed_by_others(obj) if change == "MODIFIED" else Change.NONE
            if verdict is Change.NONE:
                return  # new, our own apply, or a status update that changes nothing the model reports
            if verdict is Change.ROLLOUT and owner is not None:
                if not self.holds(owner[0]):
                    return  # another shard's model: its own operator updates it
                self._spawn(self._refresh_serving(owner, str(name)))
                return
        if owner is not None:
            self._requeue(owner, f"{obj.get('kind')}/{name} {change.lower()}")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the watches (it re-queues or updates a model of this shard)."""
        task = asyncio.create_task(work)
        self._requeues.add(task)
        task.add_done_callback(self._requeues.discard)

    def _requeue(self, owner: ModelKey, why: str) -> None:
        if self.holds(owner[0]):
            self._spawn(self._request(owner, why))

    async def _refresh_serving(self, owner: ModelKey, deployment: str) -> None:
        """A rollout moved: update Serving and Ready alone, or else have the model reconciled."""
        namespace, model = owner
        try:
            if await self.reconciler.refresh_serving(
                namespace, model, lambda: self.rollout(owner, deployment), now()
            ):
                return
        except (kopf.TemporaryError, kopf.PermanentError) as error:
            log.warning("could not update the status of %s/%s: %s", namespace, model, error)
        await self._request(owner, f"Deployment/{deployment} rollout")

    async def _request(self, owner: ModelKey, why: str) -> None:
        namespace, model = owner
        async with self._requeue_slots:
            for delay in (*REQUEUE_BACKOFF, None):
                try:
                    await request_reconcile(self.kube, namespace, model, why)
                    return
                except kopf.TemporaryError as error:
                    if delay is None:
                        log.warning("could not re-queue %s/%s: %s", namespace, model, error)
                        return
                    await asyncio.sleep(delay)
                except kopf.PermanentError as error:
                    log.warning("could not re-queue %s/%s: %s", namespace, model, error)
                    return


@kopf.on.create("samd.dev", "v1alpha1", "modeltrustpolicies")
@kopf.on.update("samd.dev", "v1alpha1", "modeltrustpolicies")
@kopf.on.delete("samd.dev", "v1alpha1", "modeltrustpolicies", optional=True)
async def policy_changed(name: str, memo: Any, **kwargs: Any) -> None:
    """A policy (or a trusted key in it) changed: protect what it selects now, re-verify every model."""
    secure_models: kopf.Index[Any, Any] = kwargs["secure_models"]
    namespace_labels: kopf.Index[str, dict[str, str]] = kwargs["namespace_labels"]
    for namespace in list(namespace_labels):
        await sync_protection(memo, namespace, kwargs)
    for namespace, model in list(secure_models):
        if not holds(memo, namespace, namespace_labels):
            continue  # another shard's operator sees the same change and re-verifies its own
        await request_reconcile(memo.kube, namespace, model, f"ModelTrustPolicy {name} changed")


async def _resync_loop(memo: kopf.Memo) -> None:
    """Re-queue models whose time-bound state is due; cheap, it reads only the in-memory index."""
    config: OperatorConfig = memo.config
    while True:
        await asyncio.sleep(config.resync_interval.total_seconds())
        index = memo.shared_indexes.get("secure_models")
        if index is None:
            continue
        moment = now()
        for key in list(index):
            if not holds(memo, key[0]):
                continue
            for deadline in index[key]:
                if deadline is not None and deadline <= moment:
                    namespace, name = key
                    try:
                        await request_reconcile(memo.kube, namespace, name, "scheduled check due")
                    except (kopf.TemporaryError, kopf.PermanentError) as error:
                        # One model's failure must not end the loop that serves every model.
                        log.warning("could not re-queue %s/%s: %s", namespace, name, error)


async def _incident_loop(memo: kopf.Memo, watch: IncidentWatch) -> None:
    """Count the loaders' failures of every model's pods, and compare the served models' metrics
    with their policies' incident thresholds (docs/events.md, docs/monitoring.md)."""
    config: OperatorConfig = memo.config
    while True:
        await asyncio.sleep(config.incident_check_interval.total_seconds())
        models = memo.shared_indexes.get("secure_models")
        policies_index = memo.shared_indexes.get("trust_policies")
        labels_index = memo.shared_indexes.get("namespace_labels")
        if models is None or policies_index is None or labels_index is None:
            continue
        policies = [policy for name in policies_index for policy in policies_index[name]]

        def covering(
            namespace: str, policies: list[TrustPolicy] = policies, labels_index: Any = labels_index
        ) -> list[TrustPolicy]:
            labels: dict[str, str] = next(iter(labels_index.get(namespace, [])), {})
            return applicable_policies(policies, labels)

        try:
            # Only this shard's models: each instance lists the pods of its own namespaces.
            await watch.check([key for key in models if holds(memo, key[0])], covering)
        except Exception:  # the loop must outlive any one failure
            log.exception("the incident check failed; trying again in %s", config.incident_check_interval)


# --- the protected-namespace label ----------------------------------------------------------------


async def sync_protection(memo: Any, namespace: str, indexes: Mapping[str, Any]) -> None:
    """Give `namespace` the protected label exactly while it holds SecureModels or a policy selects it."""
    labels_index: kopf.Index[str, dict[str, str]] = indexes["namespace_labels"]
    if not holds(memo, namespace, labels_index):
        return  # another shard's namespace (or none's): its label is not this instance's to change
    selectors_index: kopf.Index[str, dict[str, Any]] = indexes["policy_selectors"]
    models_index: kopf.Index[Any, Any] = indexes["secure_models"]
    found = list(labels_index.get(namespace, []))
    if not found:
        return  # deleted, or not listed yet (its own event will come)
    selectors = [selector for name in selectors_index for selector in selectors_index[name]]
    holds_models = any(key[0] == namespace for key in models_index)
    desired = coverage.desired_label(found[0], selectors, holds_models=holds_models)
    await coverage.sync(memo.kube, namespace, found[0], desired)


@kopf.on.event("", "v1", "namespaces", id="protected-label")
async def namespace_changed(
    event: Mapping[str, Any], name: str, meta: kopf.Meta, memo: Any, **kwargs: Any
) -> None:
    """Listed or relabelled: the protected label follows the namespace's labels (and its models)."""
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        memo.shard_members.pop(name, None)
        return
    await follow_shard(memo, name, kwargs)
    try:
        await sync_protection(memo, name, kwargs)
    except (kopf.TemporaryError, kopf.PermanentError) as error:
        # Event handlers are not retried: the namespace's next event, a policy change or a
        # reconcile of one of its models (which labels first) tries again.
        log.warning("could not update the protected label of namespace %s: %s", name, error)


async def follow_shard(memo: Any, namespace: str, indexes: Mapping[str, Any]) -> None:
    """A namespace whose labels moved it into this shard hands its models over: each is re-queued
    (its operator so far stops on the same event); one that left has its models forgotten here."""
    memo.shared_indexes["namespace_labels"] = indexes["namespace_labels"]
    member = holds(memo, namespace, indexes["namespace_labels"])
    before = memo.shard_members.get(namespace)
    memo.shard_members[namespace] = member
    if before is None or before == member:
        return  # first seen (start-up resumes its models) or no change of shard
    models = [key for key in indexes["secure_models"] if key[0] == namespace]
    log.info(
        "namespace %s %s this shard",
        namespace,
        "joined" if member else "left",
        extra={"namespace": namespace, "models": len(models), "event": "shard_changed"},
    )
    reconciler: Reconciler = memo.reconciler
    metrics: OperatorMetrics = memo.metrics
    for _, model in models:
        if member:
            try:
                await request_reconcile(memo.kube, namespace, model, "namespace joined this shard")
            except (kopf.TemporaryError, kopf.PermanentError) as error:
                log.warning("could not re-queue %s/%s: %s", namespace, model, error)
        else:
            reconciler.drop_model(namespace, model)
            metrics.forget_model(namespace, model)


@kopf.on.event("samd.dev", "v1alpha1", "securemodels", id="keep-index")
async def expose_index(
    event: Mapping[str, Any], namespace: str | None, name: str, memo: Any, **kwargs: Any
) -> None:
    secure_models: kopf.Index[Any, Any] = kwargs["secure_models"]
    # Indexes are only injected into handlers; keep a reference for the resync loop.
    memo.shared_indexes["secure_models"] = secure_models
    memo.shared_indexes["trust_policies"] = kwargs["trust_policies"]
    memo.shared_indexes["namespace_labels"] = kwargs["namespace_labels"]
    if namespace is None:
        return
    metrics: OperatorMetrics = memo.metrics
    if event.get("type") != "DELETED" and not holds(memo, namespace, kwargs["namespace_labels"]):
        return  # another shard's model: its operator counts it, re-queues it and labels its namespace
    if event.get("type") == "DELETED":
        metrics.forget_model(namespace, name)
    else:
        metrics.observe_model(namespace, name, event.get("object") or {})
    requested: dict[tuple[str, str], object] = memo.shared_indexes.setdefault("quarantine_requested", {})
    if event.get("type") == "DELETED":
        reconciler: Reconciler = memo.reconciler
        reconciler.drop_model(namespace, name)
        memo.model_diffbase.forget(str(kwargs["uid"]))
        requested.pop((namespace, name), None)
        try:  # the last model gone and no policy selecting the namespace: it is no longer protected
            await sync_protection(memo, namespace, kwargs)
        except (kopf.TemporaryError, kopf.PermanentError) as error:
            log.warning("could not update the protected label of namespace %s: %s", namespace, error)
        return
    # status.quarantine is written through the status subresource, which kopf's update handler does
    # not see: a quarantine set or cleared re-queues the model once (the reconcile applies it).
    status = (event.get("object") or {}).get("status") or {}
    if not quarantine_pending(status):
        requested.pop((namespace, name), None)
    elif requested.get((namespace, name)) != status.get("quarantine"):
        requested[(namespace, name)] = status.get("quarantine")
        await request_reconcile(memo.kube, namespace, name, "quarantine changed")
