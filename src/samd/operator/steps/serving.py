"""Serving: the model's Deployment rollout, and `status.serving`.

The rollout is read from the Deployment as our apply returned it, else as the owned-object index
holds it, else from the API server. What the status last reported of it is remembered per model, so
that a watch event of the Deployment can tell whether the rollout moved; when only the rollout
moved, Serving and Ready are written alone (`refresh`), with no whole reconcile.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from samd.operator.builders.context import ModelContext
from samd.operator.builders.names import serving_name
from samd.operator.conditions import Condition, ConditionType, merge_conditions, ready_condition
from samd.operator.kube import Kube
from samd.operator.packed import Packed
from samd.operator.steps.owned import AppliedObjects
from samd.operator.steps.shared import ModelKey, OwnedRef, Rollout, Run, ServingView, write_status

C = ConditionType


@dataclass(frozen=True, slots=True)
class WrittenStatus:
    """The status the last reconcile wrote, kept so that a rollout alone can update it."""

    generation: int
    status: Packed  # read back only when a rollout alone moves; packed, it is a few hundred bytes
    replicas: int | None  # as the spec asks, when the model is served


def serving_condition(view: ServingView, replicas: int) -> Condition:
    available, enough = view
    if enough:
        return Condition(C.SERVING, True, "Available", f"{available}/{replicas} replicas available")
    return Condition(C.SERVING, False, "RollingOut", f"{available}/{replicas} replicas available")


@dataclass
class ServingStatus:
    """Serving and `status.serving`; remembers per model what the status last reported."""

    kube: Kube
    _views: dict[ModelKey, ServingView | None] = field(default_factory=dict)
    _written: dict[ModelKey, WrittenStatus] = field(default_factory=dict)

    def forget(self, key: ModelKey) -> None:
        self._views.pop(key, None)
        self._written.pop(key, None)

    def written(
        self, key: ModelKey, generation: int, status: Mapping[str, Any], replicas: int | None
    ) -> None:
        """The reconcile wrote this status (replicas: as the spec asks, when the model is served)."""
        self._written[key] = WrittenStatus(generation, Packed(status), replicas)

    def rollout_moved(self, key: ModelKey, deployment: Mapping[str, Any]) -> bool:
        """Whether this Deployment's rollout differs from what the model's status reports of it."""
        written = self._written.get(key)
        rollout = Rollout.of(deployment)
        wanted = written.replicas if written is not None and written.replicas else rollout.replicas
        return self._views.get(key) != rollout.view(wanted)

    async def observe(
        self, run: Run, context: ModelContext, applied: AppliedObjects, owned: Sequence[OwnedRef]
    ) -> dict[str, Any]:
        """Serving from the Deployment: as our apply returned it, else as indexed, else as read."""
        serving = context.spec.serving
        key = run.key
        self._views[key] = None
        if not serving.enabled:
            run.set(C.SERVING, True, "ServingDisabled", "spec.serving.enabled is false")
            return {}
        if not applied.deployed:
            run.set(C.SERVING, False, "NotVerified", "nothing is served until the signature verifies")
            return {}
        name = serving_name(context.name)
        deployment = applied.deployment
        rollout = Rollout.of(deployment) if deployment is not None else self._indexed(context, name, owned)
        if rollout is None:
            rollout = Rollout.of(await self.kube.get("apps/v1", "Deployment", name, context.namespace) or {})
        view = rollout.view(serving.replicas)
        # Recorded with no await since it was read, so a watch event after this compares against it.
        self._views[key] = view
        run.conditions[C.SERVING] = serving_condition(view, serving.replicas)
        return {"deployment": name, "service": name, "readyReplicas": view[0], "replicas": serving.replicas}

    def _indexed(self, context: ModelContext, name: str, owned: Sequence[OwnedRef]) -> Rollout | None:
        """The Deployment as indexed, unless the index has not seen our last apply to it yet."""
        applied = self.kube.last_applied("Deployment", context.namespace, name)
        for ref in owned:
            if ref.kind == "Deployment" and ref.name == name and context.uid in ref.owner_uids:
                if applied is not None and (ref.generation or 0) < (applied.generation or 0):
                    return None
                return ref.rollout
        return None

    async def refresh(self, key: ModelKey, rollout: Rollout | None, now: datetime.datetime) -> bool:
        """Only the rollout moved: write Serving and Ready, and nothing else (the caller holds the
        model's lock). False when this needs a whole reconcile instead (this operator has not
        written the model's status yet, or the model is not being served)."""
        written = self._written.get(key)
        if written is None or written.replicas is None or rollout is None or key not in self._views:
            return False
        view = rollout.view(written.replicas)
        if view == self._views[key]:
            return True
        written_status = written.status.unpack()
        conditions = {
            ConditionType(c["type"]): Condition.of(c)
            for c in written_status.get("conditions") or []
            if c.get("type") in {t.value for t in ConditionType}
        }
        conditions[C.SERVING] = serving_condition(view, written.replicas)
        conditions[C.READY] = ready_condition(conditions)
        merged = merge_conditions(
            written_status.get("conditions") or [],
            [conditions[C.SERVING], conditions[C.READY]],
            generation=written.generation,
            now=now,
        )
        serving = {**(written_status.get("serving") or {}), "readyReplicas": view[0]}
        patch = {"status": {"conditions": merged, "serving": {"readyReplicas": view[0]}}}
        if not await write_status(self.kube, *key, patch):
            return True  # the model is gone
        status = {**written_status, "conditions": merged, "serving": serving}
        self._written[key] = WrittenStatus(written.generation, Packed(status), written.replicas)
        self._views[key] = view
        return True
