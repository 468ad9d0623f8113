"""Sigstore keyless bundles verified OFFLINE against a given trusted root.

There is no network here, so the tests stand up a miniature Sigstore (see
`FakeSigstore`): a Fulcio-like CA issuing short-lived certificates with an embedded SCT from a
CT log, and a Rekor log whose entry carries an inclusion proof, a signed checkpoint and a signed
inclusion promise. Its trusted root is all the verifier is given.
"""

from __future__ import annotations

import base64
import datetime
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from samd.errors import UsageError, VerificationError
from samd.signing import Verifier, inspect_signature, verify_bundle, verify_model
from tests.support.signing import (
    NOW,
    FakeSigstore,
    resources_for,
    rewrite_bundle,
    sha256_hex,
    statement_bytes,
    write_key_pair,
    write_model,
)

pytestmark = pytest.mark.unit

IDENTITY = "ml-ci@example.test"
ISSUER = "https://oidc.example.test"
FILES = {"model.onnx": b"graph" * 100, "labels.txt": b"cat\ndog\n"}


@pytest.fixture(scope="module")
def sigstore() -> FakeSigstore:
    return FakeSigstore()


@pytest.fixture
def bundle(sigstore: FakeSigstore) -> bytes:
    return sigstore.sign(
        statement_bytes(resources_for(FILES), model_name="model"), identity=IDENTITY, issuer=ISSUER
    )


