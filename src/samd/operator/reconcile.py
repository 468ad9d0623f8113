"""Reconcile one SecureModel as a whole, from its current state (level-based).

The order matters: nothing is served unless the signature verified under the trust policy, so the
serving objects are built from the verified manifest digest and removed when verification fails.
Each aspect yields one condition; Ready summarises them. Transient failures (storage or KMS
unreachable) keep the last known good state, say so in the condition and ask kopf to retry.

Each aspect is a step in `samd.operator.steps`, a small class with its own per-model cache;
`Reconciler._reconcile` runs them in order and writes the status under the model's lock.

A reconcile costs few API calls once a model is in place: the objects it owns come from the
handlers' in-memory index (no list calls), unchanged manifests are not applied again (the API
wrapper remembers them until someone else changes the object), certificates it issued are not read
back, and the key check is cached like the signature verification.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from samd.operator.builders.context import BuilderSettings, ModelContext
from samd.operator.conditions import Condition, ConditionType, merge_conditions, ready_condition
from samd.operator.config import OperatorConfig
from samd.operator.kube import Kube
from samd.operator.steps.certificates import Certificates
from samd.operator.steps.keys import Keys
from samd.operator.steps.owned import GENERATION_KINDS, Change, OwnedObjects
from samd.operator.steps.quarantine import Quarantine, quarantine_condition
from samd.operator.steps.serving import ServingStatus
from samd.operator.steps.shared import (
    Event,
    EventReason,
    ModelKey,
    ModelObject,
    Outcome,
    OwnedRef,
    Rollout,
    Run,
    owning_model,
    write_status,
)
from samd.operator.steps.storage import StoragePosture
from samd.operator.steps.verification import Verification
from samd.operator.timestamps import iso, parse_time
from samd.policy import TrustPolicy, applicable_policies
from samd.spec import SpecError, parse_secure_model
from samd.storage.guard import AddressPolicy, policy_allowances

C = ConditionType


def due_at(
    spec: Mapping[str, Any], status: Mapping[str, Any], config: OperatorConfig
) -> datetime.datetime | None:
    """When this model next needs a reconcile for time-bound state, from its spec and status alone."""
    candidates: list[datetime.datetime] = []
    for grant in (spec.get("access") or {}).get("grants") or []:
        expires = parse_time(grant.get("expires"))
        verified_at = parse_time((status.get("verification") or {}).get("verifiedAt"))
        # A grant is due once it expired after the last reconcile that could have removed it.
        if expires is not None and (verified_at is None or expires > verified_at - config.resync_interval):
            candidates.append(expires)
    key_rotation = parse_time((status.get("key") or {}).get("nextRotation"))
    if key_rotation is not None:
        candidates.append(key_rotation)
    server_not_after = parse_time((status.get("certificates") or {}).get("serverNotAfter"))
    if server_not_after is not None:
        candidates.append(server_not_after - config.renew_before)
    verified_at = parse_time((status.get("verification") or {}).get("verifiedAt"))
    if verified_at is not None:
        candidates.append(verified_at + config.reverify_interval)
    last = parse_time(status.get("lastReconciled"))
    if last is not None:
        candidates = [c for c in candidates if c > last]
    return min(candidates, default=None)


def builder_settings(config: OperatorConfig) -> BuilderSettings:
    """What the builders need of the operator's configuration."""
    return BuilderSettings.of(config)


