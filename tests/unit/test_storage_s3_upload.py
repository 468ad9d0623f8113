"""The upload's view of its source: read once, part by part, refused before S3's part limit."""

from __future__ import annotations

import io

import pytest

from samd.errors import StorageError
from samd.storage.s3 import MAX_PARTS, _SourceReader

pytestmark = pytest.mark.unit


def test_a_source_that_outgrows_the_part_limit_is_refused_with_a_clear_error() -> None:
    reader = _SourceReader(io.BytesIO(bytes(MAX_PARTS + 1)), "s3://models/big.samd", part_size=1)
    assert reader.read(MAX_PARTS) == bytes(MAX_PARTS)  # exactly 10,000 one-byte parts fit
    with pytest.raises(StorageError) as raised:
        reader.read(1)
    assert raised.value.message == (
        f"cannot write s3://models/big.samd: the data needs more than {MAX_PARTS} parts of 1 bytes"
    )
    assert raised.value.hint == "use a larger part size"


class Trickle(io.RawIOBase):
    """A pipe that hands out at most 3 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 3) if size >= 0 else 3)


def test_a_part_is_filled_from_a_source_that_returns_short_reads() -> None:
    reader = _SourceReader(Trickle(b"0123456789"), "s3://models/m.samd", part_size=8)  # type: ignore[arg-type]
    assert reader.read(8) == b"01234567"
    assert reader.read(8) == b"89"
    assert reader.read(8) == b""
