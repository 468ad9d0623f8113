"""What every reconcile step uses: the model as read, the run that collects conditions and events,
the owned objects as the index keeps them, and small helpers (times, fingerprints, the status write)."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from samd.errors import SamdError
from samd.operator.conditions import Condition, ConditionType
from samd.operator.kube import Kube
from samd.policy import VERSION_MISMATCH, VERSION_NOT_SIGNED, TrustPolicy
from samd.spec import API_VERSION, GROUP, SecureModelSpec
from samd.storage.guard import REASON as URI_REFUSED
from samd.storage.guard import AddressPolicy, URIRefusedError

ModelKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class ModelObject:
    """The parts of a SecureModel object the reconciler reads."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ModelObject:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=int(meta.get("generation", 1)),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
        )

    @property
    def key(self) -> ModelKey:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Rollout:
    """What the Serving condition reads from a Deployment."""

    replicas: int  # as the Deployment's spec asks
    available: int
    current: bool  # the Deployment controller has acted on the latest spec

    @classmethod
    def of(cls, deployment: Mapping[str, Any]) -> Rollout:
        status = deployment.get("status") or {}
        generation = (deployment.get("metadata") or {}).get("generation")
        return cls(
            replicas=int((deployment.get("spec") or {}).get("replicas") or 0),
            available=int(status.get("availableReplicas") or 0),
            current=generation is not None and generation == status.get("observedGeneration"),
        )

    def view(self, wanted: int) -> ServingView:
        """What the model's status reports of this rollout: replicas available, and whether enough are."""
        return (self.available, self.available >= wanted and self.current)


ServingView = tuple[int, bool]


@dataclass(frozen=True, slots=True)
class OwnedRef:
    """An object that carries the operator's labels and an ownerReference to a SecureModel."""

    api_version: str
    kind: str
    name: str
    owner_uids: frozenset[str]
    generation: int | None = None
    rollout: Rollout | None = None  # Deployments only

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> OwnedRef:
        meta = obj.get("metadata") or {}
        kind = str(obj.get("kind"))
        return cls(
            api_version=str(obj.get("apiVersion")),
            kind=kind,
            name=str(meta.get("name")),
            owner_uids=frozenset(str(ref.get("uid")) for ref in meta.get("ownerReferences") or []),
            generation=meta.get("generation"),
            rollout=Rollout.of(obj) if kind == "Deployment" else None,
        )


