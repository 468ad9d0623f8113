"""Verified: the signature, read from storage, verifies under the trust policies covering the model.

Nothing is served unless this step reports True: the serving objects are built from the manifest
digest it returns. A verification is cached per model until its inputs change (signature URI,
artifact, the policies' names and generations) or `reverify_interval` has passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from samd.errors import StorageError, VerificationError
from samd.operator import artifacts
from samd.operator.conditions import ConditionType
from samd.operator.config import OperatorConfig
from samd.operator.steps.shared import Cached, EventReason, ModelKey, Run, fingerprint
from samd.operator.timestamps import iso
from samd.policy import (
    TrustPolicy,
    check_spec_against_policies,
    check_version_binding,
    requiring_signed_version,
    verify_under_policies,
    version_binding_reason,
)
from samd.storage.guard import URIRefusedError

C = ConditionType

VERIFICATION_FIELDS = ("method", "signer", "issuer", "manifestDigest", "version", "verifiedAt", "policy")
"""What `status.verification` records of a successful verification."""


@dataclass
class Verification:
    """The Verified condition and `status.verification`; caches each model's last good verification."""

    config: OperatorConfig
    _verified: dict[ModelKey, Cached] = field(default_factory=dict)

    def forget(self, key: ModelKey) -> None:
        self._verified.pop(key, None)

    async def check(self, run: Run, policies: Sequence[TrustPolicy]) -> dict[str, Any]:
        """`status.verification`; sets Verified and `run.signature` (the bundle as read)."""
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
            run.event(EventReason.POLICY_VIOLATION, "; ".join(violations), warning=True)
            return kept
        key = run.key
        inputs = fingerprint(spec.signature.uri, spec.artifact.model_dump_json(), policies)
        cached = self._verified.get(key)
        if cached is not None and cached.fresh(inputs, now, self.config.reverify_interval):
            run.signature, result, policy_name = cached.value
            verified_at = cached.checked_at
        else:
            try:
                run.signature = await asyncio.to_thread(
                    artifacts.read_signature, spec, self.config.max_signature_bytes, run.guard
                )
                result, policy_name = await asyncio.to_thread(verify_under_policies, run.signature, policies)
            except URIRefusedError as error:
                self._verified.pop(key, None)
                run.signature = None
                run.refused(C.VERIFIED, error)
                return {}
            except VerificationError as error:
                self._verified.pop(key, None)
                run.set(C.VERIFIED, False, "SignatureInvalid", str(error))
                run.event(EventReason.SIGNATURE_INVALID, str(error), warning=True)
                return kept
            except StorageError as error:
                if not error.transient:
                    run.set(C.VERIFIED, False, "SignatureUnreadable", str(error))
                    return kept
                return run.retry_later(C.VERIFIED, "SignatureUnreachable", error, previous)
            verified_at = now
            self._verified[key] = Cached(inputs, now, (run.signature, result, policy_name))
            if previous.get("manifestDigest") != result.manifest_digest:
                run.event(
                    EventReason.VERIFIED, f"signature by {result.signer} verified under policy {policy_name}"
                )
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
                run.event(EventReason(reason), message, warning=True)
                return kept
            verified += f"; warning (warn mode): {message}"
            seen = (previous.get("manifestDigest"), previous.get("version"))
            if seen != (result.manifest_digest, spec.version):  # once per digest and version
                run.event(EventReason(reason), message, warning=True)
        run.set(C.VERIFIED, True, "SignatureVerified", verified)
        return {
            "method": result.method,
            "signer": result.signer,
            "issuer": result.issuer,
            "manifestDigest": result.manifest_digest,
            "version": spec.version,
            "verifiedAt": iso(verified_at),
            "policy": policy_name,
        }
