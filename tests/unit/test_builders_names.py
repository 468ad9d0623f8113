"""Names of owned objects: the documented conventions, and Kubernetes' length limits for long models."""

from __future__ import annotations

import datetime
import hashlib
import re

import pytest

from samd.operator.builders import build_owned_objects
from samd.operator.builders.certificates import server_dns_names
from samd.operator.builders.names import (
    client_secret_name,
    fit_name,
    grant_binding_name,
    model_label_value,
    network_policy_name,
    role_name,
    serving_name,
    tls_secret_name,
    trust_config_map_name,
    workload_service_account_name,
)
from samd.spec import Grant, Subject
from tests.unit.test_builders_example import NOW, SIGNER, fraud_detection

pytestmark = pytest.mark.unit

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _sha8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def test_names_follow_the_conventions() -> None:
    model = "fraud-detection"
    assert workload_service_account_name(model) == "fraud-detection-model"
    assert serving_name(model) == "fraud-detection"
    assert role_name(model, "deployer") == "samd-fraud-detection-deployer"
    assert role_name(model, "reviewer") == "samd-fraud-detection-reviewer"
    assert network_policy_name(model) == "samd-fraud-detection-isolation"
    assert tls_secret_name(model) == "fraud-detection-tls"
    assert client_secret_name(model, "payments-api") == "fraud-detection-client-payments-api"
    assert trust_config_map_name(model) == "fraud-detection-trust"
    assert model_label_value(model) == "fraud-detection"


def test_a_grant_binding_name_hashes_role_kind_namespace_and_name() -> None:
    grant = Grant(
        subject=Subject(kind="ServiceAccount", name="release-bot", namespace="ci"),
        role="reviewer",
        expires=datetime.datetime(2025, 3, 1, tzinfo=datetime.UTC),
    )
    assert grant_binding_name("fraud-detection", grant) == "samd-fraud-detection-grant-4522889e"


def test_a_grant_binding_name_does_not_depend_on_the_expiry_but_on_who_gets_what() -> None:
    def name(role: str, namespace: str, subject: str, day: int = 1) -> str:
        grant = Grant.model_validate(
            {
                "subject": {"kind": "ServiceAccount", "name": subject, "namespace": namespace},
                "role": role,
                "expires": datetime.datetime(2025, 3, day, tzinfo=datetime.UTC),
            }
        )
        return grant_binding_name("m", grant)

    assert name("reviewer", "ci", "bot", day=1) == name("reviewer", "ci", "bot", day=9)
    assert name("reviewer", "ci", "bot") != name("deployer", "ci", "bot")
    # The namespace/name boundary matters: "ab"/"c" and "a"/"bc" are different subjects.
    assert name("reviewer", "ab", "c") != name("reviewer", "a", "bc")


def test_a_name_that_fits_is_kept() -> None:
    assert fit_name("a" * 63, 63) == "a" * 63


def test_a_long_name_is_cut_and_ends_in_a_hash_of_the_whole_name() -> None:
    name = "a" * 70
    assert fit_name(name, 63) == "a" * 54 + "-" + _sha8(name)


def test_a_cut_just_after_a_dash_does_not_leave_a_double_dash() -> None:
    name = "x" * 53 + "-" + "y" * 20  # the first 54 characters end with the '-'
    assert fit_name(name, 63) == "x" * 53 + "-" + _sha8(name)


def test_two_long_models_sharing_a_prefix_get_different_names() -> None:
    first, second = "m" * 240 + "-first", "m" * 240 + "-second"
    assert serving_name(first) != serving_name(second)
    assert model_label_value(first) != model_label_value(second)
    assert role_name(first, "deployer") != role_name(second, "deployer")


def test_every_owned_object_of_a_253_character_model_is_valid_for_kubernetes() -> None:
    long_name = ("fraud-detection." * 16)[:252] + "x"
    assert len(long_name) == 253
    ctx = fraud_detection(name=long_name)

    objects = build_owned_objects(ctx, NOW, [SIGNER])

    kinds = {manifest["kind"] for manifest in objects}
    assert {"Service", "Deployment", "PodDisruptionBudget", "RoleBinding", "NetworkPolicy"} <= kinds
    for manifest in objects:
        name = manifest["metadata"]["name"]
        if manifest["kind"] == "Service":
            assert DNS_1035_LABEL.match(name), name
            assert len(name) <= 63
        else:
            assert DNS_SUBDOMAIN.match(name), name
            assert len(name) <= 253
        for value in manifest["metadata"]["labels"].values():
            assert len(value) <= 63
            assert LABEL_VALUE.match(value), value
    deployment = next(m for m in objects if m["kind"] == "Deployment")
    for value in deployment["spec"]["template"]["metadata"]["labels"].values():
        assert len(value) <= 63
    # The full name is kept where there is room: the owner reference and the pod annotation.
    assert deployment["metadata"]["ownerReferences"][0]["name"] == long_name
    assert deployment["spec"]["template"]["metadata"]["annotations"]["samd.dev/model"] == long_name
    # The server certificate names the (shortened) Service; each DNS label stays within 63.
    for dns_name in server_dns_names(ctx):
        assert all(DNS_LABEL.match(label) for label in dns_name.split(".")), dns_name


def test_a_model_name_with_dots_gets_a_service_name_without_them() -> None:
    assert serving_name("fraud.v2") == "fraud-v2-" + _sha8("fraud.v2")
    assert serving_name("fraud.v2") != serving_name("fraud-v2")
    assert serving_name("fraud-v2") == "fraud-v2"


def test_a_model_name_starting_with_a_digit_gets_a_service_name_starting_with_a_letter() -> None:
    assert serving_name("2024-fraud") == "samd-2024-fraud-" + _sha8("2024-fraud")
