"""AdmissionReview parsing and answers, on saved reviews shaped like the API server's (tests/unit/admission/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from samd.webhook.review import (
    AdmissionRequest,
    Decision,
    ReviewError,
    load_json,
    parse_review,
    review_response,
)

pytestmark = pytest.mark.unit

SAVED = Path(__file__).parent / "admission"


def saved(name: str) -> Any:
    return json.loads((SAVED / name).read_text())


def test_a_pod_create_is_parsed_into_typed_fields() -> None:
    parsed = parse_review(saved("pod-create.json"))

    assert parsed.problem is None
    request = parsed.request
    assert isinstance(request, AdmissionRequest)
    assert request.uid == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert (request.kind.group, request.kind.version, request.kind.kind) == ("", "v1", "Pod")
    assert request.resource.resource == "pods"
    assert request.operation == "CREATE"
    assert request.namespace == "ml-prod"
    assert request.user_info.username == "system:serviceaccount:kube-system:replicaset-controller"
    assert "system:authenticated" in request.user_info.groups
    assert request.dry_run is False
    assert request.old_object is None
    assert request.object is not None
    assert request.object["metadata"]["annotations"]["samd.dev/model"] == "fraud-detection"
    # A pod created from a ReplicaSet has no name yet: the audit log shows the generateName.
    assert request.name == ""
    assert request.object_name == "fraud-detection-7d9c8b-*"


def test_a_dry_run_update_keeps_both_objects_and_the_user_extra() -> None:
    request = parse_review(saved("deployment-update-dry-run.json")).request

    assert request is not None
    assert request.dry_run is True
    assert request.operation == "UPDATE"
    assert request.kind.group == "apps"
    assert request.object_name == "fraud-detection"
    assert request.object is not None
    assert request.old_object is not None
    assert request.object["spec"]["replicas"] == 2
    assert request.old_object["spec"]["replicas"] == 1
    assert request.user_info.extra == {"scopes": ["deploy"]}


def test_fields_a_newer_api_server_adds_are_ignored() -> None:
    document = saved("securemodel-create.json")
    document["request"]["someFutureField"] = {"x": 1}
    document["request"]["userInfo"]["someFutureField"] = "y"

    request = parse_review(document).request

    assert request is not None
    assert request.kind.kind == "SecureModel"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("malformed-v1beta1.json", "expected apiVersion 'admission.k8s.io/v1'"),
        ("malformed-wrong-kind.json", '"TokenReview"'),
        ("malformed-missing-uid.json", "has no uid"),
    ],
)
def test_a_body_that_is_not_a_v1_review_with_a_uid_is_refused(name: str, expected: str) -> None:
    with pytest.raises(ReviewError, match=expected):
        parse_review(saved(name))


@pytest.mark.parametrize(
    "document",
    [
        [],
        "AdmissionReview",
        None,
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x" * 257}},
    ],
)
def test_envelopes_without_a_usable_uid_are_refused(document: Any) -> None:
    with pytest.raises(ReviewError):
        parse_review(document)


def test_a_request_with_a_uid_but_an_unknown_operation_is_a_problem_to_deny() -> None:
    parsed = parse_review(saved("malformed-unknown-operation.json"))

    assert parsed.request is None
    assert parsed.uid == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert parsed.problem is not None
    assert "request.operation" in parsed.problem
    assert "CREATE" in parsed.problem  # says what is expected
    assert parsed.kind == "Pod"


def test_wrong_types_are_not_coerced_and_every_bad_field_is_named() -> None:
    parsed = parse_review(saved("malformed-wrong-types.json"))

    assert parsed.request is None
    assert parsed.problem is not None
    for field in ("request.dryRun", "request.userInfo.groups", "request.object"):
        assert field in parsed.problem


def test_a_missing_kind_is_a_problem_to_deny() -> None:
    parsed = parse_review(saved("malformed-missing-kind.json"))

    assert parsed.request is None
    assert parsed.problem is not None
    assert "request.kind" in parsed.problem


def test_a_request_with_hundreds_of_bad_fields_gets_a_bounded_message() -> None:
    document = saved("pod-create.json")
    document["request"]["userInfo"]["groups"] = list(range(500))

    parsed = parse_review(document)

    assert parsed.problem is not None
    assert "and 495 more" in parsed.problem
    assert len(parsed.problem) < 1000


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "not valid JSON"),
        (b"hello", "not valid JSON"),
        (b'{"apiVersion": ', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    ],
)
def test_load_json_turns_every_failure_into_a_review_error(body: bytes, expected: str) -> None:
    with pytest.raises(ReviewError, match=expected):
        load_json(body)


def test_a_huge_string_in_the_object_is_parsed_not_refused() -> None:
    document = saved("pod-create.json")
    document["request"]["object"]["metadata"]["annotations"]["note"] = "x" * (2 << 20)

    request = parse_review(load_json(json.dumps(document).encode())).request

    assert request is not None
    assert len(request.object["metadata"]["annotations"]["note"]) == 2 << 20


def test_a_denial_echoes_the_uid_with_status_and_warnings() -> None:
    decision = Decision(
        allowed=False,
        message="model fraud-detection: the signature does not verify",
        reason="SignatureInvalid",
        warnings=("policy lenient is in warn mode",),
    )

    answer = review_response("705ab4f5", decision)

    assert answer == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": "705ab4f5",
            "allowed": False,
            "status": {
                "code": 403,
                "message": "model fraud-detection: the signature does not verify",
                "reason": "SignatureInvalid",
            },
            "warnings": ["policy lenient is in warn mode"],
        },
    }


def test_an_admission_has_code_200_and_no_warnings_key_when_there_are_none() -> None:
    answer = review_response("u", Decision(allowed=True, message="verified", reason="Verified", code=403))

    assert answer["response"]["allowed"] is True
    assert answer["response"]["status"]["code"] == 200
    assert "warnings" not in answer["response"]
