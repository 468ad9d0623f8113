"""Verifying OMS signatures: the bundle alone, a model on disk, or digests computed elsewhere.

The signature itself is checked by the model_signing library. What is hand-written is the check of
digests computed elsewhere (`check_files_against_manifest`), for the loader, which hashes while it
decrypts instead of letting model_signing read the files again. Measured (docs/benchmarks.md,
"Artifact core", `make bench`): `samd fetch` 1 GiB in 0.95 s, against 2.25 s for Tink's decryption
followed by model_signing's own verification (1.11 s of it model_signing re-hashing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from samd.signing.bundle import describe_unverified, parse_bundle, verify_parsed
from samd.signing.model import (
    ManifestMismatchError,
    VerificationResult,
    Verifier,
    diff_names,
    names_preview,
)
from samd.signing.tree import hash_files, list_model_files

logger = logging.getLogger(__name__)

_UNSIGNED_HINT = (
    "sign the model again including these files, or remove them (or allow unsigned files explicitly)"
)


def verify_bundle(signature: bytes | Path, verifier: Verifier) -> VerificationResult:
    """Check a signature cryptographically and return its signed manifest, without reading the model.

    Checks the signature over the in-toto statement (and the certificate chain, or the Sigstore
    log entry and identity), then refuses hostile manifests: absolute or `..` names, duplicates,
    unsupported hashing, inconsistent subject digest, oversized bundles (16 MiB) or manifests
    (100,000 files). Raises `VerificationError` (or `UsageError` for unreadable input).
    Used by `samd fetch` (which hashes while streaming) and the admission webhook.
    """
    result = verify_parsed(parse_bundle(signature), verifier)
    logger.debug(
        "signature verified: method=%s signer=%s manifest=%s files=%d",
        result.method,
        result.signer,
        result.manifest_digest,
        len(result.files),
    )
    return result


def inspect_signature(signature: bytes | Path) -> dict[str, object]:
    """What a signature claims (method, certificate, subject, files), WITHOUT verifying it.

    The result has ``"verified": False`` and a warning; nothing in it may be trusted. Malformed or
    hostile content is refused with the same errors `verify_bundle` gives.
    """
    return describe_unverified(parse_bundle(signature))


def _relative_inside(path: Path, model: Path) -> str | None:
    """`path` as a POSIX name relative to the model directory, if it lies inside it."""
    root = os.path.realpath(model)
    if not os.path.isdir(root):
        return None
    target = os.path.realpath(path)
    if not target.startswith(root.rstrip(os.sep) + os.sep):
        return None
    return Path(os.path.relpath(target, root)).as_posix()


def verify_model(
    model: Path, signature: Path | bytes, verifier: Verifier, *, allow_unsigned_files: bool = False
) -> VerificationResult:
    """Verify `signature` and that the model on disk is exactly what it signed.

    The signature file itself is skipped when it lies inside the model directory, as are paths
    the signer listed as ignored. Symlinks leaving the model are always refused; other symlinks
    only if the signature was made with `allow_symlinks`. Unless `allow_unsigned_files`, a file
    present but not signed is refused. Signed files missing and content mismatches are refused,
    each with its own message (`ManifestMismatchError`).
    """
    result = verify_bundle(signature, verifier)
    excluded = set()
    if isinstance(signature, Path):
        inside = _relative_inside(signature, model)
        if inside is not None:
            excluded.add(inside)
    listing = list_model_files(
        model, ignored_paths=result.ignored_paths, excluded=excluded, allow_symlinks=result.allow_symlinks
    )
    # Compare names before hashing: a wrong file set is reported without reading gigabytes.
    _check_names(listing.files, result, allow_unsigned_files=allow_unsigned_files)
    signed = result.digests()
    actual = hash_files({name: path for name, path in listing.files.items() if name in signed})
    _check_digests(actual, result)
    logger.info(
        "model %s verified: %d files, manifest %s, signed by %s (%s)",
        model,
        len(actual),
        result.manifest_digest,
        result.signer,
        result.method,
    )
    return result


def check_files_against_manifest(
    actual: Mapping[str, str], result: VerificationResult, *, allow_unsigned_files: bool = False
) -> None:
    """Compare file digests computed elsewhere (name -> hex SHA-256) with a verified manifest.

    The loader's path: `samd fetch` hashes while it decrypts and compares here, instead of letting
    model_signing hash the decrypted files again. Measured by `make bench` (docs/benchmarks.md,
    "Artifact core"): 1 GiB fetched and verified in 0.95 s, 0.97x `openssl speed` SHA-256 alone,
    against 2.25 s for decryption followed by model_signing's own verification.

    Names are POSIX paths relative to the model root; a single-file model's one file is named
    "." (see `samd.signing.SINGLE_FILE_RESOURCE`). Names under the signer's ignored paths are
    skipped. Raises `ManifestMismatchError` for signed files missing, files not signed (unless
    `allow_unsigned_files`), and digest mismatches, each with its own message.
    """
    _check_names(actual, result, allow_unsigned_files=allow_unsigned_files)
    signed = result.digests()
    _check_digests({name: digest for name, digest in actual.items() if name in signed}, result)


def _check_names(
    actual: Mapping[str, object], result: VerificationResult, *, allow_unsigned_files: bool
) -> None:
    missing, unsigned = diff_names(actual, result)
    if allow_unsigned_files:
        unsigned = []
    if missing and unsigned:
        raise ManifestMismatchError(
            f"the signature covers a different set of files than the model: {len(missing)} signed file(s) missing "
            f"({names_preview(missing)}) and {len(unsigned)} file(s) not signed ({names_preview(unsigned)}); "
            "is this the signature of another model?",
            missing=missing,
            unsigned=unsigned,
        )
    if missing:
        raise ManifestMismatchError(
            f"{len(missing)} signed file(s) missing from the model: {names_preview(missing)}", missing=missing
        )
    if unsigned:
        raise ManifestMismatchError(
            f"{len(unsigned)} file(s) in the model are not covered by the signature: {names_preview(unsigned)}",
            hint=_UNSIGNED_HINT,
            unsigned=unsigned,
        )


def _check_digests(actual: Mapping[str, str], result: VerificationResult) -> None:
    signed = result.digests()
    mismatched = sorted(name for name, digest in actual.items() if digest.lower() != signed[name])
    if not mismatched:
        return
    if len(mismatched) == len(signed) and len(signed) > 1:
        raise ManifestMismatchError(
            f"none of the {len(signed)} files match their signed digests; is this the signature of another model?",
            mismatched=mismatched,
        )
    first = mismatched[0]
    raise ManifestMismatchError(
        f"{len(mismatched)} file(s) differ from what was signed: {names_preview(mismatched)} "
        f"(e.g. {first!r}: signed sha256 {signed[first]}, found {actual[first].lower()})",
        hint="the model was modified after signing, or it is not the model this signature is for",
        mismatched=mismatched,
    )
