"""The label that marks the namespaces SAMD protects, kept by the operator.

A namespace is protected while it holds SecureModels or a ModelTrustPolicy (usable or not) selects
it. The operator sets ``samd.dev/protected=true`` on it (before it creates anything for a model
there) and removes the label once neither holds. The webhook configuration sends pods and workload
templates only from namespaces with the label, so an outage of the webhook refuses pods there and
nowhere else; the webhook refuses removing the label from a namespace that is still protected.

`desired_label` is pure; `sync` applies it with one merge patch, and only when the label differs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from samd.operator.kube import Kube
from samd.policy import PROTECTED_NAMESPACE_LABEL, PROTECTED_NAMESPACE_VALUE, needs_protection

log = logging.getLogger(__name__)


def desired_label(
    labels: Mapping[str, str], policy_selectors: Iterable[Mapping[str, Any]], *, holds_models: bool
) -> str | None:
    """The value the protected label should have (None: the label should be absent)."""
    if needs_protection(labels, policy_selectors, holds_models=holds_models):
        return PROTECTED_NAMESPACE_VALUE
    return None


def label_patch(labels: Mapping[str, str], desired: str | None) -> dict[str, Any] | None:
    """The merge patch that gives the namespace its desired label, or None when it already has it."""
    if labels.get(PROTECTED_NAMESPACE_LABEL) == desired:
        return None
    return {"metadata": {"labels": {PROTECTED_NAMESPACE_LABEL: desired}}}


async def sync(kube: Kube, namespace: str, labels: Mapping[str, str], desired: str | None) -> None:
    """Set or remove the label. A refusal (the webhook's view of the namespace differs for a moment)
    is raised as kopf's temporary error by the API wrapper, so the caller's handler retries."""
    patch = label_patch(labels, desired)
    if patch is None:
        return
    if await kube.patch_merge("v1", "Namespace", namespace, None, patch):
        log.info(
            "namespace %s %s",
            namespace,
            "is now protected" if desired else "is no longer protected",
            extra={"namespace": namespace, "label": PROTECTED_NAMESPACE_LABEL},
        )


async def protect(kube: Kube, namespace: str, labels: Mapping[str, str]) -> None:
    """Before anything is created for a model: its namespace carries the label (added, never removed)."""
    await sync(kube, namespace, labels, PROTECTED_NAMESPACE_VALUE)
