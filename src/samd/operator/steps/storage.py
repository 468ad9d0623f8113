"""StorageSecure: the posture of an s3:// artifact's bucket (default encryption, public access blocked).

Checked, not assumed; cached per model until the artifact or the address guard changes, or
`reverify_interval` has passed. A store that cannot be reached keeps the last posture and retries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from samd.errors import StorageError
from samd.operator import artifacts
from samd.operator.conditions import ConditionType
from samd.operator.config import OperatorConfig
from samd.operator.steps.shared import Cached, ModelKey, Run, fingerprint
from samd.operator.timestamps import iso
from samd.storage.guard import URIRefusedError

C = ConditionType


@dataclass
class StoragePosture:
    """The StorageSecure condition and `status.storage`; caches each model's last posture."""

    config: OperatorConfig
    _postures: dict[ModelKey, Cached] = field(default_factory=dict)

    def forget(self, key: ModelKey) -> None:
        self._postures.pop(key, None)

    async def check(self, run: Run) -> dict[str, Any]:
        spec, now = run.spec, run.now
        if not spec.artifact.uri.startswith("s3://"):
            run.set(C.STORAGE_SECURE, True, "NotApplicable", "bucket posture checks apply to s3:// artifacts")
            return {}
        previous = dict(run.model.status.get("storage") or {})
        key = run.key
        inputs = fingerprint(spec.artifact.model_dump_json(), repr(run.guard))
        cached = self._postures.get(key)
        if cached is not None and cached.fresh(inputs, now, self.config.reverify_interval):
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
            self._postures[key] = Cached(inputs, now, posture)
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
            "checkedAt": iso(checked_at),
        }
