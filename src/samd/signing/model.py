"""Typed values of the signing API: results, limits, and the signer and verifier configurations.

Nothing here imports `cryptography`, `model_signing` or `sigstore` at module level: `import
samd.signing` must stay cheap for the init container (64 MiB memory budget).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Literal

from samd.errors import UsageError, VerificationError
from samd.signing import _sigstore
from samd.signing.metadata import METADATA_FILE

# Hostile-input caps. A real model has at most a few thousand files; these bound the memory
# and time an attacker-supplied signature can cost before it is refused.
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
MAX_RESOURCES = 100_000
MAX_NAME_BYTES = 4096  # PATH_MAX on Linux
MAX_NAME_COMPONENT_BYTES = 255  # NAME_MAX on Linux
MAX_IGNORE_PATHS = 1_000
MAX_CERTIFICATE_CHAIN = 10

# OMS names the one resource of a single-file model "." (the file's path relative to itself); the
# file's base name is only recorded as the statement's informative subject name (`model_name`).
SINGLE_FILE_RESOURCE = "."

VerificationMethod = Literal["key", "certificate", "sigstore"]
SigningMethod = Literal["key", "certificate", "pkcs11"]


class ManifestMismatchError(VerificationError):
    """The files of a model do not match the signed manifest.

    `missing` are signed files absent from the model, `unsigned` are files present but not
    covered by the signature, `mismatched` are files whose content differs from the signed digest.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        missing: Sequence[str] = (),
        unsigned: Sequence[str] = (),
        mismatched: Sequence[str] = (),
    ) -> None:
        super().__init__(message, hint=hint)
        self.missing = tuple(missing)
        self.unsigned = tuple(unsigned)
        self.mismatched = tuple(mismatched)


@dataclass(frozen=True)
class SignedFile:
    """One entry of the signed manifest (`predicate.resources` of the OMS statement)."""

    name: str  # POSIX path relative to the model root; "." for a single-file model
    algorithm: str  # always "sha256" (other serializations are refused)
    digest: str  # lowercase hex


@dataclass(frozen=True)
class VerificationResult:
    """What a verified signature says, once its signature and manifest have been checked.

    `manifest_digest` is the in-toto subject digest ("sha256:<hex>"): SHA-256 over the raw
    digests of `files` in manifest order. It identifies the signed file set; `model_name` is the
    signer's directory or file name and identifies nothing.
    """

    method: VerificationMethod  # PKCS#11 signatures are ordinary key signatures: "key"
    signer: str  # key id "sha256:<hex of the DER public key>", certificate subject, or identity
    issuer: str | None  # certificate issuer, OIDC issuer for Sigstore, None for keys
    manifest_digest: str
    files: tuple[SignedFile, ...]
    model_name: str
    ignored_paths: tuple[str, ...] = ()  # paths the signer excluded from the manifest
    allow_symlinks: bool = False  # whether the signer followed symlinks inside the model

    @property
    def is_single_file(self) -> bool:
        return len(self.files) == 1 and self.files[0].name == SINGLE_FILE_RESOURCE

    def digests(self) -> dict[str, str]:
        """Signed file name -> hex SHA-256."""
        return {signed.name: signed.digest for signed in self.files}

    @property
    def metadata_digest(self) -> str | None:
        """The signed digest of the model metadata file (`samd.signing.METADATA_FILE`), if signed.

        Compare it with `samd.signing.metadata_digest(name, version)` to know whether the signed
        model is that name and version (see `samd.policy.check_version_binding`).
        """
        return self.digests().get(METADATA_FILE)

    def is_ignored(self, name: str) -> bool:
        """True if the signer excluded `name` (or a directory holding it) from the manifest."""
        return is_under_any(name, self.ignored_paths)

    def to_dict(self) -> dict[str, object]:
        return {
            "verified": True,
            "method": self.method,
            "signer": self.signer,
            "issuer": self.issuer,
            "manifest_digest": self.manifest_digest,
            "model_name": self.model_name,
            "files": [
                {"name": signed.name, "algorithm": signed.algorithm, "digest": signed.digest}
                for signed in self.files
            ],
            "ignored_paths": list(self.ignored_paths),
            "allow_symlinks": self.allow_symlinks,
            "metadata_digest": self.metadata_digest,
        }


