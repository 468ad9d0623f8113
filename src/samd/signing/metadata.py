"""The model metadata file that binds a signed model to its SecureModel name and version.

`samd sign --model-version V --model-name N` writes ``samd-model.json`` at the root of a model
directory before signing it, so the file is one of the signed files. Its bytes are a pure function
of (name, version), canonical JSON with sorted keys, no spaces and a trailing newline::

    {"name":"fraud-detection","version":"1.2.0"}

So its SHA-256 is known in advance: the operator and the admission webhook check the binding by
finding that file's entry in the signed manifest (`VerificationResult.metadata_digest`) and
comparing it with `metadata_digest(name, version)` of the SecureModel, without reading or
decrypting the model. The verifying loader checks every file's bytes against the manifest, so the
file served is exactly this one.

Nothing here imports more than the standard library: `import samd.signing` stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

METADATA_FILE = "samd-model.json"
"""The metadata file's name, at the root of the model directory (a resource of the manifest)."""

# A SecureModel's metadata.name: a DNS-1123 subdomain, as the API server requires.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_NAME_LENGTH = 253


def metadata_bytes(name: str, version: str) -> bytes:
    """The exact content of ``samd-model.json`` for a model `name` at `version`."""
    text = json.dumps({"name": name, "version": version}, sort_keys=True, separators=(",", ":"))
    return (text + "\n").encode("ascii")


def metadata_digest(name: str, version: str) -> str:
    """Hex SHA-256 of `metadata_bytes(name, version)`, as the signed manifest records it."""
    return hashlib.sha256(metadata_bytes(name, version)).hexdigest()


def check_model_name(name: str) -> str | None:
    """Why `name` cannot be a SecureModel's name (None when it can)."""
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        return (
            f"{name!r} is not a SecureModel name: use lower-case letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most {MAX_NAME_LENGTH} characters"
        )
    return None


def parse_metadata(content: bytes) -> tuple[str, str] | None:
    """(name, version) from the bytes of a metadata file, or None if they are not canonical metadata.

    Only the canonical form counts: other bytes could never match the digest the operator expects.
    """
    try:
        document = json.loads(content)
    except ValueError:
        return None
    if not isinstance(document, dict) or set(document) != {"name", "version"}:
        return None
    name, version = document["name"], document["version"]
    if not isinstance(name, str) or not isinstance(version, str):
        return None
    try:
        canonical = metadata_bytes(name, version)
    except UnicodeEncodeError:
        return None
    return (name, version) if canonical == content else None


def read_signed_metadata(model: Path, signed_digest: str | None) -> tuple[str, str] | None:
    """(name, version) from the model directory's metadata file, if its bytes have `signed_digest`.

    For showing what a verified or just-signed model is bound to; None when there is no such file,
    when it changed since it was hashed, or when it is not canonical metadata.
    """
    if signed_digest is None or not Path(model).is_dir():
        return None
    try:
        content = (Path(model) / METADATA_FILE).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(content).hexdigest() != signed_digest:
        return None
    return parse_metadata(content)
