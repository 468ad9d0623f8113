"""A reconcile run and a builder context for unit tests of the reconcile steps (no cluster)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from samd.operator.builders.context import BuilderSettings, ModelContext
from samd.operator.config import OperatorConfig
from samd.operator.steps.shared import ModelObject, Outcome, Run
from samd.spec import parse_secure_model

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
NAMESPACE, NAME, UID = "fraud", "fraud-detection", "uid-1"
KEY = (NAMESPACE, NAME)
DIGEST = "sha256:" + "ab" * 32


def spec(**overrides: Any) -> dict[str, Any]:
    """A valid SecureModel spec (file:// URIs, unencrypted unless `encryption` is given)."""
    return {
        "format": "onnx",
        "version": "1.0.0",
        "owner": "ml",
        "artifact": {"uri": "file:///models/fraud.samd"},
        "signature": {"uri": "file:///models/fraud.sig"},
        **overrides,
    }


def run_of(
    model_spec: Mapping[str, Any] | None = None,
    *,
    status: Mapping[str, Any] | None = None,
    now: datetime.datetime = NOW,
    uid: str = UID,
) -> Run:
    raw = dict(model_spec if model_spec is not None else spec())
    model = ModelObject(NAME, NAMESPACE, uid, 1, raw, dict(status or {}))
    return Run(model=model, spec=parse_secure_model(raw), now=now, outcome=Outcome(status={}))


def context_of(run: Run, *, verified: bool = True) -> ModelContext:
    return ModelContext(
        name=run.model.name,
        namespace=run.model.namespace,
        uid=run.model.uid,
        spec=run.spec,
        manifest_digest=DIGEST if verified else None,
        settings=BuilderSettings.of(OperatorConfig()),
    )


def condition(run: Run, kind: str) -> tuple[bool | None, str]:
    """A condition the run set, as (status, reason)."""
    found = next(c for c in run.conditions.values() if c.type.value == kind)
    return found.status, found.reason
