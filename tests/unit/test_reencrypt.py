"""Re-encryption: a new data key (the answer to a leaked one), the same plaintext, nothing half-written."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from samd.cli import main
from samd.envelope import decrypt_file, encrypt_file, read_header, reencrypt_file
from samd.envelope.stream import open_artifact
from samd.errors import IntegrityError
from samd.keys import LocalKeyProvider, keygen_local

pytestmark = pytest.mark.unit


@pytest.fixture
def keyset(tmp_path: Path) -> LocalKeyProvider:
    return keygen_local(tmp_path / "keyset.json", key_id="kek")


@pytest.fixture
def artifact(keyset: LocalKeyProvider, tmp_path: Path) -> Path:
    (tmp_path / "model.bin").write_bytes(os.urandom(150_000))
    path = tmp_path / "model.samd"
    encrypt_file(tmp_path / "model.bin", path, keyset, attributes={"samd.content": "file"}, segment_size=4096)
    return path


def data_key(path: Path, keys: LocalKeyProvider) -> bytes:
    with path.open("rb") as src:
        return open_artifact(src, keys)[1]


def test_reencrypt_replaces_the_data_key_and_keeps_the_plaintext(
    keyset: LocalKeyProvider, artifact: Path, tmp_path: Path
) -> None:
    old_key, old_header = data_key(artifact, keyset), read_header(io.BytesIO(artifact.read_bytes()))
    result = reencrypt_file(artifact, keyset)
    assert data_key(artifact, keyset) != old_key
    header = read_header(io.BytesIO(artifact.read_bytes()))
    assert header.salt != old_header.salt
    assert dict(header.attributes) == {"samd.content": "file"}
    assert header.segment_size == 4096
    assert result.plaintext_bytes == 150_000
    decrypt_file(artifact, tmp_path / "out.bin", keyset)
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "model.bin").read_bytes()


def test_reencrypt_under_another_key_needs_the_old_one_to_read(
    keyset: LocalKeyProvider, artifact: Path, tmp_path: Path
) -> None:
    new = keygen_local(tmp_path / "new.json", key_id="new-kek")
    reencrypt_file(artifact, new, keys=keyset, output=tmp_path / "moved.samd")
    assert read_header(io.BytesIO((tmp_path / "moved.samd").read_bytes())).key_id == "new-kek"
    decrypt_file(tmp_path / "moved.samd", tmp_path / "out.bin", new)
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "model.bin").read_bytes()


def test_a_truncated_artifact_is_refused_and_left_as_it_was(keyset: LocalKeyProvider, artifact: Path) -> None:
    truncated = artifact.read_bytes()[:-5000]
    artifact.write_bytes(truncated)
    with pytest.raises(IntegrityError):
        reencrypt_file(artifact, keyset)
    assert artifact.read_bytes() == truncated
    assert [p.name for p in artifact.parent.iterdir() if p.name.endswith(".partial")] == []


def test_the_cli_reencrypts_in_place_and_says_the_old_key_no_longer_decrypts(
    keyset: LocalKeyProvider, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_key = data_key(artifact, keyset)
    code = main(["reencrypt", str(artifact), "--key", f"local:{tmp_path / 'keyset.json'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "under a new data key" in out
    assert "the old data key no longer decrypts it" in out
    assert data_key(artifact, keyset) != old_key


def test_the_cli_wants_exactly_one_key(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reencrypt", str(artifact)]) == 2
    assert "Missing option '--key'" in capsys.readouterr().err
    keygen_local(tmp_path / "other.json")
    keys = ["--key", f"local:{tmp_path / 'keyset.json'}", "--key", f"local:{tmp_path / 'other.json'}"]
    assert main(["reencrypt", str(artifact), *keys]) == 2
    assert "exactly one --key" in capsys.readouterr().err