@dataclass
class Reconciler:
    """Runs the steps of one model's reconcile in order, at most `workers` models at once and one
    reconcile (or rollout update) per model at a time, and writes the status."""

    kube: Kube
    config: OperatorConfig
    verification: Verification = field(init=False)
    keys: Keys = field(init=False)
    storage: StoragePosture = field(init=False)
    certificates: Certificates = field(init=False)
    owned: OwnedObjects = field(init=False)
    serving: ServingStatus = field(init=False)
    _locks: dict[ModelKey, asyncio.Lock] = field(default_factory=dict)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.verification = Verification(self.config)
        self.keys = Keys(self.kube, self.config)
        self.storage = StoragePosture(self.config)
        self.certificates = Certificates(self.kube, self.config)
        self.owned = OwnedObjects(self.kube)
        self.serving = ServingStatus(self.kube)
        # At most `workers` reconciles talk to the API server at once; more only queue up inside it
        # and time out.
        self._slots = asyncio.Semaphore(max(1, self.config.workers))

    # --- what the watch handlers ask --------------------------------------------------------------

    def changed_by_others(self, obj: Mapping[str, Any]) -> Change:
        """What a modified owned object asks for.

        Nothing when it is the echo of our own apply (same resourceVersion), or when someone else
        only wrote its status (same generation) — except for a Deployment whose rollout no longer
        matches what the model's status reports. Otherwise (a hand edit) the object is applied again.
        """
        meta = obj.get("metadata") or {}
        kind, namespace, name = str(obj.get("kind")), meta.get("namespace"), str(meta.get("name"))
        applied = self.kube.last_applied(kind, namespace, name)
        if applied is not None and kind in GENERATION_KINDS and applied.generation == meta.get("generation"):
            model = owning_model(meta)
            if kind != "Deployment" or model is None or namespace is None:
                return Change.NONE
            return Change.ROLLOUT if self.serving.rollout_moved((namespace, model), obj) else Change.NONE
        if applied is not None and applied.resource_version == meta.get("resourceVersion"):
            return Change.NONE
        self.forget(obj)
        return Change.DRIFT

    def forget(self, obj: Mapping[str, Any]) -> None:
        """An owned object was changed or deleted by someone else: apply it again next time."""
        meta = obj.get("metadata") or {}
        self.kube.forget(str(obj.get("kind")), meta.get("namespace"), str(meta.get("name")))

    def drop_model(self, namespace: str, name: str) -> None:
        """The SecureModel is gone: drop what every step remembered about it."""
        key = (namespace, name)
        for step in (self.verification, self.keys, self.storage, self.certificates, self.owned, self.serving):
            step.forget(key)
        self._locks.pop(key, None)

    async def reconcile(
        self,
        model: ModelObject,
        *,
        policies: Sequence[TrustPolicy],
        namespace_labels: Mapping[str, str],
        now: datetime.datetime,
        owned: Sequence[OwnedRef] = (),
    ) -> Outcome:
        """Reconcile one model and write its status; `owned` is what the index holds of its objects."""
        async with self._slots, self._lock(model.key):
            outcome = await self._reconcile(
                model, policies=policies, namespace_labels=namespace_labels, now=now, owned=owned
            )
            if await write_status(self.kube, model.namespace, model.name, {"status": outcome.status}):
                written = {k: v for k, v in outcome.status.items() if v is not None}
                self.serving.written(model.key, model.generation, written, outcome.replicas)
            return outcome

    def _lock(self, key: ModelKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def refresh_serving(
        self, namespace: str, name: str, latest: Callable[[], Rollout | None], now: datetime.datetime
    ) -> bool:
        """Only the model's Deployment rollout moved: write Serving and Ready, and nothing else.

        `latest` gives the rollout as last seen, read once the model's lock is held. False when this
        needs a whole reconcile instead.
        """
        key = (namespace, name)
        async with self._lock(key):
            return await self.serving.refresh(key, latest(), now)

    async def _reconcile(
        self,
        model: ModelObject,
        *,
        policies: Sequence[TrustPolicy],
        namespace_labels: Mapping[str, str],
        now: datetime.datetime,
        owned: Sequence[OwnedRef],
    ) -> Outcome:
        try:
            spec = parse_secure_model(model.spec)
        except SpecError as error:
            return _invalid_spec(model, error, now)
        quarantine = Quarantine.of(model.status)
        if quarantine.active:
            # Scaled to zero: the Deployment stays (with its verified template) for when it is cleared.
            spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"replicas": 0})})
        covering = applicable_policies(policies, namespace_labels)
        run = Run(
            model=model, spec=spec, now=now, outcome=Outcome(status={}), guard=self._address_policy(covering)
        )

        verification = await self.verification.check(run, covering)
        key = await self.keys.check(run)
        storage = await self.storage.check(run)
        context = self._context(run, verification)
        certificates = await self.certificates.ensure(run, context, owned, covering)
        applied = await self.owned.apply(run, context, covering, owned)
        serving = await self.serving.observe(run, context, applied, owned)
        run.report_apply_failures()
        quarantine_condition(run, quarantine)

        status = _status(model, run.conditions, now)
        sections = {
            "verification": verification,
            "key": key,
            "storage": storage,
            "certificates": certificates,
            "serving": serving,
        }
        # An empty section is written as null, which removes what an earlier reconcile recorded there.
        run.outcome.status = {k: (v if v else None) for k, v in {**status, **sections}.items()}
        if run.temporary:
            run.outcome.error = kopf.TemporaryError("; ".join(run.temporary), delay=15)
        if serving and C.SERVING not in run.apply_failures:
            # A rollout alone may then update Serving; not while a serving object is missing.
            run.outcome.replicas = spec.serving.replicas
        return run.outcome

    def _context(self, run: Run, verification: Mapping[str, Any]) -> ModelContext:
        """What the builders build from: the verified manifest digest only when Verified is True."""
        verified = run.conditions[C.VERIFIED].status
        return ModelContext(
            name=run.model.name,
            namespace=run.model.namespace,
            uid=run.model.uid,
            spec=run.spec,
            manifest_digest=verification.get("manifestDigest") if verified else None,
            settings=builder_settings(self.config),
        )

    def _address_policy(self, covering: Sequence[TrustPolicy]) -> AddressPolicy:
        """What this model's spec may point the operator at: the operator's settings, and the
        allowances of the policies covering its namespace. Local files need both the operator's
        development switch and a covering policy's allowLocalFiles."""
        base = self.config.address_policy()
        allowed, local_files = policy_allowances(covering)
        return AddressPolicy(
            allow_local_files=base.allow_local_files and local_files,
            local_file_roots=base.local_file_roots,
            internal_networks=base.internal_networks,
            allowed=tuple(allowed),
        )


def _invalid_spec(model: ModelObject, error: SpecError, now: datetime.datetime) -> Outcome:
    """A spec the typed model refuses: Ready False with the reason, and no retry."""
    invalid = {C.READY: Condition(C.READY, False, "InvalidSpec", str(error))}
    return Outcome(
        status=_status(model, invalid, now),
        events=[Event(EventReason.INVALID_SPEC, str(error), warning=True)],
        error=kopf.PermanentError(str(error)),
    )


def _status(
    model: ModelObject, conditions: dict[ConditionType, Condition], now: datetime.datetime
) -> dict[str, Any]:
    if C.READY not in conditions:
        conditions[C.READY] = ready_condition(conditions)
    merged = merge_conditions(
        model.status.get("conditions") or [], conditions.values(), generation=model.generation, now=now
    )
    return {"observedGeneration": model.generation, "conditions": merged, "lastReconciled": iso(now)}
