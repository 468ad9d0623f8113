"""Thin kopf handlers: they parse, hand typed values to the reconciler and write what it returns.

Level-based: every SecureModel is reconciled as a whole from its current state on create, update
and resume; a background loop re-queues models whose time-bound state is due (grant expiry, key
rotation, certificate renewal, periodic re-verification); changes to trust policies and to the
objects a model owns (a hand-deleted NetworkPolicy, a Deployment becoming Available) re-queue the
model by touching its ``samd.dev/reconcile`` annotation, so all work on one model runs through
kopf's per-object handler, one at a time. No timer or daemon runs per model, so SecureModels carry
no finalizer: nothing outside Kubernetes needs cleaning up when one is deleted (garbage collection
removes what it owns).

The objects a model owns are also indexed in memory, so that a reconcile finds what to prune
without listing, and reads its Deployment's rollout without a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from samd.operator.config import OperatorConfig
from samd.operator.kube import Kube, connect
from samd.operator.reconcile import ModelObject, OwnedRef, Reconciler, due_at, owning_model
from samd.policy import TrustPolicy
from samd.spec import API_VERSION, SpecError, parse_trust_policy

log = logging.getLogger(__name__)
RECONCILE_ANNOTATION = "samd.dev/reconcile"
OWNED_LABELS = {"app.kubernetes.io/managed-by": "samd-operator"}
OWNED_KINDS = (
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("", "v1", "serviceaccounts"),
    ("", "v1", "configmaps"),
    ("", "v1", "secrets"),
    ("policy", "v1", "poddisruptionbudgets"),
)


WATCH_HANDLER_IDS = ("keep-index", *(f"owned-{plural}" for _, _, plural in OWNED_KINDS))


class QuietWatchHandlers(logging.Filter):
    """Drops kopf's "Handler '…' succeeded." line for the watch handlers.

    kopf logs it for every event on every owned object, some 25 lines per model, at INFO; the
    reconcile handler's lines, and every warning and error, still go through.
    """

    def __init__(self) -> None:
        super().__init__()
        self._noise = {f"Handler {handler_id!r} succeeded." for handler_id in WATCH_HANDLER_IDS}

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or record.msg not in self._noise


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --- start-up ---------------------------------------------------------------------------------------


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations: the status is typed (DESIGN §5.10).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.samd.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.samd.dev", key="last-handled-configuration"
    )
    # kopf's own "handler succeeded" messages stay in the log; only warnings and errors, and the
    # operator's own events, become Kubernetes Events (two fewer API writes per reconcile).
    settings.posting.level = logging.WARNING
    settings.queueing.worker_limit = None
    # Watch only the objects the operator owns, not every Secret, ConfigMap and Deployment in the
    # cluster; an object that loses the label drops out of the watch as deleted, and is re-applied.
    owned_selector = ",".join(f"{key}={value}" for key, value in OWNED_LABELS.items())
    for group, version, plural in OWNED_KINDS:
        settings.watching.label_selectors[(group, version, plural)] = owned_selector
    # One line per HTTP request, and one per watch event, are the loudest and least useful logs;
    # both are kept for DEBUG.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("kopf.objects").addFilter(QuietWatchHandlers())
    config = OperatorConfig.from_env()
    memo.config = config
    memo.kube_context = connect(connections=config.workers * 2 + 8, remember_for=config.reverify_interval / 2)
    memo.kube = await memo.kube_context.__aenter__()
    memo.reconciler = Reconciler(kube=memo.kube, config=config)
    # Resource handlers get a shallow copy of this memo, so what they must hand to the resync loop
    # goes into a container shared by all the copies, not into an attribute of their own copy.
    memo.shared_indexes = {}
    memo.resync = asyncio.create_task(_resync_loop(memo))
    log.info("samd-operator started", extra={"namespace": config.namespace})


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await memo.resync
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


@kopf.index("", "v1", "namespaces")
async def namespace_labels(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, Any]:
    return {name: dict(labels)}


def _index_owned(group: str, version: str, plural: str) -> None:
    @kopf.index(group, version, plural, labels=OWNED_LABELS, id=f"owned_{plural}")
    async def owned(namespace: str | None, body: kopf.Body, meta: kopf.Meta, **_: Any) -> dict[Any, Any]:
        model = owning_model(meta)
        return {} if model is None else {(namespace, model): OwnedRef.of(body)}


for _group, _version, _plural in OWNED_KINDS:
    _index_owned(_group, _version, _plural)


def owned_objects(namespace: str, model: str, indexes: Mapping[str, Any]) -> list[OwnedRef]:
    found: list[OwnedRef] = []
    for _group, _version, plural in OWNED_KINDS:
        index: kopf.Index[Any, OwnedRef] = indexes[f"owned_{plural}"]
        found.extend(index.get((namespace, model), []))
    return found


@kopf.index("samd.dev", "v1alpha1", "securemodels")
async def secure_models(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[Any, Any]:
    return {(namespace, name): (dict(spec), dict(status))}


# --- the SecureModel reconcile handler --------------------------------------------------------------


@kopf.on.resume("samd.dev", "v1alpha1", "securemodels")
@kopf.on.create("samd.dev", "v1alpha1", "securemodels")
@kopf.on.update("samd.dev", "v1alpha1", "securemodels")
async def reconcile_model(body: kopf.Body, patch: kopf.Patch, memo: Any, **kwargs: Any) -> None:
    trust_policies: kopf.Index[str, TrustPolicy] = kwargs["trust_policies"]
    namespace_labels: kopf.Index[str, dict[str, str]] = kwargs["namespace_labels"]
    model = ModelObject.from_body(body)
    policies = [policy for name in trust_policies for policy in trust_policies[name]]
    labels = next(iter(namespace_labels.get(model.namespace, [])), {})
    reconciler: Reconciler = memo.reconciler
    owned = owned_objects(model.namespace, model.name, kwargs)
    outcome = await reconciler.reconcile(
        model, policies=policies, namespace_labels=labels, now=now(), owned=owned
    )
    patch.status.update(outcome.status)
    for event in outcome.events:
        kind = "Warning" if event.warning else "Normal"
        kopf.event(body, type=kind, reason=event.reason, message=event.message)
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


def _on_owned_event(group: str, version: str, plural: str) -> None:
    @kopf.on.event(group, version, plural, labels=OWNED_LABELS, id=f"owned-{plural}")  # type: ignore[arg-type]
    async def owned_changed(
        event: Mapping[str, Any], body: kopf.Body, meta: kopf.Meta, namespace: str, memo: kopf.Memo, **_: Any
    ) -> None:
        model = owning_model(meta)
        kind = event.get("type")
        if not model or kind not in ("DELETED", "MODIFIED"):
            return
        reconciler: Reconciler = memo.reconciler
        if kind == "DELETED":
            reconciler.forget(body)
        elif not reconciler.changed_by_others(body):
            return  # our own apply, or a status update that changes nothing the model reports
        await request_reconcile(memo.kube, namespace, model, f"{plural}/{meta.get('name')} {kind.lower()}")


for _group, _version, _plural in OWNED_KINDS:
    _on_owned_event(_group, _version, _plural)


@kopf.on.create("samd.dev", "v1alpha1", "modeltrustpolicies")
@kopf.on.update("samd.dev", "v1alpha1", "modeltrustpolicies")
@kopf.on.delete("samd.dev", "v1alpha1", "modeltrustpolicies", optional=True)
async def policy_changed(name: str, memo: Any, **kwargs: Any) -> None:
    """A policy (or a trusted key in it) changed: re-verify every model."""
    secure_models: kopf.Index[Any, Any] = kwargs["secure_models"]
    for namespace, model in list(secure_models):
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
            for spec, status in index[key]:
                deadline = due_at(spec, status, config)
                if deadline is not None and deadline <= moment:
                    namespace, name = key
                    try:
                        await request_reconcile(memo.kube, namespace, name, "scheduled check due")
                    except (kopf.TemporaryError, kopf.PermanentError) as error:
                        # One model's failure must not end the loop that serves every model.
                        log.warning("could not re-queue %s/%s: %s", namespace, name, error)


@kopf.on.event("samd.dev", "v1alpha1", "securemodels", id="keep-index")
async def expose_index(
    event: Mapping[str, Any], namespace: str | None, name: str, memo: Any, **kwargs: Any
) -> None:
    secure_models: kopf.Index[Any, Any] = kwargs["secure_models"]
    # Indexes are only injected into handlers; keep a reference for the resync loop.
    memo.shared_indexes["secure_models"] = secure_models
    if event.get("type") == "DELETED" and namespace is not None:
        reconciler: Reconciler = memo.reconciler
        reconciler.drop_model(namespace, name)
