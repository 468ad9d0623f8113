"""Labels, ownerReferences and metadata shared by every object a SecureModel owns."""

from __future__ import annotations

from typing import Any

from samd.operator.builders.context import ModelContext
from samd.operator.builders.names import model_label_value
from samd.spec import API_VERSION

Manifest = dict[str, Any]
"""A JSON-ready Kubernetes object (apiVersion, kind, metadata, ...)."""

MODEL_LABEL = "samd.dev/model"
MODEL_ANNOTATION = "samd.dev/model"
MODEL_DIGEST_ANNOTATION = "samd.dev/model-digest"
MODEL_VERSION_ANNOTATION = "samd.dev/model-version"
EXPIRES_ANNOTATION = "samd.dev/expires"
MANAGED_BY = "samd-operator"


def pod_selector_labels(ctx: ModelContext) -> dict[str, str]:
    """The labels that select the model's pods (NetworkPolicies, Service, PodDisruptionBudget)."""
    return {MODEL_LABEL: model_label_value(ctx.name)}


def owned_labels(ctx: ModelContext) -> dict[str, str]:
    """The labels on every object the model owns, so `kubectl get -l samd.dev/model=<m>` finds them."""
    return {
        "app.kubernetes.io/name": "samd-model",
        "app.kubernetes.io/instance": model_label_value(ctx.name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        MODEL_LABEL: model_label_value(ctx.name),
    }


def owner_references(ctx: ModelContext) -> list[dict[str, Any]]:
    """The SecureModel as controlling owner: deleting it garbage-collects the object."""
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "SecureModel",
            "name": ctx.name,
            "uid": ctx.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def owned_metadata(ctx: ModelContext, name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """`metadata` of an owned object in the model's namespace."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": ctx.namespace,
        "labels": owned_labels(ctx),
        "ownerReferences": owner_references(ctx),
    }
    if annotations:
        metadata["annotations"] = annotations
    return metadata