@pytest.fixture
def verifier(sigstore: FakeSigstore) -> Verifier:
    return Verifier.from_sigstore(IDENTITY, ISSUER, sigstore.trusted_root())


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("verification tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.usefixtures("no_network")
def test_keyless_bundle_verifies_offline(bundle: bytes, verifier: Verifier) -> None:
    result = verify_bundle(bundle, verifier)

    assert result.method == "sigstore"
    assert result.signer == IDENTITY
    assert result.issuer == ISSUER
    assert result.digests() == {name: sha256_hex(content) for name, content in FILES.items()}


@pytest.mark.usefixtures("no_network")
def test_keyless_signature_verifies_a_model_on_disk(
    bundle: bytes, verifier: Verifier, tmp_path: Path, sigstore: FakeSigstore
) -> None:
    model = write_model(tmp_path / "model", FILES)
    signature = tmp_path / "model.sig"
    signature.write_bytes(bundle)

    assert verify_model(model, signature, verifier).signer == IDENTITY
    (model / "model.onnx").write_bytes(b"swapped")
    with pytest.raises(VerificationError, match="differ from what was signed"):
        verify_model(model, signature, verifier)


def test_uri_identities_are_matched(sigstore: FakeSigstore) -> None:
    workflow = "https://ci.example.test/org/repo/.ci/release.yml@refs/heads/main"
    signed = sigstore.sign(statement_bytes(resources_for(FILES)), identity=workflow, issuer=ISSUER)

    assert (
        verify_bundle(signed, Verifier.from_sigstore(workflow, ISSUER, sigstore.trusted_root())).signer
        == workflow
    )


def test_another_identity_is_refused(bundle: bytes, sigstore: FakeSigstore) -> None:
    verifier = Verifier.from_sigstore("someone-else@example.test", ISSUER, sigstore.trusted_root())
    with pytest.raises(VerificationError, match=r"Sigstore verification failed: .*SANs do not match"):
        verify_bundle(bundle, verifier)


def test_another_oidc_issuer_is_refused(bundle: bytes, sigstore: FakeSigstore) -> None:
    verifier = Verifier.from_sigstore(IDENTITY, "https://evil-issuer.example.test", sigstore.trusted_root())
    with pytest.raises(VerificationError, match=r"Sigstore verification failed: .*OIDCIssuer does not match"):
        verify_bundle(bundle, verifier)


def test_bundle_from_another_sigstore_instance_is_refused(bundle: bytes) -> None:
    stranger = FakeSigstore()
    with pytest.raises(VerificationError, match="Sigstore verification failed"):
        verify_bundle(bundle, Verifier.from_sigstore(IDENTITY, ISSUER, stranger.trusted_root()))


def test_altered_statement_is_refused(bundle: bytes, verifier: Verifier) -> None:
    tampered_statement = statement_bytes(
        resources_for({**FILES, "model.onnx": b"backdoor"}), model_name="model"
    )

    def swap(document: dict[str, Any]) -> None:
        document["dsseEnvelope"]["payload"] = base64.b64encode(tampered_statement).decode()

    with pytest.raises(VerificationError, match="Sigstore verification failed"):
        verify_bundle(rewrite_bundle(bundle, swap), verifier)


def test_tampered_log_entry_is_refused(bundle: bytes, verifier: Verifier) -> None:
    def shift_time(document: dict[str, Any]) -> None:
        entry = document["verificationMaterial"]["tlogEntries"][0]
        entry["integratedTime"] = str(int(entry["integratedTime"]) + 1)

    with pytest.raises(VerificationError, match="Sigstore verification failed"):
        verify_bundle(rewrite_bundle(bundle, shift_time), verifier)


def test_signature_logged_after_the_certificate_expired_is_refused(
    sigstore: FakeSigstore, verifier: Verifier
) -> None:
    """A properly logged entry, but an hour after the 10-minute certificate had expired."""
    late = sigstore.sign(
        statement_bytes(resources_for(FILES)),
        identity=IDENTITY,
        issuer=ISSUER,
        integrated_time=NOW - datetime.timedelta(minutes=5),
        certificate_issued_at=NOW - datetime.timedelta(hours=1, minutes=5),
    )

    with pytest.raises(VerificationError, match="Sigstore verification failed"):
        verify_bundle(late, verifier)


def test_hostile_manifest_inside_a_valid_keyless_bundle_is_refused(
    sigstore: FakeSigstore, verifier: Verifier
) -> None:
    hostile = statement_bytes([{"name": "/etc/shadow", "algorithm": "sha256", "digest": sha256_hex(b"")}])
    signed = sigstore.sign(hostile, identity=IDENTITY, issuer=ISSUER)

    with pytest.raises(VerificationError, match="absolute path"):
        verify_bundle(signed, verifier)


def test_keyless_bundle_checked_with_a_public_key_says_what_to_use(bundle: bytes, tmp_path: Path) -> None:
    keys = write_key_pair(tmp_path / "k")
    with pytest.raises(
        VerificationError, match="made with Sigstore keyless signing, but a public key was given"
    ):
        verify_bundle(bundle, Verifier.from_public_key(keys.public_pem))


def test_trusted_root_may_come_inside_a_client_trust_config(bundle: bytes, sigstore: FakeSigstore) -> None:
    config = {
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": json.loads(sigstore.trusted_root()),
        "signingConfig": {"mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json"},
    }
    verifier = Verifier.from_sigstore(IDENTITY, ISSUER, json.dumps(config).encode())

    assert verify_bundle(bundle, verifier).signer == IDENTITY


def test_unusable_trusted_roots_are_refused(sigstore: FakeSigstore, tmp_path: Path) -> None:
    without_ct = json.loads(sigstore.trusted_root())
    without_ct["ctlogs"] = []

    with pytest.raises(UsageError, match="not JSON"):
        Verifier.from_sigstore(IDENTITY, ISSUER, b"{")
    with pytest.raises(UsageError, match="not a Sigstore trusted root"):
        Verifier.from_sigstore(IDENTITY, ISSUER, b'{"mediaType": "something/else"}')
    with pytest.raises(UsageError, match="has no ctlogs"):
        Verifier.from_sigstore(IDENTITY, ISSUER, json.dumps(without_ct).encode())
    with pytest.raises(UsageError, match="needs both an identity and an OIDC issuer"):
        Verifier.from_sigstore("", ISSUER, sigstore.trusted_root())
    with pytest.raises(UsageError, match="cannot read the Sigstore trusted root"):
        Verifier.from_sigstore(IDENTITY, ISSUER, tmp_path / "absent.json")


def test_inspect_shows_identity_claims_unverified(bundle: bytes) -> None:
    info = inspect_signature(bundle)

    assert info["verified"] is False
    assert info["method"] == "sigstore"
    assert info["transparency_log_entries"] == 1
    certificate = info["certificate"]
    assert isinstance(certificate, dict)
    assert certificate["subject_alternative_names"] == [IDENTITY]
    assert certificate["oidc_issuer"] == ISSUER
