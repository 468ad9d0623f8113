"""Reading and cryptographically checking an OMS signature (a Sigstore bundle around a DSSE envelope).

Key and certificate bundles are checked here with `cryptography` and pyOpenSSL, exactly as
model_signing 1.1.1 checks them (`_signing/sign_ec_key.py`, `_signing/sign_certificate.py`,
`_signing/sign_sigstore_pb.py`), without importing model_signing: its import pulls in sigstore
and costs ~75 MB, above the init container's 64 MiB budget. The interop and differential tests
(`tests/unit/test_signing_interop.py`) hold this equivalence to the library. Sigstore keyless
bundles go to sigstore-python's public verifier (`samd.signing._sigstore`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samd.errors import UsageError, VerificationError
from samd.signing.model import (
    MAX_BUNDLE_BYTES,
    MAX_CERTIFICATE_CHAIN,
    VerificationMethod,
    VerificationResult,
    Verifier,
)
from samd.signing.statement import IN_TOTO_PAYLOAD_TYPE, Statement, parse_statement
from samd.storage.stream import read_at_most

logger = logging.getLogger(__name__)

# The media type model_signing writes for key and certificate bundles (`sign_sigstore_pb.py`).
OMS_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"

_METHOD_WORDS = {
    "key": "a private key (or a PKCS#11 key)",
    "certificate": "an X.509 certificate",
    "sigstore": "Sigstore keyless signing",
}
_VERIFIER_WORDS = {
    "key": "a public key",
    "certificate": "certificate roots",
    "sigstore": "a Sigstore identity",
}


@dataclass(frozen=True)
class ParsedBundle:
    """The parts of a bundle, NOT yet verified."""

    raw: bytes
    media_type: str
    method: VerificationMethod
    payload_type: str
    payload: bytes
    signature: bytes
    key_hint: str | None
    chain_der: tuple[bytes, ...]  # certificate bundles: signing certificate first; Sigstore: the leaf
    tlog_entries: int


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise VerificationError(f"the signature file is malformed: {what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        # Protobuf's JSON mapping also accepts URL-safe base64.
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as error:
        raise VerificationError(f"the signature file is malformed: {what} is not base64") from error


def read_signature_bytes(signature: bytes | Path) -> bytes:
    """The bundle's bytes, refusing anything over MAX_BUNDLE_BYTES before reading it."""
    if isinstance(signature, bytes):
        data = signature
    else:
        path = Path(signature)
        try:
            size = os.stat(path).st_size
            if size > MAX_BUNDLE_BYTES:
                raise VerificationError(
                    f"the signature file {path} is {size} bytes, larger than the {MAX_BUNDLE_BYTES} allowed"
                )
            with path.open("rb") as handle:
                data = read_at_most(handle, MAX_BUNDLE_BYTES)
        except OSError as error:
            raise UsageError(f"cannot read the signature file {path}: {error.strerror or error}") from error
    if len(data) > MAX_BUNDLE_BYTES:
        raise VerificationError(
            f"the signature is {len(data)} bytes, larger than the {MAX_BUNDLE_BYTES} allowed"
        )
    return data


