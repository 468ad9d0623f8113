"""Everything the audit looks at, read once from the cluster into plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from samd.audit.cluster import ClusterReader
from samd.operator.builders.names import signature_config_map_name

Obj = dict[str, Any]


@dataclass
class Snapshot:
    models: list[Obj]
    policies: list[Obj]
    namespaces: dict[str, Obj]
    services: list[Obj]
    ingresses: list[Obj]
    http_routes: list[Obj] | None  # None: the Gateway API is not installed
    network_policies: list[Obj]
    deployments: list[Obj]
    role_bindings: list[Obj]
    cluster_role_bindings: list[Obj]
    roles: dict[tuple[str, str], Obj]  # (namespace, name)
    cluster_roles: dict[str, Obj]
    webhook_configurations: list[Obj]
    signatures: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, model) -> bundle JSON

    def model_namespaces(self) -> list[str]:
        return sorted({m["metadata"]["namespace"] for m in self.models})


def _by_name(items: list[Obj]) -> dict[str, Obj]:
    return {item["metadata"]["name"]: item for item in items}


def read_snapshot(reader: ClusterReader, namespace: str | None = None) -> Snapshot:
    """Read what the checks need; `namespace` limits the namespaced reads (cluster objects are always read)."""

    def listed(api_version: str, kind: str, *, namespaced: bool = True) -> list[Obj]:
        return reader.list(api_version, kind, namespace if namespaced else None, namespaced=namespaced) or []

    models = reader.list("samd.dev/v1alpha1", "SecureModel", namespace, namespaced=True)
    if models is None:
        from samd.errors import UsageError  # noqa: PLC0415

        raise UsageError(
            "the cluster does not serve SecureModels (the SAMD CRDs are not installed)",
            hint="install SAMD's Helm chart, or point KUBECONFIG at the cluster that runs SAMD",
        )
    namespaces = _by_name(listed("v1", "Namespace", namespaced=False))
    if namespace is not None:
        namespaces = {name: ns for name, ns in namespaces.items() if name == namespace}
    snapshot = Snapshot(
        models=models,
        policies=listed("samd.dev/v1alpha1", "ModelTrustPolicy", namespaced=False),
        namespaces=namespaces,
        services=listed("v1", "Service"),
        ingresses=listed("networking.k8s.io/v1", "Ingress"),
        http_routes=reader.list("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, namespaced=True),
        network_policies=listed("networking.k8s.io/v1", "NetworkPolicy"),
        # Everywhere, also with a namespace: the operator's and the webhook's own Deployments count.
        deployments=reader.list("apps/v1", "Deployment", None, namespaced=True) or [],
        role_bindings=listed("rbac.authorization.k8s.io/v1", "RoleBinding"),
        cluster_role_bindings=listed("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", namespaced=False),
        roles={
            (r["metadata"]["namespace"], r["metadata"]["name"]): r
            for r in listed("rbac.authorization.k8s.io/v1", "Role")
        },
        cluster_roles=_by_name(listed("rbac.authorization.k8s.io/v1", "ClusterRole", namespaced=False)),
        webhook_configurations=listed(
            "admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", namespaced=False
        ),
    )
    for model in models:
        meta = model["metadata"]
        config_map = reader.get("v1", "ConfigMap", signature_config_map_name(meta["name"]), meta["namespace"])
        bundle = ((config_map or {}).get("data") or {}).get("bundle.json")
        if bundle:
            snapshot.signatures[(meta["namespace"], meta["name"])] = bundle
    return snapshot


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})
