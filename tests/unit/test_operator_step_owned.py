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


# The takeover check: an object the index does not know is created with a POST, read only on a 409.


def _refusal(kind: str, name: str) -> str:
    return (
        f"{kind} {name} already exists in namespace {steps.NAMESPACE} and does not belong to SecureModel "
        f"{steps.NAME}: the operator never takes over an object it did not create; delete or rename "
        f"that {kind}, or give the SecureModel another name"
    )


async def test_a_new_model_s_objects_are_each_created_with_one_request_and_never_read() -> None:
    kube = MemoryKube()
    run = steps.run_of()
    await OwnedObjects(kube).apply(run, steps.context_of(run), [], [])
    created = {call for call, count in kube.calls.items() if call.startswith("create ") and count == 1}
    assert {"create ServiceAccount", "create NetworkPolicy", "create Deployment", "create Service"} <= created
    assert not [call for call in kube.calls if call.startswith(("get ", "apply "))]
    # Created is remembered like an apply: the next reconcile of the same spec sends nothing.
    before = sum(kube.calls.values())
    await OwnedObjects(kube).apply(run, steps.context_of(run), [], [])
    assert sum(kube.calls.values()) == before


async def test_an_object_the_index_shows_as_the_model_s_is_applied_without_a_create_or_read() -> None:
    kube = MemoryKube()
    run = steps.run_of()
    await OwnedObjects(kube).apply(run, steps.context_of(run), [], [])
    indexed = [
        OwnedRef.of({**obj, "metadata": {**obj["metadata"], "ownerReferences": [{"uid": steps.UID}]}})
        for obj in kube.objects.values()
    ]
    fresh = MemoryKube()  # another process: nothing remembered, the objects exist and are indexed
    fresh.objects = kube.objects
    run = steps.run_of()
    await OwnedObjects(fresh).apply(run, steps.context_of(run), [], indexed)
    assert fresh.calls["apply Deployment"] == 1
    assert not [call for call in fresh.calls if call.startswith(("get ", "create "))]


async def test_an_object_that_exists_and_is_the_model_s_though_not_yet_indexed_is_read_then_applied() -> None:
    kube = MemoryKube()
    name = network_policy_name(steps.NAME)
    ours = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": steps.NAMESPACE, "ownerReferences": [{"uid": steps.UID}]},
    }
    kube.objects[("NetworkPolicy", steps.NAMESPACE, name)] = ours
    run = steps.run_of()
    await OwnedObjects(kube).apply(run, steps.context_of(run), [], [])
    assert (kube.calls["create NetworkPolicy"], kube.calls["get NetworkPolicy"]) == (1, 1)
    assert kube.calls["apply NetworkPolicy"] == 1
    assert kube.objects[("NetworkPolicy", steps.NAMESPACE, name)] is not ours  # applied over
    assert "Deployment" in kinds(kube)
    assert steps.condition(run, "NetworkIsolated") == (True, "PoliciesApplied")
    assert not run.taken


async def test_an_object_that_exists_and_is_another_s_is_refused_after_the_409_and_never_written() -> None:
    kube = MemoryKube()
    name = network_policy_name(steps.NAME)
    stranger = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": steps.NAMESPACE,
            "ownerReferences": [{"uid": "someone-else"}],
        },
    }
    kube.objects[("NetworkPolicy", steps.NAMESPACE, name)] = stranger
    run = steps.run_of()
    await OwnedObjects(kube).apply(run, steps.context_of(run), [], [])
    assert kube.objects[("NetworkPolicy", steps.NAMESPACE, name)] is stranger
    assert kube.calls["apply NetworkPolicy"] == 0
    assert (kube.calls["create Deployment"], kube.calls["apply Deployment"]) == (0, 0)
    assert run.taken == [f"NetworkPolicy {name}"]
    run.report_apply_failures()
    failed = {event.message for event in run.outcome.events if event.reason == "ApplyFailed"}
    assert any(_refusal("NetworkPolicy", name) in message for message in failed)
