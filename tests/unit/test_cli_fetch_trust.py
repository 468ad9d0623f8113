"""`samd fetch` as the init container runs it: signers from the trust ConfigMap, a pinned digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from samd.cli import main
from tests.support.models import ModelArtifacts, make_model

pytestmark = pytest.mark.unit


def other_public_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def fetch(model: ModelArtifacts, trust: Path, output: Path, *extra: str) -> int:
    keyset = model.model.parent / "keyset.json"
    keyset.write_bytes(model.keyset)
    argv = [
        "fetch", str(model.artifact), "--signature", str(model.signature), "--key", f"local:{keyset}",
        "--trust-config", str(trust), "--output", str(output), *extra,
    ]  # fmt: skip
    return main(argv)


@pytest.fixture
def model(tmp_path: Path) -> ModelArtifacts:
    return make_model(tmp_path / "model")


def test_any_trusted_signer_that_verifies_is_used(model: ModelArtifacts, tmp_path: Path) -> None:
    trust = tmp_path / "signers.json"
    trust.write_text(
        json.dumps(
            [
                {"name": "old-ci", "publicKey": other_public_key()},
                {"name": "ci", "publicKey": model.public_key_pem},
            ]
        )
    )
    output = tmp_path / "out"
    assert fetch(model, trust, output, "--expect-digest", model.manifest_digest()) == 0
    assert (output / "model.onnx").read_bytes() == model.weights.read_bytes()
    assert (output / "samd-model.json").read_bytes() == b'{"name":"fraud-detection","version":"1.4.0"}\n'


def test_no_trusted_signer_means_nothing_is_written(
    model: ModelArtifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trust = tmp_path / "signers.json"
    trust.write_text(json.dumps([{"name": "someone-else", "publicKey": other_public_key()}]))
    output = tmp_path / "out"
    assert fetch(model, trust, output) == 3
    assert "no signer in" in capsys.readouterr().err
    assert not output.exists() or not any(output.iterdir())


def test_a_different_pinned_digest_is_refused(
    model: ModelArtifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trust = tmp_path / "signers.json"
    trust.write_text(json.dumps([{"name": "ci", "publicKey": model.public_key_pem}]))
    output = tmp_path / "out"
    assert fetch(model, trust, output, "--expect-digest", "sha256:" + "0" * 64) == 3
    assert "is expected" in capsys.readouterr().err
    assert not output.exists() or not any(output.iterdir())


def test_a_malformed_trust_file_is_a_usage_error(
    model: ModelArtifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trust = tmp_path / "signers.json"
    trust.write_text("{not json")
    assert fetch(model, trust, tmp_path / "out") == 2
    assert "cannot read the trusted signers" in capsys.readouterr().err
