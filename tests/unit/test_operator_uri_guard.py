"""The reconciler refuses what a SecureModel must not point it at, and publishes nothing it refused.

A whole reconcile against an in-memory API (the real-API-server version is
tests/integration/test_operator_uri_guard.py).
"""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from samd.operator.config import OperatorConfig
from samd.operator.reconcile import Reconciler
from samd.operator.steps.shared import ModelObject, Outcome
from samd.policy import TrustPolicy
from samd.spec import parse_trust_policy
from tests.support.memory_kube import MemoryKube
from tests.support.models import MODEL_VERSION, ModelArtifacts, make_model

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
NAMESPACE = "fraud"


def everything(kube: MemoryKube) -> str:
    """Every object and status write the reconcile left, as one text to search."""
    return json.dumps([list(kube.objects.values()), kube.statuses], default=str)


@pytest.fixture
def model(tmp_path: Path) -> ModelArtifacts:
    return make_model(tmp_path / "models")


def policy(artifacts: ModelArtifacts, **extra: Any) -> TrustPolicy:
    spec = {"signers": [{"name": "ci", "publicKey": artifacts.public_key_pem}], **extra}
    return TrustPolicy(name="team", generation=1, spec=parse_trust_policy(spec))


def secure_model(artifacts: ModelArtifacts, **overrides: Any) -> ModelObject:
    spec: dict[str, Any] = {
        "format": "onnx",
        "version": MODEL_VERSION,  # the name and version the model is signed as
        "owner": "ml",
        "artifact": {"uri": artifacts.artifact_uri},
        "signature": {"uri": artifacts.signature_uri},
        "encryption": {"keyRef": {"provider": "local", "secretName": "key"}},
    }
    spec.update(overrides)
    return ModelObject("fraud-detection", NAMESPACE, "uid-1", 1, spec, {})


async def reconcile(
    config: OperatorConfig, body: ModelObject, policies: list[TrustPolicy], kube: MemoryKube
) -> Outcome:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "key", "namespace": NAMESPACE},
        "data": {"keyset.json": base64.b64encode(json.dumps({}).encode()).decode()},
    }
    kube.objects.setdefault(("Secret", NAMESPACE, "key"), secret)
    reconciler = Reconciler(kube=kube, config=config)
    return await reconciler.reconcile(body, policies=policies, namespace_labels={}, now=NOW)


def conditions(outcome: Outcome) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in outcome.status["conditions"]}


@pytest.fixture
def own_file(tmp_path: Path) -> tuple[Path, str]:
    marker = f"MARKER-{uuid.uuid4().hex}"
    path = tmp_path / "operator-home" / "kubeconfig"
    path.parent.mkdir()
    path.write_text(f"users:\n- name: admin\n  user: {{token: {marker}}}\n")
    return path, marker


@pytest.mark.parametrize(
    ("settings", "allow_in_policy"),
    [
        ({}, True),  # the production default: never, whatever a policy says
        ({"SAMD_ALLOW_LOCAL_FILES": "true"}, False),  # the development switch alone is not enough
        (
            {"SAMD_ALLOW_LOCAL_FILES": "true", "SAMD_LOCAL_FILE_ROOTS": "/nonexistent"},
            True,
        ),  # not under the roots
    ],
)
async def test_a_signature_naming_the_operators_own_file_is_refused_and_not_published(
    model: ModelArtifacts, own_file: tuple[Path, str], settings: dict[str, str], allow_in_policy: bool
) -> None:
    path, marker = own_file
    kube = MemoryKube()
    body = secure_model(model, signature={"uri": f"file://{path}"})
    outcome = await reconcile(
        OperatorConfig.from_env(settings), body, [policy(model, allowLocalFiles=allow_in_policy)], kube
    )
    verified = conditions(outcome)["Verified"]
    assert verified["status"] == "False"
    assert verified["reason"] == "URIRefused"
    assert verified["message"].startswith(f"spec.signature.uri: refusing to read the local path {path}")
    assert conditions(outcome)["Ready"]["status"] == "False"
    assert not [key for key in kube.objects if key[0] == "Deployment" or "signature" in key[2]]
    assert marker not in everything(kube)
    assert any(event.reason == "URIRefused" and event.warning for event in outcome.events)


async def test_local_files_are_read_with_the_switch_a_policy_allowance_and_under_the_roots(
    model: ModelArtifacts,
) -> None:
    settings = {"SAMD_ALLOW_LOCAL_FILES": "true", "SAMD_LOCAL_FILE_ROOTS": str(model.signature.parent)}
    kube = MemoryKube()
    outcome = await reconcile(
        OperatorConfig.from_env(settings), secure_model(model), [policy(model, allowLocalFiles=True)], kube
    )
    assert conditions(outcome)["Verified"]["status"] == "True"
    assert [key for key in kube.objects if key[0] == "ConfigMap" and "signature" in key[2]]


async def test_an_internal_endpoint_is_refused_by_every_check_that_would_use_it(
    model: ModelArtifacts,
) -> None:
    kube = MemoryKube()
    body = secure_model(
        model,
        artifact={"uri": "s3://models/m.samd", "endpoint": "http://169.254.169.254"},
        signature={"uri": "s3://models/m.sig"},
    )
    outcome = await reconcile(OperatorConfig(), body, [policy(model)], kube)
    found = conditions(outcome)
    for kind in ("Verified", "Encrypted", "StorageSecure"):
        assert found[kind]["status"] == "False", found[kind]
        assert found[kind]["reason"] == "URIRefused"
        assert "spec.artifact.endpoint" in found[kind]["message"]
        assert "link-local" in found[kind]["message"]
    assert outcome.error is None  # permanent until the spec or a policy changes: no retry storm
