"""Roles and RoleBindings: who may do what with one SecureModel and its key material.

- deployers may read, update and patch the SecureModel, never delete it;
- reviewers may only read it (and its status);
- the model's own workload ServiceAccount is bound to nothing (the kubelet mounts its Secrets);
- a time-bound grant is a RoleBinding that exists only until its expiry.
"""

from __future__ import annotations

import datetime
from typing import Any

from samd.operator.builders.context import ModelContext
from samd.operator.builders.metadata import EXPIRES_ANNOTATION, Manifest, owned_metadata
from samd.operator.builders.names import (
    ModelRole,
    grant_binding_name,
    role_name,
)
from samd.spec import GROUP, Grant, SecureModelSpec, Subject

RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
RBAC_GROUP = "rbac.authorization.k8s.io"

DEPLOYER_VERBS = ("get", "list", "watch", "update", "patch")
READ_VERBS = ("get", "list", "watch")


def _require_aware(now: datetime.datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone (grant expiries are compared with it)")


def _role(ctx: ModelContext, role: ModelRole, rules: list[dict[str, Any]]) -> Manifest:
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": owned_metadata(ctx, role_name(ctx.name, role)),
        "rules": rules,
    }


def _model_rule(ctx: ModelContext, verbs: tuple[str, ...]) -> dict[str, Any]:
    return {
        "apiGroups": [GROUP],
        "resources": ["securemodels"],
        "resourceNames": [ctx.name],
        "verbs": list(verbs),
    }


def _status_rule(ctx: ModelContext) -> dict[str, Any]:
    return {
        "apiGroups": [GROUP],
        "resources": ["securemodels/status"],
        "resourceNames": [ctx.name],
        "verbs": ["get"],
    }


def build_roles(ctx: ModelContext) -> list[Manifest]:
    """The deployer and reviewer Roles of the model.

    There is no Role for the model's own ServiceAccount: the kubelet mounts the key and TLS Secrets
    into the model's pods, so that identity needs no API access, and a pod that managed to run as it
    could read nothing through it.
    """
    deployer = _role(ctx, "deployer", [_model_rule(ctx, DEPLOYER_VERBS), _status_rule(ctx)])
    reviewer = _role(ctx, "reviewer", [_model_rule(ctx, READ_VERBS), _status_rule(ctx)])
    return [deployer, reviewer]


def rbac_subject(subject: Subject) -> dict[str, str]:
    """A SecureModel access subject as an RBAC subject."""
    if subject.kind == "ServiceAccount":
        # A ServiceAccount subject is in the core group, which RBAC writes as no apiGroup at all.
        return {"kind": "ServiceAccount", "name": subject.name, "namespace": subject.namespace or ""}
    return {"apiGroup": RBAC_GROUP, "kind": subject.kind, "name": subject.name}


def _binding(
    ctx: ModelContext,
    name: str,
    role: ModelRole,
    subjects: list[dict[str, str]],
    annotations: dict[str, str] | None = None,
) -> Manifest:
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": owned_metadata(ctx, name, annotations),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": role_name(ctx.name, role)},
        "subjects": subjects,
    }


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def active_grants(spec: SecureModelSpec, now: datetime.datetime) -> list[Grant]:
    """The grants not yet expired at `now` (a grant expires at `expires`, inclusive)."""
    _require_aware(now)
    return [grant for grant in spec.access.grants if now < grant.expires]


def next_grant_expiry(spec: SecureModelSpec, now: datetime.datetime) -> datetime.datetime | None:
    """When the next active grant expires (the handler reconciles again then), or None if none is active."""
    return min((grant.expires for grant in active_grants(spec, now)), default=None)


def build_role_bindings(ctx: ModelContext, now: datetime.datetime) -> list[Manifest]:
    """Bindings of the access subjects and of the active grants.

    A binding with no subject is not built, so removing the last deployer removes the binding.
    """
    bindings = []
    by_role: tuple[tuple[ModelRole, tuple[Subject, ...]], ...] = (
        ("deployer", ctx.spec.access.deployers),
        ("reviewer", ctx.spec.access.reviewers),
    )
    for role, subjects in by_role:
        if subjects:
            name = role_name(ctx.name, role)
            bindings.append(_binding(ctx, name, role, [rbac_subject(s) for s in subjects]))
    # Two grants of the same role to the same subject share one binding, kept until the later expiry.
    latest: dict[str, Grant] = {}
    for grant in active_grants(ctx.spec, now):
        name = grant_binding_name(ctx.name, grant)
        if name not in latest or latest[name].expires < grant.expires:
            latest[name] = grant
    for name in sorted(latest):
        grant = latest[name]
        annotations = {EXPIRES_ANNOTATION: _rfc3339(grant.expires)}
        bindings.append(_binding(ctx, name, grant.role, [rbac_subject(grant.subject)], annotations))
    return bindings
