"""Pack a model directory as a deterministic tar stream, and unpack one safely while streaming.

Packing reads the files lazily: `PackStream` is a readable binary stream that produces the tar
bytes on demand, so a model of any size is encrypted with constant memory. The output is
deterministic (sorted names, zero mtime, uid and gid, no owner names, modes 0644 or 0755) so the
same directory always gives the same bytes.

Unpacking is a push parser (`TarStreamReader.feed`) that hands file contents to a `TarSink` as
memory views of the chunks it is fed: no copy, no seeking, and no temporary file. It accepts only
regular files and directories with relative, normalised names (no absolute paths, no `..`, no
links, devices, FIFOs or sparse files), enforces size and count caps, and refuses duplicate or
conflicting names, so a hostile archive cannot write outside the directory it is unpacked into.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from samd.errors import IntegrityError, StorageError, UsageError

BLOCK_SIZE = 512
END_OF_ARCHIVE = bytes(2 * BLOCK_SIZE)

# model_signing leaves these out of a directory's manifest by default; packing leaves them out
# too, or `samd fetch` would find files that the signature does not cover.
DEFAULT_IGNORED_PATHS = (".git", ".gitattributes", ".github", ".gitignore")

_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_REFUSED_TYPE_NAMES = {
    tarfile.LNKTYPE: "a hard link",
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
    tarfile.GNUTYPE_LONGLINK: "a long link name",
}
# PAX keywords that would change how a member's bytes are interpreted: refused rather than ignored.
_REFUSED_PAX_PREFIXES = ("GNU.sparse.",)


@dataclass(frozen=True)
class ModelFile:
    """One regular file of a model directory, named by its POSIX path relative to the model root."""

    name: str
    path: Path
    size: int
    executable: bool


def _is_ignored(relative: str, ignored: Sequence[str]) -> bool:
    return any(relative == prefix or relative.startswith(prefix + "/") for prefix in ignored)


def _normalise_ignore(root: Path, entry: str) -> str:
    candidate = Path(entry)
    if candidate.is_absolute():
        try:
            candidate = candidate.relative_to(root)
        except ValueError:
            raise UsageError(
                f"ignored path {entry} is outside the model directory {root}",
                hint="give ignored paths relative to the model directory",
            ) from None
    return candidate.as_posix().strip("/")


def collect_model_files(
    root: Path, *, ignore: Iterable[str] = (), ignore_git_paths: bool = True
) -> list[ModelFile]:
    """List the regular files of a model directory in the order they are packed (sorted by name).

    Symbolic links, devices and other special files are refused, as model_signing refuses them.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    ignored = [_normalise_ignore(root, entry) for entry in ignore]
    if ignore_git_paths:
        ignored.extend(DEFAULT_IGNORED_PATHS)
    files: list[ModelFile] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            listed = sorted(entries, key=lambda entry: entry.name)
        for entry in listed:
            relative = f"{prefix}{entry.name}"
            if _is_ignored(relative, ignored):
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise UsageError(
                    f"{entry.path} is a symbolic link; models are packed without links",
                    hint="replace the link with the file it points to",
                )
            if stat.S_ISDIR(info.st_mode):
                walk(Path(entry.path), relative + "/")
            elif stat.S_ISREG(info.st_mode):
                files.append(
                    ModelFile(
                        name=relative,
                        path=Path(entry.path),
                        size=info.st_size,
                        executable=bool(info.st_mode & stat.S_IXUSR),
                    )
                )
            else:
                raise UsageError(f"{entry.path} is not a regular file or directory; it cannot be packed")

    walk(root, "")
    # Names are compared as strings everywhere (manifest, tar), so sort by the full POSIX path.
    files.sort(key=lambda item: item.name)
    return files


