"""Interoperability with the upstream `model_signing` CLI and library, in both directions.

Signatures made by `model_signing sign ...` must verify with `verify_model`, and signatures made
by `sign_model` must verify with `model_signing verify ...`. Our verifier does not import
model_signing (memory budget), so a differential test also checks that it accepts and refuses
exactly the bundles model_signing's own verifier accepts and refuses.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from samd.errors import VerificationError
from samd.signing import Signer, Verifier, sign_model, verify_model
from tests.support.signing import (
    FakeSigstore,
    KeyPair,
    payload_of,
    resources_for,
    rewrite_bundle,
    sha256_hex,
    statement_bytes,
    write_certificate_chain,
    write_key_pair,
    write_model,
)

pytestmark = pytest.mark.unit

UPSTREAM_CLI = Path(sys.executable).parent / "model_signing"
FILES = {"model.safetensors": b"\x01\x02" * 5000, "config.json": b'{"arch": "mlp"}', "extra/notes.bin": b"n"}


def upstream(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UPSTREAM_CLI), *map(str, args)], capture_output=True, text=True, check=False)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return write_key_pair(tmp_path / "keys")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model", FILES)


def test_upstream_cli_is_installed() -> None:
    completed = upstream("--version")
    assert completed.returncode == 0, completed.stderr
    assert "1.1.1" in completed.stdout


# --- upstream signs, we verify --------------------------------------------------------------------


def test_upstream_key_signature_verifies_here(model: Path, keys: KeyPair, tmp_path: Path) -> None:
    signature = tmp_path / "upstream.sig"
    signed = upstream("sign", "key", model, "--private_key", keys.private_pem, "--signature", signature)
    assert signed.returncode == 0, signed.stderr

    result = verify_model(model, signature, Verifier.from_public_key(keys.public_pem))

    assert result.method == "key"
    assert result.digests() == {name: sha256_hex(content) for name, content in FILES.items()}


def test_upstream_single_file_signature_verifies_here(tmp_path: Path, keys: KeyPair) -> None:
    weights = tmp_path / "weights.onnx"
    weights.write_bytes(b"one file")
    signature = tmp_path / "weights.sig"
    signed = upstream("sign", "key", weights, "--private_key", keys.private_pem, "--signature", signature)
    assert signed.returncode == 0, signed.stderr

    result = verify_model(weights, signature, Verifier.from_public_key(keys.public_pem))

    assert [(f.name, f.digest) for f in result.files] == [(".", sha256_hex(b"one file"))]
    assert result.model_name == "weights.onnx"


def test_upstream_signature_kept_inside_the_model_verifies_here(model: Path, keys: KeyPair) -> None:
    signature = model / "model.sig"
    signed = upstream("sign", "key", model, "--private_key", keys.private_pem, "--signature", signature)
    assert signed.returncode == 0, signed.stderr

    result = verify_model(model, signature, Verifier.from_public_key(keys.public_pem))

    assert "model.sig" in result.ignored_paths
    assert "model.sig" not in result.digests()


def test_upstream_signature_of_a_modified_model_is_refused_here(
    model: Path, keys: KeyPair, tmp_path: Path
) -> None:
    signature = tmp_path / "upstream.sig"
    assert (
        upstream("sign", "key", model, "--private_key", keys.private_pem, "--signature", signature).returncode
        == 0
    )
    (model / "config.json").write_text('{"arch": "evil"}')

    with pytest.raises(VerificationError, match=r"differ from what was signed: 'config.json'"):
        verify_model(model, signature, Verifier.from_public_key(keys.public_pem))


def test_upstream_certificate_signature_verifies_here(model: Path, tmp_path: Path) -> None:
    chain = write_certificate_chain(tmp_path / "pki")
    signature = tmp_path / "upstream-cert.sig"
    signed = upstream(
        "sign",
        "certificate",
        model,
        "--private_key",
        chain.signing_key,
        "--signing_certificate",
        chain.signing_certificate,
        "--certificate_chain",
        chain.intermediate,
        "--signature",
        signature,
    )
    assert signed.returncode == 0, signed.stderr

    result = verify_model(model, signature, Verifier.from_certificate_roots([chain.root]))

    assert result.method == "certificate"
    assert result.signer == chain.subject


# --- we sign, upstream verifies ----------------------------------------------------------------------


def test_our_key_signature_verifies_upstream(model: Path, keys: KeyPair, tmp_path: Path) -> None:
    signature = tmp_path / "ours.sig"
    sign_model(model, signature, Signer.from_private_key(keys.private_pem))

    verified = upstream("verify", "key", model, "--signature", signature, "--public_key", keys.public_pem)
    assert verified.returncode == 0, verified.stderr
    assert "Verification succeeded" in verified.stdout

    (model / "extra" / "notes.bin").write_bytes(b"changed")
    refused = upstream("verify", "key", model, "--signature", signature, "--public_key", keys.public_pem)
    assert refused.returncode != 0
    assert "Hash mismatch for 'extra/notes.bin'" in refused.stderr


def test_our_single_file_signature_verifies_upstream(tmp_path: Path, keys: KeyPair) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"weights")
    signature = tmp_path / "weights.sig"
    sign_model(weights, signature, Signer.from_private_key(keys.private_pem))

    verified = upstream("verify", "key", weights, "--signature", signature, "--public_key", keys.public_pem)
    assert verified.returncode == 0, verified.stderr


def test_our_certificate_signature_verifies_upstream(model: Path, tmp_path: Path) -> None:
    chain = write_certificate_chain(tmp_path / "pki")
    signature = tmp_path / "ours-cert.sig"
    sign_model(
        model,
        signature,
        Signer.from_certificate(chain.signing_key, chain.signing_certificate, [chain.intermediate]),
    )

    verified = upstream(
        "verify", "certificate", model, "--signature", signature, "--certificate_chain", chain.root
    )
    assert verified.returncode == 0, verified.stderr

    stranger = write_certificate_chain(tmp_path / "other", name="other")
    refused = upstream(
        "verify", "certificate", model, "--signature", signature, "--certificate_chain", stranger.root
    )
    assert refused.returncode != 0


def test_upstream_verifies_our_offline_sigstore_bundles(model: Path, tmp_path: Path) -> None:
    """The miniature Sigstore used for keyless tests is accepted by model_signing's verifier too."""
    sigstore = FakeSigstore()
    signature = tmp_path / "keyless.sig"
    signature.write_bytes(
        sigstore.sign(
            statement_bytes(resources_for(FILES)), identity="ci@example.test", issuer="https://id.test"
        )
    )
    trust_config = tmp_path / "trust.json"
    trust_config.write_text(
        json.dumps(
            {
                "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
                "trustedRoot": json.loads(sigstore.trusted_root()),
                "signingConfig": {"mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json"},
            }
        )
    )
    verifier = Verifier.from_sigstore("ci@example.test", "https://id.test", trust_config)
    assert verify_model(model, signature, verifier).signer == "ci@example.test"

    verified = upstream(
        "verify",
        "sigstore",
        model,
        "--signature",
        signature,
        "--identity",
        "ci@example.test",
        "--identity_provider",
        "https://id.test",
        "--trust_config",
        trust_config,
    )
    assert verified.returncode == 0, verified.stderr


