"""The loader's failures, read by the operator from the model pods' status: the reason from the exit
code, each termination counted once, an Event on the SecureModel, a security event when the loader
refused the model; one pod LIST per namespace whatever the number of models."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from samd import events
from samd.events import EventType, SecurityEvent
from samd.operator.incidents import (
    LOADER_OTHER,
    LOADER_REASONS,
    IncidentWatch,
    LoaderFailureLedger,
    loader_failure_event,
    loader_failures,
    loader_reason,
)
from samd.operator.metrics import LOADER_FAILURE_REASONS, OperatorMetrics

pytestmark = pytest.mark.unit


def pod(
    name: str,
    *,
    uid: str,
    model: str = "fraud-detection",
    restarts: int = 0,
    state: Mapping[str, Any] | None = None,
    last: Mapping[str, Any] | None = None,
    container: str = "samd-fetch",
) -> dict[str, Any]:
    status: dict[str, Any] = {"name": container, "restartCount": restarts, "state": state or {"running": {}}}
    if last is not None:
        status["lastState"] = last
    return {
        "metadata": {"name": name, "uid": uid, "labels": {"samd.dev/model": model}},
        "status": {"phase": "Pending", "initContainerStatuses": [status]},
    }


def exited(code: int, message: str = "") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed", "message": message}}


def test_exit_codes_map_to_the_bounded_reasons_of_the_metric() -> None:
    assert loader_reason(3) == "verification"
    assert loader_reason(4) == "integrity"
    assert loader_reason(5) == "key_provider"
    assert loader_reason(6) == "storage"
    assert loader_reason(2) == "usage"
    assert loader_reason(1) == LOADER_OTHER
    assert loader_reason(137) == LOADER_OTHER  # killed (out of memory)
    assert sorted({*LOADER_REASONS.values(), LOADER_OTHER}) == sorted(LOADER_FAILURE_REASONS)


def test_only_a_non_zero_exit_of_the_loader_container_is_a_failure() -> None:
    assert loader_failures(pod("ok", uid="u1", state=exited(0))) == []
    assert loader_failures(pod("running", uid="u2")) == []
    assert loader_failures(pod("other-init", uid="u3", state=exited(3), container="setup")) == []
    [failure] = loader_failures(pod("bad", uid="u4", state=exited(3, "signature does not verify")))
    assert (failure.pod, failure.attempt, failure.exit_code, failure.reason) == ("bad", 0, 3, "verification")
    assert "exited with code 3" in failure.describe()
    assert "signature does not verify" in failure.describe()
    assert "kubectl logs bad -c samd-fetch" in failure.describe()


def test_a_termination_keeps_its_attempt_when_it_moves_to_the_last_state() -> None:
    first = loader_failures(pod("p", uid="u", restarts=0, state=exited(4)))
    # The kubelet restarted the loader: the failure is now the last state, the new run is waiting.
    later = loader_failures(
        pod("p", uid="u", restarts=1, state={"waiting": {"reason": "CrashLoopBackOff"}}, last=exited(4))
    )
    # ...and it failed again: two terminations, the older one already known.
    again = loader_failures(pod("p", uid="u", restarts=1, state=exited(5), last=exited(4)))

    assert [f.ident for f in first] == [("u", 0)]
    assert [f.ident for f in later] == [("u", 0)]
    assert sorted((f.ident, f.reason) for f in again) == [(("u", 0), "integrity"), (("u", 1), "key_provider")]


def test_the_ledger_counts_each_termination_once_and_forgets_pods_that_are_gone() -> None:
    ledger = LoaderFailureLedger()
    first = loader_failures(pod("p", uid="u", restarts=0, state=exited(3)))
    relisted = loader_failures(pod("p", uid="u", restarts=1, state={"waiting": {}}, last=exited(3)))
    again = loader_failures(pod("p", uid="u", restarts=1, state=exited(3), last=exited(3)))

    assert len(ledger.new("ml", first)) == 1
    assert ledger.new("ml", relisted) == []
    assert [f.attempt for f in ledger.new("ml", again)] == [1]
    assert ledger.new("other-namespace", first) != []  # namespaces are kept apart
    ledger.keep_only("ml", set())  # the pod is gone from the namespace
    assert len(ledger.new("ml", first)) == 1


def test_the_event_names_the_secure_model_and_has_a_name_fixed_by_the_failure() -> None:
    model = {"metadata": {"name": "fraud-detection", "namespace": "ml", "uid": "model-uid"}}
    [failure] = loader_failures(pod("fraud-detection-7d9-x2", uid="0123456789abcdef", state=exited(3)))
    now = datetime.datetime(2026, 12, 3, 14, 0, tzinfo=datetime.UTC)

    event = loader_failure_event(model, failure, now)

    assert event["involvedObject"] == {
        "apiVersion": "samd.dev/v1alpha1",
        "kind": "SecureModel",
        "name": "fraud-detection",
        "namespace": "ml",
        "uid": "model-uid",
    }
    assert (event["type"], event["reason"]) == ("Warning", "LoaderFailed")
    assert event["metadata"] == {"name": "fraud-detection.loader-01234567-0", "namespace": "ml"}
    assert event["lastTimestamp"] == "2026-12-03T14:00:00Z"
    assert (
        loader_failure_event(model, failure, now + datetime.timedelta(hours=1))["metadata"]
        == event["metadata"]
    )


class PodsAndModels:
    """The API calls the incident check makes (a boundary fake for a unit test): pod LISTs, model GETs,
    Event creates."""

    def __init__(self, pods: dict[str, list[dict[str, Any]]]) -> None:
        self.pods = pods
        self.lists: list[tuple[str, dict[str, str | None]]] = []
        self.created: list[dict[str, Any]] = []

    async def list_in(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        labels: Mapping[str, str | None],
        keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        assert (api_version, kind) == ("v1", "Pod")
        self.lists.append((namespace, dict(labels)))
        pods = self.pods.get(namespace, [])
        return pods if keep is None else [keep(pod) for pod in pods]  # what the check keeps of each

    async def get(self, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any]:
        assert kind == "SecureModel"
        return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"}}

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        if any(m["metadata"]["name"] == manifest["metadata"]["name"] for m in self.created):
            return False
        self.created.append(dict(manifest))
        return True


@pytest.fixture
def security_events() -> Iterator[list[SecurityEvent]]:
    seen: list[SecurityEvent] = []
    events.add_listener(seen.append)
    try:
        yield seen
    finally:
        events.remove_listener(seen.append)


def counted(metrics: OperatorMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("samd_operator_loader_failures_total", {"reason": reason})
    assert value is not None
    return value


async def test_one_list_per_namespace_counts_every_models_loader_failures_once(
    security_events: list[SecurityEvent],
) -> None:
    kube = PodsAndModels(
        {
            "ml": [
                pod("fraud-1", uid="f1", model="fraud-detection", state=exited(3)),
                pod("churn-1", uid="c1", model="churn", state=exited(6)),
                pod("churn-2", uid="c2", model="churn", state=exited(0)),
            ],
            "risk": [
                pod("score-1", uid="s1", model="score", restarts=2, state={"waiting": {}}, last=exited(5))
            ],
        }
    )
    metrics = OperatorMetrics()
    watch = IncidentWatch(kube, metrics=metrics)  # type: ignore[arg-type]
    models = [("ml", "fraud-detection"), ("ml", "churn"), ("ml", "idle"), ("risk", "score")]

    await watch.check(models, lambda _namespace: [])  # no policy sets thresholds: counted all the same
    await watch.check(models, lambda _namespace: [])  # listed again: nothing counted twice

    assert (
        sorted(kube.lists)
        == [("ml", {"samd.dev/model": None})] * 2 + [("risk", {"samd.dev/model": None})] * 2
    )
    assert (
        counted(metrics, "verification"),
        counted(metrics, "storage"),
        counted(metrics, "key_provider"),
    ) == (
        1.0,
        1.0,
        1.0,
    )
    assert counted(metrics, "other") == 0.0
    assert sorted((e["involvedObject"]["name"], e["reason"]) for e in kube.created) == [
        ("churn", "LoaderFailed"),
        ("fraud-detection", "LoaderFailed"),
        ("score", "LoaderFailed"),
    ]
    # A loader that refused its model is a security event; a storage or key failure is not.
    [signature] = security_events
    assert (signature.type, signature.subject, signature.reason) == (
        EventType.SIGNATURE_FAILED,
        "ml/fraud-detection",
        "LoaderFailed",
    )
    assert signature.details["exitCode"] == 3


async def test_after_an_operator_restart_a_recorded_failure_is_counted_but_not_reported_again(
    security_events: list[SecurityEvent],
) -> None:
    kube = PodsAndModels({"ml": [pod("fraud-1", uid="f1", state=exited(4))]})
    first, restarted = OperatorMetrics(), OperatorMetrics()

    await IncidentWatch(kube, metrics=first).check([("ml", "fraud-detection")], lambda _n: [])  # type: ignore[arg-type]
    await IncidentWatch(kube, metrics=restarted).check([("ml", "fraud-detection")], lambda _n: [])  # type: ignore[arg-type]

    assert counted(first, "integrity") == counted(restarted, "integrity") == 1.0  # each process counts
    assert len(kube.created) == 1  # the Event's fixed name: created once
    assert len(security_events) == 1
