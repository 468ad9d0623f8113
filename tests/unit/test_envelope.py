"""Streaming envelope encryption: round trips, and every kind of damage refused with its own message."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from samd.envelope import (
    DEFAULT_SEGMENT_SIZE,
    MAGIC,
    EnvelopeReader,
    Header,
    body_offset,
    decrypt_file,
    decrypt_segments,
    decrypt_stream,
    encrypt_file,
    encrypt_stream,
    read_header,
)
from samd.errors import IntegrityError, KeyProviderError, UsageError
from samd.keys import KeyRing, LocalKeyProvider

pytestmark = pytest.mark.unit

SEGMENT = 256  # small segments: many of them in a few kilobytes
FIRST = SEGMENT - 40  # the first segment leaves room for the 40-byte stream header (docs/format.md)
TAG = 16


@pytest.fixture
def keyset() -> LocalKeyProvider:
    return LocalKeyProvider.generate("test-key")


def encrypt(
    data: bytes, provider: LocalKeyProvider, *, segment_size: int = SEGMENT, **attributes: str
) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, provider, attributes=attributes, segment_size=segment_size)
    return out.getvalue()


def decrypt(artifact: bytes, provider: LocalKeyProvider, *, prefetch: int = 2) -> bytes:
    return b"".join(decrypt_segments(io.BytesIO(artifact), provider, prefetch=prefetch))


def segment_bounds(artifact: bytes) -> list[tuple[int, int]]:
    """(start, end) of each ciphertext segment, from the layout in docs/format.md."""
    start = body_offset(read_header(io.BytesIO(artifact)))
    bounds, size = [], FIRST + TAG
    while start < len(artifact):
        bounds.append((start, min(start + size, len(artifact))))
        start += size
        size = SEGMENT + TAG
    return bounds


def flip(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0x01
    return bytes(damaged)


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        FIRST - 1,
        FIRST,  # exactly one full first segment
        FIRST + 1,
        FIRST + SEGMENT,  # exact multiple: two full segments
        FIRST + 3 * SEGMENT,
        FIRST + 3 * SEGMENT + 1,
        10_000,
    ],
)
@pytest.mark.parametrize("prefetch", [0, 2])
def test_round_trip(keyset: LocalKeyProvider, size: int, prefetch: int) -> None:
    data = os.urandom(size)
    artifact = encrypt(data, keyset)
    assert decrypt(artifact, keyset, prefetch=prefetch) == data


def test_ciphertext_size_follows_the_documented_layout(keyset: LocalKeyProvider) -> None:
    data = os.urandom(FIRST + 2 * SEGMENT + 5)  # four segments: full, full, full, 5 bytes
    artifact = encrypt(data, keyset)
    header = read_header(io.BytesIO(artifact))
    assert len(artifact) == body_offset(header) + len(data) + 4 * TAG


def test_empty_input_still_has_one_authenticated_segment(keyset: LocalKeyProvider) -> None:
    artifact = encrypt(b"", keyset)
    header = read_header(io.BytesIO(artifact))
    assert len(artifact) == body_offset(header) + TAG
    assert decrypt(artifact, keyset) == b""


def test_large_input_with_default_segments(keyset: LocalKeyProvider) -> None:
    data = os.urandom(3 * DEFAULT_SEGMENT_SIZE + 12_345)
    artifact = encrypt(data, keyset, segment_size=DEFAULT_SEGMENT_SIZE)
    assert hashlib.sha256(decrypt(artifact, keyset)).digest() == hashlib.sha256(data).digest()


def test_two_encryptions_of_the_same_input_differ(keyset: LocalKeyProvider) -> None:
    data = b"the same model twice" * 50
    first, second = encrypt(data, keyset), encrypt(data, keyset)
    assert first != second
    assert read_header(io.BytesIO(first)).salt != read_header(io.BytesIO(second)).salt


class DribblingReader(io.RawIOBase):
    """A source that returns at most 7 bytes per read, like a slow socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(7, len(buffer)))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class ReadOnlySource:
    """A source with only read() (no readinto), like some HTTP bodies."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 5) if size > 0 else 5)


def test_short_reads_from_the_source_are_handled(keyset: LocalKeyProvider) -> None:
    data = os.urandom(FIRST + 2 * SEGMENT + 33)
    out = io.BytesIO()
    encrypt_stream(DribblingReader(data), out, keyset, segment_size=SEGMENT)  # type: ignore[arg-type]
    artifact = out.getvalue()
    assert b"".join(decrypt_segments(DribblingReader(artifact), keyset)) == data  # type: ignore[arg-type]
    assert b"".join(decrypt_segments(ReadOnlySource(artifact), keyset)) == data  # type: ignore[arg-type]


def test_header_records_key_segment_size_and_attributes(keyset: LocalKeyProvider) -> None:
    artifact = encrypt(b"x", keyset, segment_size=4096, kind="file", name="model.onnx")
    header = read_header(io.BytesIO(artifact))
    assert (header.provider, header.key_id, header.key_version) == ("local", "test-key", "1")
    assert header.segment_size == 4096
    assert dict(header.attributes) == {"kind": "file", "name": "model.onnx"}
    shown = header.to_dict()
    assert shown["attributes"] == {"kind": "file", "name": "model.onnx"}
    assert "wrapped" not in json.dumps(shown).replace("wrapped_key_sha256", "")


def test_header_dict_holds_no_key_material(keyset: LocalKeyProvider) -> None:
    artifact = encrypt(b"secret model", keyset)
    header = read_header(io.BytesIO(artifact))
    text = json.dumps(header.to_dict())
    assert header.wrapped_key.hex() not in text
    assert keyset.to_bytes().decode() not in text


def test_progress_reports_every_byte_read(keyset: LocalKeyProvider) -> None:
    data = os.urandom(FIRST + 5 * SEGMENT + 1)
    seen: list[int] = []
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, keyset, segment_size=SEGMENT, progress=seen.append)
    assert sum(seen) == len(data)
    artifact = out.getvalue()
    for prefetch in (0, 2):
        consumed: list[int] = []
        list(decrypt_segments(io.BytesIO(artifact), keyset, prefetch=prefetch, progress=consumed.append))
        assert sum(consumed) == len(artifact)


def test_decrypt_stream_returns_the_header(keyset: LocalKeyProvider) -> None:
    artifact = encrypt(b"abc", keyset, kind="tar")
    out = io.BytesIO()
    header = decrypt_stream(io.BytesIO(artifact), out, keyset)
    assert out.getvalue() == b"abc"
    assert header.attributes["kind"] == "tar"


def test_a_header_read_first_is_authenticated_when_decrypting(keyset: LocalKeyProvider) -> None:
    artifact = encrypt(b"abc" * 300, keyset, kind="tar")
    source = io.BytesIO(artifact)
    header = read_header(source)  # e.g. to choose how to unpack from its attributes
    assert header.attributes["kind"] == "tar"
    assert b"".join(decrypt_segments(source, keyset, header=header)) == b"abc" * 300

    start, end = header_json_span(artifact)
    tampered = (
        artifact[: artifact.index(b"tar", start, end)]
        + b"zip"
        + artifact[artifact.index(b"tar", start, end) + 3 :]
    )
    source = io.BytesIO(tampered)
    header = read_header(source)
    assert header.attributes["kind"] == "zip"  # unauthenticated until decryption starts
    with pytest.raises(IntegrityError, match="header failed authentication"):
        decrypt_segments(source, keyset, header=header)


def test_segments_can_be_read_only_once(keyset: LocalKeyProvider) -> None:
    reader = EnvelopeReader(io.BytesIO(encrypt(b"abc", keyset)), keyset)
    assert b"".join(reader.segments()) == b"abc"
    with pytest.raises(RuntimeError, match="only once"):
        list(reader.segments())


def test_abandoning_the_iterator_stops_the_worker(keyset: LocalKeyProvider) -> None:
    artifact = encrypt(os.urandom(FIRST + 40 * SEGMENT), keyset)
    segments = decrypt_segments(io.BytesIO(artifact), keyset, prefetch=2)
    next(segments)
    segments.close()
    assert not [t for t in threading.enumerate() if t.name == "samd-decrypt"]


@pytest.mark.parametrize("segment_size", [0, 255, (64 << 20) + 1])
def test_segment_size_out_of_range_is_refused(keyset: LocalKeyProvider, segment_size: int) -> None:
    with pytest.raises(UsageError, match="segment size"):
        encrypt(b"x", keyset, segment_size=segment_size)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"": "x"}, "invalid attribute name"),
        ({"a b": "x"}, "invalid attribute name"),
        ({"k": "v" * 5000}, "at most"),
    ],
)
def test_bad_attributes_are_refused(
    keyset: LocalKeyProvider, attributes: dict[str, str], message: str
) -> None:
    out = io.BytesIO()
    with pytest.raises(UsageError, match=message):
        encrypt_stream(io.BytesIO(b"x"), out, keyset, attributes=attributes)


# -- constant memory ------------------------------------------------------------------------------


class Pattern(io.RawIOBase):
    """`size` bytes of a repeating pattern, generated on demand (never held in memory)."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._left)
        buffer[:count] = b"\xa5" * count
        self._left -= count
        return count


