"""Reconcile one SecureModel as a whole, from its current state (level-based).

The order matters: nothing is served unless the signature verified under the trust policy, so the
serving objects are built from the verified manifest digest and removed when verification fails.
Each aspect yields one condition; Ready summarises them. Transient failures (storage or KMS
unreachable) keep the last known good state, say so in the condition and ask kopf to retry.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from samd.operator.builders.names import client_secret_name, model_label_value, serving_name, tls_secret_name
from samd.operator.builders.serving import build_signature_config_map
from samd.operator.conditions import Condition, ConditionType, merge_conditions, ready_condition
from samd.operator.config import OperatorConfig
from samd.operator.kube import Kube
from samd.policy import TrustPolicy, applicable_policies, check_spec_against_policies, verify_under_policies
from samd.spec import SecureModelSpec, SpecError, parse_secure_model

log = logging.getLogger(__name__)

C = ConditionType
OWNED_KINDS_TO_PRUNE = (
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
class Event:
    reason: str
    message: str
    warning: bool = False


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    error: Exception | None = None


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

    def set(self, kind: ConditionType, status: bool | None, reason: str, message: str) -> None:
        self.conditions[kind] = Condition(kind, status, reason, message)

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.outcome.events.append(Event(reason, message, warning))

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


@dataclass
class Reconciler:
    kube: Kube
    config: OperatorConfig
    _verifications: dict[tuple[str, str], _Cached] = field(default_factory=dict)
    _postures: dict[tuple[str, str], _Cached] = field(default_factory=dict)
    _ca: CertificateAuthority | None = None
    _ca_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def builder_settings(self) -> BuilderSettings:
        c = self.config
        return BuilderSettings(
            default_image=c.default_image,
            fetch_image=c.default_image,
            operator_namespace=c.namespace,
            cluster_domain=c.cluster_domain,
            storage_egress=c.storage_egress,
            model_volume_size=c.model_volume_size,
            keyset_data_key=artifacts.KEYSET_KEY,
            certificate_validity=c.certificate_validity,
            certificate_renew_before=c.renew_before,
        )

    async def reconcile(
        self,
        model: ModelObject,
        *,
        policies: Sequence[TrustPolicy],
        namespace_labels: Mapping[str, str],
        now: datetime.datetime,
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

        run = _Run(model=model, spec=spec, now=now, outcome=Outcome(status={}))
        covering = applicable_policies(policies, namespace_labels)
        verification = await self._verify(run, covering)
        key_status = await self._check_key(run)
        storage_status = await self._check_storage(run)
        context = ModelContext(
            name=model.name,
            namespace=model.namespace,
            uid=model.uid,
            spec=spec,
            manifest_digest=verification.get("manifestDigest") if run.conditions[C.VERIFIED].status else None,
            settings=self.builder_settings,
        )
        certificates = await self._certificates(run, context)
        serving = await self._apply_owned(run, context, covering)

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
        return run.outcome

    # --- Verified ---------------------------------------------------------------------------------

    async def _verify(self, run: _Run, policies: Sequence[TrustPolicy]) -> dict[str, Any]:
        model, spec, now = run.model, run.spec, run.now
        previous = dict(model.status.get("verification") or {})
        if not policies:
            run.set(
                C.VERIFIED,
                False,
                "NoTrustPolicy",
                f"no ModelTrustPolicy covers namespace {model.namespace}; ask a cluster admin for one "
                "that lists the signers you trust",
            )
            return {}
        violations = check_spec_against_policies(spec, policies, previous_version=previous.get("version"))
        if violations:
            run.set(C.VERIFIED, False, "PolicyViolation", "; ".join(violations))
            run.event("PolicyViolation", "; ".join(violations), warning=True)
            return {}
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
                    artifacts.read_signature, spec, self.config.max_signature_bytes
                )
                result, policy_name = await asyncio.to_thread(verify_under_policies, run.signature, policies)
            except VerificationError as error:
                self._verifications.pop(key, None)
                run.set(C.VERIFIED, False, "SignatureInvalid", str(error))
                run.event("SignatureInvalid", str(error), warning=True)
                return {}
            except StorageError as error:
                if not error.transient:
                    run.set(C.VERIFIED, False, "SignatureUnreadable", str(error))
                    return {}
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
            return {}
        run.set(
            C.VERIFIED,
            True,
            "SignatureVerified",
            f"signed by {result.signer} ({result.method}), policy {policy_name}",
        )
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
        try:
            state = await asyncio.to_thread(artifacts.inspect_key, spec, keyset)
            rotated_at = _parse_time(previous.get("rotatedAt")) or state.current_created or now
            version = state.artifact_key_version
            if rotated_at + spec.encryption.rotation_interval <= now:
                # Store the new key version before any artifact depends on it; old versions still
                # unwrap, so a crash between the two steps leaves a working model.
                new_keyset = await asyncio.to_thread(artifacts.rotate_key, spec, keyset)
                if new_keyset is not None:
                    await self.kube.apply(
                        artifacts.keyset_secret_manifest(secret_name, model.namespace, new_keyset)
                    )
                    keyset = new_keyset
                rotated_at = now
                version = await asyncio.to_thread(artifacts.rewrap_artifact, spec, keyset)
                run.event(
                    "KeyRotated",
                    f"{state.provider} key {state.key_id} rotated; data key re-wrapped under version {version}",
                )
            elif version != state.current_version:
                version = await asyncio.to_thread(artifacts.rewrap_artifact, spec, keyset)
                run.event("KeyRewrapped", f"data key re-wrapped under key version {version}")
        except (KeyProviderError, StorageError) as error:
            if error.transient:
                return run.retry_later(C.ENCRYPTED, "KeyServiceUnreachable", error, previous)
            run.set(C.ENCRYPTED, False, "KeyInvalid", str(error))
            run.event("KeyInvalid", str(error), warning=True)
            return previous
        except SamdError as error:
            run.set(C.ENCRYPTED, False, "ArtifactInvalid", str(error))
            run.event("ArtifactInvalid", str(error), warning=True)
            return previous
        run.set(
            C.ENCRYPTED,
            True,
            "KeyValid",
            f"the data key unwraps with {state.provider} key {state.key_id} version {version}",
        )
        return {
            "provider": state.provider,
            "keyId": state.key_id,
            "keyVersion": version,
            "rotatedAt": _iso(rotated_at),
            "nextRotation": _iso(rotated_at + spec.encryption.rotation_interval),
        }

    # --- StorageSecure ----------------------------------------------------------------------------------

    async def _check_storage(self, run: _Run) -> dict[str, Any]:
        model, spec, now = run.model, run.spec, run.now
        if not spec.artifact.uri.startswith("s3://"):
            run.set(C.STORAGE_SECURE, True, "NotApplicable", "bucket posture checks apply to s3:// artifacts")
            return {}
        previous = dict(model.status.get("storage") or {})
        key = (model.namespace, model.name)
        fingerprint = spec.artifact.model_dump_json()
        cached = self._postures.get(key)
        if (
            cached
            and cached.fingerprint == fingerprint
            and now - cached.checked_at < self.config.reverify_interval
        ):
            posture, checked_at = cached.value, cached.checked_at
        else:
            try:
                posture = await asyncio.to_thread(artifacts.bucket_posture, spec)
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

    async def _certificates(self, run: _Run, context: ModelContext) -> dict[str, Any]:
        authority = await self._authority(run.now)
        clients = [client.name for client in context.spec.serving.clients]
        wanted: list[tuple[str, str | None]] = [(tls_secret_name(context.name), None)]
        wanted += [(client_secret_name(context.name, client), client) for client in clients]
        server_not_after = None
        for secret_name, client in wanted:
            existing = await self.kube.get("v1", "Secret", secret_name, context.namespace)
            data = (existing or {}).get("data") or {}
            if needs_renewal(data, authority, run.now, renew_before=self.config.renew_before):
                manifest = (
                    issue_server_certificate(authority, context, run.now)
                    if client is None
                    else issue_client_certificate(authority, context, client, run.now)
                )
                await self.kube.apply(manifest)
                data = manifest["data"]
                if existing:
                    run.event("CertificateRenewed", f"Secret {secret_name} renewed")
            if client is None:
                server_not_after = certificate_not_after(data)
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
        self, run: _Run, context: ModelContext, policies: Sequence[TrustPolicy]
    ) -> dict[str, Any]:
        signers = [signer for policy in policies for signer in policy.spec.signers]
        desired = build_owned_objects(context, run.now, signers)
        if run.signature is not None:
            # Before the Deployment: the admission webhook verifies pods against this bundle.
            desired.insert(0, build_signature_config_map(context, run.signature))
        keep = {(m["kind"], m["metadata"]["name"]) for m in desired}
        keep.add(("Secret", tls_secret_name(context.name)))
        keep |= {("Secret", client_secret_name(context.name, c.name)) for c in context.spec.serving.clients}
        for manifest in desired:
            await self.kube.apply(manifest)
        selector = {
            "samd.dev/model": model_label_value(context.name),
            "app.kubernetes.io/managed-by": "samd-operator",
        }
        removed = []
        for api_version, kind in OWNED_KINDS_TO_PRUNE:
            for existing in await self.kube.list(api_version, kind, context.namespace, selector):
                name = existing["metadata"]["name"]
                if (kind, name) not in keep and _owned_by(existing, context.uid):
                    await self.kube.delete(api_version, kind, name, context.namespace)
                    removed.append(f"{kind}/{name}")
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
                C.NETWORK_ISOLATED, True, "PoliciesApplied", "default deny; ingress only to the mTLS port"
            )
        else:
            run.set(C.NETWORK_ISOLATED, False, "PoliciesMissing", "no NetworkPolicy was built")
        return await self._serving_status(run, context, "Deployment" in kinds)

    async def _serving_status(self, run: _Run, context: ModelContext, deployed: bool) -> dict[str, Any]:
        serving = context.spec.serving
        if not serving.enabled:
            run.set(C.SERVING, True, "ServingDisabled", "spec.serving.enabled is false")
            return {}
        if not deployed:
            run.set(C.SERVING, False, "NotVerified", "nothing is served until the signature verifies")
            return {}
        name = serving_name(context.name)
        deployment = await self.kube.get("apps/v1", "Deployment", name, context.namespace) or {}
        status = deployment.get("status") or {}
        available = int(status.get("availableReplicas") or 0)
        current = deployment.get("metadata", {}).get("generation") == status.get("observedGeneration")
        if available >= serving.replicas and current:
            run.set(C.SERVING, True, "Available", f"{available}/{serving.replicas} replicas available")
        else:
            run.set(C.SERVING, False, "RollingOut", f"{available}/{serving.replicas} replicas available")
        return {"deployment": name, "service": name, "readyReplicas": available, "replicas": serving.replicas}


def _status(
    model: ModelObject, conditions: dict[ConditionType, Condition], now: datetime.datetime
) -> dict[str, Any]:
    if C.READY not in conditions:
        conditions[C.READY] = ready_condition(conditions)
    merged = merge_conditions(
        model.status.get("conditions") or [], conditions.values(), generation=model.generation, now=now
    )
    return {"observedGeneration": model.generation, "conditions": merged, "lastReconciled": _iso(now)}


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def _fingerprint(*parts: object) -> str:
    text = "|".join(
        f"{p.name}@{p.generation}" if isinstance(p, TrustPolicy) else repr(p)
        for part in parts
        for p in (part if isinstance(part, (list, tuple)) else [part])
    )
    return hashlib.sha256(text.encode()).hexdigest()
