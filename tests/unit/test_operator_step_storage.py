"""The storage step: an s3:// bucket's posture is checked once per re-verify interval or when the
artifact changes, and each failure maps to its own reason on StorageSecure."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from samd.errors import StorageError
from samd.operator import artifacts
from samd.operator.conditions import ConditionType
from samd.operator.config import OperatorConfig
from samd.operator.steps.storage import StoragePosture
from samd.storage.posture import BucketPosture
from tests.support import steps

pytestmark = pytest.mark.unit

S3 = steps.spec(artifact={"uri": "s3://models/fraud.samd"})


def posture(*, encrypted: bool, findings: tuple[str, ...] = ()) -> BucketPosture:
    return BucketPosture(
        "models", encrypted, "AES256" if encrypted else None, None, True, (), False, False, findings
    )


class Bucket:
    """Stands in for the S3 API behind `bucket_posture`: answers with a posture, or fails."""

    def __init__(self) -> None:
        self.posture = posture(encrypted=True)
        self.failure: Exception | None = None
        self.asked = 0

    def __call__(self, *_: Any) -> BucketPosture:
        self.asked += 1
        if self.failure is not None:
            raise self.failure
        return self.posture


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Bucket:
    bucket = Bucket()
    monkeypatch.setattr(artifacts, "bucket_posture", bucket)
    return bucket


async def test_a_file_artifact_has_no_bucket_to_check(bucket: Bucket) -> None:
    run = steps.run_of()
    assert await StoragePosture(OperatorConfig()).check(run) == {}
    assert steps.condition(run, "StorageSecure") == (True, "NotApplicable")
    assert bucket.asked == 0


async def test_the_posture_is_cached_until_the_artifact_changes_or_the_interval_passes(
    bucket: Bucket,
) -> None:
    storage = StoragePosture(OperatorConfig())
    run = steps.run_of(S3)
    status = await storage.check(run)
    assert steps.condition(run, "StorageSecure") == (True, "BucketSecure")
    assert status == {"encrypted": True, "publicAccessBlocked": True, "checkedAt": "2026-12-01T12:00:00Z"}
    await storage.check(steps.run_of(S3, now=steps.NOW + datetime.timedelta(minutes=1)))
    assert bucket.asked == 1
    await storage.check(steps.run_of(steps.spec(artifact={"uri": "s3://models/other.samd"})))
    assert bucket.asked == 2
    await storage.check(steps.run_of(S3, now=steps.NOW + OperatorConfig().reverify_interval))
    assert bucket.asked == 3
    storage.forget(steps.KEY)
    await storage.check(steps.run_of(S3, now=steps.NOW + OperatorConfig().reverify_interval))
    assert bucket.asked == 4


async def test_an_insecure_bucket_names_what_is_wrong(bucket: Bucket) -> None:
    bucket.posture = posture(encrypted=False, findings=("default encryption is off",))
    run = steps.run_of(S3)
    await StoragePosture(OperatorConfig()).check(run)
    assert steps.condition(run, "StorageSecure") == (False, "BucketInsecure")
    assert run.conditions[ConditionType.STORAGE_SECURE].message == "default encryption is off"


async def test_an_unreachable_store_keeps_the_last_posture_and_retries(bucket: Bucket) -> None:
    bucket.failure = StorageError("the endpoint did not answer", transient=True)
    previous = {
        "storage": {"encrypted": True, "publicAccessBlocked": True, "checkedAt": "2026-11-30T12:00:00Z"}
    }
    run = steps.run_of(S3, status=previous)
    assert await StoragePosture(OperatorConfig()).check(run) == previous["storage"]
    assert steps.condition(run, "StorageSecure") == (None, "StorageUnreachable")
    assert run.temporary
