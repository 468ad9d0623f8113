"""Strict parsing of the OMS in-toto statement, refusing hostile manifests. Stdlib only.

The statement model_signing 1.x signs (DSSE payload type ``application/vnd.in-toto+json``)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<model dir or file name>", "digest": {"sha256": "<root>"}}],
     "predicateType": "https://model_signing/signature/v1.0",
     "predicate": {
       "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": false,
                         "ignore_paths": [".git", ...]},
       "resources": [{"name": "dir/weights.bin", "algorithm": "sha256", "digest": "<hex>"}, ...]}}

``<root>`` is SHA-256 over the raw digests of the resources in listed order. A single-file
model has one resource named ``"."``; its file name is only the subject name.

Every resource name must be a plain relative POSIX path that cannot leave the model directory;
names, counts and sizes are capped (see `samd.signing.model`). Only the per-file SHA-256
serialization is accepted: `samd fetch` hashes files with SHA-256 while streaming them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from samd.errors import VerificationError
from samd.signing.model import (
    MAX_IGNORE_PATHS,
    MAX_NAME_BYTES,
    MAX_NAME_COMPONENT_BYTES,
    MAX_RESOURCES,
    SINGLE_FILE_RESOURCE,
    SignedFile,
)

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
OMS_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
OMS_LEGACY_PREDICATE_TYPE = "https://model_signing/Digests/v0.1"

_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Statement:
    model_name: str
    manifest_digest: str  # "sha256:<hex>"
    files: tuple[SignedFile, ...]
    ignored_paths: tuple[str, ...]
    allow_symlinks: bool


def check_resource_name(name: object, *, what: str = "file name", where: str = "the signed manifest") -> str:
    """Return `name` if it is a safe relative POSIX path inside the model, else raise VerificationError.

    Refused: empty, absolute, `.` or `..` components, empty components (`a//b`, trailing `/`),
    backslashes, control characters, invalid UTF-8, and over-long names or components.
    `where` names the source in messages ("the signed manifest", "the model").
    """
    if not isinstance(name, str):
        raise VerificationError(f"{where} has a {what} that is not a string: {name!r:.80}")
    shown = repr(name[:200])
    if not name:
        raise VerificationError(f"{where} has an empty {what}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as error:
        raise VerificationError(f"{where} has a {what} that is not valid UTF-8: {shown}") from error
    if len(encoded) > MAX_NAME_BYTES:
        raise VerificationError(f"{where} has a {what} longer than {MAX_NAME_BYTES} bytes: {shown}...")
    if name.startswith("/"):
        raise VerificationError(f"{where} has an absolute path as {what}: {shown}")
    if _CONTROL.search(name):
        raise VerificationError(f"{where} has a control character in a {what}: {shown}")
    if "\\" in name:
        raise VerificationError(f"{where} has a backslash in a {what}: {shown}")
    for component in name.split("/"):
        if component == "..":
            raise VerificationError(f"{where} has a {what} that climbs out of the model with '..': {shown}")
        if component in ("", "."):
            raise VerificationError(f"{where} has a {what} with an empty or '.' path component: {shown}")
        if len(component.encode("utf-8")) > MAX_NAME_COMPONENT_BYTES:
            raise VerificationError(
                f"{where} has a {what} with a component longer than {MAX_NAME_COMPONENT_BYTES} bytes: {shown}"
            )
    return name


def _field(mapping: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = mapping.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise VerificationError(
            f"the signed statement is malformed: {where}.{key} is missing or not a {kind.__name__}"
        )
    return value


def parse_statement(payload: bytes) -> Statement:
    """Parse and check the (already signature-verified, or explicitly unverified) DSSE payload."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError) as error:
        raise VerificationError("the signed statement is not valid JSON") from error
    if not isinstance(document, dict):
        raise VerificationError("the signed statement is not a JSON object")
    if document.get("_type") != IN_TOTO_STATEMENT_TYPE:
        raise VerificationError(
            f"the signed payload is not an in-toto v1 statement (_type {document.get('_type')!r:.80})"
        )
    predicate_type = document.get("predicateType")
    if predicate_type == OMS_LEGACY_PREDICATE_TYPE:
        raise VerificationError(
            "the signature uses the pre-1.0 model_signing format (predicate Digests/v0.1), which SAMD does not accept",
            hint="re-sign the model with model_signing >= 1.0 or `samd sign`",
        )
    if predicate_type != OMS_PREDICATE_TYPE:
        raise VerificationError(
            f"the signed statement is not an OpenSSF model signature (predicateType {predicate_type!r:.100})"
        )

    subjects = _field(document, "subject", list, "statement")
    if len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise VerificationError(f"the signed statement must have exactly one subject, it has {len(subjects)}")
    subject = subjects[0]
    model_name = subject.get("name", "")
    if not isinstance(model_name, str) or len(model_name) > MAX_NAME_BYTES:
        raise VerificationError("the signed statement's subject name is not a string of sane length")
    root_digest = _field(subject, "digest", dict, "subject").get("sha256")
    if not isinstance(root_digest, str) or not _HEX_SHA256.fullmatch(root_digest):
        raise VerificationError("the signed statement's subject has no SHA-256 digest")

    predicate = _field(document, "predicate", dict, "statement")
    serialization = _field(predicate, "serialization", dict, "predicate")
    method = serialization.get("method")
    if method != "files":
        raise VerificationError(
            f"the signature uses the {method!r:.40} serialization; SAMD accepts only per-file hashing ('files')",
            hint="re-sign without sharding (the default of model_signing and `samd sign`)",
        )
    hash_type = serialization.get("hash_type")
    if hash_type != "sha256":
        raise VerificationError(
            f"the signature hashes files with {hash_type!r:.40}; SAMD accepts only sha256",
            hint="re-sign with SHA-256 (the default of model_signing and `samd sign`)",
        )
    allow_symlinks = serialization.get("allow_symlinks", False)
    if not isinstance(allow_symlinks, bool):
        raise VerificationError(
            "the signed statement is malformed: serialization.allow_symlinks is not a boolean"
        )
    ignored_raw = serialization.get("ignore_paths", [])
    if not isinstance(ignored_raw, list) or len(ignored_raw) > MAX_IGNORE_PATHS:
        raise VerificationError(f"the signed ignore_paths must be a list of at most {MAX_IGNORE_PATHS} paths")
    ignored = tuple(sorted({check_resource_name(path, what="ignored path") for path in ignored_raw}))

    resources = _field(predicate, "resources", list, "predicate")
    if not resources:
        raise VerificationError("the signed manifest lists no files")
    if len(resources) > MAX_RESOURCES:
        raise VerificationError(
            f"the signed manifest lists {len(resources)} files, more than the {MAX_RESOURCES} allowed"
        )
    files = _parse_resources(resources)

    root = hashlib.sha256()
    for signed in files:
        root.update(bytes.fromhex(signed.digest))
    if root.hexdigest() != root_digest.lower():
        raise VerificationError(
            "the signed manifest is inconsistent: its subject digest does not match its files"
        )
    return Statement(
        model_name=model_name,
        manifest_digest="sha256:" + root_digest.lower(),
        files=files,
        ignored_paths=ignored,
        allow_symlinks=allow_symlinks,
    )


