"""Reconcile one SecureModel as a whole, from its current state (level-based).

The order matters: nothing is served unless the signature verified under the trust policy, so the
serving objects are built from the verified manifest digest and removed when verification fails.
Each aspect yields one condition; Ready summarises them. Transient failures (storage or KMS
unreachable) keep the last known good state, say so in the condition and ask kopf to retry.

A reconcile costs few API calls once a model is in place: the objects it owns come from the
handlers' in-memory indexes (no list calls), unchanged manifests are not applied again (the API
wrapper remembers them until someone else changes the object), certificates it issued are not read
back, and the key check is cached like the signature verification.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import kopf

from samd.errors import KeyProviderError, SamdError, StorageError, VerificationError
from samd.operator import artifacts
from samd.operator.builders import build_owned_objects
from samd.operator.builders.certificates import (
    CertificateAuthority,
    certificate_not_after,
    issue_client_certificate,
    issue_server_certificate,
    needs_renewal,
)
from samd.operator.builders.context import BuilderSettings, ModelContext
from samd.operator.builders.names import client_secret_name, serving_name, tls_secret_name
from samd.operator.builders.serving import build_signature_config_map
from samd.operator.certmanager import CertManagerCertificates
from samd.operator.conditions import Condition, ConditionType, merge_conditions, ready_condition
from samd.operator.config import OperatorConfig
from samd.operator.kube import Applied, Kube
from samd.policy import (
    TrustPolicy,
    applicable_policies,
    check_spec_against_policies,
    check_version_binding,
    requiring_signed_version,
    verify_under_policies,
    version_binding_reason,
)
from samd.spec import API_VERSION, GROUP, SecureModelSpec, SpecError, parse_secure_model
from samd.storage.guard import REASON as URI_REFUSED
from samd.storage.guard import AddressPolicy, URIRefusedError, policy_allowances

log = logging.getLogger(__name__)

C = ConditionType


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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


# Kinds whose metadata.generation moves only when their spec does, so that a write by someone else
# that leaves it alone (a controller updating status) needs no re-apply.
GENERATION_KINDS = frozenset({"Deployment", "NetworkPolicy", "PodDisruptionBudget"})


# The condition that reports on each kind of owned object, when applying one fails.
CONDITION_OF_KIND = {
    "ServiceAccount": ConditionType.ACCESS_CONTROLLED,
    "Role": ConditionType.ACCESS_CONTROLLED,
    "RoleBinding": ConditionType.ACCESS_CONTROLLED,
    "NetworkPolicy": ConditionType.NETWORK_ISOLATED,
    "Secret": ConditionType.CERTIFICATES_READY,
    "Certificate": ConditionType.CERTIFICATES_READY,
}


VERIFICATION_FIELDS = ("method", "signer", "issuer", "manifestDigest", "version", "verifiedAt", "policy")
"""What `status.verification` records of a successful verification."""


class Change(Enum):
    """What a modification of an owned object, seen by the watch, asks of the operator."""

    NONE = "none"  # the echo of our own apply, or a status write that changes nothing the model reports
    ROLLOUT = "rollout"  # only the Deployment's rollout moved: Serving and Ready are written alone
    DRIFT = "drift"  # someone else changed what we applied: reconcile, which applies it again


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    error: Exception | None = None
    replicas: int | None = None  # as the spec asks, when the model is served


@dataclass(frozen=True)
class _WrittenStatus:
    """The status the last reconcile wrote, kept so that a rollout alone can update it."""

    generation: int
    status: Mapping[str, Any]
    replicas: int | None


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_time(text: object) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def due_at(
    spec: Mapping[str, Any], status: Mapping[str, Any], config: OperatorConfig
) -> datetime.datetime | None:
    """When this model next needs a reconcile for time-bound state, from its spec and status alone."""
    candidates: list[datetime.datetime] = []
    for grant in (spec.get("access") or {}).get("grants") or []:
        expires = _parse_time(grant.get("expires"))
        verified_at = _parse_time((status.get("verification") or {}).get("verifiedAt"))
        # A grant is due once it expired after the last reconcile that could have removed it.
        if expires is not None and (verified_at is None or expires > verified_at - config.resync_interval):
            candidates.append(expires)
    key_rotation = _parse_time((status.get("key") or {}).get("nextRotation"))
    if key_rotation is not None:
        candidates.append(key_rotation)
    server_not_after = _parse_time((status.get("certificates") or {}).get("serverNotAfter"))
    if server_not_after is not None:
        candidates.append(server_not_after - config.renew_before)
    verified_at = _parse_time((status.get("verification") or {}).get("verifiedAt"))
    if verified_at is not None:
        candidates.append(verified_at + config.reverify_interval)
    last = _parse_time(status.get("lastReconciled"))
    if last is not None:
        candidates = [c for c in candidates if c > last]
    return min(candidates, default=None)


@dataclass
class _Run:
    """What one reconcile of one model accumulates."""

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

    def set(self, kind: ConditionType, status: bool | None, reason: str, message: str) -> None:
        self.conditions[kind] = Condition(kind, status, reason, message)

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.outcome.events.append(Event(reason, message, warning))

    def apply_failed(self, manifest: Mapping[str, Any], error: Exception) -> None:
        """An object could not be applied (refused by an admission webhook, a quota, RBAC...).

        The rest of the reconcile goes on and its status is written; the condition that reports on
        the object says why, and the reconcile is retried.
        """
        kind = CONDITION_OF_KIND.get(str(manifest["kind"]), ConditionType.SERVING)
        self.apply_failures.setdefault(kind, str(error))
        self.temporary.append(str(error))
        self.event("ApplyFailed", str(error), warning=True)

    def refused(self, kind: ConditionType, error: URIRefusedError) -> None:
        """A URI the user named that the operator must not open: nothing was read or written."""
        self.set(kind, False, URI_REFUSED, str(error))
        self.event(URI_REFUSED, str(error), warning=True)

    def retry_later(
        self, kind: ConditionType, reason: str, error: SamdError, keep: dict[str, Any]
    ) -> dict[str, Any]:
        """A transient failure: keep the last known state, say so, and have kopf retry."""
        self.set(kind, None, reason, f"{error}; retrying")
        self.temporary.append(str(error))
        return keep


@dataclass
class _Cached:
    fingerprint: str
    checked_at: datetime.datetime
    value: Any


@dataclass(frozen=True)
class _IssuedCertificate:
    """A certificate this operator issued and stored; its key is not kept."""

    not_after: datetime.datetime
    authority: CertificateAuthority
    applied: Applied  # the API wrapper's record of the apply; gone or replaced once someone changes it


ModelKey = tuple[str, str]  # (namespace, name)


@dataclass
class Reconciler:
    kube: Kube
    config: OperatorConfig
    _verifications: dict[ModelKey, _Cached] = field(default_factory=dict)
    _postures: dict[ModelKey, _Cached] = field(default_factory=dict)
    _keys: dict[ModelKey, _Cached] = field(default_factory=dict)
    # When this process last rotated each model's key: a reconcile may start from a status read
    # before that rotation was written, and must not rotate again on it.
    _rotated: dict[ModelKey, datetime.datetime] = field(default_factory=dict)
    _certificates_issued: dict[tuple[str, str], _IssuedCertificate] = field(default_factory=dict)
    # Per model: what its status reports of the Deployment, the status written, the owned objects
    # applied, and a lock that serialises the writers of its status.
    _serving_views: dict[ModelKey, ServingView | None] = field(default_factory=dict)
    _written: dict[ModelKey, _WrittenStatus] = field(default_factory=dict)
    _desired: dict[ModelKey, set[tuple[str, str, str]]] = field(default_factory=dict)
    _locks: dict[ModelKey, asyncio.Lock] = field(default_factory=dict)
    _ca: CertificateAuthority | None = None
    _ca_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _slots: asyncio.Semaphore | None = None
    _cert_manager: CertManagerCertificates | None = None

    def __post_init__(self) -> None:
        self._cert_manager = CertManagerCertificates(self.kube, self.config)
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
            key = (namespace, model)
            written = self._written.get(key)
            rollout = Rollout.of(obj)
            wanted = written.replicas if written is not None and written.replicas else rollout.replicas
            return Change.NONE if self._serving_views.get(key) == rollout.view(wanted) else Change.ROLLOUT
        if applied is not None and applied.resource_version == meta.get("resourceVersion"):
            return Change.NONE
        self.forget(obj)
        return Change.DRIFT

    def forget(self, obj: Mapping[str, Any]) -> None:
        """An owned object was changed or deleted by someone else: apply it again next time."""
        meta = obj.get("metadata") or {}
        self.kube.forget(str(obj.get("kind")), meta.get("namespace"), str(meta.get("name")))

    def drop_model(self, namespace: str, name: str) -> None:
        """The SecureModel is gone: drop what was remembered about it."""
        key = (namespace, name)
        for _, kind, object_name in self._desired.get(key, set()):
            if kind == "Secret":
                self._certificates_issued.pop((namespace, object_name), None)
        for cache in (
            self._verifications,
            self._postures,
            self._keys,
            self._rotated,
            self._serving_views,
            self._written,
            self._desired,
            self._locks,
        ):
            cache.pop(key, None)

    async def reconcile(
        self,
        model: ModelObject,
        *,
        policies: Sequence[TrustPolicy],
        namespace_labels: Mapping[str, str],
        now: datetime.datetime,
        owned: Sequence[OwnedRef] = (),
    ) -> Outcome:
        """Reconcile one model and write its status; `owned` is what the indexes hold of its objects."""
        assert self._slots is not None  # noqa: S101 - set in __post_init__
        key = (model.namespace, model.name)
        async with self._slots, self._lock(key):
            outcome = await self._reconcile(
                model, policies=policies, namespace_labels=namespace_labels, now=now, owned=owned
            )
            if await self._write_status(model.namespace, model.name, {"status": outcome.status}):
                written = {k: v for k, v in outcome.status.items() if v is not None}
                self._written[key] = _WrittenStatus(model.generation, written, outcome.replicas)
            return outcome

    def _lock(self, key: ModelKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _write_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        """Written here rather than by kopf, so that it happens under the model's lock."""
        return await self.kube.patch_merge(API_VERSION, "SecureModel", name, namespace, patch, status=True)

    async def refresh_serving(
        self, namespace: str, name: str, latest: Callable[[], Rollout | None], now: datetime.datetime
    ) -> bool:
        """Only the model's Deployment rollout moved: write Serving and Ready, and nothing else.

        `latest` gives the rollout as last seen, read once the model's lock is held. False when this
        needs a whole reconcile instead (the operator has not written this model's status yet, or the
        model is not being served).
        """
        key = (namespace, name)
        async with self._lock(key):
            written, rollout = self._written.get(key), latest()
            if (
                written is None
                or written.replicas is None
                or rollout is None
                or key not in self._serving_views
            ):
                return False
            view = rollout.view(written.replicas)
            if view == self._serving_views[key]:
                return True
            conditions = {
                ConditionType(c["type"]): Condition.of(c)
                for c in written.status.get("conditions") or []
                if c.get("type") in {t.value for t in ConditionType}
            }
            conditions[C.SERVING] = _serving_condition(view, written.replicas)
            conditions[C.READY] = ready_condition(conditions)
            merged = merge_conditions(
                written.status.get("conditions") or [],
                [conditions[C.SERVING], conditions[C.READY]],
                generation=written.generation,
                now=now,
            )
            serving = {**(written.status.get("serving") or {}), "readyReplicas": view[0]}
            if not await self._write_status(
                namespace, name, {"status": {"conditions": merged, "serving": {"readyReplicas": view[0]}}}
            ):
                return True  # the model is gone
            status = {**written.status, "conditions": merged, "serving": serving}
            self._written[key] = _WrittenStatus(written.generation, status, written.replicas)
            self._serving_views[key] = view
            return True

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
            outcome = Outcome(status={})
            invalid = {C.READY: Condition(C.READY, False, "InvalidSpec", str(error))}
            outcome.status = _status(model, invalid, now)
            outcome.events.append(Event("InvalidSpec", str(error), warning=True))
            outcome.error = kopf.PermanentError(str(error))
            return outcome

        quarantine = Quarantine.of(model.status)
        if quarantine.active:
            # Scaled to zero: the Deployment stays (with its verified template) for when it is cleared.
            spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"replicas": 0})})
        covering = applicable_policies(policies, namespace_labels)
        run = _Run(
            model=model, spec=spec, now=now, outcome=Outcome(status={}), guard=self._address_policy(covering)
        )
        verification = await self._verify(run, covering)
        key_status = await self._check_key(run)
        storage_status = await self._check_storage(run)
        context = ModelContext(
            name=model.name,
            namespace=model.namespace,
            uid=model.uid,
            spec=spec,
            manifest_digest=verification.get("manifestDigest") if run.conditions[C.VERIFIED].status else None,
            settings=builder_settings(self.config),
        )
        assert self._cert_manager is not None  # noqa: S101 - set in __post_init__
        issuer = self._cert_manager.choose(covering)  # None: the operator CA (certmanager.py)
        if issuer is not None:
            certificates = await self._cert_manager.ensure(run, context, owned, issuer)
        elif await self._cert_manager.release(run, context):
            certificates = {**await self._certificates(run, context, owned), "issuer": None}
        else:  # an issuer's Certificates are still there: retried
            certificates = dict(model.status.get("certificates") or {})
        serving = await self._apply_owned(run, context, covering, owned)
        for kind, message in run.apply_failures.items():
            run.set(kind, False, "ApplyFailed", message)
        _quarantine_condition(run, quarantine)

        status = _status(model, run.conditions, now)
        status.update(
            {
                "verification": verification,
                "key": key_status,
                "storage": storage_status,
                "certificates": certificates,
                "serving": serving,
            }
        )
        # An empty section is written as null, which removes what an earlier reconcile recorded there.
        run.outcome.status = {k: (v if v else None) for k, v in status.items()}
        if run.temporary:
            run.outcome.error = kopf.TemporaryError("; ".join(run.temporary), delay=15)
        if serving and C.SERVING not in run.apply_failures:
            # A rollout alone may then update Serving; not while a serving object is missing.
            run.outcome.replicas = spec.serving.replicas
        return run.outcome

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

    # --- Verified ---------------------------------------------------------------------------------

    async def _verify(self, run: _Run, policies: Sequence[TrustPolicy]) -> dict[str, Any]:
        model, spec, now = run.model, run.spec, run.now
        previous = dict(model.status.get("verification") or {})
        # A failed verification removes what described the last one but keeps the version it verified:
        # the no-downgrade rule's reference must survive a failure, or making verification fail once
        # would reset it. (The status is merge-patched: a removed field is written as null.)
        kept = (
            {**dict.fromkeys(VERIFICATION_FIELDS), "version": previous["version"]}
            if previous.get("version")
            else {}
        )
        if not policies:
            run.set(
                C.VERIFIED,
                False,
                "NoTrustPolicy",
                f"no ModelTrustPolicy covers namespace {model.namespace}; ask a cluster admin for one "
                "that lists the signers you trust",
            )
            return kept
        violations = check_spec_against_policies(spec, policies, previous_version=previous.get("version"))
        if violations:
            run.set(C.VERIFIED, False, "PolicyViolation", "; ".join(violations))
            run.event("PolicyViolation", "; ".join(violations), warning=True)
            return kept
        key = (model.namespace, model.name)
        fingerprint = _fingerprint(spec.signature.uri, spec.artifact.model_dump_json(), policies)
        cached = self._verifications.get(key)
        fresh = cached is not None and cached.fingerprint == fingerprint
        if cached is not None and fresh and now - cached.checked_at < self.config.reverify_interval:
            run.signature, result, policy_name = cached.value
            verified_at = cached.checked_at
        else:
            try:
                run.signature = await asyncio.to_thread(
                    artifacts.read_signature, spec, self.config.max_signature_bytes, run.guard
                )
                result, policy_name = await asyncio.to_thread(verify_under_policies, run.signature, policies)
            except URIRefusedError as error:
                self._verifications.pop(key, None)
                run.signature = None
                run.refused(C.VERIFIED, error)
                return {}
            except VerificationError as error:
                self._verifications.pop(key, None)
                run.set(C.VERIFIED, False, "SignatureInvalid", str(error))
                run.event("SignatureInvalid", str(error), warning=True)
                return kept
            except StorageError as error:
                if not error.transient:
                    run.set(C.VERIFIED, False, "SignatureUnreadable", str(error))
                    return kept
                return run.retry_later(C.VERIFIED, "SignatureUnreachable", error, previous)
            verified_at = now
            self._verifications[key] = _Cached(fingerprint, now, (run.signature, result, policy_name))
            if previous.get("manifestDigest") != result.manifest_digest:
                run.event("Verified", f"signature by {result.signer} verified under policy {policy_name}")
        if spec.artifact.digest and spec.artifact.digest != result.manifest_digest:
            message = (
                f"the signature covers manifest {result.manifest_digest}, but spec.artifact.digest pins "
                f"{spec.artifact.digest}: sign the model again or fix the pin"
            )
            run.set(C.VERIFIED, False, "DigestMismatch", message)
            return kept
        verified = f"signed by {result.signer} ({result.method}), policy {policy_name}"
        requiring = requiring_signed_version(policies)
        unbound = check_version_binding(result, model.name, spec.version) if requiring else []
        if unbound:
            # Charged to the policies that require a signed version; only warn-mode ones: a warning.
            reason, names = version_binding_reason(result), ", ".join(p.name for p in requiring)
            message = f"policy {names} requires a signed version: {'; '.join(unbound)}"
            if any(p.enforcing for p in requiring):
                run.set(C.VERIFIED, False, reason, message)
                run.event(reason, message, warning=True)
                return kept
            verified += f"; warning (warn mode): {message}"
            seen = (previous.get("manifestDigest"), previous.get("version"))
            if seen != (result.manifest_digest, spec.version):  # once per digest and version
                run.event(reason, message, warning=True)
        run.set(C.VERIFIED, True, "SignatureVerified", verified)
        return {
            "method": result.method,
            "signer": result.signer,
            "issuer": result.issuer,
            "manifestDigest": result.manifest_digest,
            "version": spec.version,
            "verifiedAt": _iso(verified_at),
            "policy": policy_name,
        }

    # --- Encrypted ----------------------------------------------------------------------------------

    async def _check_key(self, run: _Run) -> dict[str, Any]:
        model, spec, now = run.model, run.spec, run.now
        previous = dict(model.status.get("key") or {})
        if spec.encryption is None:
            run.set(
                C.ENCRYPTED,
                True,
                "NotEncrypted",
                "the model is stored unencrypted (the trust policy allows it)",
            )
            return {}
        key_ref = spec.encryption.key_ref
        secret_name = key_ref.secret_name or ""
        keyset: bytes | None = None
        if key_ref.provider == "local":
            secret = await self.kube.get("v1", "Secret", secret_name, model.namespace)
            keyset = artifacts.keyset_from_secret(secret) if secret else None
            if keyset is None:
                message = (
                    f"Secret {secret_name} with entry {artifacts.KEYSET_KEY} is missing in namespace "
                    f"{model.namespace}: create it from the keyset the model was encrypted with "
                    f"(kubectl create secret generic {secret_name} --from-file={artifacts.KEYSET_KEY}=KEYSET)"
                )
                run.set(C.ENCRYPTED, False, "KeySecretMissing", message)
                run.temporary.append(message)
                return previous
        key = (model.namespace, model.name)
        fingerprint = _fingerprint(
            spec.artifact.model_dump_json(),
            key_ref.model_dump_json(),
            hashlib.sha256(keyset or b"").hexdigest(),
            repr(run.guard),
        )
        cached = self._keys.get(key)
        rotating = False  # a failure while rotating is a security event (KeyRotationFailed)
        try:
            if (
                cached is not None
                and cached.fingerprint == fingerprint
                and now - cached.checked_at < self.config.reverify_interval
            ):
                state = cached.value
            else:
                state = await asyncio.to_thread(artifacts.inspect_key, spec, keyset, run.guard)
                self._keys[key] = _Cached(fingerprint, now, state)
            rotated_at = _parse_time(previous.get("rotatedAt")) or state.current_created or now
            rotated_at = max(rotated_at, self._rotated.get(key, rotated_at))
            version = state.artifact_key_version
            if rotated_at + spec.encryption.rotation_interval <= now:
                rotating = True
                # Store the new key version before any artifact depends on it; old versions still
                # unwrap, so a crash between the two steps leaves a working model.
                new_keyset = await asyncio.to_thread(artifacts.rotate_key, spec, keyset, run.guard)
                if new_keyset is not None:
                    await self.kube.apply(
                        artifacts.keyset_secret_manifest(secret_name, model.namespace, new_keyset)
                    )
                    keyset = new_keyset
                rotated_at = self._rotated[key] = now
                self._keys.pop(key, None)  # the artifact's header changes
                version = await asyncio.to_thread(artifacts.rewrap_artifact, spec, keyset, run.guard)
                run.event(
                    "KeyRotated",
                    f"{state.provider} key {state.key_id} rotated; data key re-wrapped under version {version}",
                )
            elif version != state.current_version:
                self._keys.pop(key, None)
                version = await asyncio.to_thread(artifacts.rewrap_artifact, spec, keyset, run.guard)
                run.event("KeyRewrapped", f"data key re-wrapped under key version {version}")
        except URIRefusedError as error:
            self._keys.pop(key, None)
            run.refused(C.ENCRYPTED, error)
            return previous
        except (KeyProviderError, StorageError) as error:
            self._keys.pop(key, None)
            if rotating:
                run.event("KeyRotationFailed", f"the key rotation due failed: {error}", warning=True)
            if error.transient:
                return run.retry_later(C.ENCRYPTED, "KeyServiceUnreachable", error, previous)
            run.set(C.ENCRYPTED, False, "KeyInvalid", str(error))
            run.event("KeyInvalid", str(error), warning=True)
            return previous
        except SamdError as error:
            self._keys.pop(key, None)
            run.set(C.ENCRYPTED, False, "ArtifactInvalid", str(error))
            run.event("ArtifactInvalid", str(error), warning=True)
            return previous
        run.set(
            C.ENCRYPTED,
            True,
            "KeyValid",
            f"the data key unwraps with {state.provider} key {state.key_id} version {version}",
        )
        # The header records no creation time: the age of a data key is counted from when the operator
        # first saw it, so it is a lower bound (`samd audit`, data-key-rotation-overdue).
        same_data_key = previous.get("dataKeyId") == state.data_key_id
        recorded = _parse_time(previous.get("dataKeyFirstSeen")) if same_data_key else None
        data_key_first_seen = min(recorded, now) if recorded is not None else now  # never in the future
        return {
            "provider": state.provider,
            "keyId": state.key_id,
            "keyVersion": version,
            "rotatedAt": _iso(rotated_at),
            "nextRotation": _iso(rotated_at + spec.encryption.rotation_interval),
            "dataKeyId": state.data_key_id,
            "dataKeyFirstSeen": _iso(data_key_first_seen),
        }

    # --- StorageSecure ----------------------------------------------------------------------------------

    async def _check_storage(self, run: _Run) -> dict[str, Any]:
        model, spec, now = run.model, run.spec, run.now
        if not spec.artifact.uri.startswith("s3://"):
            run.set(C.STORAGE_SECURE, True, "NotApplicable", "bucket posture checks apply to s3:// artifacts")
            return {}
        previous = dict(model.status.get("storage") or {})
        key = (model.namespace, model.name)
        fingerprint = _fingerprint(spec.artifact.model_dump_json(), repr(run.guard))
        cached = self._postures.get(key)
        if (
            cached
            and cached.fingerprint == fingerprint
            and now - cached.checked_at < self.config.reverify_interval
        ):
            posture, checked_at = cached.value, cached.checked_at
        else:
            try:
                posture = await asyncio.to_thread(artifacts.bucket_posture, spec, run.guard)
            except URIRefusedError as error:
                self._postures.pop(key, None)
                run.refused(C.STORAGE_SECURE, error)
                return {}
            except StorageError as error:
                return run.retry_later(C.STORAGE_SECURE, "StorageUnreachable", error, previous)
            checked_at = now
            self._postures[key] = _Cached(fingerprint, now, posture)
        if posture.secure:
            run.set(
                C.STORAGE_SECURE,
                True,
                "BucketSecure",
                "default encryption is on and public access is blocked",
            )
        else:
            run.set(C.STORAGE_SECURE, False, "BucketInsecure", "; ".join(posture.findings))
        return {
            "encrypted": posture.encrypted,
            "publicAccessBlocked": posture.public_access_blocked,
            "checkedAt": _iso(checked_at),
        }

    # --- certificates -------------------------------------------------------------------------------

    async def _authority(self, now: datetime.datetime) -> CertificateAuthority:
        async with self._ca_lock:
            if self._ca is not None:
                return self._ca
            name, namespace = self.config.ca_secret_name, self.config.namespace
            secret = await self.kube.get("v1", "Secret", name, namespace)
            if secret is None:
                await self.kube.create(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": name, "namespace": namespace},
                        "type": "Opaque",
                        "data": CertificateAuthority.generate(now).to_secret_data(),
                    }
                )
                # Another replica may have created it first: use whatever is stored.
                secret = await self.kube.get("v1", "Secret", name, namespace)
            if secret is None:
                raise kopf.TemporaryError(f"the operator CA Secret {namespace}/{name} vanished", delay=5)
            self._ca = CertificateAuthority.from_secret_data(secret.get("data") or {})
            return self._ca

    def _issued_certificate(
        self, namespace: str, secret_name: str, authority: CertificateAuthority
    ) -> _IssuedCertificate | None:
        """A certificate this operator issued, unless someone has changed its Secret since."""
        issued = self._certificates_issued.get((namespace, secret_name))
        if (
            issued is not None
            and issued.authority is authority
            and self.kube.last_applied("Secret", namespace, secret_name) is issued.applied
        ):
            return issued
        self._certificates_issued.pop((namespace, secret_name), None)
        return None

    async def _taken(
        self, run: _Run, context: ModelContext, manifest: Mapping[str, Any], owned: Sequence[OwnedRef]
    ) -> str | None:
        """Why `manifest` may not be applied, or None when it may.

        Its name comes from the SecureModel's name, which whoever may create a SecureModel chooses; a
        server-side apply would take over any object of that name. So an object is applied only when
        it is this model's (its ownerReferences name the model) or does not exist yet: it is read
        first the one time it is neither in the owned-object indexes nor applied by this operator.
        """
        kind, name, namespace = str(manifest["kind"]), str(manifest["metadata"]["name"]), context.namespace
        if any(ref.kind == kind and ref.name == name and context.uid in ref.owner_uids for ref in owned):
            return None
        if self.kube.last_applied(kind, namespace, name) is not None:
            return None
        existing = await self.kube.get(str(manifest["apiVersion"]), kind, name, namespace)
        owners = {
            ref.get("uid") for ref in ((existing or {}).get("metadata") or {}).get("ownerReferences") or []
        }
        if existing is None or context.uid in owners:
            return None
        run.taken.append(f"{kind} {name}")
        return (
            f"{kind} {name} already exists in namespace {namespace} and does not belong to SecureModel "
            f"{context.name}: the operator never takes over an object it did not create; delete or rename "
            f"that {kind}, or give the SecureModel another name"
        )

    async def _stored_certificate(
        self, namespace: str, secret_name: str, owned: Sequence[OwnedRef]
    ) -> Mapping[str, Any]:
        """The certificate Secret's data; no read when the indexes show there is no such Secret."""
        if not any(ref.kind == "Secret" and ref.name == secret_name for ref in owned):
            return {}
        existing = await self.kube.get("v1", "Secret", secret_name, namespace)
        return dict((existing or {}).get("data") or {})

    async def _certificates(
        self, run: _Run, context: ModelContext, owned: Sequence[OwnedRef]
    ) -> dict[str, Any]:
        authority = await self._authority(run.now)
        clients = [client.name for client in context.spec.serving.clients]
        wanted: list[tuple[str, str | None]] = [(tls_secret_name(context.name), None)]
        wanted += [(client_secret_name(context.name, client), client) for client in clients]
        server_not_after = None
        namespace, renew_before = context.namespace, self.config.renew_before
        for secret_name, client in wanted:
            issued = self._issued_certificate(namespace, secret_name, authority)
            if issued is not None:
                existed, renew = True, run.now >= issued.not_after - renew_before
                not_after: datetime.datetime | None = issued.not_after
            else:
                data = await self._stored_certificate(namespace, secret_name, owned)
                existed, renew = (
                    bool(data),
                    needs_renewal(data, authority, run.now, renew_before=renew_before),
                )
                not_after = certificate_not_after(data)
            if renew:
                manifest = (
                    issue_server_certificate(authority, context, run.now)
                    if client is None
                    else issue_client_certificate(authority, context, client, run.now)
                )
                taken = await self._taken(run, context, manifest, owned)
                if taken is not None:
                    run.apply_failed(manifest, kopf.PermanentError(taken))
                    continue
                try:
                    await self.kube.apply(manifest)
                except (kopf.TemporaryError, kopf.PermanentError) as error:
                    run.apply_failed(manifest, error)
                    continue
                not_after = certificate_not_after(manifest["data"])
                applied = self.kube.last_applied("Secret", namespace, secret_name)
                if applied is not None and not_after is not None:
                    self._certificates_issued[(namespace, secret_name)] = _IssuedCertificate(
                        not_after, authority, applied
                    )
                if existed:
                    run.event("CertificateRenewed", f"Secret {secret_name} renewed")
            if client is None:
                server_not_after = not_after
        until = _iso(server_not_after) if server_not_after else "unknown"
        run.set(
            C.CERTIFICATES_READY,
            True,
            "Issued",
            f"server certificate valid until {until}; {len(clients)} client certificate(s)",
        )
        return {"serverNotAfter": _iso(server_not_after) if server_not_after else None, "clients": clients}

    # --- owned objects: RBAC, NetworkPolicies, serving ---------------------------------------------------

    async def _apply_owned(
        self,
        run: _Run,
        context: ModelContext,
        policies: Sequence[TrustPolicy],
        owned: Sequence[OwnedRef],
    ) -> dict[str, Any]:
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
        keep = {(kind, name) for _, kind, name in wanted}
        deployment: dict[str, Any] | None = None
        for manifest in desired:
            taken = await self._taken(run, context, manifest, owned)
            if taken is None and manifest["kind"] == "Deployment" and run.taken:
                taken = f"the model is not deployed while objects named for it belong to others ({', '.join(run.taken)})"
            if taken is not None:
                run.apply_failed(manifest, kopf.PermanentError(taken))
                continue
            try:
                stored = await self.kube.apply(manifest)
            except (kopf.TemporaryError, kopf.PermanentError) as error:
                run.apply_failed(manifest, error)
                continue
            if manifest["kind"] == "Deployment":
                deployment = stored
        # What to prune: what the indexes show this model owns, and what this operator applied for
        # it last time (the indexes may not have seen that yet).
        model_key = (context.namespace, context.name)
        candidates = {(ref.api_version, ref.kind, ref.name) for ref in owned if context.uid in ref.owner_uids}
        candidates |= self._desired.get(model_key, set())
        removed = []
        for api_version, kind, name in sorted(candidates):
            if (kind, name) not in keep and await self.kube.delete(
                api_version, kind, name, context.namespace
            ):
                removed.append(f"{kind}/{name}")
        self._desired[model_key] = wanted
        if removed:
            run.event("Pruned", "removed " + ", ".join(sorted(removed)))

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
        return await self._serving_status(run, context, "Deployment" in kinds, deployment, owned)

    def _indexed_rollout(self, context: ModelContext, name: str, owned: Sequence[OwnedRef]) -> Rollout | None:
        """The Deployment as indexed, unless the index has not seen our last apply to it yet."""
        applied = self.kube.last_applied("Deployment", context.namespace, name)
        for ref in owned:
            if ref.kind == "Deployment" and ref.name == name and context.uid in ref.owner_uids:
                if applied is not None and (ref.generation or 0) < (applied.generation or 0):
                    return None
                return ref.rollout
        return None

    async def _serving_status(
        self,
        run: _Run,
        context: ModelContext,
        deployed: bool,
        applied: Mapping[str, Any] | None,
        owned: Sequence[OwnedRef],
    ) -> dict[str, Any]:
        """Serving from the Deployment: as our apply returned it, else as indexed, else as read."""
        serving = context.spec.serving
        model_key = (context.namespace, context.name)
        self._serving_views[model_key] = None
        if not serving.enabled:
            run.set(C.SERVING, True, "ServingDisabled", "spec.serving.enabled is false")
            return {}
        if not deployed:
            run.set(C.SERVING, False, "NotVerified", "nothing is served until the signature verifies")
            return {}
        name = serving_name(context.name)
        rollout = Rollout.of(applied) if applied is not None else self._indexed_rollout(context, name, owned)
        if rollout is None:
            rollout = Rollout.of(await self.kube.get("apps/v1", "Deployment", name, context.namespace) or {})
        view = rollout.view(serving.replicas)
        # Recorded with no await since it was read, so a watch event after this compares against it.
        self._serving_views[model_key] = view
        run.conditions[C.SERVING] = _serving_condition(view, serving.replicas)
        available = view[0]
        return {"deployment": name, "service": name, "readyReplicas": available, "replicas": serving.replicas}


