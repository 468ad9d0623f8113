"""The data key id: what the operator records to tell a data key's age (status.key.dataKeyId).

It must stay the same when the data key is only re-wrapped (a key-encryption key rotation) and change
when the data key is replaced (`samd reencrypt`), or the audit's data-key-rotation-overdue would be wrong.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from samd.cli import main
from samd.envelope import encrypt_file, read_header, reencrypt_file, rewrap_header
from samd.keys import LocalKeyProvider, keygen_local

pytestmark = pytest.mark.unit


def data_key_id(path: Path) -> str:
    return read_header(io.BytesIO(path.read_bytes())).data_key_id


def test_a_rewrap_keeps_the_data_key_id_and_a_reencryption_changes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyset: LocalKeyProvider = keygen_local(tmp_path / "keyset.json", key_id="kek")
    (tmp_path / "model.bin").write_bytes(os.urandom(20_000))
    artifact, other = tmp_path / "model.samd", tmp_path / "other.samd"
    encrypt_file(tmp_path / "model.bin", artifact, keyset, attributes={}, segment_size=4096)
    encrypt_file(tmp_path / "model.bin", other, keyset, attributes={}, segment_size=4096)
    first = data_key_id(artifact)
    assert len(first) == 32
    assert data_key_id(other) != first  # the same model encrypted twice: two data keys

    keyset.rotate()
    assert rewrap_header(artifact, keyset).rewrapped  # wrapped again, under the new version
    assert data_key_id(artifact) == first

    reencrypt_file(artifact, keyset)
    assert data_key_id(artifact) not in (first, data_key_id(other))

    capsys.readouterr()
    assert main(["inspect", str(artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["header"]["key"]["data_key_id"] == data_key_id(artifact)
    assert main(["inspect", str(artifact)]) == 0
    assert f"data key id:  {data_key_id(artifact)}" in capsys.readouterr().out
