"""The operator's blocking work on artifacts, signatures and keys (run in worker threads).

Kept apart from the reconciler so that the reconciler stays about Kubernetes state, and these
functions stay plain synchronous code on top of the core package.
"""

from __future__ import annotations

import base64
import datetime
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samd.envelope import read_header, rewrap_header
from samd.envelope.stream import open_artifact as open_envelope
from samd.errors import SamdError, UsageError, VerificationError
from samd.keys import KeyProvider, LocalKeyProvider, provider_from_uri
from samd.keys.aws_kms import AwsKmsKeyProvider
from samd.keys.uri import parse_aws_kms_uri
from samd.spec import SecureModelSpec
from samd.storage import BucketPosture, check_bucket_posture, open_artifact, put_artifact
from samd.storage.guard import (
    AddressPolicy,
    check_endpoint,
    check_key_uri,
    check_local_path,
    guard_boto_client,
)
from samd.storage.stream import read_at_most

KEYSET_KEY = "keyset.json"

# Every read and write below is of something a user named in a SecureModel, done with the operator's
# privileges: each goes through the address policy (no confused deputy; samd.storage.guard).
SIGNATURE_FIELD = "spec.signature.uri"
ARTIFACT_FIELD = "spec.artifact.uri"
ENDPOINT_FIELD = "spec.artifact.endpoint"
KEY_FIELD = "spec.encryption.keyRef.uri"


def _storage_options(spec: SecureModelSpec, guard: AddressPolicy) -> dict[str, Any]:
    if spec.artifact.endpoint is not None:
        check_endpoint(spec.artifact.endpoint, guard, field=ENDPOINT_FIELD)
    return {"endpoint_url": spec.artifact.endpoint, "region": spec.artifact.region, "address_policy": guard}


def read_signature(spec: SecureModelSpec, max_bytes: int, guard: AddressPolicy) -> bytes:
    options = _storage_options(spec, guard)
    with open_artifact(spec.signature.uri, field=SIGNATURE_FIELD, **options) as reader:
        bundle = read_at_most(reader, max_bytes)
    if len(bundle) > max_bytes:
        raise VerificationError(
            f"the signature at {spec.signature.uri} is larger than {max_bytes} bytes",
            hint="point spec.signature.uri at the signature bundle written by `samd sign`",
        )
    return bundle


def bucket_posture(spec: SecureModelSpec, guard: AddressPolicy) -> BucketPosture:
    return check_bucket_posture(spec.artifact.uri, **_storage_options(spec, guard))


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


def key_provider(spec: SecureModelSpec, keyset: bytes | None, guard: AddressPolicy) -> KeyProvider:
    """The key the spec names. A key URI may not name local files (a keyset path, a PKCS#11 module,
    which would run inside the operator, or a PIN file) nor an internal KMS endpoint."""
    assert spec.encryption is not None  # noqa: S101 - callers check
    ref = spec.encryption.key_ref
    if ref.provider == "local":
        if keyset is None:
            raise UsageError(f"the keyset Secret {ref.secret_name} has no {KEYSET_KEY} entry")
        return LocalKeyProvider.from_bytes(keyset, origin=f"Secret {ref.secret_name}")
    uri = ref.uri or ""
    check_key_uri(uri, guard, field=KEY_FIELD)
    provider = provider_from_uri(uri)
    if isinstance(provider, AwsKmsKeyProvider) and parse_aws_kms_uri(uri).endpoint_url is not None:
        guard_boto_client(provider.client, guard, field=f"{KEY_FIELD} (endpoint)")
    return provider


@dataclass(frozen=True)
class KeyState:
    provider: str
    key_id: str
    artifact_key_version: str  # the version that wrapped the artifact's data key
    data_key_id: str  # which data key encrypts the artifact (kept by a rewrap)
    current_version: str
    current_created: datetime.datetime | None


def inspect_key(spec: SecureModelSpec, keyset: bytes | None, guard: AddressPolicy) -> KeyState:
    """Unwrap the artifact's data key with the configured key: proves the key is the right one."""
    options = _storage_options(spec, guard)
    provider = key_provider(spec, keyset, guard)
    try:
        with open_artifact(spec.artifact.uri, field=ARTIFACT_FIELD, **options) as reader:
            header, _dek = open_envelope(reader, provider)
        description = provider.describe()
    finally:
        provider.close()
    current = next((v for v in description.versions if v.version == description.current_version), None)
    return KeyState(
        provider=header.provider,
        key_id=header.key_id,
        artifact_key_version=header.key_version,
        data_key_id=header.data_key_id,
        current_version=description.current_version,
        current_created=current.created if current else None,
    )


def rotate_key(spec: SecureModelSpec, keyset: bytes | None, guard: AddressPolicy) -> bytes | None:
    """Add a key version and make it current; returns the new keyset for a local key (to store first)."""
    provider = key_provider(spec, keyset, guard)
    try:
        provider.rotate()
        return provider.to_bytes() if isinstance(provider, LocalKeyProvider) else None
    finally:
        provider.close()


def rewrap_artifact(spec: SecureModelSpec, keyset: bytes | None, guard: AddressPolicy) -> str:
    """Re-wrap the artifact's data key under the current key version; the body is copied verbatim.

    file:// artifacts are rewritten in place atomically; s3:// artifacts through a local temporary
    copy and a new upload. https:// artifacts cannot be written: the caller keeps the old version.
    Returns the key version that now wraps the data key.
    """
    uri = spec.artifact.uri
    options = _storage_options(spec, guard)
    if uri.startswith("file://"):
        path = check_local_path(
            urllib.parse.unquote(urllib.parse.urlsplit(uri).path), guard, field=ARTIFACT_FIELD
        )
    provider = key_provider(spec, keyset, guard)
    try:
        if uri.startswith("file://"):
            return rewrap_header(path, provider).header.key_version
        if uri.startswith("s3://"):
            with tempfile.TemporaryDirectory(prefix="samd-rewrap-") as scratch:
                local = Path(scratch) / "artifact"
                with (
                    open_artifact(uri, field=ARTIFACT_FIELD, **options) as reader,
                    local.open("wb") as out,
                ):
                    while chunk := reader.read(8 << 20):
                        out.write(chunk)
                result = rewrap_header(local, provider)
                with local.open("rb") as src:
                    put_artifact(uri, src, field=ARTIFACT_FIELD, **options)
                return result.header.key_version
        raise SamdError(f"{uri} cannot be rewritten; its data key stays wrapped by the previous key version")
    finally:
        provider.close()


def artifact_header(spec: SecureModelSpec, guard: AddressPolicy) -> dict[str, object]:
    with open_artifact(spec.artifact.uri, field=ARTIFACT_FIELD, **_storage_options(spec, guard)) as reader:
        return read_header(reader).to_dict()
