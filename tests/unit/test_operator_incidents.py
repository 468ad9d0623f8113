"""The operator's incident thresholds: readings of the servers' metrics, compared with the policies."""

from __future__ import annotations

import pytest

from samd.events import EventType
from samd.operator.conditions import Condition, ConditionType, ready_condition
from samd.operator.incidents import Reading, Thresholds, evaluate, metrics_url, read_metrics, security_event
from samd.operator.reconcile import Event, Quarantine, quarantine_pending
from samd.policy import TrustPolicy
from samd.spec import parse_trust_policy

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
# HELP samd_serving_drift_psi Population stability index
# TYPE samd_serving_drift_psi gauge
samd_serving_drift_psi{feature="amount"} 0.12
samd_serving_drift_psi{feature="hour"} 0.31
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
    assert security_event("ns", "m", Event("KeyRotated", "rotated")) is None
    failed = security_event("ns", "m", Event("KeyRotationFailed", "the KMS refused", warning=True))
    assert failed is not None
    assert failed.type is EventType.KEY_ROTATION_FAILED
    assert failed.subject == "ns/m"
