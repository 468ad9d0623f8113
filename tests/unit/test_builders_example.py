"""The example the builder tests share: the seed article's fraud-detection model.

An ONNX model served with 2 replicas over mTLS to two client identities, reachable from the payments
namespace, deployable by ML Ops, readable by auditors, with one expired and one active grant at NOW.
The snapshot files in `snapshots/` are the reviewed manifests for exactly this input.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from samd.operator.builders import BuilderSettings, EgressPeer, ModelContext
from samd.spec import TrustedSigner, parse_secure_model

pytestmark = pytest.mark.unit

SNAPSHOTS = Path(__file__).parent / "snapshots"

NOW = datetime.datetime(2025, 2, 1, 12, 0, tzinfo=datetime.UTC)
NAMESPACE = "fraud"
MODEL = "fraud-detection"
UID = "5f1c2a34-8d2e-4c1b-9a77-0c3e5d9b1f20"
DIGEST = "sha256:" + "3b" * 32

SETTINGS = BuilderSettings(
    default_image="samd/inference-server:0.1.0",
    fetch_image="samd/samd:0.1.0",
    operator_namespace="samd-system",
    storage_egress=(EgressPeer("203.0.113.0/24", 443),),
    model_volume_size="2Gi",
)

SPEC: dict[str, Any] = {
    "format": "onnx",
    "version": "1.4.2",
    "owner": "ml-ops@example.com",
    "description": "Scores card transactions for fraud",
    "artifact": {
        "uri": "s3://models-prod/fraud-detection/1.4.2/model.onnx.samd",
        "region": "eu-west-1",
        "credentialsSecret": "fraud-detection-s3",
    },
    "signature": {"uri": "s3://models-prod/fraud-detection/1.4.2/model.sig"},
    "encryption": {"keyRef": {"provider": "local", "secretName": "fraud-detection-kek"}},
    "access": {
        "deployers": [{"kind": "Group", "name": "ml-ops"}],
        "reviewers": [{"kind": "Group", "name": "auditors"}],
        "grants": [
            {
                "subject": {"kind": "User", "name": "alice@example.com"},
                "role": "deployer",
                "expires": "2025-01-31T18:00:00Z",
            },
            {
                "subject": {"kind": "ServiceAccount", "name": "release-bot", "namespace": "ci"},
                "role": "reviewer",
                "expires": "2025-03-01T00:00:00Z",
            },
        ],
    },
    "serving": {
        "replicas": 2,
        "port": 8443,
        "resources": {"requests": {"cpu": "500m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}},
        "rateLimit": {"requestsPerSecond": 200, "burst": 400},
        "clients": [{"name": "payments-api"}, {"name": "risk-dashboard"}],
        "allowedClients": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}},
                "podSelector": {"matchLabels": {"app": "payments-api"}},
            }
        ],
    },
}

SIGNER = TrustedSigner(
    name="ml-platform-ci",
    public_key=(
        "-----BEGIN PUBLIC KEY-----\n"
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAES3Ba7Gblm/jawLosXsKwMgZD8QCL\n"
        "UBdY2kl4pctfDnC8NXw7xcFeqDfcIX5w4MNjenUUVr1ehJ9YkbEZ5dIUdQ==\n"
        "-----END PUBLIC KEY-----\n"
    ),
)


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in; a None value removes the key."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def fraud_detection(spec_changes: Mapping[str, Any] | None = None, **fields: Any) -> ModelContext:
    """The example model, with spec fields changed (None removes one) and context fields replaced."""
    spec = parse_secure_model(_merge(SPEC, spec_changes or {}))
    ctx = ModelContext(
        name=MODEL, namespace=NAMESPACE, uid=UID, spec=spec, manifest_digest=DIGEST, settings=SETTINGS
    )
    return dataclasses.replace(ctx, **fields)


def load_snapshot(name: str) -> list[dict[str, Any]]:
    """A reviewed snapshot: a YAML list of manifests."""
    with (SNAPSHOTS / name).open() as stream:
        manifests: list[dict[str, Any]] = yaml.safe_load(stream)
    return manifests


def test_the_example_is_the_scenario_the_snapshots_describe() -> None:
    ctx = fraud_detection()
    grants = ctx.spec.access.grants
    assert ctx.spec.serving.replicas == 2
    assert [client.name for client in ctx.spec.serving.clients] == ["payments-api", "risk-dashboard"]
    assert len(ctx.spec.serving.allowed_clients) == 1
    assert [grant.expires <= NOW for grant in grants] == [True, False]


def test_spec_changes_apply_to_a_copy() -> None:
    changed = fraud_detection({"serving": {"replicas": 1}, "encryption": None})
    assert changed.spec.serving.replicas == 1
    assert changed.spec.encryption is None
    assert changed.spec.serving.port == 8443
    assert fraud_detection().spec.serving.replicas == 2