def is_under_any(name: str, prefixes: Sequence[str]) -> bool:
    """POSIX path `name` equals one of `prefixes` or lies inside one of them."""
    return any(name == prefix or name.startswith(prefix + "/") for prefix in prefixes)


def _read_material(source: Path | str | bytes, what: str) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read the {what} {source}: {error.strerror or error}") from error


def _source_name(source: Path | str | bytes, what: str) -> str:
    return f"the {what}" if isinstance(source, bytes) else str(source)


def key_id(public_key_pem: bytes) -> str:
    """The SAMD key id of an EC public key: "sha256:" + hex SHA-256 of its DER SubjectPublicKeyInfo."""
    from samd.signing import _crypto  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

    return _crypto.key_id(_crypto.load_ec_public_key(public_key_pem, "public key"))


@dataclass(frozen=True)
class Verifier:
    """How to check a signature: a public key, certificate roots, or a Sigstore identity.

    A frozen, hashable value (key material is held as bytes), so callers can cache verifications
    per verifier. Build it with one of the `from_*` constructors, which validate the material.
    """

    method: VerificationMethod
    public_key_pem: bytes | None = field(default=None, repr=False)
    root_certificates_pem: bytes | None = field(default=None, repr=False)
    identity: str | None = None
    oidc_issuer: str | None = None
    trusted_root_json: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_public_key(cls, public_key: Path | str | bytes) -> Verifier:
        """An EC public key (PEM; P-256, P-384 or P-521), e.g. the one exported from an HSM."""
        from samd.signing import _crypto  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

        key = _crypto.load_ec_public_key(
            _read_material(public_key, "public key"), _source_name(public_key, "public key")
        )
        return cls(method="key", public_key_pem=_crypto.public_pem(key))

    @classmethod
    def from_certificate_roots(cls, roots: Sequence[Path | str | bytes] | Path | str | bytes) -> Verifier:
        """Trusted root (and optionally intermediate) certificates, PEM, one or more per file."""
        from samd.signing import _crypto  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

        # A single path (or PEM bytes) is one source; a str is a path, not a sequence of characters.
        sources = [roots] if isinstance(roots, str | bytes | PathLike) else list(roots)
        if not sources:
            raise UsageError("no root certificates given", hint="pass at least one PEM file of trusted roots")
        pem = b"".join(
            _crypto.normalize_certificates_pem(
                _read_material(source, "root certificates"), _source_name(source, "root certificates")
            )
            for source in sources
        )
        return cls(method="certificate", root_certificates_pem=pem)

    @classmethod
    def from_sigstore(cls, identity: str, issuer: str, trusted_root: Path | str | bytes) -> Verifier:
        """Sigstore keyless signatures, verified OFFLINE against a given trusted root.

        `trusted_root` is a Sigstore TrustedRoot JSON (or a ClientTrustConfig JSON holding one, as
        `model_signing --trust_config` takes). `identity` is the certificate SAN (an e-mail or URI)
        and `issuer` the OIDC issuer that must have vouched for it; both must match exactly.
        """
        if not identity or not issuer:
            raise UsageError("Sigstore verification needs both an identity and an OIDC issuer")
        raw = _read_material(trusted_root, "Sigstore trusted root")
        return cls(
            method="sigstore",
            identity=identity,
            oidc_issuer=issuer,
            trusted_root_json=_sigstore.normalize_trusted_root(raw),
        )

    def describe(self) -> str:
        """A one-line description for messages (never key material)."""
        if self.method == "key" and self.public_key_pem is not None:
            return f"public key {key_id(self.public_key_pem)}"
        if self.method == "certificate":
            return "trusted certificate roots"
        return f"Sigstore identity {self.identity} from {self.oidc_issuer}"


