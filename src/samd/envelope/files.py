"""File-level operations that never leave a half-written file behind: encrypt, decrypt, rewrap.

Output goes to a temporary file in the destination's directory, is fsynced and renamed into place
only once complete and authenticated; on any error the temporary file is removed and the
destination is untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from samd.envelope.header import (
    DEFAULT_SEGMENT_SIZE,
    STREAM_HEADER_SIZE,
    Header,
    dek_context,
    new_header,
)
from samd.envelope.stream import EnvelopeReader, Progress, decrypt_stream, encrypt_stream, open_artifact
from samd.errors import StorageError, UsageError
from samd.keys.base import KeyProvider, KeyResolver

logger = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class RewrapResult:
    """The header before and after a rewrap; `rewrapped` is False when the key version was current."""

    previous: Header
    header: Header
    rewrapped: bool


@contextmanager
def atomic_output(path: Path, *, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A file object whose content appears at `path` only if the block completes without error."""
    directory = path.parent
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
    except OSError as exc:
        raise StorageError(f"cannot create a file in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(temp_name, path)
        _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def encrypt_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    provider: KeyProvider,
    *,
    attributes: Mapping[str, str] | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    progress: Progress | None = None,
) -> Header:
    """Encrypt a file into a new artifact file (0600), atomically."""
    source, target = Path(src_path), Path(dst_path)
    _refuse_same_file(source, target)
    with _open_for_reading(source) as src, atomic_output(target) as dst:
        return encrypt_stream(
            src, dst, provider, attributes=attributes, segment_size=segment_size, progress=progress
        )


def decrypt_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    keys: KeyResolver | KeyProvider,
    *,
    prefetch: int = 2,
    progress: Progress | None = None,
) -> Header:
    """Decrypt an artifact file; the plaintext file (0600) appears only if every segment authenticated."""
    source, target = Path(src_path), Path(dst_path)
    _refuse_same_file(source, target)
    with _open_for_reading(source) as src, atomic_output(target) as dst:
        return decrypt_stream(src, dst, keys, prefetch=prefetch, progress=progress)


def rewrap_header(
    path: str | os.PathLike[str],
    provider: KeyProvider,
    *,
    keys: KeyResolver | KeyProvider | None = None,
    force: bool = False,
) -> RewrapResult:
    """Re-wrap an artifact's data key under `provider`'s current key version, in place.

    The data key is unwrapped with `keys` (default: `provider` itself, which must still hold the
    old version), the header is authenticated, then a new header (new wrapped key and tag, all
    other fields unchanged) is written to a temporary file followed by the body copied byte for
    byte; the temporary file replaces the artifact by rename. Segments are bound only to the header
    fields a rewrap keeps (docs/format.md), so the body stays valid. When the current version
    already wrapped the key, nothing is written unless `force` (for providers whose versions
    cannot be observed, such as AWS KMS without kms:ListKeyRotations).
    """
    artifact = Path(path)
    with _open_for_reading(artifact) as src:
        previous, dek = open_artifact(src, keys if keys is not None else provider)
        wrapped = provider.wrap(dek, dek_context(previous.salt, previous.nonce_prefix))
        if not force and (wrapped.provider, wrapped.key_id, wrapped.key_version) == (
            previous.provider,
            previous.key_id,
            previous.key_version,
        ):
            logger.info(
                "%s is already wrapped by %s key %s version %s",
                artifact,
                wrapped.provider,
                wrapped.key_id,
                wrapped.key_version,
            )
            return RewrapResult(previous=previous, header=previous, rewrapped=False)
        header = new_header(
            dek=dek,
            wrapped=wrapped,
            segment_size=previous.segment_size,
            salt=previous.salt,
            nonce_prefix=previous.nonce_prefix,
            attributes=previous.attributes,
        )
        file_mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
        src.seek(previous.size)
        with atomic_output(artifact, mode=file_mode) as dst:
            dst.write(header.raw)
            dst.write(header.tag)
            # The body, stream header included, is copied verbatim.
            shutil.copyfileobj(src, dst, _COPY_CHUNK)
    logger.info(
        "rewrapped %s from %s key %s version %s to %s key %s version %s",
        artifact,
        previous.provider,
        previous.key_id,
        previous.key_version,
        header.provider,
        header.key_id,
        header.key_version,
    )
    return RewrapResult(previous=previous, header=header, rewrapped=True)


