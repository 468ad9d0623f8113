"""The NetworkPolicy that isolates the model's pods.

One policy selects the pods labelled `samd.dev/model=<model>` for both directions, so that they are
isolated (everything denied) except what its rules allow: ingress from the allowed clients to the
mTLS port and from the configured Prometheus pods to the metrics port, egress to cluster DNS and to the storage endpoints from the settings. One object rather
than a default deny plus allow policies: the same isolation, and fewer objects for the API server
to store and every watcher to process for each model.
"""

from __future__ import annotations

import copy
from typing import Any

from samd.operator.builders.context import ModelContext
from samd.operator.builders.metadata import Manifest, owned_metadata, pod_selector_labels
from samd.operator.builders.names import network_policy_name
from samd.operator.builders.serving import METRICS_PORT
from samd.spec import AllowedClient

NETWORKING_API_VERSION = "networking.k8s.io/v1"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set by the API server on every namespace; selects a namespace by name."""


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


def build_network_policy(ctx: ModelContext) -> Manifest:
    """Deny all but the allowed clients' ingress (none when there are none) and DNS and storage egress."""
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": pod_selector_labels(ctx)},
        "policyTypes": ["Ingress", "Egress"],
    }
    peers = [client_peer(client) for client in ctx.spec.serving.allowed_clients]
    ingress = []
    if peers:
        ingress.append({"from": peers, "ports": [{"protocol": "TCP", "port": ctx.spec.serving.port}]})
    settings = ctx.settings
    scrapers = [
        {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: scraper.namespace}},
            "podSelector": {"matchLabels": dict(scraper.pod_labels)},
        }
        for scraper in settings.metrics_scrapers
    ]
    if scrapers:  # Prometheus reaches the plain-HTTP metrics port only, never the model's port
        ingress.append({"from": scrapers, "ports": [{"protocol": "TCP", "port": METRICS_PORT}]})
    if ingress:
        spec["ingress"] = ingress
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
    spec["egress"] = [dns, *storage]
    return {
        "apiVersion": NETWORKING_API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": owned_metadata(ctx, network_policy_name(ctx.name)),
        "spec": spec,
    }
