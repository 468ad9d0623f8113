"""kopf's last handled spec of a SecureModel stays in memory; a policy's stays in its annotation."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from samd.operator.handlers import ModelDiffBaseInMemory

pytestmark = pytest.mark.unit

KEY = "kopf.samd.dev/last-handled-configuration"


def body(kind: str, uid: str = "u-1", annotations: dict[str, str] | None = None) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "samd.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "m", "uid": uid, "annotations": annotations or {}},
        "spec": {"version": "1.0.0"},
    }
    return kopf.Body(raw)  # type: ignore[arg-type] # kopf types its raw body as a TypedDict


def test_a_models_essence_is_remembered_without_writing_to_the_object() -> None:
    storage = ModelDiffBaseInMemory(prefix="kopf.samd.dev", key="last-handled-configuration")
    model = body("SecureModel")
    essence = storage.build(body=model)
    patch = kopf.Patch()
    storage.store(body=model, patch=patch, essence=essence)
    assert not patch  # no write to the SecureModel
    assert storage.fetch(body=model) == essence
    assert storage.fetch(body=body("SecureModel", uid="u-2")) is None  # another model: seen as new


def test_a_forgotten_model_is_new_again() -> None:
    storage = ModelDiffBaseInMemory(prefix="kopf.samd.dev", key="last-handled-configuration")
    model = body("SecureModel")
    storage.store(body=model, patch=kopf.Patch(), essence=storage.build(body=model))
    storage.forget("u-1")
    assert storage.fetch(body=model) is None


def test_a_policys_essence_goes_to_its_annotation_and_survives_a_restart() -> None:
    storage = ModelDiffBaseInMemory(prefix="kopf.samd.dev", key="last-handled-configuration")
    policy = body("ModelTrustPolicy")
    patch = kopf.Patch()
    storage.store(body=policy, patch=patch, essence=storage.build(body=policy))
    written = patch["metadata"]["annotations"][KEY]
    restarted = ModelDiffBaseInMemory(prefix="kopf.samd.dev", key="last-handled-configuration")
    assert restarted.fetch(body=body("ModelTrustPolicy", annotations={KEY: written})) == {
        "spec": {"version": "1.0.0"}
    }
