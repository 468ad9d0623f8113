"""Encrypted: the model's data key unwraps with its key-encryption key; rotation when it is due.

A due rotation stores the new key version before any artifact depends on it, then re-wraps the data
key (the body is never re-encrypted). The check is cached per model like a verification. This
process remembers when it last rotated each model's key: a reconcile may start from a status read
before that rotation was written, and must not rotate again on it.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Any

from samd.errors import KeyProviderError, SamdError, StorageError
from samd.operator import artifacts
from samd.operator.conditions import ConditionType
from samd.operator.config import OperatorConfig
from samd.operator.kube import Kube
from samd.operator.steps.shared import Cached, EventReason, ModelKey, Run, fingerprint
from samd.operator.timestamps import iso, parse_time
from samd.storage.guard import URIRefusedError

C = ConditionType


@dataclass
class Keys:
    """The Encrypted condition and `status.key`; caches each model's key check and last rotation."""

    kube: Kube
    config: OperatorConfig
    _checked: dict[ModelKey, Cached] = field(default_factory=dict)
    _rotated: dict[ModelKey, datetime.datetime] = field(default_factory=dict)

    def forget(self, key: ModelKey) -> None:
        self._checked.pop(key, None)
        self._rotated.pop(key, None)

    async def check(self, run: Run) -> dict[str, Any]:
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
        key = run.key
        inputs = fingerprint(
            spec.artifact.model_dump_json(),
            key_ref.model_dump_json(),
            hashlib.sha256(keyset or b"").hexdigest(),
            repr(run.guard),
        )
        cached = self._checked.get(key)
        rotating = False  # a failure while rotating is a security event (KeyRotationFailed)
        try:
            if cached is not None and cached.fresh(inputs, now, self.config.reverify_interval):
                state = cached.value
            else:
                state = await asyncio.to_thread(artifacts.inspect_key, spec, keyset, run.guard)
                self._checked[key] = Cached(inputs, now, state)
            rotated_at = parse_time(previous.get("rotatedAt")) or state.current_created or now
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
                self._checked.pop(key, None)  # the artifact's header changes
                version = await asyncio.to_thread(artifacts.rewrap_artifact, spec, keyset, run.guard)
                run.event(
                    EventReason.KEY_ROTATED,
                    f"{state.provider} key {state.key_id} rotated; data key re-wrapped under version {version}",
                )
            elif version != state.current_version:
                self._checked.pop(key, None)
                version = await asyncio.to_thread(artifacts.rewrap_artifact, spec, keyset, run.guard)
                run.event(EventReason.KEY_REWRAPPED, f"data key re-wrapped under key version {version}")
        except URIRefusedError as error:
            self._checked.pop(key, None)
            run.refused(C.ENCRYPTED, error)
            return previous
        except (KeyProviderError, StorageError) as error:
            self._checked.pop(key, None)
            if rotating:
                run.event(
                    EventReason.KEY_ROTATION_FAILED, f"the key rotation due failed: {error}", warning=True
                )
            if error.transient:
                return run.retry_later(C.ENCRYPTED, "KeyServiceUnreachable", error, previous)
            run.set(C.ENCRYPTED, False, "KeyInvalid", str(error))
            run.event(EventReason.KEY_INVALID, str(error), warning=True)
            return previous
        except SamdError as error:
            self._checked.pop(key, None)
            run.set(C.ENCRYPTED, False, "ArtifactInvalid", str(error))
            run.event(EventReason.ARTIFACT_INVALID, str(error), warning=True)
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
        recorded = parse_time(previous.get("dataKeyFirstSeen")) if same_data_key else None
        data_key_first_seen = min(recorded, now) if recorded is not None else now  # never in the future
        return {
            "provider": state.provider,
            "keyId": state.key_id,
            "keyVersion": version,
            "rotatedAt": iso(rotated_at),
            "nextRotation": iso(rotated_at + spec.encryption.rotation_interval),
            "dataKeyId": state.data_key_id,
            "dataKeyFirstSeen": iso(data_key_first_seen),
        }
