"""The serving step: a rollout alone updates Serving and Ready in the status, with no reconcile and
nothing else written; what the status reports of the rollout is remembered per model until it is gone."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import pytest

from samd.operator.config import OperatorConfig
from samd.operator.kube import Kube
from samd.operator.reconcile import Reconciler
from samd.operator.steps.owned import AppliedObjects
from samd.operator.steps.serving import ServingStatus
from samd.operator.steps.shared import OwnedRef, Rollout
from tests.support import steps
from tests.support.memory_kube import MemoryKube

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
    reconciler.serving.written(KEY, 3, status, replicas=2)
    reconciler.serving._views[KEY] = (0, False)  # what the reconcile read of the rollout
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


async def test_once_the_model_is_dropped_a_rollout_asks_for_a_whole_reconcile() -> None:
    kube = RecordingKube()
    reconciler = reconciled_while_rolling_out(kube)
    reconciler.drop_model(*KEY)
    done = await reconciler.refresh_serving(*KEY, lambda: Rollout(replicas=2, available=2, current=True), NOW)
    assert not done
    assert kube.patches == []


def deployment(available: int, *, generation: int = 4, observed: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "fraud-detection", "namespace": "fraud", "generation": generation},
        "spec": {"replicas": 2},
        "status": {"availableReplicas": available, "observedGeneration": observed},
    }


def test_only_a_rollout_other_than_the_one_reported_counts_as_moved() -> None:
    serving = reconciled_while_rolling_out(RecordingKube()).serving
    assert not serving.rollout_moved(KEY, deployment(0))
    assert serving.rollout_moved(KEY, deployment(2))
    # Available but not yet acted on by the Deployment controller: still not enough, yet news.
    assert serving.rollout_moved(KEY, deployment(2, observed=3))
    assert not serving.rollout_moved(KEY, deployment(0, observed=3))


async def test_the_rollout_is_read_from_the_index_without_a_request_unless_the_index_is_behind() -> None:
    kube = MemoryKube()
    serving = ServingStatus(kube)
    model_spec = steps.spec(serving={"replicas": 2})
    run = steps.run_of(model_spec)
    context = steps.context_of(run)
    seen = deployment(1, generation=1, observed=1)
    seen["metadata"]["ownerReferences"] = [{"uid": steps.UID}]
    indexed = OwnedRef.of(seen)
    status = await serving.observe(run, context, AppliedObjects(deployed=True, deployment=None), [indexed])
    assert (status["readyReplicas"], status["replicas"]) == (1, 2)
    assert steps.condition(run, "Serving") == (False, "RollingOut")
    assert kube.calls["get Deployment"] == 0
    # Our own applies moved the Deployment to a generation the index has not seen yet: it is read.
    manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": deployment(0)["metadata"]}
    await kube.apply(manifest)
    await kube.apply({**manifest, "spec": {"replicas": 2}})
    kube.objects[("Deployment", "fraud", "fraud-detection")]["status"] = {
        "availableReplicas": 2,
        "observedGeneration": 2,
    }
    run = steps.run_of(model_spec)
    await serving.observe(run, context, AppliedObjects(deployed=True, deployment=None), [indexed])
    assert kube.calls["get Deployment"] == 1
    assert steps.condition(run, "Serving") == (True, "Available")


async def test_nothing_is_served_before_the_signature_verifies_or_when_serving_is_off() -> None:
    serving = ServingStatus(MemoryKube())
    run = steps.run_of()
    assert await serving.observe(run, steps.context_of(run), AppliedObjects(False, None), []) == {}
    assert steps.condition(run, "Serving") == (False, "NotVerified")
    run = steps.run_of(steps.spec(serving={"enabled": False}))
    assert await serving.observe(run, steps.context_of(run), AppliedObjects(False, None), []) == {}
    assert steps.condition(run, "Serving") == (True, "ServingDisabled")
