"""Roles and RoleBindings of a SecureModel: who may do what, and for how long."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from samd.operator.builders.rbac import build_role_bindings, build_roles, next_grant_expiry
from tests.unit.test_builders_example import NOW, fraud_detection, load_snapshot

pytestmark = pytest.mark.unit

UTC = datetime.UTC
ALICE_EXPIRES = datetime.datetime(2025, 1, 31, 18, 0, tzinfo=UTC)
RELEASE_BOT_EXPIRES = datetime.datetime(2025, 3, 1, 0, 0, tzinfo=UTC)


def _by_name(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {manifest["metadata"]["name"]: manifest for manifest in manifests}


def _subject_names(bindings: list[dict[str, Any]]) -> set[str]:
    return {subject["name"] for binding in bindings for subject in binding["subjects"]}


def test_roles_and_bindings_match_the_reviewed_snapshot() -> None:
    ctx = fraud_detection()
    assert build_roles(ctx) + build_role_bindings(ctx, NOW) == load_snapshot("fraud-detection-rbac.yaml")


def test_no_role_lets_anyone_delete_anything() -> None:
    for role in build_roles(fraud_detection()):
        for rule in role["rules"]:
            assert not {"delete", "deletecollection", "*"} & set(rule["verbs"]), role["metadata"]["name"]
            assert "*" not in rule["resources"]


def test_deployers_may_read_update_and_patch_their_model_only() -> None:
    deployer = _by_name(build_roles(fraud_detection()))["samd-fraud-detection-deployer"]
    model_rules = [rule for rule in deployer["rules"] if rule["resources"] == ["securemodels"]]
    assert model_rules == [
        {
            "apiGroups": ["samd.dev"],
            "resources": ["securemodels"],
            "resourceNames": ["fraud-detection"],
            "verbs": ["get", "list", "watch", "update", "patch"],
        }
    ]


def test_reviewers_may_only_read() -> None:
    reviewer = _by_name(build_roles(fraud_detection()))["samd-fraud-detection-reviewer"]
    verbs = {tuple(rule["resources"]): sorted(rule["verbs"]) for rule in reviewer["rules"]}
    assert verbs == {("securemodels",): ["get", "list", "watch"], ("securemodels/status",): ["get"]}


def test_no_role_of_the_model_reaches_secrets_and_its_workload_is_bound_to_nothing() -> None:
    ctx = fraud_detection()
    assert not [
        role["metadata"]["name"]
        for role in build_roles(ctx)
        if any("secrets" in rule["resources"] for rule in role["rules"])
    ]
    bound = [subject for binding in build_role_bindings(ctx, NOW) for subject in binding["subjects"]]
    assert bound
    assert {"kind": "ServiceAccount", "name": "fraud-detection-model", "namespace": "fraud"} not in bound


def test_an_expired_grant_has_no_binding_and_an_active_one_has() -> None:
    bindings = build_role_bindings(fraud_detection(), NOW)
    assert "alice@example.com" not in _subject_names(bindings)
    grant_bindings = [b for b in bindings if "-grant-" in b["metadata"]["name"]]
    assert [(b["roleRef"]["name"], b["subjects"][0]["name"]) for b in grant_bindings] == [
        ("samd-fraud-detection-reviewer", "release-bot")
    ]


def test_a_grant_binds_until_its_expiry_and_not_at_it() -> None:
    ctx = fraud_detection()
    just_before = ALICE_EXPIRES - datetime.timedelta(seconds=1)
    before = [b for b in build_role_bindings(ctx, just_before) if "-grant-" in b["metadata"]["name"]]
    alice = [b for b in before if b["subjects"][0]["name"] == "alice@example.com"]
    assert [b["roleRef"]["name"] for b in alice] == ["samd-fraud-detection-deployer"]
    assert alice[0]["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"}
    ]
    assert alice[0]["metadata"]["annotations"] == {"samd.dev/expires": "2025-01-31T18:00:00Z"}

    assert "alice@example.com" not in _subject_names(build_role_bindings(ctx, ALICE_EXPIRES))


def test_next_grant_expiry_is_the_earliest_active_expiry() -> None:
    spec = fraud_detection().spec
    assert next_grant_expiry(spec, ALICE_EXPIRES - datetime.timedelta(hours=1)) == ALICE_EXPIRES
    assert next_grant_expiry(spec, NOW) == RELEASE_BOT_EXPIRES
    assert next_grant_expiry(spec, RELEASE_BOT_EXPIRES) is None


def test_next_grant_expiry_compares_instants_across_time_zones() -> None:
    spec = fraud_detection().spec
    # 19:30 in UTC+02:00 is 17:30 UTC: alice's grant (18:00 UTC) is still active.
    evening = datetime.datetime(2025, 1, 31, 19, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert next_grant_expiry(spec, evening) == ALICE_EXPIRES


def test_two_grants_of_one_role_to_one_subject_make_one_binding_until_the_later_expiry() -> None:
    bot = {"kind": "ServiceAccount", "name": "release-bot", "namespace": "ci"}
    ctx = fraud_detection(
        {
            "access": {
                "grants": [
                    {"subject": bot, "role": "reviewer", "expires": "2025-04-01T00:00:00Z"},
                    {"subject": bot, "role": "reviewer", "expires": "2025-03-01T00:00:00Z"},
                ]
            }
        }
    )
    grant_bindings = [b for b in build_role_bindings(ctx, NOW) if "-grant-" in b["metadata"]["name"]]
    assert [b["metadata"]["annotations"]["samd.dev/expires"] for b in grant_bindings] == [
        "2025-04-01T00:00:00Z"
    ]


def test_without_deployers_there_is_no_deployer_binding_but_the_role_stays() -> None:
    ctx = fraud_detection({"access": {"deployers": []}})
    assert "samd-fraud-detection-deployer" not in _by_name(build_role_bindings(ctx, NOW))
    assert "samd-fraud-detection-deployer" in _by_name(build_roles(ctx))


def test_a_time_without_a_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        build_role_bindings(fraud_detection(), datetime.datetime(2025, 2, 1, 12, 0))