def _parse_resources(resources: list[Any]) -> tuple[SignedFile, ...]:
    files: list[SignedFile] = []
    for resource in resources:
        if not isinstance(resource, dict):
            raise VerificationError("the signed manifest has a resource that is not an object")
        name = resource.get("name")
        if not (name == SINGLE_FILE_RESOURCE and len(resources) == 1):
            check_resource_name(name)
        algorithm = resource.get("algorithm")
        if algorithm != "sha256":
            raise VerificationError(
                f"the signed manifest hashes {name!r:.200} with {algorithm!r:.40}, not sha256"
            )
        digest = resource.get("digest")
        if not isinstance(digest, str) or not _HEX_SHA256.fullmatch(digest):
            raise VerificationError(f"the signed manifest has no valid SHA-256 digest for {name!r:.200}")
        files.append(SignedFile(name=str(name), algorithm="sha256", digest=digest.lower()))

    names: set[str] = set()
    for signed in files:
        if signed.name in names:
            raise VerificationError(f"the signed manifest lists {signed.name!r:.200} twice")
        names.add(signed.name)
    directories = {name.rsplit("/", i)[0] for name in names for i in range(1, name.count("/") + 1)}
    clash = sorted(directories.intersection(names))
    if clash:
        raise VerificationError(
            f"the signed manifest lists {clash[0]!r:.200} both as a file and as a directory"
        )
    return tuple(files)
