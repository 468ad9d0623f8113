"""The owned-objects step: applies what the builders ask for, never takes over another's object,
prunes what the spec stops asking for, and maps an apply refused to the condition of its kind."""

from __future__ import annotations

import pytest

from samd.operator.builders.names import network_policy_name
from samd.operator.steps.owned import OwnedObjects
from samd.operator.steps.shared import OwnedRef
from tests.support import steps
from tests.support.memory_kube import MemoryKube

pytestmark = pytest.mark.unit


def kinds(kube: MemoryKube) -> set[str]:
    return {kind for kind, _, _ in kube.objects}


async def test_a_verified_model_gets_its_objects_and_reports_access_and_isolation() -> None:
    kube = MemoryKube()
    run = steps.run_of()
    applied = await OwnedObjects(kube).apply(run, steps.context_of(run), [], [])
    assert applied.deployed
    assert applied.deployment is not None
    assert {"ServiceAccount", "NetworkPolicy", "Deployment", "Service"} <= kinds(kube)
    assert steps.condition(run, "AccessControlled") == (True, "RolesApplied")
    assert steps.condition(run, "NetworkIsolated") == (True, "PoliciesApplied")


async def test_what_the_spec_no_longer_asks_for_is_pruned_even_before_the_index_saw_it() -> None:
    kube = MemoryKube()
    owned = OwnedObjects(kube)
    run = steps.run_of()
    await owned.apply(run, steps.context_of(run), [], [])
    assert "Deployment" in kinds(kube)
    # The signature stops verifying: nothing is served. The index has seen nothing (empty owned list).
    run = steps.run_of()
    applied = await owned.apply(run, steps.context_of(run, verified=False), [], [])
    assert not applied.deployed
    assert "Deployment" not in kinds(kube)
    [pruned] = [event for event in run.outcome.events if event.reason == "Pruned"]
    assert "Deployment/fraud-detection" in pruned.message


async def test_after_forget_only_what_the_index_shows_is_pruned() -> None:
    kube = MemoryKube()
    owned = OwnedObjects(kube)
    run = steps.run_of()
    await owned.apply(run, steps.context_of(run), [], [])
    owned.forget(steps.KEY)
    run = steps.run_of()
    await owned.apply(run, steps.context_of(run, verified=False), [], [])
    assert "Deployment" in kinds(kube)  # nothing remembered, nothing indexed: nothing to prune
    deployment = kube.objects[("Deployment", steps.NAMESPACE, steps.NAME)]
    indexed = OwnedRef.of(
        {**deployment, "metadata": {**deployment["metadata"], "ownerReferences": [{"uid": steps.UID}]}}
    )
    await owned.apply(steps.run_of(), steps.context_of(run, verified=False), [], [indexed])
    assert "Deployment" not in kinds(kube)


async def test_an_object_of_the_same_name_that_belongs_to_another_is_left_alone_and_blocks_serving() -> None:
    kube = MemoryKube()
    name = network_policy_name(steps.NAME)
    stranger = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": steps.NAMESPACE, "labels": {"team": "other"}},
    }
    kube.objects[("NetworkPolicy", steps.NAMESPACE, name)] = stranger
    run = steps.run_of()
    await OwnedObjects(kube).apply(run, steps.context_of(run), [], [])
    assert kube.objects[("NetworkPolicy", steps.NAMESPACE, name)] is stranger
    assert "Deployment" not in kinds(kube)
    run.report_apply_failures()
    assert steps.condition(run, "NetworkIsolated") == (False, "ApplyFailed")
    assert steps.condition(run, "AccessControlled") == (True, "RolesApplied")
    assert steps.condition(run, "Serving") == (False, "ApplyFailed")
    assert run.temporary  # retried
    assert any(event.reason == "ApplyFailed" and event.warning for event in run.outcome.events)
