"""ModelTrustPolicy status tells the admin whether its signers can verify anything."""

from __future__ import annotations

import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from samd.operator.policies import policy_status

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def test_usable_signers_make_the_policy_ready() -> None:
    spec = {
        "signers": [{"name": "ci", "publicKey": public_pem()}, {"name": "release", "publicKey": public_pem()}]
    }
    status = policy_status(spec, {}, 3, NOW)
    assert status["signerCount"] == 2
    assert status["observedGeneration"] == 3
    (ready,) = status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "SignersUsable")


def test_a_public_key_that_does_not_parse_is_reported_by_name() -> None:
    broken = "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"
    spec = {"signers": [{"name": "ci", "publicKey": public_pem()}, {"name": "typo", "publicKey": broken}]}
    (ready,) = policy_status(spec, {}, 1, NOW)["conditions"]
    assert ready["status"] == "False"
    assert ready["reason"] == "SignerUnusable"
    assert "signer typo" in ready["message"]
    assert "signer ci" not in ready["message"]


def test_an_unchanged_condition_keeps_its_transition_time() -> None:
    spec = {"signers": [{"name": "ci", "publicKey": public_pem()}]}
    first = policy_status(spec, {}, 1, NOW)
    later = policy_status(spec, first, 2, NOW + datetime.timedelta(hours=1))
    assert later["conditions"][0]["lastTransitionTime"] == first["conditions"][0]["lastTransitionTime"]
    assert later["conditions"][0]["observedGeneration"] == 2