def owning_model(meta: Mapping[str, Any]) -> str | None:
    """The name of the SecureModel that owns an object, from its ownerReferences."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "SecureModel" and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref.get("name"))
    return None


# The condition that reports on each kind of owned object, when applying one fails.
CONDITION_OF_KIND = {
    "ServiceAccount": ConditionType.ACCESS_CONTROLLED,
    "Role": ConditionType.ACCESS_CONTROLLED,
    "RoleBinding": ConditionType.ACCESS_CONTROLLED,
    "NetworkPolicy": ConditionType.NETWORK_ISOLATED,
    "Secret": ConditionType.CERTIFICATES_READY,
    "Certificate": ConditionType.CERTIFICATES_READY,
}


class EventReason(StrEnum):
    """The reason of every Kubernetes Event the operator posts on a SecureModel: a closed set, so
    that docs/events.md can list each with what to do (a unit test holds the two together)."""

    VERIFIED = "Verified"
    SIGNATURE_INVALID = "SignatureInvalid"
    VERSION_NOT_SIGNED = VERSION_NOT_SIGNED
    VERSION_MISMATCH = VERSION_MISMATCH
    POLICY_VIOLATION = "PolicyViolation"
    INVALID_SPEC = "InvalidSpec"
    URI_REFUSED = URI_REFUSED
    KEY_ROTATED = "KeyRotated"
    KEY_REWRAPPED = "KeyRewrapped"
    KEY_ROTATION_FAILED = "KeyRotationFailed"
    KEY_INVALID = "KeyInvalid"
    ARTIFACT_INVALID = "ArtifactInvalid"
    CERTIFICATE_RENEWED = "CertificateRenewed"
    CERTIFICATE_ISSUER_CHANGED = "CertificateIssuerChanged"
    APPLY_FAILED = "ApplyFailed"
    PRUNED = "Pruned"
    QUARANTINED = "Quarantined"
    QUARANTINE_CLEARED = "QuarantineCleared"
    LOADER_FAILED = "LoaderFailed"  # posted by the incident check, not by a reconcile


@dataclass(frozen=True)
class Event:
    reason: EventReason
    message: str
    warning: bool = False


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    error: Exception | None = None
    replicas: int | None = None  # as the spec asks, when the model is served


@dataclass
class Run:
    """What one reconcile of one model accumulates: conditions, events, and what the steps hand on."""

    model: ModelObject
    spec: SecureModelSpec
    now: datetime.datetime
    outcome: Outcome
    conditions: dict[ConditionType, Condition] = field(default_factory=dict)
    temporary: list[str] = field(default_factory=list)
    signature: bytes | None = None  # the bundle as read from storage, verified or not
    guard: AddressPolicy = field(default_factory=AddressPolicy)  # what the spec may point the operator at
    apply_failures: dict[ConditionType, str] = field(default_factory=dict)
    taken: list[str] = field(default_factory=list)  # the model's object names that belong to others

    @property
    def key(self) -> ModelKey:
        return self.model.key

    def set(self, kind: ConditionType, status: bool | None, reason: str, message: str) -> None:
        self.conditions[kind] = Condition(kind, status, reason, message)

    def event(self, reason: EventReason, message: str, *, warning: bool = False) -> None:
        self.outcome.events.append(Event(reason, message, warning))

    def apply_failed(self, manifest: Mapping[str, Any], error: Exception) -> None:
        """An object could not be applied (refused by an admission webhook, a quota, RBAC...).

        The rest of the reconcile goes on and its status is written; the condition that reports on
        the object says why (`report_apply_failures`), and the reconcile is retried.
        """
        kind = CONDITION_OF_KIND.get(str(manifest["kind"]), ConditionType.SERVING)
        self.apply_failures.setdefault(kind, str(error))
        self.temporary.append(str(error))
        self.event(EventReason.APPLY_FAILED, str(error), warning=True)

    def report_apply_failures(self) -> None:
        """Each condition whose objects could not be applied says so, over what its step reported."""
        for kind, message in self.apply_failures.items():
            self.set(kind, False, "ApplyFailed", message)

    def refused(self, kind: ConditionType, error: URIRefusedError) -> None:
        """A URI the user named that the operator must not open: nothing was read or written."""
        self.set(kind, False, URI_REFUSED, str(error))
        self.event(EventReason.URI_REFUSED, str(error), warning=True)

    def retry_later(
        self, kind: ConditionType, reason: str, error: SamdError, keep: dict[str, Any]
    ) -> dict[str, Any]:
        """A transient failure: keep the last known state, say so, and have kopf retry."""
        self.set(kind, None, reason, f"{error}; retrying")
        self.temporary.append(str(error))
        return keep


@dataclass(slots=True)
class Cached:
    """A step's answer for one model, valid while its inputs (the fingerprint) stay the same."""

    fingerprint: str
    checked_at: datetime.datetime
    value: Any

    def fresh(self, fingerprint: str, now: datetime.datetime, max_age: datetime.timedelta) -> bool:
        return self.fingerprint == fingerprint and now - self.checked_at < max_age


def fingerprint(*parts: object) -> str:
    """A digest of what a cached answer depends on (policies by name and generation)."""
    text = "|".join(
        f"{p.name}@{p.generation}" if isinstance(p, TrustPolicy) else repr(p)
        for part in parts
        for p in (part if isinstance(part, (list, tuple)) else [part])
    )
    return hashlib.sha256(text.encode()).hexdigest()


async def write_status(kube: Kube, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
    """Merge-patch the model's status subresource; False when the model is gone.

    Written by the reconciler rather than by kopf, so that it happens under the model's lock.
    """
    return await kube.patch_merge(API_VERSION, "SecureModel", name, namespace, patch, status=True)
