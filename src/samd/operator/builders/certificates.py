"""mTLS certificates for a model: a server certificate and one client certificate per identity.

The operator keeps one certificate authority (EC P-256) in a Secret; these functions issue from it
and decide when a certificate must be issued again. Pure computation: the CA, the clock and the
settings are inputs; only key generation and serial numbers draw on the system's randomness.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samd.operator.builders.context import ModelContext
from samd.operator.builders.metadata import Manifest, owned_metadata
from samd.operator.builders.names import client_secret_name, serving_name, tls_secret_name
from samd.operator.builders.serving import client_organization

CA_COMMON_NAME = "samd-operator-ca"
CA_VALIDITY = datetime.timedelta(days=3650)
CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates are valid from a little before `now`, so a pod whose clock lags still accepts them."""

TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_CERT = "ca.crt"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _same_public_key(key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> bool:
    encoding, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(encoding, fmt) == certificate.public_key().public_bytes(
        encoding, fmt
    )


def _decode_secret_data(data: Mapping[str, str], *names: str) -> dict[str, bytes]:
    """Base64-decode the named entries of a Secret's `data`; ValueError names the missing or bad one."""
    decoded = {}
    for name in names:
        if name not in data:
            raise ValueError(f"the Secret has no {name!r}")
        try:
            decoded[name] = base64.b64decode(data[name], validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"{name!r} in the Secret is not base64") from error
    return decoded


def _load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, UnsupportedAlgorithm) as error:  # encrypted, or an algorithm we cannot load
        raise ValueError(f"the private key cannot be loaded: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the private key is not an EC key")
    return key


@dataclass(frozen=True)
class CertificateAuthority:
    """The operator's CA: it signs every model's server and client certificates."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(
        cls,
        now: datetime.datetime,
        validity: datetime.timedelta = CA_VALIDITY,
        common_name: str = CA_COMMON_NAME,
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        public_key = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> CertificateAuthority:
        """Load the CA from its Secret's `data` (base64 `tls.crt` and `tls.key`); ValueError if unusable."""
        decoded = _decode_secret_data(data, TLS_CERT, TLS_KEY)
        certificate = x509.load_pem_x509_certificate(decoded[TLS_CERT])
        key = _load_private_key(decoded[TLS_KEY])
        if not _same_public_key(key, certificate):
            raise ValueError("the CA key does not belong to the CA certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ValueError("the CA certificate is not a CA (basicConstraints CA:TRUE is missing)")
        return cls(key, certificate)

    def to_secret_data(self) -> dict[str, str]:
        """The CA as a Secret's `data` (base64 PEM), the inverse of `from_secret_data`."""
        return {TLS_CERT: _b64(cert_pem(self.certificate)), TLS_KEY: _b64(key_pem(self.key))}

    @property
    def certificate_pem(self) -> bytes:
        return cert_pem(self.certificate)


def server_dns_names(ctx: ModelContext) -> list[str]:
    """The names clients may use for the model's Service, short to fully qualified."""
    service = serving_name(ctx.name)
    namespace = ctx.namespace
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{ctx.settings.cluster_domain}",
    ]


def _leaf_key_usage() -> x509.KeyUsage:
    # ECDSA signs the TLS handshake; an EC key never enciphers keys.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue_certificate(
    ca: CertificateAuthority,
    *,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    hosts: Sequence[str],
    now: datetime.datetime,
    validity: datetime.timedelta,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh EC P-256 key and a leaf certificate for it from `ca`; `hosts` (DNS names or IP
    addresses) become its subject alternative names."""
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_host(h) for h in hosts]), critical=False
        )
    return key, builder.sign(ca.key, hashes.SHA256())


def _host(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _tls_secret(
    ctx: ModelContext,
    name: str,
    ca: CertificateAuthority,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": owned_metadata(ctx, name),
        "data": {
            TLS_CERT: _b64(cert_pem(certificate)),
            TLS_KEY: _b64(key_pem(key)),
            CA_CERT: _b64(ca.certificate_pem),
        },
    }


def issue_server_certificate(ca: CertificateAuthority, ctx: ModelContext, now: datetime.datetime) -> Manifest:
    """The `<model>-tls` Secret: a serverAuth certificate for the model's Service names, and the CA."""
    dns_names = server_dns_names(ctx)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    key, certificate = issue_certificate(
        ca,
        subject=subject,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        hosts=dns_names,
        now=now,
        validity=ctx.settings.certificate_validity,
    )
    return _tls_secret(ctx, tls_secret_name(ctx.name), ca, key, certificate)


def issue_client_certificate(
    ca: CertificateAuthority, ctx: ModelContext, client_name: str, now: datetime.datetime
) -> Manifest:
    """The `<model>-client-<client>` Secret: a clientAuth certificate, CN the client, O the model."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, client_organization(ctx)),
            x509.NameAttribute(NameOID.COMMON_NAME, client_name),
        ]
    )
    key, certificate = issue_certificate(
        ca,
        subject=subject,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        hosts=[],
        now=now,
        validity=ctx.settings.certificate_validity,
    )
    return _tls_secret(ctx, client_secret_name(ctx.name, client_name), ca, key, certificate)


def _load_issued(
    secret_data: Mapping[str, str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bytes]:
    decoded = _decode_secret_data(secret_data, TLS_CERT, TLS_KEY, CA_CERT)
    certificate = x509.load_pem_x509_certificate(decoded[TLS_CERT])
    return certificate, _load_private_key(decoded[TLS_KEY]), decoded[CA_CERT]


def certificate_not_after(secret_data: Mapping[str, str] | None) -> datetime.datetime | None:
    """When the certificate in a TLS Secret's `data` expires, or None if there is none to read."""
    if not secret_data or TLS_CERT not in secret_data:
        return None
    try:
        pem = _decode_secret_data(secret_data, TLS_CERT)[TLS_CERT]
        return x509.load_pem_x509_certificate(pem).not_valid_after_utc
    except ValueError:
        return None


def needs_renewal(
    secret_data: Mapping[str, str] | None,
    ca: CertificateAuthority,
    now: datetime.datetime,
    renew_before: datetime.timedelta = datetime.timedelta(days=30),
) -> bool:
    """Whether a TLS Secret (its `data`) must be issued again.

    True when the data is missing or unparsable, the key does not match the certificate, the
    certificate was not issued by `ca`, the bundled `ca.crt` is not `ca`'s (clients would not trust
    a renewed server), or the certificate expires within `renew_before` of `now`.
    """
    if not secret_data:
        return True
    try:
        certificate, key, bundled_ca = _load_issued(secret_data)
        certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return True
    if not _same_public_key(key, certificate) or bundled_ca.strip() != ca.certificate_pem.strip():
        return True
    return now >= certificate.not_valid_after_utc - renew_before
