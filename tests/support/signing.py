"""Test material for the signing tests, generated on the fly (no key is ever committed).

This module holds helpers only (no tests): EC key pairs, an X.509 CA chain, OMS statements and
key bundles built by hand from the published format (independently of the code under test), and a
miniature Sigstore instance (Fulcio-like CA, CT log, Rekor log) with its trusted root, for
verifying keyless bundles offline.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

IN_TOTO_TYPE = "application/vnd.in-toto+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
OMS_PREDICATE = "https://model_signing/signature/v1.0"
NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class KeyPair:
    key: ec.EllipticCurvePrivateKey
    private_pem: Path
    public_pem: Path

    def public_key_der_sha256(self) -> str:
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()


def write_key_pair(
    directory: Path,
    name: str = "signer",
    curve: ec.EllipticCurve | None = None,
    password: bytes | None = None,
) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(curve or ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    private_pem = directory / f"{name}.pem"
    private_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    public_pem = directory / f"{name}.pub"
    public_pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(key=key, private_pem=private_pem, public_pem=public_pem)


def write_model(directory: Path, files: Mapping[str, bytes]) -> Path:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative POSIX name -> bytes), to show nothing was written."""
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


# --- OMS statements and key bundles, built from the format description -------------------------


def resources_for(files: Mapping[str, bytes]) -> list[dict[str, str]]:
    return [
        {"name": name, "algorithm": "sha256", "digest": sha256_hex(files[name])} for name in sorted(files)
    ]


def statement_bytes(
    resources: Sequence[Mapping[str, Any]],
    *,
    model_name: str = "model",
    serialization: Mapping[str, Any] | None = None,
    subject_digest: str | None = None,
    predicate_type: str = OMS_PREDICATE,
) -> bytes:
    """An in-toto statement as model_signing 1.x writes it; the subject digest is computed here."""
    if subject_digest is None:
        root = hashlib.sha256()
        for resource in resources:
            root.update(bytes.fromhex(str(resource["digest"])))
        subject_digest = root.hexdigest()
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": model_name, "digest": {"sha256": subject_digest}}],
        "predicateType": predicate_type,
        "predicate": {
            "serialization": dict(
                serialization or {"method": "files", "hash_type": "sha256", "allow_symlinks": False}
            ),
            "resources": list(resources),
        },
    }
    return json.dumps(statement).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)


