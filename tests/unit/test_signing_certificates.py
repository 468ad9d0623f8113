"""Signing with an X.509 certificate chain and verifying against trusted roots."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from samd.errors import UsageError, VerificationError
from samd.signing import Signer, Verifier, inspect_signature, sign_model, verify_bundle, verify_model
from tests.support.signing import (
    CertificateChain,
    payload_of,
    rewrite_bundle,
    sha256_hex,
    write_certificate_chain,
    write_key_pair,
    write_model,
)

pytestmark = pytest.mark.unit

FILES = {"weights.safetensors": b"\x00" * 4096, "config.json": b"{}"}


@pytest.fixture
def chain(tmp_path: Path) -> CertificateChain:
    return write_certificate_chain(tmp_path / "pki", name="acme")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model", FILES)


@pytest.fixture
def signature(tmp_path: Path, model: Path, chain: CertificateChain) -> Path:
    out = tmp_path / "model.sig"
    signer = Signer.from_certificate(chain.signing_key, chain.signing_certificate, [chain.intermediate])
    sign_model(model, out, signer)
    return out


def test_certificate_signature_verifies_against_the_root(
    model: Path, signature: Path, chain: CertificateChain
) -> None:
    result = verify_model(model, signature, Verifier.from_certificate_roots([chain.root]))

    assert result.method == "certificate"
    assert result.signer == chain.subject
    assert result.issuer == chain.issuer
    assert result.digests() == {name: sha256_hex(content) for name, content in FILES.items()}


def test_root_given_as_bytes_or_a_single_path_works_too(signature: Path, chain: CertificateChain) -> None:
    from_bytes = verify_bundle(signature, Verifier.from_certificate_roots(chain.root.read_bytes()))
    from_str = verify_bundle(signature, Verifier.from_certificate_roots(str(chain.root)))

    assert from_bytes.signer == from_str.signer == chain.subject


def test_another_ca_is_not_trusted(signature: Path, tmp_path: Path) -> None:
    other = write_certificate_chain(tmp_path / "other", name="other")

    with pytest.raises(VerificationError, match="does not chain to a trusted root") as error:
        verify_bundle(signature, Verifier.from_certificate_roots([other.root]))
    assert error.value.hint is not None


def test_chain_without_its_intermediate_does_not_verify(
    model: Path, tmp_path: Path, chain: CertificateChain
) -> None:
    out = tmp_path / "no-intermediate.sig"
    sign_model(
        model, out, Signer.from_certificate(chain.signing_key, chain.signing_certificate, [chain.root])
    )

    with pytest.raises(VerificationError, match="does not chain to a trusted root"):
        verify_bundle(out, Verifier.from_certificate_roots([chain.root]))
    # Certificates given to the verifier are all trusted (as model_signing does): the intermediate helps.
    trusted = Verifier.from_certificate_roots([chain.root, chain.intermediate])
    assert verify_bundle(out, trusted).signer == chain.subject


def test_certificate_not_allowed_to_sign_is_refused(model: Path, tmp_path: Path) -> None:
    server_only = write_certificate_chain(tmp_path / "tls", name="tls", can_sign=False)
    out = tmp_path / "tls.sig"
    sign_model(
        model,
        out,
        Signer.from_certificate(
            server_only.signing_key, server_only.signing_certificate, [server_only.intermediate]
        ),
    )

    with pytest.raises(VerificationError, match="is not allowed to sign"):
        verify_bundle(out, Verifier.from_certificate_roots([server_only.root]))


def test_altered_statement_under_a_certificate_is_refused(signature: Path, chain: CertificateChain) -> None:
    statement = payload_of(signature.read_bytes())
    statement["predicate"]["resources"][0]["digest"] = sha256_hex(b"evil")

    def swap(document: dict[str, Any]) -> None:
        document["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    with pytest.raises(VerificationError, match="does not verify with the certificate"):
        verify_bundle(
            rewrite_bundle(signature.read_bytes(), swap), Verifier.from_certificate_roots([chain.root])
        )


def test_swapped_signing_certificate_is_refused(
    signature: Path, chain: CertificateChain, tmp_path: Path
) -> None:
    """Another certificate from the same CA cannot take over a signature it did not make."""
    sibling = write_certificate_chain(tmp_path / "sibling", name="sibling")
    der = x509.load_pem_x509_certificate(sibling.signing_certificate.read_bytes())
    intermediate = x509.load_pem_x509_certificate(sibling.intermediate.read_bytes())

    def swap(document: dict[str, Any]) -> None:
        document["verificationMaterial"]["x509CertificateChain"]["certificates"] = [
            {"rawBytes": base64.b64encode(der.public_bytes(Encoding.DER)).decode()},
            {"rawBytes": base64.b64encode(intermediate.public_bytes(Encoding.DER)).decode()},
        ]

    with pytest.raises(VerificationError, match="does not verify with the certificate"):
        verify_bundle(
            rewrite_bundle(signature.read_bytes(), swap), Verifier.from_certificate_roots([sibling.root])
        )


def test_overlong_chain_is_refused(signature: Path, chain: CertificateChain) -> None:
    def pad(document: dict[str, Any]) -> None:
        certificates = document["verificationMaterial"]["x509CertificateChain"]["certificates"]
        document["verificationMaterial"]["x509CertificateChain"]["certificates"] = certificates * 6

    with pytest.raises(VerificationError, match="chain has 12 certificates, more than the 10 allowed"):
        verify_bundle(
            rewrite_bundle(signature.read_bytes(), pad), Verifier.from_certificate_roots([chain.root])
        )


def test_certificate_signature_checked_with_a_public_key_says_what_to_use(
    signature: Path, tmp_path: Path
) -> None:
    keys = write_key_pair(tmp_path / "k")
    with pytest.raises(
        VerificationError, match=r"made with an X.509 certificate, but a public key was given"
    ):
        verify_bundle(signature, Verifier.from_public_key(keys.public_pem))


def test_signer_refuses_a_certificate_for_another_key(chain: CertificateChain, tmp_path: Path) -> None:
    keys = write_key_pair(tmp_path / "k")
    with pytest.raises(UsageError, match="is not for this private key"):
        Signer.from_certificate(keys.private_pem, chain.signing_certificate, [chain.intermediate])
    with pytest.raises(UsageError, match="needs the certificate chain"):
        Signer.from_certificate(chain.signing_key, chain.signing_certificate, [])


def test_roots_must_be_certificates(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(UsageError, match="holds no PEM certificate"):
        Verifier.from_certificate_roots([junk])
    with pytest.raises(UsageError, match="no root certificates given"):
        Verifier.from_certificate_roots([])


def test_inspect_shows_the_certificate(signature: Path, chain: CertificateChain) -> None:
    info = inspect_signature(signature)

    assert info["method"] == "certificate"
    assert info["chain_length"] == 2
    certificate = info["certificate"]
    assert isinstance(certificate, dict)
    assert certificate["subject"] == chain.subject
    assert certificate["issuer"] == chain.issuer
