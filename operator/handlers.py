"""Thin kopf handlers: they parse, hand typed values to the reconciler and write what it returns.

Level-based: every SecureModel is reconciled as a whole from its current state on create, update
and resume; a background loop re-queues models whose time-bound state is due (grant expiry, key
rotation, certificate renewal, periodic re-verification); changes to trust policies and to the
objects a model owns (a hand-deleted NetworkPolicy, a Deployment becoming Available) re-queue the
model by touching its ``samd.dev/reconcile`` annotation, so all work on one model runs through
kopf's per-object handler, one at a time. No timer or daemon runs per model, so SecureModels carry
no finalizer: nothing outside Kubernetes needs cleaning up when one is deleted (garbage collection
removes what it owns).
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
from samd.operator.reconcile import ModelObject, Reconciler, due_at
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
    settings.posting.level = logging.INFO
    settings.batching.worker_limit = None
    config = OperatorConfig.from_env()
    memo.config = config
    memo.kube_context = connect()
    memo.kube = await memo.kube_context.__aenter__()
    memo.reconciler = Reconciler(kube=memo.kube, config=config)
    memo.resync = asyncio.create_task(_resync_loop(memo))
    log.info("samd-operator started", extra={"namespace": config.namespace})


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await memo.resync
    await memo.kube_context.__aexit__(None, None, None)


# --- indexes: in-memory state, no API calls on the hot path ----------------------------------------


@kopf.index("samd.dev", "v1alpha1", "modeltrustpolicies")
def trust_policies(name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any) -> dict[str, Any]:
    try:
        parsed = parse_trust_policy(spec)
    except SpecError as error:
        log.warning("ignoring invalid ModelTrustPolicy %s: %s", name, error)
        return {}
    return {name: TrustPolicy(name=name, generation=int(meta.get("generation", 0)), spec=parsed)}


@kopf.index("", "v1", "namespaces")
def namespace_labels(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, Any]:
    return {name: dict(labels)}


@kopf.index("samd.dev", "v1alpha1", "securemodels")
def secure_models(
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
    outcome = await reconciler.reconcile(model, policies=policies, namespace_labels=labels, now=now())
    patch.status.update(outcome.status)
    for event in outcome.events:
        (kopf.warn if event.warning else kopf.info)(body, reason=event.reason, message=event.message)
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
        event: Mapping[str, Any], meta: Mapping[str, Any], namespace: str, memo: kopf.Memo, **_: Any
    ) -> None:
        model = meta.get("labels", {}).get("samd.dev/model")
        kind = event.get("type")
        if not model or kind not in ("DELETED", "MODIFIED"):
            return
        if kind == "MODIFIED" and _last_writer(meta) == "samd-operator" and plural != "deployments":
            return  # our own apply; Deployments are watched for their rollout status too
        await request_reconcile(memo.kube, namespace, model, f"{plural}/{meta.get('name')} {kind.lower()}")


def _last_writer(meta: Mapping[str, Any]) -> str | None:
    entries = meta.get("managedFields") or []
    latest = max(entries, key=lambda e: e.get("time") or "", default=None)
    return None if latest is None else str(latest.get("manager"))


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
        index = memo.get("secure_models_index")
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
                    except kopf.TemporaryError as error:
                        log.warning("could not re-queue %s/%s: %s", namespace, name, error)


@kopf.on.event("samd.dev", "v1alpha1", "securemodels", id="keep-index")
def expose_index(memo: Any, **kwargs: Any) -> None:
    secure_models: kopf.Index[Any, Any] = kwargs["secure_models"]
    # Indexes are only injected into handlers; keep a reference for the resync loop.
    memo.secure_models_index = secure_models