def parse_bundle(signature: bytes | Path) -> ParsedBundle:
    raw = read_signature_bytes(signature)
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise VerificationError("the signature file is not JSON (expected a Sigstore bundle)") from error
    if not isinstance(document, dict):
        raise VerificationError("the signature file is not a Sigstore bundle (not a JSON object)")
    media_type = document.get("mediaType")
    if not isinstance(media_type, str) or "sigstore.bundle" not in media_type:
        raise VerificationError(f"the signature file is not a Sigstore bundle (mediaType {media_type!r:.80})")
    material = document.get("verificationMaterial")
    if not isinstance(material, dict):
        raise VerificationError("the signature file is malformed: verificationMaterial is missing")
    envelope = document.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise VerificationError(
            "the signature file holds no DSSE envelope: it is not an OpenSSF model signature"
        )
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or len(signatures) != 1 or not isinstance(signatures[0], dict):
        count = len(signatures) if isinstance(signatures, list) else 0
        raise VerificationError(
            f"the signature's DSSE envelope must hold exactly one signature, it holds {count}"
        )
    payload_type = envelope.get("payloadType")
    if not isinstance(payload_type, str):
        raise VerificationError("the signature file is malformed: dsseEnvelope.payloadType is missing")

    tlog_entries = material.get("tlogEntries") or []
    if not isinstance(tlog_entries, list):
        raise VerificationError("the signature file is malformed: tlogEntries is not a list")
    method: VerificationMethod
    key_hint = None
    chain_der: tuple[bytes, ...] = ()
    if isinstance(material.get("publicKey"), dict):
        method = "key"
        hint = material["publicKey"].get("hint")
        key_hint = hint if isinstance(hint, str) and hint else None
    elif isinstance(material.get("certificate"), dict):
        method = "sigstore"
        chain_der = (_b64(material["certificate"].get("rawBytes"), "the certificate"),)
    elif isinstance(material.get("x509CertificateChain"), dict):
        certificates = material["x509CertificateChain"].get("certificates")
        if not isinstance(certificates, list) or not certificates:
            raise VerificationError("the signature's certificate chain is empty")
        if len(certificates) > MAX_CERTIFICATE_CHAIN:
            raise VerificationError(
                f"the signature's certificate chain has {len(certificates)} certificates, "
                f"more than the {MAX_CERTIFICATE_CHAIN} allowed"
            )
        chain_der = tuple(
            _b64(cert.get("rawBytes") if isinstance(cert, dict) else None, "a chain certificate")
            for cert in certificates
        )
        # Older Sigstore bundles (v0.1/v0.2) carry a chain too, but always with a log entry.
        method = "sigstore" if tlog_entries else "certificate"
    else:
        raise VerificationError(
            "the signature file has no public key, certificate or certificate chain: it cannot be verified"
        )
    return ParsedBundle(
        raw=raw,
        media_type=media_type,
        method=method,
        payload_type=payload_type,
        payload=_b64(envelope.get("payload"), "dsseEnvelope.payload"),
        signature=_b64(signatures[0].get("sig"), "the DSSE signature"),
        key_hint=key_hint,
        chain_der=chain_der,
        tlog_entries=len(tlog_entries),
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature is computed over."""
    encoded_type = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(encoded_type), encoded_type, len(payload), payload)


def verify_parsed(parsed: ParsedBundle, verifier: Verifier) -> VerificationResult:
    """Check the signature over the statement with `verifier`, then the statement itself."""
    if parsed.method != verifier.method:
        raise VerificationError(
            f"this signature was made with {_METHOD_WORDS[parsed.method]}, "
            f"but {_VERIFIER_WORDS[verifier.method]} was given to verify it",
            hint=f"verify it with {_VERIFIER_WORDS[parsed.method]}",
        )
    if parsed.method != "sigstore":
        if parsed.media_type != OMS_BUNDLE_MEDIA_TYPE:
            raise VerificationError(
                f"unsupported bundle media type {parsed.media_type!r:.80} (expected {OMS_BUNDLE_MEDIA_TYPE})"
            )
        if parsed.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise VerificationError(
                f"the signed payload is {parsed.payload_type!r:.80}, not an in-toto statement"
            )

    if parsed.method == "key":
        signer, issuer = _verify_key(parsed, verifier), None
        payload = parsed.payload
    elif parsed.method == "certificate":
        signer, issuer = _verify_certificate(parsed, verifier)
        payload = parsed.payload
    else:
        from samd.signing import _sigstore  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

        payload_type, payload = _sigstore.verify_bundle(parsed.raw, verifier)
        if payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise VerificationError(f"the signed payload is {payload_type!r:.80}, not an in-toto statement")
        signer, issuer = str(verifier.identity), verifier.oidc_issuer

    statement = parse_statement(payload)
    return _result(parsed.method, signer, issuer, statement)


def _result(
    method: VerificationMethod, signer: str, issuer: str | None, statement: Statement
) -> VerificationResult:
    return VerificationResult(
        method=method,
        signer=signer,
        issuer=issuer,
        manifest_digest=statement.manifest_digest,
        files=statement.files,
        model_name=statement.model_name,
        ignored_paths=statement.ignored_paths,
        allow_symlinks=statement.allow_symlinks,
    )


def _verify_key(parsed: ParsedBundle, verifier: Verifier) -> str:
    from samd.signing import _crypto  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

    if verifier.public_key_pem is None:
        raise UsageError("a key verifier needs a public key", hint="build it with Verifier.from_public_key")
    key = _crypto.load_ec_public_key(verifier.public_key_pem, "the verifying public key")
    our_id = _crypto.key_id(key)
    if parsed.key_hint is None:
        # model_signing < 1.0 wrote no key hint; those signatures also use the legacy statement.
        raise VerificationError(
            "the signature has no public-key hint: it was made by a pre-1.0 model_signing",
            hint="re-sign the model with model_signing >= 1.0 or `samd sign`",
        )
    if parsed.key_hint != _crypto.upstream_key_hint(key):
        raise VerificationError(
            f"the signature was made with another key, not the given public key {our_id}",
            hint="check that you verify with the public half of the key that signed this model",
        )
    if not _crypto.ecdsa_verify(key, parsed.signature, pae(parsed.payload_type, parsed.payload)):
        raise VerificationError(
            f"the signature does not verify with public key {our_id}: "
            "the signed statement or the signature bytes have been altered"
        )
    return our_id


def _verify_certificate(parsed: ParsedBundle, verifier: Verifier) -> tuple[str, str]:
    from samd.signing import _crypto  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

    if verifier.root_certificates_pem is None:
        raise UsageError(
            "a certificate verifier needs roots", hint="build it with Verifier.from_certificate_roots"
        )
    leaf, key = _crypto.verify_certificate_chain(parsed.chain_der, verifier.root_certificates_pem)
    if not _crypto.ecdsa_verify(key, parsed.signature, pae(parsed.payload_type, parsed.payload)):
        raise VerificationError(
            f"the signature does not verify with the certificate {_crypto.describe_name(leaf.subject)!r}: "
            "the signed statement or the signature bytes have been altered"
        )
    return _crypto.certificate_identity(leaf), _crypto.describe_name(leaf.issuer)


def describe_unverified(parsed: ParsedBundle) -> dict[str, Any]:
    """What the bundle claims, for `inspect` (nothing here is trusted)."""
    from samd.signing import _crypto  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

    statement = parse_statement(parsed.payload)
    info: dict[str, Any] = {
        "verified": False,
        "warning": "UNVERIFIED: shown without checking the signature; do not trust it until `verify` succeeds",
        "method": parsed.method,
        "media_type": parsed.media_type,
        "payload_type": parsed.payload_type,
        "public_key_hint": parsed.key_hint,
        "transparency_log_entries": parsed.tlog_entries,
        "certificate": _crypto.describe_certificate(parsed.chain_der[0]) if parsed.chain_der else None,
        "chain_length": len(parsed.chain_der),
        "model_name": statement.model_name,
        "manifest_digest": statement.manifest_digest,
        "serialization": {
            "method": "files",
            "hash_type": "sha256",
            "allow_symlinks": statement.allow_symlinks,
            "ignore_paths": list(statement.ignored_paths),
        },
        "files": [{"name": f.name, "algorithm": f.algorithm, "digest": f.digest} for f in statement.files],
    }
    return info
