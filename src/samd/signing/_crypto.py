"""Key, certificate and ECDSA helpers on `cryptography` (and pyOpenSSL for chain building).

Imported lazily by the signing package. These reproduce, with the same libraries, the checks
model_signing 1.1.1 makes in `_signing/sign_ec_key.py` and `_signing/sign_certificate.py`, so
that verifying does not have to import model_signing (whose import pulls in sigstore and costs
about 75 MB of memory, more than the init container's budget).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from samd.errors import UsageError, VerificationError

# The curves Sigstore's protobuf specs (and so model_signing) accept, with the hash each signs with.
_CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


def _check_curve(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey, source: str) -> None:
    if key.curve.name not in _CURVE_HASHES:
        raise UsageError(
            f"{source}: EC curve {key.curve.name} is not supported",
            hint="use P-256, P-384 or P-521 (e.g. `openssl ecparam -name prime256v1 -genkey`)",
        )


def load_ec_public_key(data: bytes, source: str) -> ec.EllipticCurvePublicKey:
    """An EC public key from PEM (or DER, as `pkcs11-tool --read-object` exports it)."""
    try:
        key = (
            serialization.load_pem_public_key(data)
            if b"-----BEGIN" in data
            else serialization.load_der_public_key(data)
        )
    except ValueError as error:
        raise UsageError(
            f"{source} is not a PEM or DER public key", hint="export it with `openssl ec -pubout`"
        ) from error
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UsageError(
            f"{source} is not an EC public key", hint="OMS signatures use EC keys (P-256, P-384, P-521)"
        )
    _check_curve(key, source)
    return key


def load_ec_private_key(data: bytes, password: bytes | None, source: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError as error:
        if password is None:
            raise UsageError(f"{source} is encrypted", hint="give its password") from error
        raise UsageError(f"{source} is not encrypted, but a password was given") from error
    except ValueError as error:
        if password is not None and b"ENCRYPTED" in data:
            raise UsageError(f"wrong password for {source}") from error
        raise UsageError(f"{source} is not a PEM private key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(
            f"{source} is not an EC private key", hint="OMS signatures use EC keys (P-256, P-384, P-521)"
        )
    _check_curve(key, source)
    return key


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def upstream_key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """model_signing's `publicKey.hint`: hex SHA-256 of the PEM public key (not of the DER)."""
    return hashlib.sha256(public_pem(key)).hexdigest()


def load_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise UsageError(f"{source} holds no PEM certificate") from error
    return certificates


def normalize_certificates_pem(data: bytes, source: str) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in load_certificates(data, source))


def check_certificate_matches_key(cert_pem: bytes, key: ec.EllipticCurvePrivateKey, source: str) -> None:
    certificates = load_certificates(cert_pem, source)
    if certificates[0].public_key() != key.public_key():
        raise UsageError(f"the signing certificate {source} is not for this private key")


def ecdsa_verify(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """True if `signature` (DER ECDSA) is valid for `data`, hashed as model_signing does for the curve."""
    try:
        key.verify(signature, data, ec.ECDSA(_CURVE_HASHES[key.curve.name]()))
    except InvalidSignature:
        return False
    return True


def describe_name(name: x509.Name) -> str:
    return name.rfc4514_string()


def certificate_identity(cert: x509.Certificate) -> str:
    """The subject, or for a subject-less (Fulcio-style) certificate its first SAN."""
    subject = cert.subject.rfc4514_string()
    if subject:
        return subject
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    values = san.get_values_for_type(x509.RFC822Name) + san.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    return values[0] if values else ""


def verify_certificate_chain(
    chain_der: Sequence[bytes], roots_pem: bytes
) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
    """Check a bundle's chain (signing certificate first) against trusted roots.

    As model_signing 1.1.1 does: OpenSSL path building at the signing certificate's notBefore
    (the signing time is not attested, so an expired certificate is still accepted; revocation is
    not checked), then the certificate must allow digital signatures or code signing.
    """
    from OpenSSL import crypto  # noqa: PLC0415 -- only certificate verification needs it (~3 MB)

    try:
        certificates = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as error:
        raise VerificationError(f"the signature's certificate chain is malformed: {error}") from error
    leaf = certificates[0]
    store = crypto.X509Store()
    for root in load_certificates(roots_pem, "trusted roots"):
        store.add_cert(crypto.X509.from_cryptography(root))
    store.set_time(leaf.not_valid_before_utc)
    context = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(cert) for cert in certificates[1:]],
    )
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as error:
        raise VerificationError(
            f"the signing certificate {describe_name(leaf.subject)!r} does not chain to a trusted root: {error}",
            hint="check that the verifier is given the root (and intermediates) of the signer's CA",
        ) from error
    if not _usable_for_signing(leaf):
        raise VerificationError(
            f"the certificate {describe_name(leaf.subject)!r} is not allowed to sign "
            "(neither digitalSignature key usage nor codeSigning extended key usage)"
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVE_HASHES:
        raise VerificationError("the signing certificate's key is not a P-256, P-384 or P-521 EC key")
    return leaf, key


def _usable_for_signing(cert: x509.Certificate) -> bool:
    try:
        if cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        return (
            ExtendedKeyUsageOID.CODE_SIGNING
            in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        return False


_OIDC_ISSUER_OID = "1.3.6.1.4.1.57264.1.1"


def describe_certificate(der: bytes) -> dict[str, Any]:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as error:
        raise VerificationError(f"the signature's certificate is malformed: {error}") from error
    sans: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(value) for value in san.get_values_for_type(x509.RFC822Name)]
        sans += [str(value) for value in san.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [str(value) for value in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        pass
    oidc_issuer = None
    for extension in cert.extensions:
        if extension.oid.dotted_string == _OIDC_ISSUER_OID and isinstance(
            extension.value, x509.UnrecognizedExtension
        ):
            oidc_issuer = extension.value.value.decode("utf-8", "replace")
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "subject_alternative_names": sans,
        "oidc_issuer": oidc_issuer,
    }