# --- differential: our verifier and model_signing's agree ---------------------------------------------


def _flip_signature(document: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(document["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 0x01
    document["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()


def _change_a_digest(document: dict[str, Any]) -> None:
    statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "ab" * 32
    document["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


def _truncate_payload(document: dict[str, Any]) -> None:
    payload = base64.b64decode(document["dsseEnvelope"]["payload"])
    document["dsseEnvelope"]["payload"] = base64.b64encode(payload[:-10]).decode()


def _unchanged(document: dict[str, Any]) -> None:
    del document  # the bundle as signed


CASES: dict[str, tuple[Callable[[dict[str, Any]], None], bool]] = {
    "as signed": (_unchanged, True),
    "flipped signature byte": (_flip_signature, False),
    "changed digest, not re-signed": (_change_a_digest, False),
    "truncated statement": (_truncate_payload, False),
}


def _model_signing_accepts(model: Path, signature: Path, public_key: Path) -> bool:
    import model_signing.verifying  # noqa: PLC0415 -- the reference implementation, only in this test

    try:
        config = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_verifier(public_key=public_key).verify(model, signature)
    except Exception:  # model_signing raises ValueError, InvalidSignature, KeyError...
        return False
    return True


def _samd_accepts(model: Path, signature: Path, public_key: Path) -> bool:
    try:
        verify_model(model, signature, Verifier.from_public_key(public_key))
    except VerificationError:
        return False
    return True


@pytest.mark.parametrize("case", list(CASES))
def test_our_verifier_agrees_with_model_signing(
    model: Path, keys: KeyPair, tmp_path: Path, case: str
) -> None:
    change, expected = CASES[case]
    signed = tmp_path / "signed.sig"
    sign_model(model, signed, Signer.from_private_key(keys.private_pem))
    bundle = tmp_path / "case.sig"
    bundle.write_bytes(rewrite_bundle(signed.read_bytes(), change))

    assert _model_signing_accepts(model, bundle, keys.public_pem) is expected
    assert _samd_accepts(model, bundle, keys.public_pem) is expected


def test_both_refuse_another_key(model: Path, keys: KeyPair, tmp_path: Path) -> None:
    signed = tmp_path / "signed.sig"
    sign_model(model, signed, Signer.from_private_key(keys.private_pem))
    stranger = write_key_pair(tmp_path / "stranger")

    assert not _model_signing_accepts(model, signed, stranger.public_pem)
    assert not _samd_accepts(model, signed, stranger.public_pem)


def test_statement_we_sign_is_the_one_model_signing_writes(
    model: Path, keys: KeyPair, tmp_path: Path
) -> None:
    ours = tmp_path / "ours.sig"
    theirs = tmp_path / "theirs.sig"
    sign_model(model, ours, Signer.from_private_key(keys.private_pem))
    assert (
        upstream("sign", "key", model, "--private_key", keys.private_pem, "--signature", theirs).returncode
        == 0
    )

    def canonical(signature: Path) -> dict[str, Any]:
        statement = payload_of(signature.read_bytes())
        statement["predicate"]["serialization"]["ignore_paths"] = sorted(
            statement["predicate"]["serialization"].get("ignore_paths", [])
        )
        return statement

    assert canonical(ours) == canonical(theirs)
