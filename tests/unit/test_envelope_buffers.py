"""Decrypting into reusable buffers (`EnvelopeReader.decrypted_views`, what `samd fetch` uses).

The same plaintext and the same refusals as `segments`, in a fixed amount of memory: no view ever
holds a segment that failed authentication, and a buffer is reused only once it is given back.
"""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from samd.envelope import EnvelopeReader, body_offset, encrypt_stream, read_header
from samd.envelope.stream import SegmentBuffers, SegmentBuffersClosedError
from samd.errors import IntegrityError
from samd.keys import LocalKeyProvider

pytestmark = pytest.mark.unit

SEGMENT = 256
FIRST = SEGMENT - 40  # the first segment leaves room for the 40-byte stream header (docs/format.md)
TAG = 16


@pytest.fixture
def keyset() -> LocalKeyProvider:
    return LocalKeyProvider.generate("test-key")


def encrypt(data: bytes, provider: LocalKeyProvider, *, segment_size: int = SEGMENT) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, provider, segment_size=segment_size)
    return out.getvalue()


def read_views(
    artifact: bytes, provider: LocalKeyProvider, buffers: SegmentBuffers, received: list[bytes] | None = None
) -> list[bytes]:
    """Decrypt through views, copying each view and giving its buffer back at once."""
    received = [] if received is None else received
    reader = EnvelopeReader(io.BytesIO(artifact), provider)
    for view in reader.decrypted_views(buffers):
        received.append(bytes(view))
        buffers.give_back(view)
    return received


def segment_start(artifact: bytes, index: int) -> int:
    """Where ciphertext segment `index` starts (docs/format.md)."""
    start = body_offset(read_header(io.BytesIO(artifact)))
    return start if index == 0 else start + FIRST + TAG + (index - 1) * (SEGMENT + TAG)


@pytest.mark.parametrize("size", [0, 1, FIRST, FIRST + 1, FIRST + SEGMENT, 10_000])
@pytest.mark.parametrize("segments_per_buffer", [1, 3])
def test_views_give_back_the_plaintext(keyset: LocalKeyProvider, size: int, segments_per_buffer: int) -> None:
    data = os.urandom(size)
    views = read_views(encrypt(data, keyset), keyset, SegmentBuffers(2, segments_per_buffer * SEGMENT))
    assert b"".join(views) == data


def test_a_buffer_holds_as_many_whole_segments_as_fit(keyset: LocalKeyProvider) -> None:
    data = os.urandom(FIRST + 7 * SEGMENT + 5)  # 9 segments, the last one of 5 bytes
    views = read_views(encrypt(data, keyset), keyset, SegmentBuffers(2, 3 * SEGMENT + 100))
    assert [len(view) for view in views] == [FIRST + 2 * SEGMENT, 3 * SEGMENT, 2 * SEGMENT + 5]


def test_buffers_are_handed_out_in_ring_order(keyset: LocalKeyProvider) -> None:
    data = os.urandom(FIRST + 2 * SEGMENT)  # three segments
    buffers = SegmentBuffers(2, SEGMENT)
    received = read_views(encrypt(data, keyset), keyset, buffers)
    assert len(received) == 3
    # The third view reused the first buffer; the second is still in the second.
    assert bytes(buffers.block[: len(received[2])]) == received[2]
    assert bytes(buffers.block[SEGMENT : 2 * SEGMENT]) == received[1]


def test_the_producer_waits_for_a_buffer_to_come_back(keyset: LocalKeyProvider) -> None:
    data = os.urandom(FIRST + 5 * SEGMENT)
    buffers = SegmentBuffers(1, SEGMENT)
    views = EnvelopeReader(io.BytesIO(encrypt(data, keyset)), keyset).decrypted_views(buffers)
    first = next(views)
    copy_of_first = bytes(first)
    got_second = threading.Event()
    second: list[bytes] = []

    def consume_second() -> None:
        second.append(bytes(next(views)))
        got_second.set()

    thread = threading.Thread(target=consume_second, daemon=True)
    thread.start()
    assert not got_second.wait(0.3), "the only buffer was reused before it was given back"
    assert bytes(first) == copy_of_first  # untouched while it was out
    buffers.give_back(first)
    assert got_second.wait(10)
    thread.join(10)
    assert copy_of_first + second[0] == data[: FIRST + SEGMENT]


