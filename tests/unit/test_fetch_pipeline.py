"""The fetch pipeline (`stream_into_directory`): every file's digest is the SHA-256 of its bytes,
whatever the layout of files across segments and ring buffers, and however far the hashing
thread lags behind the worker (it then hashes the pieces of a file in neighbouring buffers with
one call)."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

import samd.fetch
from samd.envelope import EnvelopeReader, encrypt_stream
from samd.envelope.stream import SegmentBuffers
from samd.fetch import CONTENT_ATTRIBUTE, CONTENT_FILE, CONTENT_TAR, stream_into_directory
from samd.keys import LocalKeyProvider
from samd.modelpack import pack_directory

pytestmark = pytest.mark.unit

SEGMENT = 1024
FIRST = SEGMENT - 40


class SlowSha256:
    """SHA-256 that dawdles, so that the worker fills the ring ahead of the hashing thread."""

    calls = 0

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, data: Any) -> None:
        type(self).calls += 1
        time.sleep(0.002)
        self._digest.update(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@pytest.fixture
def keyset() -> LocalKeyProvider:
    return LocalKeyProvider.generate("test-key")


def write_files(root: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    files = {name: os.urandom(size) for name, size in sizes.items()}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def encrypt(plaintext: io.RawIOBase | io.BytesIO, provider: LocalKeyProvider, content: str) -> bytes:
    out = io.BytesIO()
    encrypt_stream(plaintext, out, provider, attributes={CONTENT_ATTRIBUTE: content}, segment_size=SEGMENT)  # type: ignore[arg-type]
    return out.getvalue()


LAYOUTS = {
    # sizes chosen to end exactly on, just before and just after segment and buffer boundaries
    "boundaries": {
        "a.bin": 0,
        "b.bin": 1,
        "c.bin": 511,
        "c2.bin": 512,
        "c3.bin": 513,
        "d.bin": SEGMENT,
        "e.bin": 3 * SEGMENT + 1,
        "f.bin": 5 * SEGMENT - 1,
        "g/h.bin": 2 * SEGMENT,
    },
    "one large file among small ones": {"config.json": 100, "weights.bin": 40 * SEGMENT + 7, "z.txt": 3},
    "many small files": {f"part-{index:03d}.bin": 300 + 97 * index for index in range(40)},
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize(("count", "segments_per_buffer"), [(2, 1), (4, 1), (4, 2), (8, 1)])
@pytest.mark.parametrize("slow_hashing", [False, True], ids=["fast hashing", "slow hashing"])
def test_every_digest_matches_the_bytes_written(  # noqa: PLR0917 - pytest parameters
    keyset: LocalKeyProvider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    layout: dict[str, int],
    count: int,
    segments_per_buffer: int,
    slow_hashing: bool,
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    files = write_files(model, layout)
    artifact = encrypt(pack_directory(model), keyset, CONTENT_TAR)
    if slow_hashing:
        monkeypatch.setattr(samd.fetch, "_new_hasher", lambda _algorithm: SlowSha256())
    output = tmp_path / "out"
    output.mkdir()
    buffers = SegmentBuffers(count, segments_per_buffer * SEGMENT)
    streamed = stream_into_directory(
        EnvelopeReader(io.BytesIO(artifact), keyset).decrypted_views(buffers),
        output,
        packing="tar",
        expected=dict.fromkeys(files, "sha256"),
        buffers=buffers,
    )
    assert {item.name: item.digest for item in streamed} == {
        name: hashlib.sha256(data).hexdigest() for name, data in files.items()
    }
    assert {item.name: item.size for item in streamed} == {name: len(data) for name, data in files.items()}
    assert {name: (output / name).read_bytes() for name in files} == files


def test_a_lagging_hasher_hashes_neighbouring_buffers_in_one_call(
    keyset: LocalKeyProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(FIRST + 63 * SEGMENT)  # 64 segments, one buffer each
    artifact = encrypt(io.BytesIO(data), keyset, CONTENT_FILE)
    monkeypatch.setattr(samd.fetch, "_new_hasher", lambda _algorithm: SlowSha256())
    SlowSha256.calls = 0
    buffers = SegmentBuffers(8, SEGMENT)
    streamed = stream_into_directory(
        EnvelopeReader(io.BytesIO(artifact), keyset).decrypted_views(buffers),
        tmp_path,
        packing="file",
        expected={"model.bin": "sha256"},
        file_name="model.bin",
        buffers=buffers,
    )
    assert [item.digest for item in streamed] == [hashlib.sha256(data).hexdigest()]
    assert (tmp_path / "model.bin").read_bytes() == data
    assert SlowSha256.calls < 64 / 2  # most calls covered several buffers


def test_without_buffers_plain_segments_still_work(keyset: LocalKeyProvider, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    files = write_files(model, LAYOUTS["boundaries"])
    artifact = encrypt(pack_directory(model), keyset, CONTENT_TAR)
    output = tmp_path / "out"
    output.mkdir()
    streamed = stream_into_directory(
        EnvelopeReader(io.BytesIO(artifact), keyset).segments(prefetch=0),
        output,
        packing="tar",
        expected=dict.fromkeys(files, "sha256"),
    )
    assert {item.name: item.digest for item in streamed} == {
        name: hashlib.sha256(data).hexdigest() for name, data in files.items()
    }
