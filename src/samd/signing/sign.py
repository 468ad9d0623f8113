"""Signing a model in the OpenSSF Model Signing format with the model_signing library's public API.

`model_signing.hashing.Config` hashes the files, `model_signing.signing.Config` signs the in-toto
statement and writes the Sigstore bundle. SAMD adds checks before (the same hostile-input rules
verification applies, so we never sign a model we would refuse to verify) and after (the written
bundle is re-read, its manifest checked against the files listed), and writes the signature
atomically: it appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samd.errors import KeyProviderError, SamdError, UsageError, VerificationError
from samd.signing.bundle import parse_bundle, verify_parsed
from samd.signing.metadata import METADATA_FILE, check_model_name, metadata_bytes, read_signed_metadata
from samd.signing.model import (
    SignedFile,
    Signer,
    SigningMethod,
    Verifier,
    is_under_any,
    names_preview,
    redact_pkcs11_uri,
)
from samd.signing.statement import check_resource_name, parse_statement
from samd.signing.tree import list_model_files

logger = logging.getLogger(__name__)

# What model_signing (and its CLI) leaves out of a directory's manifest by default.
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


@dataclass(frozen=True)
class SigningResult:
    """What was signed (from the bundle just written)."""

    signature: Path
    method: SigningMethod
    model_name: str
    manifest_digest: str  # "sha256:<hex>", as VerificationResult.manifest_digest
    files: tuple[SignedFile, ...]
    ignored_paths: tuple[str, ...]
    bound: tuple[str, str] | None = None  # (name, version) in the signed samd-model.json, if any

    def to_dict(self) -> dict[str, object]:
        return {
            "signature": str(self.signature),
            "method": self.method,
            "model_name": self.model_name,
            "manifest_digest": self.manifest_digest,
            "files": [{"name": f.name, "algorithm": f.algorithm, "digest": f.digest} for f in self.files],
            "ignored_paths": list(self.ignored_paths),
            "bound": {"name": self.bound[0], "version": self.bound[1]} if self.bound else None,
        }


def _relative_ignore_paths(model: Path, paths: Sequence[str | Path]) -> list[str]:
    root = Path(os.path.realpath(model))
    names: list[str] = []
    for path in paths:
        candidate = Path(path)
        if candidate.is_absolute():
            resolved = Path(os.path.realpath(candidate))
            if not resolved.is_relative_to(root):
                raise UsageError(f"the ignored path {path} is not inside the model {model}")
            candidate = resolved.relative_to(root)
        name = candidate.as_posix()
        try:
            names.append(check_resource_name(name, what="ignored path", where="the ignore list"))
        except VerificationError as refused:
            raise UsageError(refused.message) from refused
    return names


def sign_model(
    model: Path,
    signature_out: Path,
    signer: Signer,
    *,
    ignore_paths: Sequence[str | Path] = (),
    ignore_git_paths: bool = True,
    allow_symlinks: bool = False,
    model_version: str | None = None,
    model_name: str | None = None,
) -> SigningResult:
    """Sign the model (a file or a directory) and write the OMS signature to `signature_out`.

    With `model_version`, the model's name and version are signed with it: the metadata file
    `samd-model.json` (`samd.signing.metadata`) is written into the model directory first, naming
    `model_name` (default: the directory's name), which must be the SecureModel's metadata.name.
    A single-file model cannot hold that file: it is refused (put it in a directory).

    `ignore_paths` are relative to the model directory (or absolute paths inside it); like the
    model_signing CLI, git metadata is ignored unless `ignore_git_paths=False`, and a signature
    written inside the model is left out of its own manifest. The ignored paths are recorded in the
    signature. Symlinks leaving the model are refused; symlinks to files inside it only with
    `allow_symlinks`. A single-file model is recorded as one resource named "."
    (`samd.signing.SINGLE_FILE_RESOURCE`), its base name as the informative model name.
    """
    model = Path(model)
    signature_out = Path(signature_out)
    if not os.path.lexists(model):
        raise UsageError(f"the model {model} does not exist")
    if not signature_out.parent.is_dir():
        raise UsageError(f"the directory for the signature, {signature_out.parent}, does not exist")
    if os.path.realpath(signature_out) == os.path.realpath(model):
        raise UsageError(
            "the signature path is the model itself", hint="write the signature beside the model"
        )

    ignored = _relative_ignore_paths(model, ignore_paths)
    root = os.path.realpath(model)
    target = os.path.realpath(signature_out)
    if os.path.isdir(root) and target.startswith(root + os.sep):
        ignored.append(Path(os.path.relpath(target, root)).as_posix())
    bound = None
    if model_version is not None:
        bound = _write_metadata(
            model, model_name, model_version, [*ignored, *(GIT_PATHS if ignore_git_paths else ())]
        )
    elif model_name is not None:
        raise UsageError("a model name is signed with its version", hint="pass --model-version too")
    listing = list_model_files(
        model,
        ignored_paths=[*ignored, *(GIT_PATHS if ignore_git_paths else ())],
        allow_symlinks=allow_symlinks,
        error=UsageError,
    )
    if not listing.files:
        raise UsageError(f"the model {model} holds no files to sign")

    bundle = _sign_with_model_signing(model, signer, ignored, ignore_git_paths, allow_symlinks)
    result = _check_written_bundle(bundle, signer, set(listing.files), signature_out)
    if bound is None:  # a samd-model.json already in the model is signed as it is
        bound = read_signed_metadata(model, {f.name: f.digest for f in result.files}.get(METADATA_FILE))
    if bound is not None:
        result = dataclasses.replace(result, bound=bound)
    _write_atomically(signature_out, bundle)
    logger.info(
        "signed %s (%d files, manifest %s) with %s into %s",
        model,
        len(result.files),
        result.manifest_digest,
        signer.describe(),
        signature_out,
    )
    return result


def _write_metadata(model: Path, name: str | None, version: str, ignored: Sequence[str]) -> tuple[str, str]:
    """Write `samd-model.json` naming (name, version) into the model directory, before it is signed."""
    from samd.spec import SEMVER  # noqa: PLC0415 -- pydantic: only when signing with a version

    if not os.path.isdir(model):
        raise UsageError(
            f"the model {model} is a single file, which cannot carry its name and version",
            hint=f"put it in a directory named after the SecureModel (mkdir NAME && mv {model} NAME/) "
            "and sign the directory with --model-version",
        )
    if not SEMVER.match(version):
        raise UsageError(f"the model version {version!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    if name is None:
        name = Path(os.path.realpath(model)).name
        problem = check_model_name(name)
        if problem is not None:
            raise UsageError(
                f"the model directory's name {problem}",
                hint="pass --model-name with the SecureModel's metadata.name",
            )
    elif (problem := check_model_name(name)) is not None:
        raise UsageError(f"the model name {problem}", hint="pass the SecureModel's metadata.name")
    if is_under_any(METADATA_FILE, list(ignored)):
        raise UsageError(
            f"{METADATA_FILE} is left out of the signature (ignored), so its name and version cannot be signed",
            hint=f"do not --ignore {METADATA_FILE}, and write the signature elsewhere",
        )
    path = Path(model) / METADATA_FILE
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        raise UsageError(f"{path} exists and is not a regular file", hint="remove it; samd sign writes it")
    content = metadata_bytes(name, version)
    try:
        if not (path.is_file() and path.read_bytes() == content):
            _write_atomically(path, content)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror or error}") from error
    logger.info("wrote %s: model %s version %s", path, name, version)
    return name, version


def _library_config(signer: Signer, hashing_config: Any) -> Any:
    import model_signing.signing  # noqa: PLC0415 -- ~75 MB (pulls in sigstore): only when signing

    config = model_signing.signing.Config().set_hashing_config(hashing_config)  # type: ignore[no-untyped-call]
    try:
        if signer.method == "key" and signer.private_key is not None:
            # model_signing annotates the password as str but hands it to cryptography, which wants bytes.
            password: Any = signer.password
            return config.use_elliptic_key_signer(private_key=signer.private_key, password=password)
        if (
            signer.method == "certificate"
            and signer.private_key is not None
            and signer.certificate is not None
        ):
            return config.use_certificate_signer(
                private_key=signer.private_key,
                signing_certificate=signer.certificate,
                certificate_chain=list(signer.chain),
            )
        if signer.method == "pkcs11" and signer.pkcs11_uri is not None:
            return config.use_pkcs11_signer(pkcs11_uri=signer.pkcs11_uri)
    except Exception as failure:  # the library, PyKCS11 and cryptography raise assorted types
        reason = redact_pkcs11_uri(str(failure)) or type(failure).__name__
        if signer.method == "pkcs11":
            raise KeyProviderError(
                f"the PKCS#11 key could not be opened: {reason}",
                hint="check the token label, object label or id, module-path and PIN in the URI",
            ) from failure
        raise UsageError(f"the signing key could not be loaded: {reason}") from failure
    raise UsageError(
        f"incomplete signer configuration ({signer.describe()})", hint="build it with a Signer.from_* method"
    )


def _sign_with_model_signing(
    model: Path, signer: Signer, ignored: list[str], ignore_git_paths: bool, allow_symlinks: bool
) -> bytes:
    import model_signing.hashing  # noqa: PLC0415 -- ~75 MB (pulls in sigstore): only when signing

    hashing_config = (
        model_signing.hashing.Config()  # type: ignore[no-untyped-call]
        .set_ignored_paths(paths=ignored, ignore_git_paths=ignore_git_paths)
        .set_allow_symlinks(allow_symlinks)
    )
    config = _library_config(signer, hashing_config)
    # The library writes the bundle itself; let it write outside the model and the destination.
    with tempfile.TemporaryDirectory(prefix="samd-sign-") as scratch:
        bundle_path = Path(scratch) / "model.sig"
        try:
            config.sign(model, bundle_path)
        except SamdError:
            raise
        except Exception as failure:
            message = redact_pkcs11_uri(str(failure)) or type(failure).__name__
            if signer.method == "pkcs11":
                raise KeyProviderError(f"signing with the PKCS#11 key failed: {message}") from failure
            raise UsageError(f"signing failed: {message}") from failure
        return bundle_path.read_bytes()


def _check_written_bundle(
    bundle: bytes, signer: Signer, listed: set[str], signature_out: Path
) -> SigningResult:
    from samd.signing import _crypto  # noqa: PLC0415 -- imported on use: `import samd.signing` must stay light

    parsed = parse_bundle(bundle)
    if signer.method == "key" and signer.private_key is not None:
        # Prove now that our own verifier accepts what was just signed.
        key = _crypto.load_ec_private_key(
            signer.private_key.read_bytes(), signer.password, str(signer.private_key)
        )
        verify_parsed(parsed, Verifier(method="key", public_key_pem=_crypto.public_pem(key.public_key())))
    statement = parse_statement(parsed.payload)
    signed = {f.name for f in statement.files}
    if signed != listed:
        changed = sorted(signed.symmetric_difference(listed))
        raise SamdError(
            f"the model changed while it was being signed: {names_preview(changed)}; sign it again"
        )
    return SigningResult(
        signature=signature_out,
        method=signer.method,
        model_name=statement.model_name,
        manifest_digest=statement.manifest_digest,
        files=statement.files,
        ignored_paths=statement.ignored_paths,
    )


def _write_atomically(destination: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as output:
            output.write(data)
            output.flush()
            os.fsync(output.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
