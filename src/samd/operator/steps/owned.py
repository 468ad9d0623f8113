"""The objects a model owns (RBAC, NetworkPolicies, the signature ConfigMap, the serving objects):
applied with server-side apply, and pruned when the spec no longer asks for them.

An object's name comes from the SecureModel's name, which whoever may create a SecureModel chooses;
a server-side apply would take over any object of that name, so an object is applied only when it
is this model's or does not exist yet (`apply_unless_taken`): one the owned-object index does not
know is created with a POST, which fails on an existing object, and only then read to decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import kopf

from samd.operator.builders import build_owned_objects
from samd.operator.builders.context import ModelContext
from samd.operator.builders.names import client_secret_name, tls_secret_name
from samd.operator.builders.serving import build_signature_config_map
from samd.operator.conditions import ConditionType
from samd.operator.kube import Kube
from samd.operator.steps.shared import EventReason, ModelKey, OwnedRef, Run
from samd.policy import TrustPolicy

C = ConditionType

ObjectId = tuple[str, str, str]  # (apiVersion, kind, name) in the model's namespace

# Kinds whose metadata.generation moves only when their spec does, so that a write by someone else
# that leaves it alone (a controller updating status) needs no re-apply.
GENERATION_KINDS = frozenset({"Deployment", "NetworkPolicy", "PodDisruptionBudget"})


class Change(Enum):
    """What a modification of an owned object, seen by the watch, asks of the operator."""

    NONE = "none"  # the echo of our own apply, or a status write that changes nothing the model reports
    ROLLOUT = "rollout"  # only the Deployment's rollout moved: Serving and Ready are written alone
    DRIFT = "drift"  # someone else changed what we applied: reconcile, which applies it again


async def taken_by_others(
    kube: Kube, run: Run, context: ModelContext, manifest: Mapping[str, Any], owned: Sequence[OwnedRef]
) -> str | None:
    """Why `manifest` may not be applied, or None when it may.

    It may when it is this model's (its ownerReferences name the model) or does not exist: it is
    read when it is neither in the owned-object index nor applied by this operator.
    """
    kind, name, namespace = str(manifest["kind"]), str(manifest["metadata"]["name"]), context.namespace
    if any(ref.kind == kind and ref.name == name and context.uid in ref.owner_uids for ref in owned):
        return None
    if kube.last_applied(kind, namespace, name) is not None:
        return None
    existing = await kube.get(str(manifest["apiVersion"]), kind, name, namespace)
    owners = {ref.get("uid") for ref in ((existing or {}).get("metadata") or {}).get("ownerReferences") or []}
    if existing is None or context.uid in owners:
        return None
    run.taken.append(f"{kind} {name}")
    return (
        f"{kind} {name} already exists in namespace {namespace} and does not belong to SecureModel "
        f"{context.name}: the operator never takes over an object it did not create; delete or rename "
        f"that {kind}, or give the SecureModel another name"
    )


async def apply_unless_taken(
    kube: Kube, run: Run, context: ModelContext, manifest: Mapping[str, Any], owned: Sequence[OwnedRef]
) -> dict[str, Any] | None:
    """Apply `manifest` unless an object of its name belongs to someone else (then raise
    kopf.PermanentError saying so, having sent nothing that changes it).

    Returns the object as stored, or None when nothing was sent (applied unchanged before). An
    object neither in the owned-object index nor applied by this operator is created with a POST: one
    request when it does not exist; when it does (409), it is read and applied only if it is ours
    (the index had not seen it yet).
    """
    kind, name, namespace = str(manifest["kind"]), str(manifest["metadata"]["name"]), context.namespace
    ours = any(ref.kind == kind and ref.name == name and context.uid in ref.owner_uids for ref in owned)
    if kind == "Deployment" and run.taken:
        taken = await taken_by_others(kube, run, context, manifest, owned)
        raise kopf.PermanentError(
            taken
            or f"the model is not deployed while objects named for it belong to others ({', '.join(run.taken)})"
        )
    if ours or kube.last_applied(kind, namespace, name) is not None:
        return await kube.apply(manifest)
    created = await kube.create_owned(manifest)
    if created is not None:
        return created
    taken = await taken_by_others(kube, run, context, manifest, owned)
    if taken is not None:
        raise kopf.PermanentError(taken)
    return await kube.apply(manifest)


@dataclass(frozen=True)
class AppliedObjects:
    """What the apply step hands to the serving step."""

    deployed: bool  # a Deployment was built (the model verified and is to be served)
    deployment: Mapping[str, Any] | None  # the Deployment as our apply returned it; None when unchanged


@dataclass
class OwnedObjects:
    """AccessControlled and NetworkIsolated; applies what the builders ask for and prunes the rest.

    Remembers per model what it applied last time, so that an object the index has not seen yet is
    still pruned when the spec stops asking for it.
    """

    kube: Kube
    _desired: dict[ModelKey, set[ObjectId]] = field(default_factory=dict)

    def forget(self, key: ModelKey) -> None:
        self._desired.pop(key, None)

    async def apply(
        self,
        run: Run,
        context: ModelContext,
        policies: Sequence[TrustPolicy],
        owned: Sequence[OwnedRef],
    ) -> AppliedObjects:
        signers = [signer for policy in policies for signer in policy.spec.signers]
        desired = build_owned_objects(context, run.now, signers)
        if run.signature is not None:
            # Before the Deployment: the admission webhook verifies pods against this bundle.
            desired.insert(0, build_signature_config_map(context, run.signature))
        wanted = {(m["apiVersion"], m["kind"], m["metadata"]["name"]) for m in desired}
        wanted.add(("v1", "Secret", tls_secret_name(context.name)))
        wanted |= {
            ("v1", "Secret", client_secret_name(context.name, c.name)) for c in context.spec.serving.clients
        }
        deployment: dict[str, Any] | None = None
        for manifest in desired:
            try:
                stored = await apply_unless_taken(self.kube, run, context, manifest, owned)
            except (kopf.TemporaryError, kopf.PermanentError) as error:
                run.apply_failed(manifest, error)
                continue
            if manifest["kind"] == "Deployment":
                deployment = stored
        await self._prune(run, context, owned, wanted)

        access = context.spec.access
        active = sum(1 for grant in access.grants if grant.expires > run.now)
        run.set(
            C.ACCESS_CONTROLLED,
            True,
            "RolesApplied",
            f"{len(access.deployers)} deployer(s), {len(access.reviewers)} reviewer(s), {active} active grant(s)",
        )
        kinds = {m["kind"] for m in desired}
        if "NetworkPolicy" in kinds:
            run.set(
                C.NETWORK_ISOLATED,
                True,
                "PoliciesApplied",
                "isolated: ingress only from the allowed clients to the mTLS port",
            )
        else:
            run.set(C.NETWORK_ISOLATED, False, "PoliciesMissing", "no NetworkPolicy was built")
        return AppliedObjects(deployed="Deployment" in kinds, deployment=deployment)

    async def _prune(
        self, run: Run, context: ModelContext, owned: Sequence[OwnedRef], wanted: set[ObjectId]
    ) -> None:
        """Delete what the index shows this model owns, and what this operator applied for it last
        time (the index may not have seen that yet), unless it is still wanted."""
        keep = {(kind, name) for _, kind, name in wanted}
        candidates = {(ref.api_version, ref.kind, ref.name) for ref in owned if context.uid in ref.owner_uids}
        candidates |= self._desired.get(run.key, set())
        removed = []
        for api_version, kind, name in sorted(candidates):
            if (kind, name) not in keep and await self.kube.delete(
                api_version, kind, name, context.namespace
            ):
                removed.append(f"{kind}/{name}")
        self._desired[run.key] = wanted
        if removed:
            run.event(EventReason.PRUNED, "removed " + ", ".join(sorted(removed)))
