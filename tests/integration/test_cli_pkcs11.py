"""The CLI with keys held in a real PKCS#11 token (SoftHSM2): signing key and key-encryption key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.softhsm import SoftHSMToken
from tests.unit.test_cli import run, tree, write_model

pytestmark = pytest.mark.integration


@pytest.fixture
def hsm(softhsm: SoftHSMToken) -> SoftHSMToken:
    softhsm.generate_ec_key("signer", key_id="01")
    softhsm.generate_aes_key("kek", key_id="02")
    return softhsm


def test_sign_encrypt_and_fetch_with_keys_that_never_leave_the_token(
    capsys: pytest.CaptureFixture[str], hsm: SoftHSMToken, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    write_model(model)
    public_key = hsm.export_public_key("signer", tmp_path)
    artifact = tmp_path / "model.samd"
    kek = hsm.uri("kek")

    signed = run(capsys, "sign", model, "--pkcs11-uri", hsm.uri("signer"), "--json")
    encrypted = run(capsys, "encrypt", model, "--key", kek, "--output", artifact)
    inspected = run(capsys, "inspect", artifact, "--json")
    fetched = run(
        capsys,
        "fetch",
        artifact,
        "--signature",
        tmp_path / "model.sig",
        "--public-key",
        public_key,
        "--key",
        kek,
        "--output",
        tmp_path / "out",
    )

    assert signed.code == 0, signed.err
    assert encrypted.code == 0, encrypted.err
    assert fetched.code == 0, fetched.err
    assert tree(tmp_path / "out") == tree(model)
    assert inspected.json()["header"]["key"]["provider"] == "pkcs11"
    assert f"pin-value={hsm.pin}" not in signed.out + signed.err + fetched.out + fetched.err


def test_fetch_with_a_missing_token_key_is_a_key_error(
    capsys: pytest.CaptureFixture[str], hsm: SoftHSMToken, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    write_model(model)
    public_key = hsm.export_public_key("signer", tmp_path)
    artifact = tmp_path / "model.samd"
    assert run(capsys, "sign", model, "--pkcs11-uri", hsm.uri("signer")).code == 0
    assert run(capsys, "encrypt", model, "--key", hsm.uri("kek"), "--output", artifact).code == 0

    result = run(
        capsys,
        "fetch",
        artifact,
        "--signature",
        tmp_path / "model.sig",
        "--public-key",
        public_key,
        "--key",
        hsm.uri("no-such-key"),
        "--output",
        tmp_path / "out",
    )

    assert result.code == 5
    assert "no-such-key" in result.err
    assert f"pin-value={hsm.pin}" not in result.err
    assert not (tmp_path / "out").exists()
