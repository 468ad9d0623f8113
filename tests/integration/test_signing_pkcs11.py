"""Signing with an EC key held in a real PKCS#11 token (SoftHSM2), verifying with its exported public key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from samd.errors import KeyProviderError, VerificationError
from samd.signing import Signer, Verifier, key_id, sign_model, verify_model
from tests.support.signing import sha256_hex, write_model
from tests.support.softhsm import SoftHSMToken

pytestmark = pytest.mark.integration

FILES = {"model.onnx": b"hsm-signed weights" * 100, "config.json": b"{}"}
UPSTREAM_CLI = Path(sys.executable).parent / "model_signing"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model", FILES)


def test_hsm_signature_verifies_with_the_exported_public_key(
    softhsm: SoftHSMToken, model: Path, tmp_path: Path
) -> None:
    softhsm.generate_ec_key("model-signer")
    public_key = softhsm.export_public_key("model-signer", tmp_path)
    signature = tmp_path / "model.sig"

    sign_model(model, signature, Signer.from_pkcs11_uri(softhsm.uri("model-signer")))
    result = verify_model(model, signature, Verifier.from_public_key(public_key))

    assert result.method == "key"
    assert result.signer == key_id(public_key.read_bytes())
    assert result.digests() == {name: sha256_hex(content) for name, content in FILES.items()}


def test_hsm_signature_verifies_with_the_upstream_cli(
    softhsm: SoftHSMToken, model: Path, tmp_path: Path
) -> None:
    softhsm.generate_ec_key("model-signer")
    public_key = softhsm.export_public_key("model-signer", tmp_path)
    signature = tmp_path / "model.sig"
    sign_model(model, signature, Signer.from_pkcs11_uri(softhsm.uri("model-signer")))

    verified = subprocess.run(
        [
            str(UPSTREAM_CLI),
            "verify",
            "key",
            str(model),
            "--signature",
            str(signature),
            "--public_key",
            str(public_key),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr


def test_upstream_hsm_signature_verifies_here(softhsm: SoftHSMToken, model: Path, tmp_path: Path) -> None:
    softhsm.generate_ec_key("model-signer")
    public_key = softhsm.export_public_key("model-signer", tmp_path)
    signature = tmp_path / "upstream.sig"
    signed = subprocess.run(
        [
            str(UPSTREAM_CLI),
            "sign",
            "pkcs11-key",
            str(model),
            "--pkcs11_uri",
            softhsm.uri("model-signer"),
            "--signature",
            str(signature),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=softhsm.env(),
    )
    assert signed.returncode == 0, signed.stderr

    assert verify_model(model, signature, Verifier.from_public_key(public_key)).signer == key_id(
        public_key.read_bytes()
    )


def test_another_hsm_key_does_not_verify(softhsm: SoftHSMToken, model: Path, tmp_path: Path) -> None:
    softhsm.generate_ec_key("model-signer", key_id="01")
    softhsm.generate_ec_key("other-key", key_id="03")
    other_public = softhsm.export_public_key("other-key", tmp_path)
    signature = tmp_path / "model.sig"
    sign_model(model, signature, Signer.from_pkcs11_uri(softhsm.uri("model-signer")))

    with pytest.raises(VerificationError, match="made with another key"):
        verify_model(model, signature, Verifier.from_public_key(other_public))


def test_wrong_pin_is_a_key_provider_error_without_the_pin(
    softhsm: SoftHSMToken, model: Path, tmp_path: Path
) -> None:
    softhsm.generate_ec_key("model-signer")
    uri = softhsm.uri("model-signer").replace(f"pin-value={softhsm.pin}", "pin-value=424242")
    signature = tmp_path / "model.sig"

    with pytest.raises(KeyProviderError, match="PKCS#11 key could not be opened") as error:
        sign_model(model, signature, Signer.from_pkcs11_uri(uri))
    assert "424242" not in str(error.value)
    assert not signature.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "softhsm"]


def test_unknown_key_label_is_a_key_provider_error(
    softhsm: SoftHSMToken, model: Path, tmp_path: Path
) -> None:
    softhsm.generate_ec_key("model-signer")
    signature = tmp_path / "model.sig"

    with pytest.raises(KeyProviderError, match="Could not find any object with label no-such-key"):
        sign_model(model, signature, Signer.from_pkcs11_uri(softhsm.uri("no-such-key")))
    assert not signature.exists()
