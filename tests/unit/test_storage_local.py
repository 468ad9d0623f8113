"""Local files: streaming reads and all-or-nothing writes."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from samd.errors import StorageError, UsageError
from samd.storage import artifact_size, open_artifact, put_artifact
from samd.storage.stream import read_at_most

pytestmark = pytest.mark.unit

PAYLOAD = os.urandom(3 * (1 << 20) + 12345)


class BrokenSource(io.RawIOBase):
    """Yields ``good`` bytes, then fails the way a crashing producer (or disk) would."""

    def __init__(self, good: bytes, error: Exception) -> None:
        self._good = io.BytesIO(good)
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = self._good.readinto(buffer)
        if count:
            return count
        raise self._error


def listing(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize("form", ["path", "file-uri"])
def test_put_then_open_round_trips_the_bytes(tmp_path: Path, form: str) -> None:
    target = tmp_path / "model.samd"
    uri = str(target) if form == "path" else target.as_uri()
    put_artifact(uri, io.BytesIO(PAYLOAD))
    with open_artifact(uri) as reader:
        assert reader.size == len(PAYLOAD)
        first = reader.read(1000)
        rest = reader.read()
    assert first + rest == PAYLOAD
    assert artifact_size(uri) == len(PAYLOAD)


def test_readinto_streams_through_a_fixed_buffer(tmp_path: Path) -> None:
    target = tmp_path / "model.samd"
    target.write_bytes(PAYLOAD)
    buffer = bytearray(1 << 20)
    received = bytearray()
    with open_artifact(str(target)) as reader:
        while count := reader.readinto(buffer):
            received += buffer[:count]
    assert received == PAYLOAD


def test_the_stream_is_closed_when_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "model.samd"
    target.write_bytes(b"x")
    with open_artifact(str(target)) as reader:
        pass
    assert reader.closed


def test_progress_reports_every_byte_written(tmp_path: Path) -> None:
    reported: list[int] = []
    put_artifact(str(tmp_path / "m.samd"), io.BytesIO(PAYLOAD), progress=reported.append)
    assert sum(reported) == len(PAYLOAD)
    assert len(reported) >= 1


def test_a_put_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "m.samd"
    target.write_bytes(b"old version")
    put_artifact(str(target), io.BytesIO(b"new version"))
    assert target.read_bytes() == b"new version"
    assert listing(tmp_path) == ["m.samd"]


def test_a_new_file_gets_the_mode_a_plain_open_would_give(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "m.samd"
    put_artifact(str(target), io.BytesIO(b"data"))
    assert target.stat().st_mode & 0o777 == 0o644


def test_an_empty_source_writes_an_empty_file(tmp_path: Path) -> None:
    target = tmp_path / "empty.samd"
    put_artifact(str(target), io.BytesIO(b""))
    assert target.read_bytes() == b""
    with open_artifact(str(target)) as reader:
        assert reader.read() == b""


def test_a_failing_source_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "m.samd"
    target.write_bytes(b"the good old version")
    source = BrokenSource(PAYLOAD[: 9 << 20], OSError(5, "Input/output error"))
    with pytest.raises(
        StorageError, match=r"reading the data to write to .*m\.samd failed: Input/output error"
    ):
        put_artifact(str(target), io.BufferedReader(source))
    assert target.read_bytes() == b"the good old version"
    assert listing(tmp_path) == ["m.samd"]


def test_an_error_raised_by_the_producer_propagates_unchanged_and_nothing_is_written(tmp_path: Path) -> None:
    class ProducerError(Exception):
        pass

    target = tmp_path / "m.samd"
    with pytest.raises(ProducerError):
        put_artifact(str(target), io.BufferedReader(BrokenSource(PAYLOAD, ProducerError())))
    assert listing(tmp_path) == []


def test_writing_into_a_missing_directory_fails_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist") as raised:
        put_artifact(str(tmp_path / "nope" / "m.samd"), io.BytesIO(b"data"))
    assert raised.value.hint == "create it first"
    assert listing(tmp_path) == []


def test_writing_over_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with pytest.raises(StorageError, match="is a directory"):
        put_artifact(str(tmp_path / "models"), io.BytesIO(b"data"))
    assert listing(tmp_path / "models") == []


def test_reading_a_missing_file_is_a_clear_permanent_error(tmp_path: Path) -> None:
    with (
        pytest.raises(StorageError, match="no such file") as raised,
        open_artifact(str(tmp_path / "missing.samd")),
    ):
        pass
    assert not raised.value.transient
    with pytest.raises(StorageError, match="no such file"):
        artifact_size(str(tmp_path / "missing.samd"))


def test_reading_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is a directory"), open_artifact(str(tmp_path)):
        pass
    with pytest.raises(StorageError, match="is a directory"):
        artifact_size(str(tmp_path))


def test_server_side_encryption_options_are_refused_for_local_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="s3:// only"):
        put_artifact(str(tmp_path / "m.samd"), io.BytesIO(b"data"), sse="AES256")
    assert listing(tmp_path) == []


def test_https_is_read_only() -> None:
    with pytest.raises(UsageError, match="read only"):
        put_artifact("https://models.example/m.samd", io.BytesIO(b"data"))


def test_a_fifo_streams_with_an_unknown_size(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer_fd = os.open(fifo, os.O_RDWR)  # O_RDWR so opening the reader does not block
    try:
        os.write(writer_fd, b"streamed")
        with open_artifact(str(fifo)) as reader:
            assert reader.size is None
            assert reader.read(8) == b"streamed"
        assert artifact_size(str(fifo)) is None
    finally:
        os.close(writer_fd)


class _Recording(io.BytesIO):
    """A source that remembers the size of every read asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.asked.append(-1 if size is None else size)
        return super().read(size)


def test_a_bounded_read_never_asks_for_the_whole_limit_at_once() -> None:
    """A signature is a few kilobytes under a 16 MiB limit: no read may allocate the limit."""
    limit = 16 * 1024 * 1024
    small = _Recording(b"s" * 3000)
    assert read_at_most(small, limit) == b"s" * 3000
    oversized = _Recording(b"x" * (limit + 100))
    assert len(read_at_most(oversized, limit)) == limit + 1  # one more than allowed: "too large"
    assert max(small.asked + oversized.asked) <= 64 * 1024
