"""Two operator replicas elect one leader; killing it during a burst of changes loses no model."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.operator import LEASE_NAME, OPERATOR_NAMESPACE, OperatorProcess
from tests.support.scenario import GROUP, VERSION, Scenario, eventually

pytestmark = pytest.mark.integration

MODELS = [f"burst-{index}" for index in range(6)]
LEASE_DURATION, RETRY_PERIOD = 4.0, 0.5  # tests/support/operator.py's ELECTION_ENV
KOPF_START = 5.0  # the new leader lists the SecureModels and resumes them


def lease_holder(k8s: client.ApiClient) -> str | None:
    try:
        lease = client.CoordinationV1Api(k8s).read_namespaced_lease(LEASE_NAME, OPERATOR_NAMESPACE)
    except ApiException as error:
        if error.status == 404:  # no replica has started leading yet
            return None
        raise
    return lease.spec.holder_identity


def wait_holder(k8s: client.ApiClient, identity: str, timeout: float) -> float:
    started = time.monotonic()
    eventually(lambda: lease_holder(k8s) == identity, timeout, f"{identity} to hold the Lease")
    return time.monotonic() - started


def converged(scenario: Scenario, name: str) -> bool:
    model: dict[str, Any] = scenario.model(name)
    status = model.get("status") or {}
    generation = model["metadata"]["generation"]
    ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
    return (
        status.get("observedGeneration") == generation
        and bool(ready)
        and ready[0]["status"] == "True"
        and ready[0]["observedGeneration"] == generation
    )


def test_a_standby_takes_over_when_the_leader_is_killed_during_a_burst(
    operator: OperatorProcess,
    scenario: Scenario,
    k8s: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Six models from one signed artifact: the signature binds the name fraud-detection, so the
    # policy here does not ask for the name to be signed (what is tested is the hand-over).
    scenario.patch_policy({"versionPolicy": {"requireSignedVersion": False}})
    leader = operator
    wait_holder(k8s, leader.identity, 10)
    standby = OperatorProcess(
        leader.cluster,
        tmp_path_factory.mktemp("standby") / "operator.log",
        {**leader.env, "SAMD_LEADER_IDENTITY": "standby"},
    )
    standby.start()
    try:
        time.sleep(2 * RETRY_PERIOD)
        assert lease_holder(k8s) == leader.identity, "the standby took the Lease from a live leader"

        for name in MODELS:
            body = scenario.example()
            body["metadata"]["name"] = name
            scenario.apply_model(body)
        # The leader is busy with the burst when it dies: some models are done, others not.
        eventually(lambda: any(converged(scenario, n) for n in MODELS), 90, "the leader to finish one model")
        leader.stop(kill=True)
        killed_at = time.monotonic()
        # Changes made while nobody leads must not be lost either.
        for index, name in enumerate(MODELS):
            scenario.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                scenario.namespace,
                "securemodels",
                name,
                {"spec": {"serving": {"rateLimit": {"requestsPerSecond": 10 + index}}}},
            )

        bound = LEASE_DURATION + 2 * RETRY_PERIOD + 2.0  # ElectionConfig.takeover_bound, plus API latency
        wait_holder(k8s, standby.identity, bound + 5)
        takeover = time.monotonic() - killed_at
        assert takeover <= bound, f"the standby took {takeover:.1f} s to lead (bound {bound} s)"

        for name in MODELS:
            eventually(partial(converged, scenario, name), 120, f"{name} to converge under the new leader")
        deployments = client.AppsV1Api(k8s).list_namespaced_deployment(scenario.namespace).items
        by_model = {str(d.metadata.labels.get("samd.dev/model")): d for d in deployments}
        assert sorted(by_model) == sorted(MODELS), "each model has exactly one serving Deployment"
        assert len(deployments) == len(MODELS)
        for index, name in enumerate(MODELS):
            # The change made while no replica led reached the model's serving Deployment.
            containers = by_model[name].spec.template.spec.containers
            (command,) = [list(c.command or []) for c in containers if "--rate-limit" in (c.command or [])]
            assert command[command.index("--rate-limit") + 1] == str(10 + index), name
    finally:
        # Hand the session's operator back its role: it restarts as a standby, and the standby we
        # started releases the Lease on SIGTERM, so the hand-over takes one retry after it exits.
        if leader.proc is None:
            leader.start()
        standby.stop()  # returns once the process has exited: kopf finished, the Lease released
        exited_at = time.monotonic()
        wait_holder(k8s, leader.identity, LEASE_DURATION + 5)
        handover = time.monotonic() - exited_at
    # Without the release the session's operator would wait out the Lease (4 s) after the exit.
    assert handover < LEASE_DURATION / 2, f"the hand-over took {handover:.1f} s after a clean exit"
