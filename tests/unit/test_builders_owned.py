"""Everything a SecureModel owns, as the apply layer receives it."""

from __future__ import annotations

from typing import Any

import pytest

from samd.operator.builders import build_owned_objects
from tests.unit.test_builders_example import NOW, SIGNER, UID, fraud_detection, load_snapshot

pytestmark = pytest.mark.unit

EXPECTED_ORDER = [
    ("ServiceAccount", "fraud-detection-model"),
    ("Role", "samd-fraud-detection-deployer"),
    ("Role", "samd-fraud-detection-reviewer"),
    ("RoleBinding", "samd-fraud-detection-deployer"),
    ("RoleBinding", "samd-fraud-detection-reviewer"),
    ("RoleBinding", "samd-fraud-detection-grant-4522889e"),
    ("NetworkPolicy", "samd-fraud-detection-isolation"),
    ("ConfigMap", "fraud-detection-trust"),
    ("Service", "fraud-detection"),
    ("Deployment", "fraud-detection"),
    ("PodDisruptionBudget", "fraud-detection"),
]


def test_the_model_owns_these_objects_in_this_order() -> None:
    objects = build_owned_objects(fraud_detection(), NOW, [SIGNER])
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == EXPECTED_ORDER


def test_the_owned_objects_are_the_reviewed_snapshots() -> None:
    objects = build_owned_objects(fraud_detection(), NOW, [SIGNER])
    snapshots = [
        *load_snapshot("fraud-detection-rbac.yaml"),
        *load_snapshot("fraud-detection-network.yaml"),
        *load_snapshot("fraud-detection-serving.yaml"),
    ]

    def by_identity(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(m["kind"], m["metadata"]["name"]): m for m in manifests}

    assert len(objects) == len(snapshots)
    assert by_identity(objects) == by_identity(snapshots)


def test_every_owned_object_is_labelled_and_owned_by_the_model() -> None:
    for manifest in build_owned_objects(fraud_detection(), NOW, [SIGNER]):
        metadata = manifest["metadata"]
        assert metadata["namespace"] == "fraud"
        assert metadata["labels"] == {
            "app.kubernetes.io/name": "samd-model",
            "app.kubernetes.io/instance": "fraud-detection",
            "app.kubernetes.io/managed-by": "samd-operator",
            "samd.dev/model": "fraud-detection",
        }
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": "samd.dev/v1alpha1",
                "kind": "SecureModel",
                "name": "fraud-detection",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_an_unverified_model_is_isolated_but_not_served() -> None:
    objects = build_owned_objects(fraud_detection(manifest_digest=None), NOW, [SIGNER])
    kinds = [o["kind"] for o in objects]
    assert "Deployment" not in kinds
    assert "PodDisruptionBudget" not in kinds
    assert kinds.count("NetworkPolicy") == 1


def test_certificate_secrets_are_not_among_the_owned_objects() -> None:
    objects = build_owned_objects(fraud_detection(), NOW, [SIGNER])
    assert [o for o in objects if o["kind"] == "Secret"] == []


def test_after_the_last_grant_expires_its_binding_is_gone() -> None:
    later = fraud_detection().spec.access.grants[1].expires
    names = [o["metadata"]["name"] for o in build_owned_objects(fraud_detection(), later, [SIGNER])]
    assert not [name for name in names if "-grant-" in name]
