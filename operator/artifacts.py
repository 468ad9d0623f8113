"""The operator's blocking work on artifacts, signatures and keys (run in worker threads).

Kept apart from the reconciler so that the reconciler stays about Kubernetes state, and these
functions stay plain synchronous code on top of the core package.
"""

from __future__ import annotations

import base64
import datetime
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samd.envelope import read_header, rewrap_header
from samd.envelope.stream import open_artifact as open_envelope
from samd.errors import SamdError, UsageError, VerificationError
from samd.keys import KeyProvider, LocalKeyProvider, provider_from_uri
from samd.spec import SecureModelSpec
from samd.storage import BucketPosture, check_bucket_posture, open_artifact, put_artifact

KEYSET_KEY = "keyset.json"


def _storage_options(spec: SecureModelSpec) -> dict[str, Any]:
    return {"endpoint_url": spec.artifact.endpoint, "region": spec.artifact.region}


def read_signature(spec: SecureModelSpec, max_bytes: int) -> bytes:
    with open_artifact(spec.signature.uri, **_storage_options(spec)) as reader:
        bundle = reader.read(max_bytes + 1)
    if len(bundle) > max_bytes:
        raise VerificationError(
            f"the signature at {spec.signature.uri} is larger than {max_bytes} bytes",
            hint="point spec.signature.uri at the signature bundle written by `samd sign`",
        )
    return bundle


def bucket_posture(spec: SecureModelSpec) -> BucketPosture:
    return check_bucket_posture(spec.artifact.uri, **_storage_options(spec))


def keyset_from_secret(secret: Mapping[str, Any]) -> bytes | None:
    encoded = (secret.get("data") or {}).get(KEYSET_KEY)
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        return None


def keyset_secret_manifest(name: str, namespace: str, keyset: bytes) -> dict[str, Any]:
    """The key Secret's keyset entry, applied by the operator after a rotation."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {KEYSET_KEY: base64.b64encode(keyset).decode()},
    }


def key_provider(spec: SecureModelSpec, keyset: bytes | None) -> KeyProvider:
    assert spec.encryption is not None  # noqa: S101 - callers check
    ref = spec.encryption.key_ref
    if ref.provider == "local":
        if keyset is None:
            raise UsageError(f"the keyset Secret {ref.secret_name} has no {KEYSET_KEY} entry")
        return LocalKeyProvider.from_bytes(keyset, origin=f"Secret {ref.secret_name}")
    return provider_from_uri(ref.uri or "")


@dataclass(frozen=True)
class KeyState:
    provider: str
    key_id: str
    artifact_key_version: str  # the version that wrapped the artifact's data key
    current_version: str
    current_created: datetime.datetime | None


def inspect_key(spec: SecureModelSpec, keyset: bytes | None) -> KeyState:
    """Unwrap the artifact's data key with the configured key: proves the key is the right one."""
    provider = key_provider(spec, keyset)
    try:
        with open_artifact(spec.artifact.uri, **_storage_options(spec)) as reader:
            header, _dek = open_envelope(reader, provider)
        description = provider.describe()
    finally:
        provider.close()
    current = next((v for v in description.versions if v.version == description.current_version), None)
    return KeyState(
        provider=header.provider,
        key_id=header.key_id,
        artifact_key_version=header.key_version,
        current_version=description.current_version,
        current_created=current.created if current else None,
    )


def rotate_key(spec: SecureModelSpec, keyset: bytes | None) -> bytes | None:
    """Add a key version and make it current; returns the new keyset for a local key (to store first)."""
    provider = key_provider(spec, keyset)
    try:
        provider.rotate()
        return provider.to_bytes() if isinstance(provider, LocalKeyProvider) else None
    finally:
        provider.close()


def rewrap_artifact(spec: SecureModelSpec, keyset: bytes | None) -> str:
    """Re-wrap the artifact's data key under the current key version; the body is copied verbatim.

    file:// artifacts are rewritten in place atomically; s3:// artifacts through a local temporary
    copy and a new upload. https:// artifacts cannot be written: the caller keeps the old version.
    Returns the key version that now wraps the data key.
    """
    uri = spec.artifact.uri
    provider = key_provider(spec, keyset)
    try:
        if uri.startswith("file://"):
            return rewrap_header(Path(uri.removeprefix("file://")), provider).header.key_version
        if uri.startswith("s3://"):
            with tempfile.TemporaryDirectory(prefix="samd-rewrap-") as scratch:
                local = Path(scratch) / "artifact"
                with open_artifact(uri, **_storage_options(spec)) as reader, local.open("wb") as out:
                    while chunk := reader.read(8 << 20):
                        out.write(chunk)
                result = rewrap_header(local, provider)
                with local.open("rb") as src:
                    put_artifact(uri, src, **_storage_options(spec))
                return result.header.key_version
        raise SamdError(f"{uri} cannot be rewritten; its data key stays wrapped by the previous key version")
    finally:
        provider.close()


def artifact_header(spec: SecureModelSpec) -> dict[str, object]:
    with open_artifact(spec.artifact.uri, **_storage_options(spec)) as reader:
        return read_header(reader).to_dict()