def test_memory_stays_constant_whatever_the_size(keyset: LocalKeyProvider, tmp_path: Path) -> None:
    size = 48 << 20
    artifact = tmp_path / "big.samd"
    tracemalloc.start()
    try:
        with artifact.open("wb") as out:
            encrypt_stream(Pattern(size), out, keyset, segment_size=1 << 20)  # type: ignore[arg-type]
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        with artifact.open("rb") as src:
            for segment in decrypt_segments(src, keyset, prefetch=2):
                digest.update(segment)
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(b"\xa5" * size).digest()
    assert encrypt_peak < 8 << 20, f"encrypt peaked at {encrypt_peak} bytes for a {size}-byte input"
    assert decrypt_peak < 10 << 20, f"decrypt peaked at {decrypt_peak} bytes for a {size}-byte input"


# -- damage to the body ---------------------------------------------------------------------------


@pytest.fixture
def data() -> bytes:
    return os.urandom(FIRST + 4 * SEGMENT + 100)  # six segments: 0..4 full, 5 partial


@pytest.fixture
def artifact(keyset: LocalKeyProvider, data: bytes) -> bytes:
    return encrypt(data, keyset)


def read_until_error(
    artifact: bytes, provider: LocalKeyProvider, prefetch: int = 2
) -> tuple[bytes, IntegrityError]:
    """Plaintext yielded before the error, and the error."""
    received = bytearray()

    def consume() -> None:
        for segment in decrypt_segments(io.BytesIO(artifact), provider, prefetch=prefetch):
            received.extend(segment)

    with pytest.raises(IntegrityError) as caught:
        consume()
    return bytes(received), caught.value


