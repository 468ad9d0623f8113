"""Local files: streaming reads, atomic writes (temporary file, fsync, rename)."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from samd.errors import StorageError
from samd.storage.stream import DEFAULT_BUFFER_SIZE, ArtifactReader
from samd.storage.uri import LocalPath

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

logger = logging.getLogger(__name__)

DEFAULT_WRITE_CHUNK = 8 << 20


class _LocalFile(io.FileIO):
    """A file whose read errors surface as `StorageError` naming the file."""

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        try:
            return super().readinto(buffer)
        except OSError as error:
            raise StorageError(
                f"reading {self.name} failed: {error.strerror or error}",
                hint="the disk or the network filesystem reported an I/O error",
            ) from error


def open_local(location: LocalPath, *, buffer_size: int = DEFAULT_BUFFER_SIZE) -> ArtifactReader:
    path = location.path
    try:
        raw = _LocalFile(path, "r")
    except FileNotFoundError:
        raise StorageError(f"no such file: {path}", hint="check the path") from None
    except IsADirectoryError:
        raise StorageError(f"{path} is a directory, not an artifact file") from None
    except PermissionError:
        raise StorageError(
            f"permission denied reading {path}", hint="check the file's owner and mode"
        ) from None
    except OSError as error:
        raise StorageError(f"cannot open {path}: {error.strerror or error}") from error
    try:
        info = os.fstat(raw.fileno())
        size = info.st_size if stat.S_ISREG(info.st_mode) else None
        if size is not None and hasattr(os, "posix_fadvise"):
            # Tell the kernel to read ahead aggressively: the whole file is read once, in order.
            os.posix_fadvise(raw.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except OSError:
        raw.close()
        raise
    return ArtifactReader(raw, uri=str(path), size=size, buffer_size=buffer_size)


def local_size(location: LocalPath) -> int | None:
    try:
        info = location.path.stat()
    except FileNotFoundError:
        raise StorageError(f"no such file: {location.path}", hint="check the path") from None
    except OSError as error:
        raise StorageError(f"cannot stat {location.path}: {error.strerror or error}") from error
    if stat.S_ISDIR(info.st_mode):
        raise StorageError(f"{location.path} is a directory, not an artifact file")
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def put_local(
    location: LocalPath,
    src: BinaryIO,
    *,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = DEFAULT_WRITE_CHUNK,
) -> None:
    """Write ``src`` to the file atomically: readers see the old file or the whole new one.

    The data goes to a temporary file in the same directory, is fsynced, renamed over the
    destination, and the directory is fsynced. On any failure the temporary file is removed
    and an existing destination is left untouched. The new file gets the mode a plain
    ``open()`` would give it (0666 minus the umask).
    """
    path = location.path
    parent = path.parent
    if path.is_dir():
        raise StorageError(f"{path} is a directory; give the artifact a file name")
    if not parent.is_dir():
        raise StorageError(
            f"cannot write {path}: the directory {parent} does not exist", hint="create it first"
        )
    try:
        fd, temporary_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as error:
        raise _write_error(path, error) from error
    temporary = Path(temporary_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o666 & ~current_umask())
            while True:
                chunk = _read_source(src, chunk_size, path)
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as error:
                    raise _write_error(path, error) from error
                if progress is not None:
                    progress(len(chunk))
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as error:
                raise _write_error(path, error) from error
        try:
            os.replace(temporary, path)
        except OSError as error:
            raise _write_error(path, error) from error
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_directory(parent)
    logger.debug("wrote %s", path)


def _read_source(src: BinaryIO, size: int, destination: Path) -> bytes:
    try:
        return src.read(size)
    except OSError as error:
        raise StorageError(
            f"reading the data to write to {destination} failed: {error.strerror or error}"
        ) from error


def _write_error(path: Path, error: OSError) -> StorageError:
    hints = {
        errno.ENOSPC: "the filesystem is full; free some space",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EACCES: "check the directory's owner and mode",
        errno.EPERM: "check the directory's owner and mode",
        errno.EROFS: "the filesystem is read-only",
    }
    return StorageError(f"writing {path} failed: {error.strerror or error}", hint=hints.get(error.errno or 0))


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems cannot open a directory for fsync.
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        logger.debug("fsync of directory %s not supported", directory)
    finally:
        os.close(fd)


def current_umask(unknown: int = 0o077) -> int:
    """The process umask, or `unknown` where it cannot be read (by default owner-only: conservative)."""
    # Read without changing it: os.umask() can only be read by setting it, which races threads.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return unknown