def tar_header(name: str, size: int, *, executable: bool = False) -> bytes:
    """The deterministic tar header block(s) for one regular file (PAX records when needed)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o755 if executable else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _padding(size: int) -> int:
    return -size % BLOCK_SIZE


class PackStream(io.RawIOBase):
    """A readable stream of the deterministic tar archive of `files`, produced as it is read.

    `readinto(buffer)` fills the whole buffer until the end of the archive (never a short read in
    the middle), reading file contents straight into it, so segment-based encryption sees full
    segments and no byte is copied twice.
    """

    def __init__(self, files: Sequence[ModelFile]) -> None:
        super().__init__()
        self._files = list(files)
        self._pieces = self._iter_pieces()
        self._buffer = memoryview(b"")
        self._current: io.FileIO | None = None
        self._current_file: ModelFile | None = None
        self._remaining = 0
        self._finished = False

    @property
    def files(self) -> tuple[ModelFile, ...]:
        return tuple(self._files)

    @property
    def total_size(self) -> int:
        """The exact length of the archive, known before it is produced."""
        total = len(END_OF_ARCHIVE)
        for item in self._files:
            total += len(tar_header(item.name, item.size, executable=item.executable))
            total += item.size + _padding(item.size)
        return total

    def readable(self) -> bool:
        return True

    def _iter_pieces(self) -> Iterator[bytes | ModelFile]:
        for item in self._files:
            yield tar_header(item.name, item.size, executable=item.executable)
            yield item
            if _padding(item.size):
                yield bytes(_padding(item.size))
        yield END_OF_ARCHIVE

    def _advance(self) -> bool:
        """Move to the next piece; False at the end of the archive."""
        self._close_current()
        try:
            piece = next(self._pieces)
        except StopIteration:
            self._finished = True
            return False
        if isinstance(piece, ModelFile):
            try:
                self._current = io.FileIO(piece.path, "r")
            except OSError as error:
                raise UsageError(f"cannot read {piece.path}: {error.strerror or error}") from error
            self._current_file = piece
            self._remaining = piece.size
        else:
            self._buffer = memoryview(piece)
        return True

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def _fill_some(self, view: memoryview) -> int:
        """Copy up to len(view) bytes of the current piece into `view`; 0 at the end of the archive."""
        while True:
            if self._buffer:
                count = min(len(view), len(self._buffer))
                view[:count] = self._buffer[:count]
                self._buffer = self._buffer[count:]
                return count
            if self._current is not None and self._remaining:
                count = self._current.readinto(view[: min(len(view), self._remaining)]) or 0
                if not count:
                    name = self._current_file.path if self._current_file else "a model file"
                    raise UsageError(
                        f"{name} shrank while it was being packed",
                        hint="do not modify the model while it is encrypted",
                    )
                self._remaining -= count
                return count
            if self._finished or not self._advance():
                return 0

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            count = self._fill_some(view[filled:])
            if not count:
                break
            filled += count
        return filled

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buffer = bytearray(size)
        count = self.readinto(buffer)
        del buffer[count:]
        return bytes(buffer)

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._close_current()
        super().close()


def pack_directory(root: Path, *, ignore: Iterable[str] = (), ignore_git_paths: bool = True) -> PackStream:
    """A readable deterministic tar stream of the model directory `root`."""
    return PackStream(collect_model_files(root, ignore=ignore, ignore_git_paths=ignore_git_paths))


# --- unpacking -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnpackLimits:
    """Caps that stop a hostile archive from exhausting disk, memory or inodes."""

    max_files: int = 100_000
    max_file_size: int = 1 << 40
    max_total_size: int = 1 << 40
    max_name_length: int = 4096
    max_extended_header_size: int = 1 << 20


DEFAULT_LIMITS = UnpackLimits()


class TarSink(Protocol):
    """Receives the members of an archive as `TarStreamReader` parses them."""

    def directory(self, name: str) -> None: ...

    def begin_file(self, name: str, size: int, executable: bool) -> None: ...

    def file_data(self, data: memoryview) -> None: ...

    def end_file(self) -> None: ...


def _archive_error(message: str) -> IntegrityError:
    return IntegrityError(
        f"the model archive is not safe to unpack: {message}",
        hint="the artifact was not made by `samd encrypt` from a model directory, or it was tampered with",
    )


def safe_member_name(raw: str, limits: UnpackLimits = DEFAULT_LIMITS) -> str:
    """Normalise a member name to a relative POSIX path; refuse anything that could escape.

    Returns "" for the archive root itself (for example "./").
    """
    if len(raw) > limits.max_name_length:
        raise _archive_error(f"a member name is longer than {limits.max_name_length} characters")
    if "\x00" in raw:
        raise _archive_error(f"member name {raw!r} contains a NUL byte")
    if raw.startswith("/"):
        raise _archive_error(f"member {raw!r} has an absolute path")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _archive_error(f"member {raw!r} has a '..' component")
    return "/".join(parts)


def _parse_pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        if data[position] == 0:  # trailing NUL padding some writers leave
            if data[position:].strip(b"\x00"):
                raise _archive_error("malformed PAX extended header")
            break
        space = data.find(b" ", position)
        if space < 0 or not data[position:space].isdigit():
            raise _archive_error("malformed PAX extended header")
        length = int(data[position:space])
        record = data[position : position + length]
        if length <= space - position + 1 or len(record) != length or not record.endswith(b"\n"):
            raise _archive_error("malformed PAX extended header")
        keyword, equals, value = record[space - position + 1 : -1].partition(b"=")
        if not equals:
            raise _archive_error("malformed PAX extended header")
        try:
            records[keyword.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _archive_error("a PAX extended header is not UTF-8") from None
        position += length
    return records


@dataclass
class _Pending:
    """Metadata that extended headers attach to the next member."""

    name: str | None = None
    size: int | None = None


@dataclass
class _State:
    files: set[str] = field(default_factory=set)
    directories: set[str] = field(default_factory=set)
    total_size: int = 0


class TarStreamReader:
    """A streaming, safe tar parser: feed it bytes in chunks of any size, then call `finish`."""

    _HEADER = 0
    _EXTENDED = 1
    _CONTENT = 2
    _PADDING = 3
    _TRAILER = 4

    def __init__(self, sink: TarSink, limits: UnpackLimits = DEFAULT_LIMITS) -> None:
        self._sink = sink
        self._limits = limits
        self._phase = self._HEADER
        self._header = bytearray()
        self._extended = bytearray()
        self._extended_type = b""
        self._extended_size = 0
        self._remaining = 0
        self._pending = _Pending()
        self._state = _State()
        self._current_size = 0

    @property
    def file_count(self) -> int:
        return len(self._state.files)

    @property
    def total_size(self) -> int:
        return self._state.total_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        while view:
            if self._phase == self._CONTENT:
                taken = view[: self._remaining]
                self._sink.file_data(taken)
                self._remaining -= len(taken)
                view = view[len(taken) :]
                if not self._remaining:
                    self._sink.end_file()
                    self._start_padding(self._current_size)
            elif self._phase == self._HEADER:
                needed = BLOCK_SIZE - len(self._header)
                self._header += view[:needed]
                view = view[needed:]
                if len(self._header) == BLOCK_SIZE:
                    block = bytes(self._header)
                    self._header.clear()
                    self._on_header(block)
            elif self._phase == self._PADDING:
                taken = view[: self._remaining]
                if any(taken):
                    raise _archive_error("non-zero bytes in the padding after a member")
                self._remaining -= len(taken)
                view = view[len(taken) :]
                if not self._remaining:
                    self._phase = self._HEADER
            elif self._phase == self._EXTENDED:
                taken = view[: self._remaining]
                self._extended += taken
                self._remaining -= len(taken)
                view = view[len(taken) :]
                if not self._remaining:
                    self._on_extended()
            else:  # trailer: only zero blocks may follow the end-of-archive marker
                if any(view):
                    raise _archive_error("data after the end-of-archive marker")
                view = view[len(view) :]

    def finish(self) -> None:
        """Check that the archive ended properly (no member cut short, end marker present)."""
        if self._phase != self._TRAILER:
            raise _archive_error("the archive ends before its end-of-archive marker (truncated)")

    # -- internals --

    def _start_padding(self, size: int) -> None:
        self._remaining = _padding(size)
        self._phase = self._PADDING if self._remaining else self._HEADER

    def _on_header(self, block: bytes) -> None:
        if not any(block):
            if self._pending.name is not None or self._pending.size is not None:
                raise _archive_error("an extended header is not followed by a member")
            self._phase = self._TRAILER
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except UnicodeDecodeError:
            raise _archive_error("a member name is not valid UTF-8") from None
        except tarfile.HeaderError as error:
            raise _archive_error(f"bad tar header ({error})") from None
        if info.size < 0:
            raise _archive_error("a member has a negative size")
        kind = info.type
        if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
            if info.size > self._limits.max_extended_header_size:
                raise _archive_error(
                    f"an extended header of {info.size} bytes exceeds the "
                    f"{self._limits.max_extended_header_size}-byte cap"
                )
            self._extended_type = kind
            self._extended_size = info.size
            self._extended.clear()
            self._remaining = info.size + _padding(info.size)
            self._phase = self._EXTENDED
            if not self._remaining:
                self._on_extended()
            return
        if kind in _REFUSED_TYPE_NAMES:
            raise _archive_error(
                f"member {info.name!r} is {_REFUSED_TYPE_NAMES[kind]}; only files are allowed"
            )
        if kind not in (*_REGULAR_TYPES, tarfile.DIRTYPE):
            raise _archive_error(f"member {info.name!r} has unsupported type {kind!r}")

        name = safe_member_name(
            self._pending.name if self._pending.name is not None else info.name, self._limits
        )
        size = self._pending.size if self._pending.size is not None else info.size
        self._pending = _Pending()
        if kind == tarfile.DIRTYPE:
            self._add_directory(name)
            self._start_padding(size)  # a directory's size is normally zero; skip any data
            if size:
                raise _archive_error(f"directory {name!r} has content")
            return
        self._add_file(name, size)
        self._sink.begin_file(name, size, bool(info.mode & 0o100))
        self._current_size = size
        if size:
            self._remaining = size
            self._phase = self._CONTENT
        else:
            self._sink.end_file()
            self._phase = self._HEADER

    def _on_extended(self) -> None:
        data = bytes(self._extended[: self._extended_size])
        padding = self._extended[self._extended_size :]
        self._extended.clear()
        if any(padding):
            raise _archive_error("non-zero bytes in the padding after an extended header")
        self._phase = self._HEADER
        if self._extended_type == tarfile.GNUTYPE_LONGNAME:
            try:
                self._pending.name = data.split(b"\x00", 1)[0].decode("utf-8")
            except UnicodeDecodeError:
                raise _archive_error("a member name is not valid UTF-8") from None
            return
        records = _parse_pax_records(data)
        for keyword in records:
            if keyword.startswith(_REFUSED_PAX_PREFIXES):
                raise _archive_error(f"PAX keyword {keyword!r} (sparse files) is not supported")
        if records.get("hdrcharset", "").upper() == "BINARY":
            raise _archive_error("member names must be UTF-8 (hdrcharset=BINARY)")
        if self._extended_type == tarfile.XGLTYPE:
            # Global headers (git archive writes one with the commit id) may not rename or resize.
            if "path" in records or "size" in records:
                raise _archive_error("a global PAX header sets a path or size")
            return
        if "path" in records:
            self._pending.name = records["path"]
        if "size" in records:
            if not records["size"].isdigit():
                raise _archive_error("a PAX size is not a number")
            self._pending.size = int(records["size"])

    def _check_parents(self, name: str) -> None:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self._state.files:
                raise _archive_error(f"member {name!r} is inside {parent!r}, which is a file")
            if parent not in self._state.directories:
                self._state.directories.add(parent)
                self._sink.directory(parent)

    def _add_directory(self, name: str) -> None:
        if not name:
            return
        if name in self._state.files:
            raise _archive_error(f"{name!r} appears as both a file and a directory")
        self._check_parents(name)
        if name not in self._state.directories:
            self._state.directories.add(name)
            self._sink.directory(name)

    def _add_file(self, name: str, size: int) -> None:
        limits = self._limits
        if not name:
            raise _archive_error("a file member has an empty name")
        if name in self._state.files:
            raise _archive_error(f"{name!r} appears twice")
        if name in self._state.directories:
            raise _archive_error(f"{name!r} appears as both a file and a directory")
        if len(self._state.files) >= limits.max_files:
            raise _archive_error(f"more than {limits.max_files} files")
        if size > limits.max_file_size:
            raise _archive_error(f"{name!r} is larger than the {limits.max_file_size}-byte cap")
        if self._state.total_size + size > limits.max_total_size:
            raise _archive_error(f"the files add up to more than the {limits.max_total_size}-byte cap")
        self._check_parents(name)
        self._state.files.add(name)
        self._state.total_size += size


_WRITE_HINTS = {
    errno.ENOSPC: "the output filesystem is full (for an emptyDir volume, raise its sizeLimit)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "check the output directory's owner and mode",
    errno.EPERM: "check the output directory's owner and mode",
    errno.EROFS: "the output filesystem is read-only",
}


def _write_error(path: Path, error: OSError) -> StorageError:
    return StorageError(
        f"writing {path} failed: {error.strerror or error}", hint=_WRITE_HINTS.get(error.errno or 0)
    )


class DirectoryWriter:
    """A `TarSink` that writes members under `root` (a fresh directory that only it writes to).

    Files are created with O_EXCL and O_NOFOLLOW, so nothing already there is overwritten or
    followed. Write failures (a full volume, permissions) raise `StorageError`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._fd: int | None = None
        self._name = ""
        self.names: list[str] = []

    def directory(self, name: str) -> None:
        # mkdir, not makedirs: the reader announces parents first, and if the root was removed
        # (the fetch was abandoned) this must fail rather than re-create it.
        path = self.root / name
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            if not path.is_dir() or path.is_symlink():
                raise _write_error(
                    path, FileExistsError(errno.EEXIST, "exists and is not a directory")
                ) from None
        except OSError as error:
            raise _write_error(path, error) from error

    def begin_file(self, name: str, size: int, executable: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        path = self.root / name
        try:
            self._fd = os.open(path, flags, 0o755 if executable else 0o644)
        except OSError as error:
            raise _write_error(path, error) from error
        self._name = name
        self.names.append(name)

    def file_data(self, data: memoryview) -> None:
        if self._fd is None:
            raise RuntimeError("file_data called outside a file")
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError as error:
            raise _write_error(self.root / self._name, error) from error

    def end_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Release the open file, if a failure left one open."""
        self.end_file()


def unpack_chunks(
    chunks: Iterable[bytes], sink: TarSink, limits: UnpackLimits = DEFAULT_LIMITS
) -> TarStreamReader:
    """Parse a whole archive given as chunks into `sink`; returns the reader for its counters."""
    reader = TarStreamReader(sink, limits)
    for chunk in chunks:
        reader.feed(chunk)
    reader.finish()
    return reader
