"""Rewrap: a new wrapped data key under the current key version, the encrypted body untouched."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from samd.envelope import decrypt_file, encrypt_file, read_header, rewrap_header
from samd.errors import IntegrityError, KeyProviderError, UsageError
from samd.keys import KeyRing, LocalKeyProvider, keygen_local

pytestmark = pytest.mark.unit


@pytest.fixture
def keyset(tmp_path: Path) -> LocalKeyProvider:
    return keygen_local(tmp_path / "keyset.json", key_id="kek")


@pytest.fixture
def model(tmp_path: Path) -> bytes:
    data = os.urandom(70_000)
    (tmp_path / "model.bin").write_bytes(data)
    return data


def body(path: Path) -> bytes:
    content = path.read_bytes()
    return content[read_header(io.BytesIO(content)).size :]


def test_rewrap_moves_the_artifact_to_the_current_version_and_keeps_the_body(
    keyset: LocalKeyProvider, model: bytes, tmp_path: Path
) -> None:
    artifact = tmp_path / "model.samd"
    encrypt_file(tmp_path / "model.bin", artifact, keyset, attributes={"kind": "file"}, segment_size=4096)
    body_before = body(artifact)
    keyset.rotate()

    result = rewrap_header(artifact, keyset)

    assert result.rewrapped
    assert (result.previous.key_version, result.header.key_version) == ("1", "2")
    assert read_header(io.BytesIO(artifact.read_bytes())).key_version == "2"
    assert body(artifact) == body_before
    assert dict(result.header.attributes) == {"kind": "file"}
    decrypt_file(artifact, tmp_path / "out.bin", keyset)
    assert (tmp_path / "out.bin").read_bytes() == model


def test_after_rewrap_the_old_version_is_no_longer_needed(
    keyset: LocalKeyProvider, model: bytes, tmp_path: Path
) -> None:
    artifact = tmp_path / "model.samd"
    encrypt_file(tmp_path / "model.bin", artifact, keyset)
    keyset.rotate()
    rewrap_header(artifact, keyset)
    # A keyset holding only version 2 now decrypts it.
    only_v2 = _keyset_without_version(keyset, 1)
    decrypt_file(artifact, tmp_path / "out.bin", only_v2)
    assert (tmp_path / "out.bin").read_bytes() == model


def test_rewrap_under_the_current_version_changes_nothing(
    keyset: LocalKeyProvider, model: bytes, tmp_path: Path
) -> None:
    artifact = tmp_path / "model.samd"
    encrypt_file(tmp_path / "model.bin", artifact, keyset)
    before = artifact.read_bytes()
    inode = artifact.stat().st_ino
    result = rewrap_header(artifact, keyset)
    assert not result.rewrapped
    assert artifact.read_bytes() == before
    assert artifact.stat().st_ino == inode


def test_forced_rewrap_writes_a_new_wrapped_key_under_the_same_version(
    keyset: LocalKeyProvider, model: bytes, tmp_path: Path
) -> None:
    artifact = tmp_path / "model.samd"
    encrypt_file(tmp_path / "model.bin", artifact, keyset)
    before = artifact.read_bytes()
    result = rewrap_header(artifact, keyset, force=True)
    assert result.rewrapped
    assert result.header.key_version == "1"
    assert result.header.wrapped_key != result.previous.wrapped_key  # a fresh wrap nonce
    after = artifact.read_bytes()
    assert after[result.header.size :] == before[result.previous.size :]
    decrypt_file(artifact, tmp_path / "out.bin", keyset)
    assert (tmp_path / "out.bin").read_bytes() == model


def test_rewrap_to_another_key_migrates_the_artifact(
    keyset: LocalKeyProvider, model: bytes, tmp_path: Path
) -> None:
    artifact = tmp_path / "model.samd"
    encrypt_file(tmp_path / "model.bin", artifact, keyset)
    body_before = body(artifact)
    target = LocalKeyProvider.generate("new-kek")
    result = rewrap_header(artifact, target, keys=keyset)
    assert (result.header.key_id, result.header.key_version) == ("new-kek", "1")
    assert body(artifact) == body_before
    with pytest.raises(KeyProviderError):
        decrypt_file(artifact, tmp_path / "out.bin", keyset)
    decrypt_file(artifact, tmp_path / "out.bin", KeyRing([target]))
    assert (tmp_path / "out.bin").read_bytes() == model


def test_rewrap_keeps_the_file_mode(keyset: LocalKeyProvider, model: bytes, tmp_path: Path) -> None:
    artifact = tmp_path / "model.samd"
    encrypt_file(tmp_path / "model.bin", artifact, keyset)
    artifact.chmod(0o640)
    keyset.rotate()
    rewrap_header(artifact, keyset)
    assert artifact.stat().st_mode & 0o777 == 0o640


def test_rewrap_refuses_a_tampered_header_and_leaves_the_file(
    keyset: LocalKeyProvider, model: bytes, tmp_path: Path
) -> None:
    artifact = tmp_path / "model.samd"
    encrypt_file(tmp_path / "model.bin", artifact, keyset)
    damaged = bytearray(artifact.read_bytes())
    damaged[read_header(io.BytesIO(bytes(damaged))).size - 1] ^= 1  # last byte of the header tag
    artifact.write_bytes(bytes(damaged))
    keyset.rotate()
    with pytest.raises(IntegrityError, match="header failed authentication"):
        rewrap_header(artifact, keyset)
    assert artifact.read_bytes() == bytes(damaged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyset.json", "model.bin", "model.samd"]


def test_rewrap_with_a_wrong_key_leaves_the_file(
    keyset: LocalKeyProvider, model: bytes, tmp_path: Path
) -> None:
    artifact = tmp_path / "model.samd"
    encrypt_file(tmp_path / "model.bin", artifact, keyset)
    before = artifact.read_bytes()
    with pytest.raises(KeyProviderError):
        rewrap_header(artifact, LocalKeyProvider.generate("kek"))
    assert artifact.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyset.json", "model.bin", "model.samd"]


def test_rewrap_of_a_missing_file_is_a_usage_error(keyset: LocalKeyProvider, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        rewrap_header(tmp_path / "nope.samd", keyset)


def test_rewrap_of_a_spliced_artifact_is_refused(
    keyset: LocalKeyProvider, model: bytes, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.samd", tmp_path / "b.samd"
    encrypt_file(tmp_path / "model.bin", first, keyset)
    encrypt_file(tmp_path / "model.bin", second, keyset)
    a, b = first.read_bytes(), second.read_bytes()
    spliced = tmp_path / "spliced.samd"
    spliced.write_bytes(a[: read_header(io.BytesIO(a)).size] + b[read_header(io.BytesIO(b)).size :])
    keyset.rotate()
    with pytest.raises(IntegrityError, match="belongs to another artifact"):
        rewrap_header(spliced, keyset)


def _keyset_without_version(keyset: LocalKeyProvider, version: int) -> LocalKeyProvider:
    document = json.loads(keyset.to_bytes())
    document["versions"] = [v for v in document["versions"] if v["version"] != version]
    return LocalKeyProvider.from_bytes(json.dumps(document).encode())
