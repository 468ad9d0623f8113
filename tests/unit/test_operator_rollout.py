"""A rollout alone updates Serving and Ready in the status, with no reconcile and nothing else written."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import pytest

from samd.operator.config import OperatorConfig
from samd.operator.kube import Kube
from samd.operator.reconcile import Reconciler, Rollout, _WrittenStatus

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
EARLIER = "2026-11-28T11:00:00Z"
KEY = ("fraud", "fraud-detection")


class RecordingKube(Kube):
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_merge(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        patch: Mapping[str, Any],
        *,
        status: bool = False,
    ) -> bool:
        assert (kind, name, namespace, status) == ("SecureModel", "fraud-detection", "fraud", True)
        self.patches.append(dict(patch))
        return True


def condition(kind: str, status: str, reason: str = "Fine") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": "...",
        "lastTransitionTime": EARLIER,
        "observedGeneration": 3,
    }


def reconciled_while_rolling_out(kube: RecordingKube) -> Reconciler:
    """A reconciler whose last reconcile of the model found every check True but the rollout."""
    reconciler = Reconciler(kube=kube, config=OperatorConfig())
    checks = [
        "Verified",
        "Encrypted",
        "StorageSecure",
        "CertificatesReady",
        "AccessControlled",
        "NetworkIsolated",
    ]
    status = {
        "observedGeneration": 3,
        "conditions": [
            *(condition(kind, "True") for kind in checks),
            condition("Serving", "False", "RollingOut"),
            condition("Ready", "False", "ServingFalse"),
        ],
        "serving": {"deployment": "fraud-detection", "readyReplicas": 0, "replicas": 2},
    }
    reconciler._written[KEY] = _WrittenStatus(generation=3, status=status, replicas=2)
    reconciler._serving_views[KEY] = (0, False)
    return reconciler


async def test_an_available_rollout_makes_the_model_ready_with_one_status_write() -> None:
    kube = RecordingKube()
    reconciler = reconciled_while_rolling_out(kube)
    done = await reconciler.refresh_serving(*KEY, lambda: Rollout(replicas=2, available=2, current=True), NOW)
    assert done
    [patch] = kube.patches
    assert set(patch["status"]) == {"conditions", "serving"}
    assert patch["status"]["serving"] == {"readyReplicas": 2}
    by_type = {c["type"]: c for c in patch["status"]["conditions"]}
    assert (by_type["Serving"]["status"], by_type["Serving"]["reason"]) == ("True", "Available")
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("True", "AllChecksPassed")
    assert by_type["Ready"]["lastTransitionTime"] == "2026-11-28T12:00:00Z"
    assert by_type["Verified"]["lastTransitionTime"] == EARLIER  # untouched
    assert {c["observedGeneration"] for c in by_type.values()} == {3}


async def test_a_partial_rollout_is_reported_but_not_ready() -> None:
    kube = RecordingKube()
    reconciler = reconciled_while_rolling_out(kube)
    await reconciler.refresh_serving(*KEY, lambda: Rollout(replicas=2, available=1, current=True), NOW)
    by_type = {c["type"]: c for c in kube.patches[0]["status"]["conditions"]}
    assert by_type["Serving"]["message"] == "1/2 replicas available"
    assert by_type["Ready"]["status"] == "False"
    # The same view again writes nothing.
    await reconciler.refresh_serving(*KEY, lambda: Rollout(replicas=2, available=1, current=True), NOW)
    assert len(kube.patches) == 1


async def test_without_a_status_written_by_this_operator_a_reconcile_is_asked_for() -> None:
    kube = RecordingKube()
    reconciler = Reconciler(kube=kube, config=OperatorConfig())
    done = await reconciler.refresh_serving(*KEY, lambda: Rollout(replicas=2, available=2, current=True), NOW)
    assert not done
    assert kube.patches == []
