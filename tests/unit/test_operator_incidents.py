"""The operator's incident thresholds: readings of the servers' metrics, compared with the policies."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from samd.events import SIGNATURE_HEADER, EventType, SecurityEvent, verify
from samd.operator.builders.context import ModelContext
from samd.operator.builders.metadata import MODEL_LABEL
from samd.operator.builders.serving import FETCH_CONTAINER, build_deployment
from samd.operator.conditions import Condition, ConditionType, ready_condition
from samd.operator.config import OperatorConfig
from samd.operator.incidents import (
    PolicySinks,
    Reading,
    Thresholds,
    evaluate,
    incident_view,
    loader_failures,
    metrics_url,
    read_metrics,
    security_event,
)
from samd.operator.reconcile import builder_settings
from samd.operator.steps.quarantine import Quarantine, quarantine_pending
from samd.operator.steps.shared import Event, EventReason
from samd.policy import TrustPolicy
from samd.spec import parse_secure_model, parse_trust_policy
from tests.support.cluster import REPO
from tests.unit.test_events import (
    KEY,
    Receiver,
    dropped,
    receiver,  # noqa: F401 - the fixture, used by name
)

pytestmark = pytest.mark.unit

METRICS = """\
# HELP samd_serving_forbidden_total Requests refused with 403
# TYPE samd_serving_forbidden_total counter
samd_serving_forbidden_total{reason="ClientNotAllowed"} 4.0
samd_serving_forbidden_total{reason="WrongModel"} 1.0
# HELP samd_serving_refused_handshakes_total Refused TLS handshakes
# TYPE samd_serving_refused_handshakes_total counter
samd_serving_refused_handshakes_total{reason="no_certificate"} 2.0
# HELP samd_serving_requests_total Requests
# TYPE samd_serving_requests_total counter
samd_serving_requests_total{client="scorer",endpoint="infer",outcome="ok"} 1000.0
# HELP samd_drift_population_stability_index Population stability index
# TYPE samd_drift_population_stability_index gauge
samd_drift_population_stability_index{direction="input",feature="amount"} 0.12
samd_drift_population_stability_index{direction="input",feature="hour"} 0.31
samd_drift_population_stability_index{direction="output",feature="fraud_probability"} NaN
"""


def policy(name: str, **responses: object) -> TrustPolicy:
    spec = parse_trust_policy({"signers": [{"name": "ci", "publicKey": "PEM"}], "responses": dict(responses)})
    return TrustPolicy(name=name, generation=1, spec=spec)


def test_a_reading_sums_the_refusals_and_takes_the_largest_drift() -> None:
    reading = read_metrics(METRICS, at=10.0)

    assert reading.unauthorized == 7.0  # 4 + 1 forbidden, 2 refused handshakes; not the 1000 served
    assert reading.drift_psi == 0.31


def test_refusals_per_minute_over_the_threshold_are_found_and_under_it_not() -> None:
    thresholds = Thresholds(unauthorized_per_minute=30)
    before = {"pod-a": Reading(10, None, 100.0), "pod-b": Reading(0, None, 100.0)}
    busy = {"pod-a": Reading(20, None, 110.0), "pod-b": Reading(0, None, 110.0)}  # 10 in 10 s: 60/min
    quiet = {"pod-a": Reading(14, None, 110.0), "pod-b": Reading(0, None, 110.0)}  # 4 in 10 s: 24/min

    [finding] = evaluate(before, busy, thresholds)
    assert finding.kind is EventType.UNAUTHORIZED_ACCESS
    assert finding.details["perMinute"] == 60.0
    assert "the policy's threshold is 30" in finding.message
    assert evaluate(before, quiet, thresholds) == []


def test_a_new_pod_has_no_baseline_and_a_restarted_server_counts_from_zero() -> None:
    thresholds = Thresholds(unauthorized_per_minute=30)

    assert evaluate({}, {"pod-a": Reading(500, None, 110.0)}, thresholds) == []
    restarted = evaluate({"pod-a": Reading(500, None, 100.0)}, {"pod-a": Reading(6, None, 110.0)}, thresholds)
    assert [f.details["refused"] for f in restarted] == [6.0]


def test_drift_at_or_over_the_threshold_is_found() -> None:
    thresholds = Thresholds(drift_psi=0.25)

    [finding] = evaluate({}, {"pod-a": Reading(0, 0.31, 1.0)}, thresholds)
    assert finding.kind is EventType.DRIFT_DETECTED
    assert evaluate({}, {"pod-a": Reading(0, 0.2, 1.0)}, thresholds) == []
    assert evaluate({}, {"pod-a": Reading(0, None, 1.0)}, thresholds) == []


def test_the_strictest_covering_policy_decides_and_any_may_ask_for_quarantine() -> None:
    thresholds = Thresholds.of(
        [
            policy("loose", unauthorizedPerMinute=100),
            policy("strict", unauthorizedPerMinute=10, driftPSI=0.2, quarantine=True),
            policy("none"),
        ]
    )

    assert thresholds == Thresholds(unauthorized_per_minute=10, drift_psi=0.2, quarantine=True)
    assert not Thresholds.of([policy("none")]).any


def test_only_running_pods_with_an_address_are_read_on_their_metrics_port() -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "ports": [
                        {"name": "https", "containerPort": 8443},
                        {"name": "metrics", "containerPort": 9191},
                    ]
                }
            ]
        },
        "status": {"phase": "Running", "podIP": "10.1.0.7"},
    }

    assert metrics_url(pod) == "http://10.1.0.7:9191/metrics"
    assert metrics_url({**pod, "status": {"phase": "Pending", "podIP": "10.1.0.7"}}) is None
    assert metrics_url({**pod, "status": {"phase": "Running"}}) is None


def test_a_quarantine_makes_ready_false_and_asks_for_a_reconcile_until_applied() -> None:
    quarantined = Condition(ConditionType.QUARANTINED, True, "UnauthorizedAccess", "60 refusals per minute")
    others: dict[ConditionType, Condition] = {
        kind: Condition(kind, True, "Fine", "fine")
        for kind in ConditionType
        if kind not in (ConditionType.READY, ConditionType.QUARANTINED)
    }

    ready = ready_condition({**others, ConditionType.QUARANTINED: quarantined})
    assert (ready.status, ready.reason) == (False, "Quarantined")
    assert ready_condition(others).status is True  # without the condition, as for a model never quarantined

    set_but_not_applied = {"quarantine": {"active": True, "reason": "Manual"}, "conditions": []}
    applied = {**set_but_not_applied, "conditions": [{"type": "Quarantined", "status": "True"}]}
    cleared_not_applied = {
        "quarantine": {"active": False},
        "conditions": [{"type": "Quarantined", "status": "True"}],
    }
    assert quarantine_pending(set_but_not_applied)
    assert not quarantine_pending(applied)
    assert quarantine_pending(cleared_not_applied)
    assert not quarantine_pending({})
    assert Quarantine.of(applied) == Quarantine(active=True, reason="Manual")


def test_the_security_events_among_a_reconciles_events() -> None:
    assert security_event("ns", "m", Event(EventReason.KEY_ROTATED, "rotated")) is None
    failed = security_event(
        "ns", "m", Event(EventReason.KEY_ROTATION_FAILED, "the KMS refused", warning=True)
    )
    assert failed is not None
    assert failed.type is EventType.KEY_ROTATION_FAILED
    assert failed.subject == "ns/m"


class SecretsOnly:
    """The one API call PolicySinks makes: reading a Secret (a boundary fake for a unit test)."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, object] | None:
        assert (api_version, kind, namespace) == ("v1", "Secret", "samd-system")
        data = self.secrets.get(name)
        return (
            None
            if data is None
            else {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        )


def sink_policy(url: str, **extra: object) -> TrustPolicy:
    spec = parse_trust_policy(
        {
            "signers": [{"name": "ci", "publicKey": "PEM"}],
            "eventSinks": [{"name": "soar", "url": url, "secretRef": {"name": "soar-hmac"}}],
            **extra,
        }
    )
    return TrustPolicy(name="prod", generation=1, spec=spec)


QUARANTINED = SecurityEvent(
    EventType.MODEL_QUARANTINED, "operator", "Quarantined", "scaled to zero", "ml", "fraud"
)


async def test_a_policys_sink_gets_the_event_signed_with_its_secrets_key(
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    sinks = PolicySinks(SecretsOnly({"soar-hmac": {"key": KEY.decode()}}), OperatorConfig())  # type: ignore[arg-type]
    allowed = sink_policy(receiver.url, allowedEndpoints=[{"cidr": "127.0.0.1/32", "allowHttp": True}])

    await sinks.deliver([QUARANTINED], [allowed])
    receiver.wait_for(1)
    await sinks.stop()

    headers, body = receiver.received[0]
    verify(KEY, headers[SIGNATURE_HEADER], body)
    assert json.loads(body)["type"] == "dev.samd.model.quarantined"


async def test_a_policys_sink_on_an_internal_address_is_refused_unless_the_policy_allows_it(
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    before = dropped("address_refused")
    sinks = PolicySinks(SecretsOnly({"soar-hmac": {"key": KEY.decode()}}), OperatorConfig())  # type: ignore[arg-type]

    await sinks.deliver([QUARANTINED], [sink_policy(receiver.url)])
    await sinks.stop()

    assert receiver.received == []
    assert dropped("address_refused") == before + 1


async def test_without_its_key_a_policys_sink_gets_nothing(
    receiver: Receiver,  # noqa: F811 - the fixture imported above
    caplog: pytest.LogCaptureFixture,
) -> None:
    sinks = PolicySinks(SecretsOnly({}), OperatorConfig())  # type: ignore[arg-type]
    allowed = sink_policy(receiver.url, allowedEndpoints=[{"cidr": "127.0.0.1/32", "allowHttp": True}])

    await sinks.deliver([QUARANTINED], [allowed])
    await sinks.stop()

    assert receiver.received == []
    assert "no HMAC key in Secret samd-system/soar-hmac" in caplog.text


def test_the_incident_check_keeps_of_a_pod_what_it_reads_and_little_else() -> None:
    """A pod as the API server lists it: the operator's own pod template, the status of a running
    pod whose loader failed once, and the managedFields every object carries."""
    example = yaml.safe_load((REPO / "examples" / "fraud-detection" / "securemodel.yaml").read_text())
    context = ModelContext(
        name="fraud",
        namespace="ml",
        uid="uid-fraud",
        spec=parse_secure_model(example["spec"]),
        manifest_digest="sha256:" + "0" * 64,
        settings=builder_settings(OperatorConfig(namespace="samd-system")),
    )
    template = build_deployment(context)["spec"]["template"]
    failed_once = {"terminated": {"exitCode": 4, "message": "the artifact failed authentication"}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **template["metadata"],
            "name": "fraud-7d9f-abcde",
            "uid": "uid-pod",
            "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": template["spec"]}],
        },
        "spec": template["spec"],
        "status": {
            "phase": "Running",
            "podIP": "10.1.0.7",
            "conditions": [{"type": "Ready", "status": "True"}] * 4,
            "initContainerStatuses": [
                {"name": FETCH_CONTAINER, "restartCount": 1, "lastState": failed_once, "state": {}}
            ],
        },
    }

    view = incident_view(pod)

    assert metrics_url(view) == metrics_url(pod) is not None
    assert loader_failures(view) == loader_failures(pod) != []
    assert view["metadata"]["labels"][MODEL_LABEL] == pod["metadata"]["labels"][MODEL_LABEL]
    assert len(json.dumps(view)) * 5 < len(json.dumps(pod))