@dataclass(frozen=True)
class Signer:
    """How to sign: an EC private key, a key with its certificate chain, or a PKCS#11 key.

    Holds paths and references, not loaded keys; constructors check the material early so a
    wrong password or a mismatched certificate is reported before any model is hashed.
    """

    method: SigningMethod
    private_key: Path | None = None
    password: bytes | None = field(default=None, repr=False)
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()
    pkcs11_uri: str | None = field(default=None, repr=False)  # may carry pin-value

    @classmethod
    def from_private_key(cls, path: Path, password: str | bytes | None = None) -> Signer:
        """An EC private key in PEM (P-256, P-384 or P-521), optionally password-protected."""
        from samd.signing import _crypto  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

        secret = password.encode() if isinstance(password, str) else password
        _crypto.load_ec_private_key(_read_material(path, "private key"), secret, str(path))
        return cls(method="key", private_key=Path(path), password=secret)

    @classmethod
    def from_certificate(cls, private_key: Path, certificate: Path, chain: Sequence[Path] = ()) -> Signer:
        """An unencrypted EC private key, its signing certificate, and the chain up to the root.

        model_signing's certificate signer cannot open password-protected keys, and needs at least
        one chain certificate: the intermediates, or the root itself if it issued the certificate.
        """
        from samd.signing import _crypto  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

        if not chain:
            raise UsageError(
                "certificate signing needs the certificate chain",
                hint="pass the intermediate certificates (or the root, if it issued the signing certificate)",
            )
        key = _crypto.load_ec_private_key(_read_material(private_key, "private key"), None, str(private_key))
        _crypto.check_certificate_matches_key(
            _read_material(certificate, "signing certificate"), key, str(certificate)
        )
        for path in chain:
            _crypto.normalize_certificates_pem(_read_material(path, "certificate chain"), str(path))
        return cls(
            method="certificate",
            private_key=Path(private_key),
            certificate=Path(certificate),
            chain=tuple(chain),
        )

    @classmethod
    def from_pkcs11_uri(cls, uri: str) -> Signer:
        """An EC key in a PKCS#11 token, named by an RFC 7512 URI.

        Example: ``pkcs11:token=T;object=K?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234``.
        Verification uses the key's public half (``Verifier.from_public_key``).
        """
        if not uri.startswith("pkcs11:"):
            raise UsageError(
                "a PKCS#11 key URI starts with 'pkcs11:'", hint="see RFC 7512, e.g. pkcs11:token=T;object=K"
            )
        return cls(method="pkcs11", pkcs11_uri=uri)

    def describe(self) -> str:
        """A one-line description for messages (no PIN, no password)."""
        if self.method == "pkcs11" and self.pkcs11_uri is not None:
            return f"PKCS#11 key {redact_pkcs11_uri(self.pkcs11_uri)}"
        if self.method == "certificate":
            return f"certificate {self.certificate} with key {self.private_key}"
        return f"private key {self.private_key}"


def redact_pkcs11_uri(text: str) -> str:
    """Hide `pin-value=...` wherever it appears (URIs, library error messages)."""
    return re.sub(r"(pin-value=)[^&;?\s'\"]*", r"\1***", text)


def names_preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(name) for name in list(names)[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def diff_names(
    actual_names: Sequence[str] | Mapping[str, object], result: VerificationResult
) -> tuple[list[str], list[str]]:
    """(signed names missing from `actual_names`, actual names neither signed nor ignored), sorted."""
    signed = {signed.name for signed in result.files}
    present = set(actual_names)
    missing = sorted(signed - present)
    unsigned = sorted(name for name in present - signed if not result.is_ignored(name))
    return missing, unsigned
