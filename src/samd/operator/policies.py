"""ModelTrustPolicy status: whether every signer in it is usable, for `kubectl get mtp`.

A policy whose public key or trusted root does not parse would silently trust nobody; saying so
in the policy's own status lets the cluster admin see it before any model is refused.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from samd.errors import SamdError
from samd.operator.conditions import Condition, ConditionType, merge_conditions
from samd.policy import verifier_for
from samd.spec import SpecError, parse_trust_policy


def policy_status(
    spec: dict[str, Any], status: dict[str, Any], generation: int, now: datetime.datetime
) -> dict[str, Any]:
    """The status of one policy: observedGeneration, signerCount and a Ready condition."""
    try:
        parsed = parse_trust_policy(spec)
    except SpecError as error:
        ready = Condition(ConditionType.READY, False, "InvalidSpec", str(error))
        count = len(spec.get("signers") or [])
    else:
        count = len(parsed.signers)
        problems = []
        for signer in parsed.signers:
            try:
                verifier_for(signer)
            except (SamdError, ValueError) as error:
                problems.append(f"signer {signer.name}: {error}")
        if problems:
            ready = Condition(
                ConditionType.READY, False, "SignerUnusable",
                "; ".join(problems) + "; signatures by these signers will be refused",
            )  # fmt: skip
        else:
            ready = Condition(
                ConditionType.READY, True, "SignersUsable", f"{count} signer(s) ready to verify models"
            )
    conditions = merge_conditions(status.get("conditions") or [], [ready], generation=generation, now=now)
    return {"observedGeneration": generation, "signerCount": count, "conditions": conditions}


@kopf.on.resume("samd.dev", "v1alpha1", "modeltrustpolicies", id="policy-status")
@kopf.on.create("samd.dev", "v1alpha1", "modeltrustpolicies", id="policy-status")
@kopf.on.update("samd.dev", "v1alpha1", "modeltrustpolicies", id="policy-status")
def write_policy_status(
    spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, **_: Any
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    patch.status.update(policy_status(dict(spec), dict(status), int(meta.get("generation", 1)), now))
