"""NetworkPolicies of a SecureModel: default deny, the allowed clients, DNS and storage egress."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from samd.operator.builders import EgressPeer
from samd.operator.builders.network import build_network_policies
from samd.operator.builders.serving import build_deployment
from samd.spec import SpecError, parse_secure_model
from tests.unit.test_builders_example import SETTINGS, SPEC, fraud_detection, load_snapshot

pytestmark = pytest.mark.unit


def _by_name(policies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {policy["metadata"]["name"]: policy for policy in policies}


def test_policies_match_the_reviewed_snapshot() -> None:
    assert build_network_policies(fraud_detection()) == load_snapshot("fraud-detection-network.yaml")


def test_every_policy_selects_the_pods_the_deployment_creates() -> None:
    ctx = fraud_detection()
    deployment = build_deployment(ctx)
    assert deployment is not None
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for policy in build_network_policies(ctx):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), policy["metadata"]["name"]
        assert selector == {"samd.dev/model": "fraud-detection"}


def test_without_allowed_clients_nothing_may_connect_to_the_model() -> None:
    ctx = fraud_detection({"serving": {"allowedClients": []}})
    policies = build_network_policies(ctx)
    assert sorted(_by_name(policies)) == ["samd-fraud-detection-default-deny", "samd-fraud-detection-egress"]
    assert all("ingress" not in policy["spec"] for policy in policies)
    assert _by_name(policies)["samd-fraud-detection-default-deny"]["spec"]["policyTypes"] == [
        "Ingress",
        "Egress",
    ]


def test_clients_reach_only_the_mtls_port() -> None:
    ctx = fraud_detection({"serving": {"port": 9443}})
    allow = _by_name(build_network_policies(ctx))["samd-fraud-detection-allow-clients"]
    assert [rule["ports"] for rule in allow["spec"]["ingress"]] == [[{"protocol": "TCP", "port": 9443}]]


def test_a_pod_selector_alone_allows_pods_of_the_models_own_namespace() -> None:
    clients = [{"podSelector": {"matchLabels": {"app": "risk-dashboard"}}}]
    ctx = fraud_detection({"serving": {"allowedClients": clients}})
    allow = _by_name(build_network_policies(ctx))["samd-fraud-detection-allow-clients"]
    assert allow["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app": "risk-dashboard"}}}
    ]


def test_each_allowed_client_is_its_own_peer() -> None:
    clients = [
        {"namespaceSelector": {"matchLabels": {"team": "payments"}}},
        {"podSelector": {"matchLabels": {"app": "risk-dashboard"}}},
    ]
    ctx = fraud_detection({"serving": {"allowedClients": clients}})
    allow = _by_name(build_network_policies(ctx))["samd-fraud-detection-allow-clients"]
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
    egress = _by_name(build_network_policies(fraud_detection(settings=settings)))[
        "samd-fraud-detection-egress"
    ]
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
    egress = _by_name(build_network_policies(fraud_detection(settings=settings)))[
        "samd-fraud-detection-egress"
    ]
    assert len(egress["spec"]["egress"]) == 1
    assert egress["spec"]["egress"][0]["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


def test_changing_a_policy_does_not_change_the_spec_it_was_built_from() -> None:
    ctx = fraud_detection()
    allow = _by_name(build_network_policies(ctx))["samd-fraud-detection-allow-clients"]
    allow["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"] = "anything"
    assert build_network_policies(ctx) == load_snapshot("fraud-detection-network.yaml")
