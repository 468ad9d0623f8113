"""Pure builders of the objects a SecureModel owns (docs/architecture.md, style rule 2).

Each builder takes a `ModelContext` (and, where time matters, `now`) and returns plain JSON-ready
manifests; nothing here reads the clock, the environment or the API server. The apply layer applies
what `build_owned_objects` returns and prunes owned objects that are no longer in it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from samd.operator.builders.context import BuilderSettings, EgressPeer, ModelContext
from samd.operator.builders.metadata import Manifest
from samd.operator.builders.network import build_network_policy
from samd.operator.builders.rbac import build_role_bindings, build_roles, next_grant_expiry
from samd.operator.builders.serving import (
    build_deployment,
    build_pdb,
    build_service,
    build_service_account,
    build_trust_config_map,
    fetch_command,
)
from samd.spec import TrustedSigner

__all__ = [
    "BuilderSettings",
    "EgressPeer",
    "Manifest",
    "ModelContext",
    "build_owned_objects",
    "fetch_command",
    "next_grant_expiry",
]


def build_owned_objects(
    ctx: ModelContext, now: datetime.datetime, signers: Iterable[TrustedSigner]
) -> list[Manifest]:
    """Every object the model should own right now, except the certificate Secrets (they need the CA).

    In the order to apply them: identities and permissions first, then the NetworkPolicy, so that
    the pods are isolated before one can start; the Deployment last but its budget.
    """
    optional = [build_service(ctx), build_deployment(ctx), build_pdb(ctx)]
    return [
        build_service_account(ctx),
        *build_roles(ctx),
        *build_role_bindings(ctx, now),
        build_network_policy(ctx),
        build_trust_config_map(ctx, signers),
        *(manifest for manifest in optional if manifest is not None),
    ]
