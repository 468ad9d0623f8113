"""NetworkPolicies that isolate the model's pods.

Three policies select the pods labelled `samd.dev/model=<model>`; policies add up, so together they
allow exactly: ingress from the allowed clients to the mTLS port, egress to cluster DNS and to the
storage endpoints from the settings. Everything else is denied.
"""

from __future__ import annotations

import copy
from typing import Any

from samd.operator.builders.context import ModelContext
from samd.operator.builders.metadata import Manifest, owned_metadata, pod_selector_labels
from samd.operator.builders.names import NetworkPolicyPurpose, network_policy_name
from samd.spec import AllowedClient

NETWORKING_API_VERSION = "networking.k8s.io/v1"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set by the API server on every namespace; selects a namespace by name."""


def _policy(
    ctx: ModelContext, purpose: NetworkPolicyPurpose, policy_types: list[str], rules: dict[str, Any]
) -> Manifest:
    return {
        "apiVersion": NETWORKING_API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": owned_metadata(ctx, network_policy_name(ctx.name, purpose)),
        "spec": {
            "podSelector": {"matchLabels": pod_selector_labels(ctx)},
            "policyTypes": policy_types,
            **rules,
        },
    }


def client_peer(client: AllowedClient) -> dict[str, Any]:
    """A NetworkPolicy peer: a podSelector alone means pods in the model's own namespace.

    The selectors are copied so that nothing done to the manifest can reach the (frozen) spec.
    """
    peer: dict[str, Any] = {}
    if client.namespace_selector is not None:
        peer["namespaceSelector"] = copy.deepcopy(client.namespace_selector)
    if client.pod_selector is not None:
        peer["podSelector"] = copy.deepcopy(client.pod_selector)
    return peer


def build_network_policies(ctx: ModelContext) -> list[Manifest]:
    """Default deny, the allowed clients (only if there are any) and the allowed egress."""
    policies = [_policy(ctx, "default-deny", ["Ingress", "Egress"], {})]

    peers = [client_peer(client) for client in ctx.spec.serving.allowed_clients]
    if peers:
        ingress = [{"from": peers, "ports": [{"protocol": "TCP", "port": ctx.spec.serving.port}]}]
        policies.append(_policy(ctx, "allow-clients", ["Ingress"], {"ingress": ingress}))

    settings = ctx.settings
    dns = {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.dns_namespace}},
                "podSelector": {"matchLabels": dict(settings.dns_pod_labels)},
            }
        ],
        "ports": [
            {"protocol": "UDP", "port": settings.dns_port},
            {"protocol": "TCP", "port": settings.dns_port},
        ],
    }
    storage = [
        {"to": [{"ipBlock": {"cidr": peer.cidr}}], "ports": [{"protocol": "TCP", "port": peer.port}]}
        for peer in settings.storage_egress
    ]
    policies.append(_policy(ctx, "egress", ["Egress"], {"egress": [dns, *storage]}))
    return policies