def test_closing_the_buffers_releases_a_waiting_producer() -> None:
    buffers = SegmentBuffers(1, 64)
    buffers.take()
    outcome: list[BaseException] = []

    def take_again() -> None:
        try:
            buffers.take()
        except SegmentBuffersClosedError as error:
            outcome.append(error)

    thread = threading.Thread(target=take_again, daemon=True)
    thread.start()
    time.sleep(0.1)
    buffers.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1
    with pytest.raises(SegmentBuffersClosedError):
        buffers.take()


def test_buffers_smaller_than_a_segment_are_refused(keyset: LocalKeyProvider) -> None:
    reader = EnvelopeReader(io.BytesIO(encrypt(b"x" * 1000, keyset)), keyset)
    with pytest.raises(ValueError, match="cannot hold a segment of 256 bytes"):
        next(reader.decrypted_views(SegmentBuffers(2, SEGMENT - 1)))


def test_only_views_of_the_pool_can_be_given_back() -> None:
    buffers = SegmentBuffers(1, 64)
    with pytest.raises(ValueError, match="view of a buffer from this pool"):
        buffers.give_back(memoryview(bytearray(32)))
    with pytest.raises(ValueError, match="more buffers given back than were taken"):
        buffers.give_back(buffers.block[:64])
    with pytest.raises(ValueError, match="at least one buffer"):
        SegmentBuffers(0, 64)


def test_views_and_segments_cannot_both_read_one_artifact(keyset: LocalKeyProvider) -> None:
    reader = EnvelopeReader(io.BytesIO(encrypt(b"abc", keyset)), keyset)
    assert b"".join(reader.segments()) == b"abc"
    with pytest.raises(RuntimeError, match="only once"):
        next(reader.decrypted_views(SegmentBuffers(1, SEGMENT)))


def test_progress_counts_every_artifact_byte(keyset: LocalKeyProvider) -> None:
    artifact = encrypt(os.urandom(5000), keyset)
    consumed: list[int] = []
    buffers = SegmentBuffers(2, 4 * SEGMENT)
    for view in EnvelopeReader(io.BytesIO(artifact), keyset).decrypted_views(
        buffers, progress=consumed.append
    ):
        buffers.give_back(view)
    assert sum(consumed) == len(artifact)


# -- damage: the same refusals as `segments`, and nothing of a bad segment is handed out ----------


@pytest.fixture
def plaintext() -> bytes:
    return os.urandom(FIRST + 11 * SEGMENT + 100)  # 13 segments


@pytest.mark.parametrize("damaged_segment", [0, 4, 5, 12])
def test_a_view_never_holds_a_segment_that_failed(
    keyset: LocalKeyProvider, plaintext: bytes, damaged_segment: int
) -> None:
    artifact = bytearray(encrypt(plaintext, keyset))
    artifact[segment_start(bytes(artifact), damaged_segment) + 3] ^= 0x01
    received: list[bytes] = []
    with pytest.raises(
        IntegrityError, match=rf"segment {damaged_segment}|final segment \({damaged_segment}\)"
    ):
        read_views(bytes(artifact), keyset, SegmentBuffers(2, 4 * SEGMENT), received)
    handed_out = b"".join(received)
    damaged_starts_at = 0 if damaged_segment == 0 else FIRST + (damaged_segment - 1) * SEGMENT
    assert plaintext.startswith(handed_out)
    assert len(handed_out) <= damaged_starts_at


def test_truncation_at_a_segment_boundary_is_detected(keyset: LocalKeyProvider, plaintext: bytes) -> None:
    artifact = encrypt(plaintext, keyset)
    with pytest.raises(IntegrityError, match="truncated: it ends after segment 5"):
        read_views(artifact[: segment_start(artifact, 6)], keyset, SegmentBuffers(2, 3 * SEGMENT))


def test_swapped_segments_are_detected(keyset: LocalKeyProvider, plaintext: bytes) -> None:
    artifact = encrypt(plaintext, keyset)
    third, fourth, fifth = (segment_start(artifact, index) for index in (3, 4, 5))
    swapped = artifact[:third] + artifact[fourth:fifth] + artifact[third:fourth] + artifact[fifth:]
    with pytest.raises(IntegrityError, match="out of order: position 3 holds segment 4"):
        read_views(swapped, keyset, SegmentBuffers(2, 2 * SEGMENT))


def test_appended_bytes_are_detected(keyset: LocalKeyProvider, plaintext: bytes) -> None:
    with pytest.raises(IntegrityError):
        read_views(encrypt(plaintext, keyset) + b"\x00", keyset, SegmentBuffers(2, SEGMENT))