@dataclass(frozen=True)
class ReencryptResult:
    """The header before and after a re-encryption (a new data key, salt and nonce prefix)."""

    previous: Header
    header: Header
    plaintext_bytes: int


class _PlaintextReader:
    """A readable stream over authenticated plaintext segments (the decrypting side of a re-encryption)."""

    def __init__(self, segments: Iterator[bytes]) -> None:
        self._segments = segments
        self._pending = memoryview(b"")
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        wanted = size if size >= 0 else 1 << 62
        chunks = []
        while wanted > 0:
            if not self._pending:
                segment = next(self._segments, None)
                if segment is None:
                    break
                self._pending = memoryview(segment)
            taken = self._pending[:wanted]
            self._pending = self._pending[len(taken) :]
            chunks.append(bytes(taken))
            wanted -= len(taken)
        data = b"".join(chunks)
        self.count += len(data)
        return data


def reencrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    keys: KeyResolver | KeyProvider,
    provider: KeyProvider,
    *,
    progress: Progress | None = None,
) -> ReencryptResult:
    """Decrypt `src` with `keys` and encrypt it to `dst` under a fresh data key wrapped by `provider`.

    Unlike a rewrap, which only wraps the same data key again, this replaces the data key itself:
    the answer to a leaked data key. The plaintext streams through segment by segment (memory stays
    at a few segments); attributes and segment size are kept. `dst` holds a complete artifact only
    if this returns: a truncated or tampered source raises, and `dst` must then be discarded
    (`reencrypt_file` does).
    """
    reader = EnvelopeReader(src, keys)
    previous = reader.header
    plaintext = _PlaintextReader(reader.segments(progress=progress))
    header = encrypt_stream(
        plaintext,  # type: ignore[arg-type]
        dst,
        provider,
        attributes=previous.attributes,
        segment_size=previous.segment_size,
    )
    return ReencryptResult(previous=previous, header=header, plaintext_bytes=plaintext.count)


def reencrypt_file(
    path: str | os.PathLike[str],
    provider: KeyProvider,
    *,
    keys: KeyResolver | KeyProvider | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> ReencryptResult:
    """Re-encrypt an artifact file under a fresh data key, in place (or into `output`), atomically.

    The new artifact is written to a temporary file beside the destination and renamed over it only
    once every source segment authenticated; on any error the destination is untouched.
    """
    source = Path(path)
    target = Path(output) if output is not None else source
    if output is not None:
        _refuse_same_file(source, target)
    with _open_for_reading(source) as src:
        file_mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
        with atomic_output(target, mode=file_mode) as dst:
            result = reencrypt_stream(
                src, dst, keys if keys is not None else provider, provider, progress=progress
            )
    logger.info(
        "re-encrypted %s under a new data key wrapped by %s key %s version %s",
        target,
        result.header.provider,
        result.header.key_id,
        result.header.key_version,
    )
    return result


def body_offset(header: Header) -> int:
    """Where the first segment starts (after the header and Tink's stream header)."""
    return header.size + STREAM_HEADER_SIZE


@contextmanager
def _open_for_reading(path: Path) -> Iterator[BinaryIO]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise StorageError(f"cannot open {path}: {exc.strerror}") from None
    with handle:
        yield handle


def _refuse_same_file(source: Path, target: Path) -> None:
    if target.exists() and source.exists() and os.path.samefile(source, target):
        raise UsageError(f"the input and output are the same file ({source})")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
