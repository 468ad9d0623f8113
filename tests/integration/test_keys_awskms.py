"""AWS KMS key provider against a real local AWS-compatible server (moto in server mode)."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from samd.envelope import (
    decrypt_file,
    decrypt_segments,
    encrypt_file,
    encrypt_stream,
    read_header,
    rewrap_header,
)
from samd.errors import KeyProviderError
from samd.keys import KeyRing, LocalKeyProvider, provider_from_uri
from samd.keys.aws_kms import AwsKmsKeyProvider
from tests.support.moto_server import MotoServer

pytestmark = pytest.mark.integration

CONTEXT = b"artifact identity"
DEK = os.urandom(32)


def create_key(description: str = "samd test key") -> tuple[str, str]:
    """A fresh symmetric key on the server: (key id, ARN)."""
    metadata = boto3.client("kms").create_key(Description=description)["KeyMetadata"]
    return metadata["KeyId"], metadata["Arn"]


@pytest.fixture
def kms_key(aws_env: MotoServer) -> tuple[str, str]:
    return create_key()


@pytest.fixture
def provider(kms_key: tuple[str, str]) -> Iterator[AwsKmsKeyProvider]:
    with AwsKmsKeyProvider(kms_key[0]) as kms:
        yield kms


def test_wrap_and_unwrap_record_the_key_arn(provider: AwsKmsKeyProvider, kms_key: tuple[str, str]) -> None:
    wrapped = provider.wrap(DEK, CONTEXT)
    assert (wrapped.provider, wrapped.key_id, wrapped.key_version) == ("aws-kms", kms_key[1], "1")
    assert DEK not in wrapped.ciphertext
    assert provider.unwrap(wrapped, CONTEXT) == DEK


def test_unwrap_needs_the_same_encryption_context(provider: AwsKmsKeyProvider) -> None:
    wrapped = provider.wrap(DEK, CONTEXT)
    with pytest.raises(KeyProviderError, match="cannot unwrap the data key") as caught:
        provider.unwrap(wrapped, b"another artifact")
    assert not caught.value.transient


def test_encrypt_and_decrypt_an_artifact_through_kms(provider: AwsKmsKeyProvider) -> None:
    data = os.urandom(300_000)
    artifact = io.BytesIO()
    header = encrypt_stream(
        io.BytesIO(data), artifact, provider, attributes={"kind": "file"}, segment_size=65536
    )
    assert header.provider == "aws-kms"
    assert b"".join(decrypt_segments(io.BytesIO(artifact.getvalue()), provider)) == data


def test_an_alias_uri_opens_the_same_key(aws_env: MotoServer, kms_key: tuple[str, str]) -> None:
    boto3.client("kms").create_alias(AliasName="alias/samd-models", TargetKeyId=kms_key[0])
    uri = f"aws-kms://alias/samd-models?region={aws_env.region}&endpoint={aws_env.endpoint}"
    with provider_from_uri(uri) as by_alias, AwsKmsKeyProvider(kms_key[1]) as by_arn:
        assert isinstance(by_alias, AwsKmsKeyProvider)
        assert by_alias.key_id == kms_key[1]
        artifact = io.BytesIO()
        encrypt_stream(io.BytesIO(b"weights"), artifact, by_alias)
        assert read_header(io.BytesIO(artifact.getvalue())).key_id == kms_key[1]
        assert b"".join(decrypt_segments(io.BytesIO(artifact.getvalue()), by_arn)) == b"weights"


def test_another_kms_key_cannot_decrypt(provider: AwsKmsKeyProvider, aws_env: MotoServer) -> None:
    artifact = io.BytesIO()
    encrypt_stream(io.BytesIO(b"weights"), artifact, provider)
    other_id, _ = create_key("someone else's key")
    with AwsKmsKeyProvider(other_id) as other:
        with pytest.raises(KeyProviderError, match="but the key given is aws-kms key"):
            decrypt_segments(io.BytesIO(artifact.getvalue()), other)
        # Asked directly, KMS itself refuses: the ciphertext names another key.
        wrapped = read_header(io.BytesIO(artifact.getvalue())).wrapped
        with pytest.raises(KeyProviderError, match="cannot unwrap the data key"):
            other.unwrap(wrapped, CONTEXT)


def test_rotation_then_rewrap(provider: AwsKmsKeyProvider, tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(100_000))
    old = tmp_path / "old.samd"
    encrypt_file(model, old, provider, segment_size=4096)
    body_before = old.read_bytes()[read_header(io.BytesIO(old.read_bytes())).size :]

    info = provider.rotate()
    assert (info.version, info.primary) == ("2", True)
    description = provider.describe()
    assert description.current_version == "2"
    assert [v.version for v in description.versions] == ["1", "2"]
    assert all(v.created is not None for v in description.versions)

    new = tmp_path / "new.samd"
    encrypt_file(model, new, provider)
    assert read_header(io.BytesIO(new.read_bytes())).key_version == "2"
    decrypt_file(old, tmp_path / "old.out", provider)  # old artifacts still decrypt
    assert (tmp_path / "old.out").read_bytes() == model.read_bytes()

    result = rewrap_header(old, provider)
    assert result.rewrapped
    assert (result.previous.key_version, result.header.key_version) == ("1", "2")
    content = old.read_bytes()
    assert content[read_header(io.BytesIO(content)).size :] == body_before
    decrypt_file(old, tmp_path / "rewrapped.out", provider)
    assert (tmp_path / "rewrapped.out").read_bytes() == model.read_bytes()


def test_migrating_from_a_local_keyset_to_kms(provider: AwsKmsKeyProvider, tmp_path: Path) -> None:
    local = LocalKeyProvider.generate("before-kms")
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 1000)
    artifact = tmp_path / "model.samd"
    encrypt_file(model, artifact, local)
    rewrap_header(artifact, provider, keys=local)
    assert read_header(io.BytesIO(artifact.read_bytes())).provider == "aws-kms"
    decrypt_file(artifact, tmp_path / "out", KeyRing([provider]))
    assert (tmp_path / "out").read_bytes() == model.read_bytes()


def test_an_unknown_key_is_a_clear_permanent_error(aws_env: MotoServer) -> None:
    with (
        AwsKmsKeyProvider("alias/does-not-exist") as missing,
        pytest.raises(KeyProviderError, match="NotFoundException") as caught,
    ):
        missing.wrap(DEK, CONTEXT)
    assert not caught.value.transient
    assert caught.value.hint is not None


def test_an_unreachable_kms_is_a_transient_error_naming_the_endpoint(aws_env: MotoServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{closed_port}"
    with (
        AwsKmsKeyProvider(
            "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
            endpoint_url=endpoint,
            connect_timeout=1,
            max_attempts=1,
        ) as unreachable,
        pytest.raises(KeyProviderError, match=f"cannot reach AWS KMS at {endpoint}") as caught,
    ):
        unreachable.wrap(DEK, CONTEXT)
    assert caught.value.transient


def test_missing_credentials_are_reported(
    aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with (
        AwsKmsKeyProvider("alias/x") as provider,
        pytest.raises(KeyProviderError, match="no AWS credentials"),
    ):
        provider.wrap(DEK, CONTEXT)