def builder_settings(config: OperatorConfig) -> BuilderSettings:
    """What the builders need of the operator's configuration."""
    return BuilderSettings.of(config)


def _serving_condition(view: ServingView, replicas: int) -> Condition:
    available, enough = view
    if enough:
        return Condition(C.SERVING, True, "Available", f"{available}/{replicas} replicas available")
    return Condition(C.SERVING, False, "RollingOut", f"{available}/{replicas} replicas available")


@dataclass(frozen=True)
class Quarantine:
    """`status.quarantine`: set by the incident response or by a person, cleared only by a person."""

    active: bool
    reason: str = ""
    message: str = ""
    by: str = ""

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> Quarantine:
        written = status.get("quarantine")
        if not isinstance(written, Mapping):
            return cls(active=False)
        return cls(
            active=written.get("active") is True,
            reason=str(written.get("reason") or ""),
            message=str(written.get("message") or ""),
            by=str(written.get("by") or ""),
        )


def _quarantine_condition(run: _Run, quarantine: Quarantine) -> None:
    """Quarantined, and its Event when it changes; absent for a model that was never quarantined."""
    previous = next(
        (c for c in run.model.status.get("conditions") or [] if c.get("type") == C.QUARANTINED.value), None
    )
    was_active = previous is not None and previous.get("status") == "True"
    who = f" (by {quarantine.by})" if quarantine.by else ""
    if quarantine.active:
        message = (
            f"{quarantine.reason or 'Manual'}: {quarantine.message or 'quarantined'}{who}; scaled to zero, "
            "new pods are refused until a person clears it (samd quarantine clear)"
        )
        run.set(C.QUARANTINED, True, quarantine.reason or "Manual", message)
        if not was_active:
            run.event("Quarantined", message, warning=True)
    elif previous is not None:
        run.set(C.QUARANTINED, False, "Cleared", f"the quarantine was cleared{who}")
        if was_active:
            run.event("QuarantineCleared", f"the quarantine was cleared{who}; serving again")


def quarantine_pending(status: Mapping[str, Any]) -> bool:
    """Whether status.quarantine says otherwise than the Quarantined condition (a reconcile is due)."""
    active = Quarantine.of(status).active
    condition = next(
        (c for c in status.get("conditions") or [] if c.get("type") == C.QUARANTINED.value), None
    )
    applied = condition is not None and condition.get("status") == "True"
    return active != applied


def _status(
    model: ModelObject, conditions: dict[ConditionType, Condition], now: datetime.datetime
) -> dict[str, Any]:
    if C.READY not in conditions:
        conditions[C.READY] = ready_condition(conditions)
    merged = merge_conditions(
        model.status.get("conditions") or [], conditions.values(), generation=model.generation, now=now
    )
    return {"observedGeneration": model.generation, "conditions": merged, "lastReconciled": _iso(now)}


def _fingerprint(*parts: object) -> str:
    text = "|".join(
        f"{p.name}@{p.generation}" if isinstance(p, TrustPolicy) else repr(p)
        for part in parts
        for p in (part if isinstance(part, (list, tuple)) else [part])
    )
    return hashlib.sha256(text.encode()).hexdigest()