def key_bundle(
    statement: bytes, key: ec.EllipticCurvePrivateKey, *, payload_type: str = IN_TOTO_TYPE
) -> bytes:
    """A key-signed OMS bundle: DSSE over `statement`, public-key hint = sha256 of the PEM key."""
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = key.sign(pae(payload_type, statement), ec.ECDSA(hashes.SHA256()))
    bundle = {
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {
            "publicKey": {"hint": hashlib.sha256(public_pem).hexdigest()},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(statement).decode(),
            "payloadType": payload_type,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle).encode()


def rewrite_bundle(bundle: bytes, change: Any) -> bytes:
    """Apply `change(document)` to a parsed bundle and re-serialize it (no re-signing)."""
    document = json.loads(bundle)
    change(document)
    return json.dumps(document).encode()


def payload_of(bundle: bytes) -> dict[str, Any]:
    document = json.loads(bundle)
    payload: dict[str, Any] = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
    return payload


# --- X.509 --------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "samd-test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _key_usage(digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=not digital_signature,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class CertificateChain:
    """root -> intermediate -> signing certificate, as PEM files."""

    root: Path
    intermediate: Path
    signing_key: Path
    signing_certificate: Path
    subject: str
    issuer: str


def write_certificate_chain(
    directory: Path,
    *,
    name: str = "chain",
    can_sign: bool = True,
    signing_public_key: ec.EllipticCurvePublicKey | None = None,
) -> CertificateChain:
    """A CA chain; `signing_public_key` certifies an external key (e.g. one inside an HSM)."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name(f"{name} root")
    root = _ca_certificate(root_name, root_key, root_name, root_key)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate_name = _name(f"{name} intermediate")
    intermediate = _ca_certificate(intermediate_name, intermediate_key, root_name, root_key)

    signing_key = ec.generate_private_key(ec.SECP256R1())
    public_key = signing_public_key or signing_key.public_key()
    subject = _name(f"{name} ml-ci signer")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(intermediate_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(can_sign), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CODE_SIGNING if can_sign else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(intermediate_key.public_key()), critical=False
        )
    )
    signing_certificate = builder.sign(intermediate_key, hashes.SHA256())

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    paths = CertificateChain(
        root=directory / f"{name}-root.pem",
        intermediate=directory / f"{name}-intermediate.pem",
        signing_key=directory / f"{name}-signing-key.pem",
        signing_certificate=directory / f"{name}-signing-cert.pem",
        subject=subject.rfc4514_string(),
        issuer=intermediate_name.rfc4514_string(),
    )
    paths.root.write_bytes(pem(root))
    paths.intermediate.write_bytes(pem(intermediate))
    paths.signing_key.write_bytes(
        signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths.signing_certificate.write_bytes(pem(signing_certificate))
    return paths


# --- A miniature Sigstore instance ---------------------------------------------------------------

_OIDC_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_OIDC_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


def _spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der_octet_string(content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return b"\x04" + bytes([length]) + content
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(encoded)]) + encoded + content


def _der_utf8_string(text: str) -> bytes:
    content = text.encode()
    assert len(content) < 0x80
    return b"\x0c" + bytes([len(content)]) + content


class FakeSigstore:
    """A Fulcio-like CA, a CT log and a Rekor log, each with its own key, and their trusted root.

    `sign()` produces what a keyless Sigstore signer would: a short-lived certificate for an
    identity (SAN) and OIDC issuer with an embedded SCT, a DSSE signature over the statement, and a
    Rekor `dsse` entry with inclusion proof, signed checkpoint and signed inclusion promise.
    """

    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("fake fulcio")
        self.ca_certificate = _ca_certificate(ca_name, self.ca_key, ca_name, self.ca_key)
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_log_id = hashlib.sha256(_spki_der(self.rekor_key.public_key())).digest()
        self.ct_log_id = hashlib.sha256(_spki_der(self.ct_key.public_key())).digest()

    def trusted_root(self) -> bytes:
        start = {"start": "2020-01-01T00:00:00Z"}

        def log(key: ec.EllipticCurvePrivateKey, log_id: bytes, url: str) -> dict[str, Any]:
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": _b64(_spki_der(key.public_key())),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": start,
                },
                "logId": {"keyId": _b64(log_id)},
            }

        root = {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.rekor_key, self.rekor_log_id, "https://rekor.example.test")],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "samd-test", "commonName": "fake fulcio"},
                    "uri": "https://fulcio.example.test",
                    "certChain": {
                        "certificates": [
                            {"rawBytes": _b64(self.ca_certificate.public_bytes(serialization.Encoding.DER))}
                        ]
                    },
                    "validFor": start,
                }
            ],
            "ctlogs": [log(self.ct_key, self.ct_log_id, "https://ctfe.example.test")],
            "timestampAuthorities": [],
        }
        return json.dumps(root).encode()

    def _leaf_certificate(
        self, key: ec.EllipticCurvePrivateKey, identity: str, issuer: str, not_before: datetime.datetime
    ) -> x509.Certificate:
        san: x509.GeneralName = (
            x509.UniformResourceIdentifier(identity) if "://" in identity else x509.RFC822Name(identity)
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca_certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + datetime.timedelta(minutes=10))
            .add_extension(_key_usage(True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False
            )
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(x509.UnrecognizedExtension(_OIDC_ISSUER_V1, issuer.encode()), critical=False)
            .add_extension(
                x509.UnrecognizedExtension(_OIDC_ISSUER_V2, _der_utf8_string(issuer)), critical=False
            )
        )
        # The CT log signs the precertificate: the final certificate minus its SCT extension.
        precertificate = builder.sign(self.ca_key, hashes.SHA256())
        timestamp_ms = int(not_before.timestamp() * 1000)
        issuer_key_hash = hashlib.sha256(_spki_der(self.ca_key.public_key())).digest()
        tbs = precertificate.tbs_certificate_bytes
        signed_entry = issuer_key_hash + len(tbs).to_bytes(3, "big") + tbs
        digitally_signed = struct.pack("!BBQH", 0, 0, timestamp_ms, 1) + signed_entry + struct.pack("!H", 0)
        sct_signature = self.ct_key.sign(digitally_signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            b"\x00"
            + self.ct_log_id
            + struct.pack("!QH", timestamp_ms, 0)
            + bytes([4, 3])  # sha256, ecdsa
            + struct.pack("!H", len(sct_signature))
            + sct_signature
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        leaf = builder.add_extension(
            x509.UnrecognizedExtension(
                ExtensionOID.PRECERT_SIGNED_CERTIFICATE_TIMESTAMPS, _der_octet_string(sct_list)
            ),
            critical=False,
        ).sign(self.ca_key, hashes.SHA256())
        assert leaf.tbs_precertificate_bytes == tbs, "SCT must be the last extension for the precert to match"
        return leaf

    def sign(
        self,
        statement: bytes,
        *,
        identity: str,
        issuer: str,
        payload_type: str = IN_TOTO_TYPE,
        integrated_time: datetime.datetime | None = None,
        certificate_issued_at: datetime.datetime | None = None,
    ) -> bytes:
        """A Sigstore bundle v0.3 with a DSSE envelope over `statement`.

        The certificate is valid for 10 minutes from `certificate_issued_at` (default: one minute
        before `integrated_time`, the time the log records the entry).
        """
        signed_at = integrated_time or (NOW - datetime.timedelta(minutes=1))
        issued_at = certificate_issued_at or (signed_at - datetime.timedelta(minutes=1))
        key = ec.generate_private_key(ec.SECP256R1())  # ephemeral, as in keyless signing
        leaf = self._leaf_certificate(key, identity, issuer, issued_at)
        signature = key.sign(pae(payload_type, statement), ec.ECDSA(hashes.SHA256()))
        envelope = {
            "payload": _b64(statement),
            "payloadType": payload_type,
            "signatures": [{"sig": _b64(signature), "keyid": ""}],
        }
        body = json.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {
                        "algorithm": "sha256",
                        "value": sha256_hex(json.dumps(envelope).encode()),
                    },
                    "payloadHash": {"algorithm": "sha256", "value": sha256_hex(statement)},
                    "signatures": [
                        {
                            "signature": _b64(signature),
                            "verifier": _b64(leaf.public_bytes(serialization.Encoding.PEM)),
                        }
                    ],
                },
            }
        ).encode()
        integrated = int(signed_at.timestamp())
        promise = rfc8785.dumps(
            {
                "body": _b64(body),
                "integratedTime": integrated,
                "logID": self.rekor_log_id.hex(),
                "logIndex": 0,
            }
        )
        # A one-entry log: the root hash is the leaf hash, the proof has no hashes.
        root_hash = hashlib.sha256(b"\x00" + body).digest()
        note = f"rekor.example.test - 1\n1\n{_b64(root_hash)}\n"
        note_signature = self.rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = (
            note + "\n" + f"\u2014 rekor.example.test {_b64(self.rekor_log_id[:4] + note_signature)}\n"
        )
        entry = {
            "logIndex": "0",
            "logId": {"keyId": _b64(self.rekor_log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": str(integrated),
            "inclusionPromise": {
                "signedEntryTimestamp": _b64(self.rekor_key.sign(promise, ec.ECDSA(hashes.SHA256())))
            },
            "inclusionProof": {
                "logIndex": "0",
                "rootHash": _b64(root_hash),
                "treeSize": "1",
                "hashes": [],
                "checkpoint": {"envelope": checkpoint},
            },
            "canonicalizedBody": _b64(body),
        }
        bundle = {
            "mediaType": BUNDLE_V03,
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(leaf.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [entry],
            },
            "dsseEnvelope": envelope,
        }
        return json.dumps(bundle).encode()