@pytest.mark.parametrize("prefetch", [0, 2])
def test_truncation_at_a_segment_boundary_is_detected(
    keyset: LocalKeyProvider, artifact: bytes, data: bytes, prefetch: int
) -> None:
    bounds = segment_bounds(artifact)
    _, end_of_segment_2 = bounds[2]
    received, error = read_until_error(artifact[:end_of_segment_2], keyset, prefetch)
    assert "truncated: it ends after segment 2, which is not its final segment" in error.message
    assert received == data[: FIRST + SEGMENT]  # segments 0 and 1 came out before the error


def test_dropping_the_last_segment_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    last_start, _ = segment_bounds(artifact)[-1]
    _, error = read_until_error(artifact[:last_start], keyset)
    assert "truncated: it ends after segment 4" in error.message


def test_truncation_inside_a_segment_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    start, end = segment_bounds(artifact)[3]
    _, error = read_until_error(artifact[: start + (end - start) // 2], keyset)
    assert (
        "final segment (3) failed authentication: the artifact was truncated inside a segment"
        in error.message
    )


def test_truncation_inside_the_tag_of_the_first_segment_is_detected(
    keyset: LocalKeyProvider, artifact: bytes
) -> None:
    start, _ = segment_bounds(artifact)[0]
    _, error = read_until_error(artifact[: start + 5], keyset)
    assert "final segment (0) failed authentication" in error.message


def test_truncation_right_after_the_header_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    header = read_header(io.BytesIO(artifact))
    with pytest.raises(IntegrityError, match="ends right after its header"):
        decrypt(artifact[: header.size + 10], keyset)
    with pytest.raises(IntegrityError, match="body has no segment"):
        decrypt(artifact[: body_offset(header)], keyset)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_swapped_segments_are_detected(keyset: LocalKeyProvider, artifact: bytes, prefetch: int) -> None:
    bounds = segment_bounds(artifact)
    (s1, e1), (s2, e2) = bounds[1], bounds[2]
    swapped = artifact[:s1] + artifact[s2:e2] + artifact[s1:e1] + artifact[e2:]
    assert len(swapped) == len(artifact)
    _, error = read_until_error(swapped, keyset, prefetch)
    assert "out of order: position 1 holds segment 2" in error.message


def test_a_removed_middle_segment_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    s2, e2 = segment_bounds(artifact)[2]
    _, error = read_until_error(artifact[:s2] + artifact[e2:], keyset)
    assert "out of order: position 2 holds segment 3" in error.message


def test_a_duplicated_segment_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    (s1, e1), (s2, e2) = segment_bounds(artifact)[1:3]
    duplicated = artifact[:s2] + artifact[s1:e1] + artifact[e2:]
    _, error = read_until_error(duplicated, keyset)
    assert "out of order: position 2 holds segment 1" in error.message


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_bit_flip_in_the_body_is_detected(
    keyset: LocalKeyProvider, artifact: bytes, data: bytes, prefetch: int
) -> None:
    start, end = segment_bounds(artifact)[2]
    received, error = read_until_error(flip(artifact, (start + end) // 2), keyset, prefetch)
    assert "segment 2 failed authentication: the encrypted data was altered" in error.message
    assert received == data[: FIRST + SEGMENT]


def test_a_bit_flip_in_a_segment_tag_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    _, end = segment_bounds(artifact)[1]
    _, error = read_until_error(flip(artifact, end - 1), keyset)
    assert "segment 1 failed authentication" in error.message


def test_a_bit_flip_in_the_last_segment_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    _, error = read_until_error(flip(artifact, len(artifact) - 20), keyset)
    assert "final segment (5) failed authentication" in error.message


def test_appended_bytes_are_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    _, error = read_until_error(artifact + b"\x00" * 7, keyset)
    assert "final segment (5) failed authentication" in error.message


def test_a_bit_flip_in_the_stream_header_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    header = read_header(io.BytesIO(artifact))
    with pytest.raises(IntegrityError, match="belongs to another artifact"):
        decrypt(flip(artifact, header.size + 5), keyset)


# -- damage to the header -------------------------------------------------------------------------


def header_json_span(artifact: bytes) -> tuple[int, int]:
    (json_size,) = struct.unpack(">I", artifact[10:14])
    return 14, 14 + json_size


def rewrite_header_json(artifact: bytes, change: dict[str, object]) -> bytes:
    start, end = header_json_span(artifact)
    document = json.loads(artifact[start:end])
    document.update(change)
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return artifact[:10] + struct.pack(">I", len(body)) + body + artifact[end:]


def test_an_altered_attribute_is_detected(keyset: LocalKeyProvider) -> None:
    artifact = encrypt(b"weights", keyset, kind="file", name="model.onnx")
    start, end = header_json_span(artifact)
    position = artifact.index(b"model.onnx", start, end)
    tampered = artifact[:position] + b"mODEL" + artifact[position + 5 :]
    assert read_header(io.BytesIO(tampered)).attributes["name"] == "mODEL.onnx"
    with pytest.raises(IntegrityError, match="header failed authentication: it was altered"):
        decrypt(tampered, keyset)


def test_an_added_attribute_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    tampered = rewrite_header_json(artifact, {"attributes": {"kind": "file"}})
    with pytest.raises(IntegrityError, match="header failed authentication"):
        decrypt(tampered, keyset)


def test_an_altered_segment_size_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    tampered = rewrite_header_json(artifact, {"segment_size": SEGMENT * 2})
    with pytest.raises(IntegrityError, match="header failed authentication"):
        decrypt(tampered, keyset)


def test_a_bit_flip_in_the_header_tag_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    header = read_header(io.BytesIO(artifact))
    with pytest.raises(IntegrityError, match="header failed authentication"):
        decrypt(flip(artifact, header.size - 1), keyset)


def test_a_bit_flip_in_the_magic_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    with pytest.raises(IntegrityError, match="not a SAMD encrypted artifact"):
        decrypt(flip(artifact, 2), keyset)


def test_an_unknown_format_version_is_refused(keyset: LocalKeyProvider, artifact: bytes) -> None:
    tampered = artifact[:8] + struct.pack(">H", 2) + artifact[10:]
    with pytest.raises(IntegrityError, match="unsupported SAMD envelope format version 2"):
        decrypt(tampered, keyset)


def test_an_oversized_header_length_is_refused(keyset: LocalKeyProvider, artifact: bytes) -> None:
    tampered = artifact[:10] + struct.pack(">I", 1 << 30) + artifact[14:]
    with pytest.raises(IntegrityError, match="over the 65536 limit"):
        decrypt(tampered, keyset)


def test_a_bit_flip_in_the_header_json_syntax_is_detected(keyset: LocalKeyProvider, artifact: bytes) -> None:
    start, _ = header_json_span(artifact)
    tampered = artifact[:start] + b"[" + artifact[start + 1 :]  # '{' -> '['
    with pytest.raises(IntegrityError, match="header is malformed"):
        decrypt(tampered, keyset)


def test_a_bit_flip_in_the_wrapped_key_is_refused(keyset: LocalKeyProvider, artifact: bytes) -> None:
    header = read_header(io.BytesIO(artifact))
    wrapped = bytearray(header.wrapped_key)
    wrapped[20] ^= 1
    tampered = rewrite_header_json(
        artifact,
        {"key": {"id": header.key_id, "provider": "local", "version": "1", "wrapped": _b64(bytes(wrapped))}},
    )
    with pytest.raises(KeyProviderError, match="cannot unwrap this data key"):
        decrypt(tampered, keyset)


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (0, "the artifact is empty"),
        (5, "truncated inside its header preamble"),
        (12, "truncated inside its header preamble"),
        (100, "truncated inside its header"),
    ],
)
def test_a_truncated_header_is_refused(
    keyset: LocalKeyProvider, artifact: bytes, cut: int, message: str
) -> None:
    with pytest.raises(IntegrityError, match=message):
        decrypt(artifact[:cut], keyset)


def test_a_file_that_is_not_an_artifact_is_refused(keyset: LocalKeyProvider) -> None:
    with pytest.raises(IntegrityError, match="not a SAMD encrypted artifact"):
        decrypt(b"PK\x03\x04 a zip file, not an artifact", keyset)


def test_a_header_spliced_onto_another_body_is_detected(keyset: LocalKeyProvider) -> None:
    first = encrypt(os.urandom(1000), keyset)
    second = encrypt(os.urandom(1000), keyset)
    size_first = read_header(io.BytesIO(first)).size
    size_second = read_header(io.BytesIO(second)).size
    spliced = first[:size_first] + second[size_second:]
    with pytest.raises(IntegrityError, match="belongs to another artifact"):
        decrypt(spliced, keyset)


def test_a_wrapped_key_moved_into_another_header_does_not_unwrap(keyset: LocalKeyProvider) -> None:
    first = encrypt(os.urandom(100), keyset)
    second = encrypt(os.urandom(100), keyset)
    header = read_header(io.BytesIO(first))
    key_fields = {
        "id": header.key_id,
        "provider": "local",
        "version": "1",
        "wrapped": _b64(header.wrapped_key),
    }
    with pytest.raises(KeyProviderError, match="cannot unwrap"):
        decrypt(rewrite_header_json(second, {"key": key_fields}), keyset)


# -- keys -----------------------------------------------------------------------------------------


def test_a_wrong_key_with_the_same_id_is_refused(keyset: LocalKeyProvider, artifact: bytes) -> None:
    impostor = LocalKeyProvider.generate("test-key")
    with pytest.raises(KeyProviderError, match="holds different key material for that version"):
        decrypt(artifact, impostor)


def test_a_different_key_is_refused_before_any_unwrap(keyset: LocalKeyProvider, artifact: bytes) -> None:
    other = LocalKeyProvider.generate("other-key")
    with pytest.raises(
        KeyProviderError, match=r"wrapped by local key 'test-key'.*key given is local key 'other-key'"
    ):
        decrypt(artifact, other)


def test_an_unknown_key_version_is_refused(keyset: LocalKeyProvider) -> None:
    keyset.rotate()
    artifact = encrypt(b"made after rotation", keyset)
    stale_copy = json.loads(keyset.to_bytes())
    stale_copy["versions"] = stale_copy["versions"][:1]
    stale_copy["primary_version"] = 1
    stale = LocalKeyProvider.from_bytes(json.dumps(stale_copy).encode())
    with pytest.raises(KeyProviderError, match="has no version '2'"):
        decrypt(artifact, stale)


def test_a_key_ring_picks_the_provider_that_wrapped_the_key(keyset: LocalKeyProvider) -> None:
    other = LocalKeyProvider.generate("other-key")
    artifact = encrypt(b"payload", other)
    assert b"".join(decrypt_segments(io.BytesIO(artifact), KeyRing([keyset, other]))) == b"payload"


def test_rotation_keeps_old_artifacts_readable(keyset: LocalKeyProvider) -> None:
    before = encrypt(b"old model", keyset)
    keyset.rotate()
    after = encrypt(b"new model", keyset)
    assert read_header(io.BytesIO(before)).key_version == "1"
    assert read_header(io.BytesIO(after)).key_version == "2"
    assert decrypt(before, keyset) == b"old model"
    assert decrypt(after, keyset) == b"new model"


# -- files: nothing half-written ------------------------------------------------------------------


def test_encrypt_and_decrypt_files(keyset: LocalKeyProvider, tmp_path: Path) -> None:
    plain = tmp_path / "model.onnx"
    plain.write_bytes(os.urandom(5000))
    header = encrypt_file(
        plain, tmp_path / "model.samd", keyset, attributes={"kind": "file"}, segment_size=SEGMENT
    )
    assert isinstance(header, Header)
    assert (tmp_path / "model.samd").read_bytes().startswith(MAGIC)
    assert (tmp_path / "model.samd").stat().st_mode & 0o777 == 0o600
    decrypt_file(tmp_path / "model.samd", tmp_path / "out.onnx", keyset)
    assert (tmp_path / "out.onnx").read_bytes() == plain.read_bytes()
    assert (tmp_path / "out.onnx").stat().st_mode & 0o777 == 0o600


def damaged_artifacts(artifact: bytes) -> Iterator[tuple[str, bytes]]:
    bounds = segment_bounds(artifact)
    yield "truncated at a boundary", artifact[: bounds[2][1]]
    yield "truncated mid-segment", artifact[: bounds[3][0] + 30]
    yield "bit flip", flip(artifact, bounds[4][0] + 3)
    yield "header bit flip", flip(artifact, read_header(io.BytesIO(artifact)).size - 3)


def test_decrypt_file_leaves_nothing_behind_on_damage(
    keyset: LocalKeyProvider, artifact: bytes, tmp_path: Path
) -> None:
    for name, damaged in damaged_artifacts(artifact):
        source = tmp_path / f"{name}.samd"
        source.write_bytes(damaged)
        out_dir = tmp_path / f"out-{name}"
        out_dir.mkdir()
        with pytest.raises(IntegrityError):
            decrypt_file(source, out_dir / "model.onnx", keyset)
        assert list(out_dir.iterdir()) == [], name


def test_decrypt_file_keeps_an_existing_output_on_failure(
    keyset: LocalKeyProvider, artifact: bytes, tmp_path: Path
) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous good model")
    damaged = tmp_path / "bad.samd"
    damaged.write_bytes(artifact[:-10])
    with pytest.raises(IntegrityError):
        decrypt_file(damaged, target, keyset)
    assert target.read_bytes() == b"the previous good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.samd", "model.onnx"]


def test_decrypt_file_with_a_wrong_key_leaves_nothing(artifact: bytes, tmp_path: Path) -> None:
    source = tmp_path / "a.samd"
    source.write_bytes(artifact)
    with pytest.raises(KeyProviderError):
        decrypt_file(source, tmp_path / "out", LocalKeyProvider.generate("test-key"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.samd"]


class FailingSource(io.RawIOBase):
    def __init__(self, good: int) -> None:
        self._left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            raise OSError("connection reset by peer")
        count = min(len(buffer), self._left)
        buffer[:count] = b"\x00" * count
        self._left -= count
        return count


def test_encrypt_file_leaves_nothing_when_the_input_fails(keyset: LocalKeyProvider, tmp_path: Path) -> None:
    plain = tmp_path / "dir-not-file"
    plain.mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        encrypt_file(plain, tmp_path / "x.samd", keyset)
    with pytest.raises(UsageError, match="does not exist"):
        encrypt_file(tmp_path / "missing", tmp_path / "x.samd", keyset)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-not-file"]


def test_a_source_error_mid_stream_propagates(keyset: LocalKeyProvider) -> None:
    out = io.BytesIO()
    with pytest.raises(OSError, match="connection reset"):
        encrypt_stream(FailingSource(3 * SEGMENT), out, keyset, segment_size=SEGMENT)  # type: ignore[arg-type]


def test_a_source_error_reaches_the_consumer_through_the_worker(
    keyset: LocalKeyProvider, artifact: bytes
) -> None:
    class BreaksAfter(io.BytesIO):
        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            if self.tell() > 600:
                raise OSError("storage went away")
            return super().readinto(buffer)

    with pytest.raises(OSError, match="storage went away"):
        list(decrypt_segments(BreaksAfter(artifact), keyset, prefetch=2))


def test_input_and_output_must_differ(keyset: LocalKeyProvider, tmp_path: Path) -> None:
    plain = tmp_path / "m"
    plain.write_bytes(b"x")
    with pytest.raises(UsageError, match="same file"):
        encrypt_file(plain, plain, keyset)
    assert plain.read_bytes() == b"x"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
