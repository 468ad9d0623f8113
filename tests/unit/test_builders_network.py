"""The NetworkPolicy of a SecureModel: isolation, the allowed clients, DNS and storage egress."""

from __future__ import annotations

import dataclasses

import pytest

from samd.operator.builders import EgressPeer
from samd.operator.builders.network import build_network_policy
from samd.operator.builders.serving import build_deployment
from samd.spec import SpecError, parse_secure_model
from tests.unit.test_builders_example import SETTINGS, SPEC, fraud_detection, load_snapshot

pytestmark = pytest.mark.unit


def test_the_policy_matches_the_reviewed_snapshot() -> None:
    assert [build_network_policy(fraud_detection())] == load_snapshot("fraud-detection-network.yaml")


def test_the_policy_selects_the_pods_the_deployment_creates_for_both_directions() -> None:
    ctx = fraud_detection()
    deployment = build_deployment(ctx)
    assert deployment is not None
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    policy = build_network_policy(ctx)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert selector == {"samd.dev/model": "fraud-detection"}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_without_allowed_clients_nothing_may_connect_to_the_model() -> None:
    policy = build_network_policy(fraud_detection({"serving": {"allowedClients": []}}))
    # Ingress among the policy types with no ingress rule: no connection in at all.
    assert "Ingress" in policy["spec"]["policyTypes"]
    assert "ingress" not in policy["spec"]


def test_clients_reach_only_the_mtls_port() -> None:
    ctx = fraud_detection({"serving": {"port": 9443}})
    allow = build_network_policy(ctx)
    assert [rule["ports"] for rule in allow["spec"]["ingress"]] == [[{"protocol": "TCP", "port": 9443}]]


def test_a_pod_selector_alone_allows_pods_of_the_models_own_namespace() -> None:
    clients = [{"podSelector": {"matchLabels": {"app": "risk-dashboard"}}}]
    ctx = fraud_detection({"serving": {"allowedClients": clients}})
    allow = build_network_policy(ctx)
    assert allow["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app": "risk-dashboard"}}}
    ]


def test_each_allowed_client_is_its_own_peer() -> None:
    clients = [
        {"namespaceSelector": {"matchLabels": {"team": "payments"}}},
        {"podSelector": {"matchLabels": {"app": "risk-dashboard"}}},
    ]
    ctx = fraud_detection({"serving": {"allowedClients": clients}})
    allow = build_network_policy(ctx)
    assert allow["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "payments"}}},
        {"podSelector": {"matchLabels": {"app": "risk-dashboard"}}},
    ]


def test_an_allowed_client_without_any_selector_is_refused_by_the_spec() -> None:
    spec = {**SPEC, "serving": {**SPEC["serving"], "allowedClients": [{}]}}
    with pytest.raises(SpecError, match="namespaceSelector, podSelector or both"):
        parse_secure_model(spec)


def test_egress_goes_only_to_dns_and_each_storage_endpoint() -> None:
    settings = dataclasses.replace(
        SETTINGS, storage_egress=(EgressPeer("10.0.0.0/8", 9000), EgressPeer("192.0.2.7/32", 443))
    )
    egress = build_network_policy(fraud_detection(settings=settings))
    rules = egress["spec"]["egress"]
    assert [rule["ports"] for rule in rules] == [
        [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        [{"protocol": "TCP", "port": 9000}],
        [{"protocol": "TCP", "port": 443}],
    ]
    assert [rule["to"] for rule in rules[1:]] == [
        [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
        [{"ipBlock": {"cidr": "192.0.2.7/32"}}],
    ]


def test_without_storage_endpoints_only_dns_is_reachable() -> None:
    settings = dataclasses.replace(SETTINGS, storage_egress=())
    egress = build_network_policy(fraud_detection(settings=settings))
    assert len(egress["spec"]["egress"]) == 1
    assert egress["spec"]["egress"][0]["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


def test_changing_a_policy_does_not_change_the_spec_it_was_built_from() -> None:
    ctx = fraud_detection()
    allow = build_network_policy(ctx)
    allow["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"] = "anything"
    assert [build_network_policy(ctx)] == load_snapshot("fraud-detection-network.yaml")
