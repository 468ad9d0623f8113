"""The loader's failures counted by the operator, on the real control plane: a model pod whose
`samd-fetch` init container exited with code 3 (the signature does not verify) moves
`samd_operator_loader_failures_total{reason="verification"}` on the operator's /metrics once (also
when the pod is listed again after the kubelet restarted the loader), and leaves a `LoaderFailed`
Warning Event on the SecureModel.

No kubelet runs the pod: it is held unscheduled, and its status is written as the kubelet would
write it (admins may patch pod status), so the test decides the exit code."""

from __future__ import annotations

import datetime
import time
import urllib.request
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.operator import OperatorProcess
from tests.support.scenario import Scenario, eventually

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"


def loader_failures(port: int, reason: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "samd_operator_loader_failures_total" and sample.labels == {"reason": reason}:
                return float(sample.value)
    raise AssertionError(
        f"no samd_operator_loader_failures_total{{reason={reason!r}}} on the operator's /metrics"
    )


def terminated(code: int, at: datetime.datetime) -> dict[str, Any]:
    stamp = at.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return {"terminated": {"exitCode": code, "reason": "Error", "startedAt": stamp, "finishedAt": stamp}}


def test_a_loader_that_refuses_the_model_is_counted_once_and_recorded_on_the_secure_model(
    scenario: Scenario, operator: OperatorProcess
) -> None:
    port = operator.metrics_port()
    before = loader_failures(port, "verification")
    scenario.apply_model(scenario.example())
    name = f"{MODEL}-{uuid.uuid4().hex[:6]}"
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"samd.dev/model": MODEL}},
        "spec": {
            # Never scheduled: no kubelet (nor KWOK) rewrites the status this test writes.
            "nodeSelector": {"samd.dev/no-such-node": "true"},
            "initContainers": [{"name": "samd-fetch", "image": "samd:dev", "command": ["samd", "fetch"]}],
            "containers": [{"name": "server", "image": "samd:dev", "command": ["samd", "serve"]}],
        },
    }
    scenario.core.create_namespaced_pod(scenario.namespace, pod)  # type: ignore[arg-type]
    now = datetime.datetime.now(datetime.UTC)
    waiting = {"waiting": {"reason": "PodInitializing"}}

    def write_status(restarts: int, state: dict[str, Any], last: dict[str, Any] | None) -> None:
        fetch: dict[str, Any] = {
            "name": "samd-fetch", "image": "samd:dev", "imageID": "", "ready": False,
            "restartCount": restarts, "state": state,
        }  # fmt: skip
        if last is not None:
            fetch["lastState"] = last
        server = {"name": "server", "image": "samd:dev", "imageID": "", "ready": False, "restartCount": 0,
                  "state": waiting}  # fmt: skip
        scenario.core.patch_namespaced_pod_status(
            name,
            scenario.namespace,
            {"status": {"phase": "Pending", "initContainerStatuses": [fetch], "containerStatuses": [server]}},
        )

    write_status(0, terminated(3, now), None)
    eventually(
        lambda: loader_failures(port, "verification") == before + 1,
        30,
        "the operator to count the loader's verification failure",
    )
    # The kubelet restarts the loader: the same termination is now the last state. Not counted again.
    write_status(1, {"waiting": {"reason": "CrashLoopBackOff"}}, terminated(3, now))
    time.sleep(3)  # three incident checks (SAMD_INCIDENT_CHECK_INTERVAL=1s in the test operator)
    assert loader_failures(port, "verification") == before + 1

    events = scenario.core.list_namespaced_event(
        scenario.namespace, field_selector=f"involvedObject.name={MODEL},reason=LoaderFailed"
    ).items
    [event] = events
    assert event.type == "Warning"
    assert event.involved_object.kind == "SecureModel"
    message = str(event.message)
    assert f"pod {name} exited with code 3" in message
    assert "signature does not verify" in message
