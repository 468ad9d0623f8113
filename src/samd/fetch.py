"""`samd fetch`: download, decrypt and hash a model in one streaming pass; keep it only if it verifies.

The order of work:

1. verify the signature bundle (cheap: no model bytes are read), which yields the signed manifest;
2. stream the artifact: storage reader -> decrypt segments (in a worker thread) -> safe tar reader
   -> files written into a staging directory, while the main thread hashes the same bytes; the
   two threads run on two cores (`hashlib` releases the GIL while it hashes, and reads and writes
   release it; AES-GCM in `cryptography` holds it, but for about a tenth of the hashing time), so
   fetch runs at the speed of one core hashing SHA-256;
3. compare every digest with the manifest;
4. only then move the files into the output directory (renames on one filesystem).

Hand-written rather than decrypt-then-`model_signing.verify`, because that pipeline reads the model
twice; measured (docs/benchmarks.md, "Artifact core", `make bench`): 1 GiB fetched and verified in
0.95 s (0.97x `openssl speed` SHA-256 alone) against 2.25 s for Tink's decryption followed by
model_signing's verification. The signature itself is still verified by model_signing.

On any failure the staging directory is removed, so nothing of the model is left in the output.
Memory stays constant: segments are decrypted into a few buffers that the hashing thread hands
back once it is done with them, so nothing is allocated per segment.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from samd.errors import IntegrityError, UsageError, VerificationError
from samd.modelpack import DEFAULT_LIMITS, DirectoryWriter, TarStreamReader, UnpackLimits

if TYPE_CHECKING:
    from samd.envelope.stream import SegmentBuffers
    from samd.keys.base import KeyProvider, KeyResolver
    from samd.signing import VerificationResult, Verifier

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".samd-staging-"
KEPT_SIGNATURE = ".samd-signature.json"
"""With `keep_signature`, the verified signature bundle is written into the output under this name,
so that `samd serve` can verify it and the files again when it loads the model."""

# Header attributes written by `samd encrypt` (authenticated with the header): how the plaintext
# is packed, and for a single file the name it had.
CONTENT_ATTRIBUTE = "samd.content"
CONTENT_TAR = "tar"
CONTENT_FILE = "file"
NAME_ATTRIBUTE = "samd.name"

# Decrypted segments queued between the decrypting worker and the hasher; bounds memory.
_QUEUE_DEPTH = 4
# fetch_model decrypts into reused buffers of whole segments, about _BUFFER_BYTES each (one
# segment at the default size), and _BUFFER_MEMORY in all: enough that the worker can run several
# megabytes ahead, so a short stall of either thread does not stall the other. A buffer is written
# out as soon as it is full, so a stalled download leaves no more than one buffer unwritten.
_BUFFER_BYTES = 1 << 20
_BUFFER_MEMORY = 8 << 20
_MIN_BUFFERS = 2
_ABANDON_AFTER_SECONDS = 5.0

Packing = Literal["tar", "file"]


@dataclass(frozen=True)
class FetchedFile:
    name: str
    size: int
    algorithm: str
    digest: str


@dataclass(frozen=True)
class FetchResult:
    """What `fetch_model` wrote: the verified files and the signature they matched."""

    output: Path
    files: tuple[FetchedFile, ...]
    total_bytes: int
    seconds: float
    verification: VerificationResult

    def to_dict(self) -> dict[str, Any]:
        verification = self.verification
        return {
            "output": str(self.output),
            "files": [
                {"name": f.name, "size": f.size, "algorithm": f.algorithm, "digest": f.digest}
                for f in self.files
            ],
            "file_count": len(self.files),
            "total_bytes": self.total_bytes,
            "seconds": round(self.seconds, 3),
            "manifest_digest": verification.manifest_digest,
            "method": verification.method,
            "signer": verification.signer,
        }


# --- the staging directory -------------------------------------------------------------------


# Staging directories of fetches in progress, so that a signal handler can remove them before
# the process exits (a worker blocked on a stalled download cannot be unwound in time).
_ACTIVE_STAGING: set[Path] = set()


def remove_active_staging() -> None:
    """Remove every staging directory still in progress. Safe to call from a signal handler."""
    for root in list(_ACTIVE_STAGING):
        # Rename first: the worker writes by path, so it cannot add files to the renamed tree.
        doomed = root.with_name(root.name + ".removing")
        try:
            os.rename(root, doomed)
        except OSError:
            doomed = root
        shutil.rmtree(doomed, ignore_errors=True)
        _ACTIVE_STAGING.discard(root)


def _remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class StagedOutput:
    """A staging directory on the output's filesystem whose contents become the output on commit.

    If `output` does not exist, the staging directory is its sibling and `commit` renames it into
    place in one step. If `output` is an existing directory (an emptyDir volume, a mount point), the
    staging directory is a hidden directory inside it and `commit` renames each entry into place:
    a mount point's parent may be another filesystem (or read-only). An existing directory that
    already holds files is refused unless `force`, in which case its contents are replaced, and only
    at commit time, after the new model has verified.
    """

    def __init__(self, output: Path, *, force: bool = False) -> None:
        self.output = Path(output)
        self.force = force
        self._committed = False
        output = self.output
        if output.exists() and not output.is_dir():
            raise UsageError(f"the output {output} exists and is not a directory")
        self._in_place = output.is_dir()
        if self._in_place:
            self._remove_stale_staging(output, STAGING_PREFIX)
            existing = self._existing_entries()
            if existing and not force:
                shown = ", ".join(sorted(entry.name for entry in existing)[:5])
                raise UsageError(
                    f"the output directory {output} is not empty (it holds {shown})",
                    hint="give an empty or new directory, or pass --force to replace its contents",
                )
            parent = output
            prefix = STAGING_PREFIX
        else:
            parent = output.parent
            if not parent.is_dir():
                raise UsageError(
                    f"cannot create {output}: the directory {parent} does not exist", hint="create it first"
                )
            prefix = f".{output.name}{STAGING_PREFIX}"
            self._remove_stale_staging(parent, prefix)
        try:
            self.root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except OSError as error:
            raise UsageError(f"cannot write into {parent}: {error.strerror or error}") from error
        _ACTIVE_STAGING.add(self.root)
        if not self._in_place:
            from samd.storage.local import current_umask  # noqa: PLC0415 - see fetch_model

            # mkdtemp makes it 0700; once renamed it is the output, so give it a mkdir's mode.
            os.chmod(self.root, 0o777 & ~current_umask(unknown=0o022))

    @staticmethod
    def _remove_stale_staging(directory: Path, prefix: str) -> None:
        # Left by a process that was killed (an init container restarted by the kubelet).
        for entry in directory.iterdir():
            if entry.name.startswith(prefix) and entry.is_dir() and not entry.is_symlink():
                logger.info("removing stale staging directory %s", entry)
                shutil.rmtree(entry, ignore_errors=True)

    def _existing_entries(self) -> list[Path]:
        return [entry for entry in self.output.iterdir() if not entry.name.startswith(STAGING_PREFIX)]

    def commit(self) -> None:
        """Move the staged contents into the output. On failure nothing staged stays in it."""
        if not self._in_place:
            try:
                os.rename(self.root, self.output)
            except OSError as error:
                raise UsageError(
                    f"cannot move the verified model into {self.output}: {error.strerror or error}",
                    hint="something created the output while the model was fetched; give a new or empty directory",
                ) from error
            self._committed = True
            _ACTIVE_STAGING.discard(self.root)
            return
        if self.force:
            for entry in self._existing_entries():
                _remove_entry(entry)
        moved: list[Path] = []
        try:
            for entry in sorted(self.root.iterdir()):
                target = self.output / entry.name
                if target.exists() or target.is_symlink():
                    raise UsageError(f"{target} appeared in the output directory while the model was fetched")
                try:
                    os.rename(entry, target)
                except OSError as error:
                    raise UsageError(
                        f"cannot move {entry.name} into {self.output}: {error.strerror or error}"
                    ) from error
                moved.append(target)
        except BaseException:
            for target in moved:
                _remove_entry(target)
            raise
        self.root.rmdir()
        self._committed = True
        _ACTIVE_STAGING.discard(self.root)

    def discard(self) -> None:
        if not self._committed:
            shutil.rmtree(self.root, ignore_errors=True)
            _ACTIVE_STAGING.discard(self.root)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self.discard()


# --- the pipeline ----------------------------------------------------------------------------


def _new_hasher(algorithm: str) -> Any:
    if algorithm != "sha256":
        raise VerificationError(
            f"the signature uses the {algorithm} digest, which samd fetch does not support",
            hint="sign the model with SHA-256 (the default)",
        )
    return hashlib.sha256()


# What the worker hands the hashing thread, in order: tuples led by one of these tags.
_HASH = 0  # (_HASH, hasher, bytes, buffer index or -1, starts at its buffer's start, ends at its end)
_END_FILE = 1  # (_END_FILE, name, size, hasher)
_RECYCLE = 2  # (_RECYCLE, segment): everything before it that used the segment is done
_DONE = 3  # (_DONE, error or None): the worker finished


class _CancelledError(Exception):
    """The consumer stopped; the worker unwinds quietly."""


class _HashingWriter:
    """A `TarSink` that writes files into the staging directory and queues their bytes for hashing.

    It runs in the worker thread, which also reads and decrypts; the consumer of `work` hashes.
    (Measured: moving the writes to the hashing thread makes it slower, since hashing alone
    keeps its core busy.) Files the signer chose to leave out of the manifest (`skip`) are
    dropped, not written: the output holds only signed files.

    Each piece queued for hashing says which ring buffer it lies in and whether it starts at the
    buffer's start and ends at its end, so that the hashing thread can hash the pieces of one file
    in neighbouring buffers with one call (see `_Hasher`).
    """

    def __init__(  # noqa: PLR0917
        self,
        writer: DirectoryWriter,
        work: queue.SimpleQueue[tuple[Any, ...]],
        expected: Mapping[str, str],
        skip: Callable[[str], bool],
        allow_unsigned_files: bool,
        cancelled: threading.Event,
    ) -> None:
        self._writer = writer
        self._work = work
        self._expected = expected
        self._skip = skip
        self._allow_unsigned = allow_unsigned_files
        self._cancelled = cancelled
        self._hasher: Any = None
        self._skipping = False
        self._name = ""
        self._size = 0
        self._declared_size = 0
        self._buffer = -1
        self._fills_buffer = False
        self._in_file = False
        self._resumed = False
        self.skipped: list[str] = []

    def put(self, item: tuple[Any, ...]) -> None:
        if self._cancelled.is_set():
            raise _CancelledError
        self._work.put(item)

    def next_segment(self, buffer: int, fills_buffer: bool) -> None:
        """The next bytes fed come from the start of ring buffer `buffer` (-1: not from a ring)."""
        self._buffer = buffer
        self._fills_buffer = fills_buffer
        self._resumed = self._in_file  # a file's content continues at the start of the segment

    def directory(self, name: str) -> None:
        self._resumed = False
        if not self._skip(name):
            self._writer.directory(name)

    def begin_file(self, name: str, size: int, executable: bool) -> None:
        self._resumed = False
        self._in_file = True
        algorithm = self._expected.get(name)
        self._skipping = False
        if algorithm is None:
            if self._skip(name):
                logger.info("leaving out %s: the signer excluded it from the manifest", name)
                self.skipped.append(name)
                self._skipping = True
                return
            if not self._allow_unsigned:
                raise VerificationError(
                    f"the artifact holds {name!r}, which the signature does not cover",
                    hint="sign the same model that was encrypted, or allow unsigned files explicitly",
                )
            algorithm = "sha256"
        self._hasher = _new_hasher(algorithm)
        self._name = name
        self._size = 0
        self._declared_size = size
        self._writer.begin_file(name, size, executable)

    def file_data(self, data: memoryview) -> None:
        starts_at_buffer_start, self._resumed = self._resumed, False
        if self._skipping:
            return
        self._writer.file_data(data)
        self._size += len(data)
        # The parser hands over all of a segment's content or the rest of the file, so a piece
        # that does not finish its file runs to the end of the segment (a size below 0: unknown).
        continues = self._declared_size < 0 or self._size < self._declared_size
        ends_at_buffer_end = continues and self._fills_buffer
        self.put((_HASH, self._hasher, data, self._buffer, starts_at_buffer_start, ends_at_buffer_end))

    def end_file(self) -> None:
        self._in_file = False
        self._resumed = False
        if self._skipping:
            self._skipping = False
            return
        self._writer.end_file()
        self.put((_END_FILE, self._name, self._size, self._hasher))


class _InFlight:
    """Bounds how many segments of a plain iterable are queued but not yet hashed (its memory).

    `acquire` blocks while `limit` are in flight; after `close` it raises `_CancelledError`.
    """

    def __init__(self, limit: int) -> None:
        self._available = limit
        self._closed = False
        self._condition = threading.Condition()

    def acquire(self) -> None:
        with self._condition:
            while not self._closed and not self._available:
                self._condition.wait()
            if self._closed:
                raise _CancelledError
            self._available -= 1

    def release(self, _segment: memoryview) -> None:
        with self._condition:
            self._available += 1
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


def _bounded(segments: Iterable[bytes | memoryview], in_flight: _InFlight) -> Iterator[memoryview]:
    for segment in segments:
        in_flight.acquire()
        yield memoryview(segment)


def _pump(  # noqa: PLR0917
    segments: Iterable[memoryview],
    feed: Callable[[memoryview], None],
    finish: Callable[[], None],
    sink: _HashingWriter,
    cancelled: threading.Event,
    buffers: SegmentBuffers | None,
) -> None:
    """The worker: parse and write each segment, then let the hashing thread recycle it."""
    try:
        for number, segment in enumerate(segments):
            if buffers is None:
                sink.next_segment(-1, False)
            else:  # the views come from the ring in order, one buffer each
                sink.next_segment(number % buffers.count, len(segment) == buffers.size)
            feed(segment)
            sink.put((_RECYCLE, segment))
        finish()
    except BaseException as error:
        if cancelled.is_set():
            return  # the consumer stopped first; this is the worker unwinding (e.g. buffers closed)
        with contextlib.suppress(_CancelledError):
            sink.put((_DONE, error))  # the consumer re-raises it
        return
    with contextlib.suppress(_CancelledError):
        sink.put((_DONE, None))


class _Hasher:
    """The hashing thread's side of the queue.

    Hashing is what bounds a fetch, so this thread does little else. When it has fallen behind,
    the queue holds the pieces of one file in consecutive ring buffers; where one piece ends at
    its buffer's end and the next starts at the following buffer's start, they are one span of
    memory, hashed with one call (over at most half the ring, so that the worker keeps buffers to
    fill meanwhile). Fewer calls means fewer hand-offs of the GIL between the two threads (the
    worker holds it while AES-GCM decrypts). A buffer is recycled only after every piece in it
    has been hashed.
    """

    def __init__(
        self,
        work: queue.SimpleQueue[tuple[Any, ...]],
        recycle: Callable[[memoryview], None],
        buffers: SegmentBuffers | None,
    ) -> None:
        self._work = work
        self._recycle = recycle
        self._buffers = buffers
        self._held_back: tuple[Any, ...] | None = None
        self.results: list[StreamedFile] = []

    def _next(self, *, block: bool) -> tuple[Any, ...]:
        if self._held_back is not None:
            item, self._held_back = self._held_back, None
            return item
        return self._work.get() if block else self._work.get_nowait()

    def run(self) -> None:
        """Consume the queue until the worker is done; re-raise the worker's error."""
        while True:
            item = self._next(block=True)
            kind = item[0]
            if kind == _HASH:
                self._hash(item)
            elif kind == _RECYCLE:
                self._recycle(item[1])
            elif kind == _END_FILE:
                _, name, size, hasher = item
                self.results.append(StreamedFile(name=name, size=size, digest=hasher.hexdigest()))
            else:
                if item[1] is not None:
                    raise item[1]
                return

    def _hash(self, item: tuple[Any, ...]) -> None:
        _, hasher, data, buffer, _, ends_at_buffer_end = item
        ring = self._buffers
        if ring is None or not ends_at_buffer_end or buffer + 1 >= ring.count:
            hasher.update(data)
            return
        size = ring.size
        start = (buffer + 1) * size - len(data)
        end = (buffer + 1) * size
        recycled: list[tuple[Any, ...]] = []
        # At most half the ring per call: the other half stays with the worker meanwhile.
        spans_left = max(1, ring.count // 2) - 1
        while ends_at_buffer_end and buffer + 1 < ring.count and spans_left:
            try:
                following = self._next(block=False)
            except queue.Empty:
                break
            if following[0] == _RECYCLE:
                recycled.append(following)  # of a buffer whose pieces came before: after hashing
                continue
            if (
                following[0] == _HASH
                and following[1] is hasher
                and following[3] == buffer + 1
                and following[4]
            ):
                _, _, data, buffer, _, ends_at_buffer_end = following
                end = buffer * size + len(data)
                spans_left -= 1
                continue
            self._held_back = following
            break
        hasher.update(ring.block[start:end])
        for done in recycled:
            self._recycle(done[1])


@dataclass(frozen=True)
class StreamedFile:
    name: str
    size: int
    digest: str


def _never(_name: str) -> bool:
    return False


def stream_into_directory(
    segments: Iterable[bytes | memoryview],
    root: Path,
    *,
    packing: Packing,
    expected: Mapping[str, str],
    skip: Callable[[str], bool] = _never,
    file_name: str | None = None,
    allow_unsigned_files: bool = False,
    limits: UnpackLimits = DEFAULT_LIMITS,
    buffers: SegmentBuffers | None = None,
) -> list[StreamedFile]:
    """Write decrypted `segments` under `root` while hashing them; return each file's digest.

    `segments` is consumed in a worker thread (so it should decrypt lazily, as
    `EnvelopeReader.segments` does) that also parses and writes, while this thread hashes.
    `expected` maps each signed file name to its digest algorithm; a file not in it is refused
    unless `skip(name)` (it is then left out) or `allow_unsigned_files`. `packing` says whether the
    plaintext is a tar archive of a directory, or the bytes of one file to be written as
    `file_name`.

    With `buffers`, `segments` yields views of those buffers (`EnvelopeReader.decrypted_views`);
    each is given back once its bytes are written and hashed, and the buffers are closed when
    this function returns, which releases a worker waiting for one. Memory in flight is then the
    buffers; without them, at most `_QUEUE_DEPTH` segments.
    """
    work: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
    cancelled = threading.Event()
    writer = DirectoryWriter(root)
    sink = _HashingWriter(writer, work, expected, skip, allow_unsigned_files, cancelled)
    recycle: Callable[[memoryview], None]
    stop: Callable[[], None]
    if buffers is None:
        in_flight = _InFlight(_QUEUE_DEPTH)
        views: Iterable[memoryview] = _bounded(segments, in_flight)
        recycle, stop = in_flight.release, in_flight.close
    else:
        views = cast("Iterable[memoryview]", segments)  # views of the buffers, as documented
        recycle, stop = buffers.give_back, buffers.close
    if packing == CONTENT_TAR:
        reader = TarStreamReader(sink, limits)
        feed: Callable[[memoryview], None] = reader.feed
        finish: Callable[[], None] = reader.finish
    else:
        if not file_name:
            raise UsageError("a single-file artifact needs the file name to write")
        single = _SingleFile(sink, file_name, limits)
        feed, finish = single.feed, single.finish
    worker = threading.Thread(
        target=_pump,
        args=(views, feed, finish, sink, cancelled, buffers),
        name="samd-unpack",
        daemon=True,
    )
    hasher = _Hasher(work, recycle, buffers)
    worker.start()
    try:
        hasher.run()
    finally:
        cancelled.set()
        stop()
        # A worker blocked on a stalled download cannot be interrupted: after a signal, give up
        # on it (it is a daemon thread) rather than hang, and leave its file descriptor alone.
        worker.join(timeout=_ABANDON_AFTER_SECONDS)
        if not worker.is_alive():
            writer.close()
    return hasher.results


class _SingleFile:
    """Feeds the plaintext of a single-file artifact to the sink as one file."""

    def __init__(self, sink: _HashingWriter, name: str, limits: UnpackLimits) -> None:
        self._sink = sink
        self._limits = limits
        self._name = name
        self._size = 0
        self._started = False

    def feed(self, data: memoryview) -> None:
        if not self._started:
            self._sink.begin_file(self._name, -1, False)
            self._started = True
        self._size += len(data)
        if self._size > self._limits.max_file_size:
            raise IntegrityError(f"the model file is larger than the {self._limits.max_file_size}-byte cap")
        self._sink.file_data(data)

    def finish(self) -> None:
        if not self._started:
            self._sink.begin_file(self._name, 0, False)
        self._sink.end_file()


# --- the whole fetch -------------------------------------------------------------------------


def artifact_packing(attributes: Mapping[str, str]) -> tuple[Packing, str | None]:
    """How an artifact's plaintext is packed ("tar" or "file") and, for a file, its recorded name."""
    content = attributes.get(CONTENT_ATTRIBUTE)
    if content == CONTENT_TAR:
        return "tar", None
    if content == CONTENT_FILE or content is None:
        # Artifacts encrypted by other means (encrypt_stream without attributes) are single files.
        return "file", attributes.get(NAME_ATTRIBUTE)
    raise IntegrityError(
        f"the artifact header says its content is {content!r}; samd knows only 'tar' and 'file'",
        hint="upgrade samd, or re-encrypt the model with this version",
    )


def _usable_file_name(candidate: str | None) -> bool:
    return (
        bool(candidate)
        and "/" not in str(candidate)
        and "\x00" not in str(candidate)
        and candidate not in (".", "..")
    )


def single_file_name(recorded: str | None, verification: VerificationResult) -> str:
    """The name a single-file model is written as: recorded at encryption, else the signed model name."""
    for candidate in (recorded, verification.model_name):
        if candidate is not None and _usable_file_name(candidate):
            return candidate
    raise IntegrityError(
        "the artifact is a single file but neither its header nor its signature gives a usable file name",
        hint="re-encrypt the model with `samd encrypt`, which records the file name",
    )


def _segment_buffers(segment_size: int) -> SegmentBuffers:
    from samd.envelope.stream import SegmentBuffers  # noqa: PLC0415 - see fetch_model

    size = segment_size * max(1, _BUFFER_BYTES // segment_size)
    return SegmentBuffers(max(_MIN_BUFFERS, _BUFFER_MEMORY // size), size)


def read_signature(uri: str, *, max_bytes: int | None = None) -> bytes:
    """Read a signature bundle from a path or storage URI, refusing oversized input early."""
    from samd.signing import MAX_BUNDLE_BYTES  # noqa: PLC0415 - see fetch_model
    from samd.storage import open_artifact  # noqa: PLC0415
    from samd.storage.stream import read_at_most  # noqa: PLC0415

    limit = max_bytes if max_bytes is not None else MAX_BUNDLE_BYTES
    with open_artifact(uri) as source:
        data = read_at_most(source, limit)
    if len(data) > limit:
        raise VerificationError(
            f"the signature {uri} is larger than {limit} bytes; a model signature is a few kilobytes",
            hint="check that --signature names the signature bundle, not the model",
        )
    return data


def fetch_model(
    artifact_uri: str,
    *,
    signature: bytes,
    verifier: Verifier,
    keys: KeyProvider | KeyResolver | None,
    output: Path,
    force: bool = False,
    allow_unsigned_files: bool = False,
    keep_signature: bool = False,
    limits: UnpackLimits = DEFAULT_LIMITS,
    progress: Callable[[int], None] | None = None,
) -> FetchResult:
    """Fetch, decrypt and verify a model into `output`; nothing is left there if anything fails.

    `signature` is the OMS bundle (bytes); `keys` unwraps the artifact's data key. Without `keys`
    the artifact must be unencrypted: the model file itself when the signature covers one file, a
    tar stream of the directory when it covers a directory; it is hashed while it is written, as
    a decrypted one is. With `keep_signature` the bundle is written beside the model files
    (`KEPT_SIGNATURE`), after they verified.
    """
    # Imported here so that `samd fetch` loads only what it uses (peak memory of the init container).
    from samd.signing import verify_bundle  # noqa: PLC0415

    started = time.monotonic()
    verification = verify_bundle(signature, verifier)
    staged = StagedOutput(output, force=force)
    with staged:
        if keys is None:
            streamed, expected, file_name = _stream_plain(artifact_uri, verification, staged.root, limits)
        else:
            streamed, expected, file_name = _stream_decrypted(
                artifact_uri, keys, verification, staged.root, allow_unsigned_files, limits, progress
            )
        return _finish(
            staged,
            streamed,
            expected,
            file_name,
            verification,
            started,
            allow_unsigned_files,
            signature,
            keep_signature=keep_signature,
        )


def _stream_decrypted(  # noqa: PLR0917 - the fetch's settings, passed on
    artifact_uri: str,
    keys: KeyProvider | KeyResolver,
    verification: VerificationResult,
    root: Path,
    allow_unsigned_files: bool,
    limits: UnpackLimits,
    progress: Callable[[int], None] | None,
) -> tuple[list[StreamedFile], dict[str, str], str | None]:
    """Decrypt an envelope artifact into `root`, hashing it as it goes (see `fetch_model`)."""
    from samd.envelope import EnvelopeReader  # noqa: PLC0415
    from samd.signing import SINGLE_FILE_RESOURCE  # noqa: PLC0415
    from samd.storage import open_artifact  # noqa: PLC0415

    with open_artifact(artifact_uri) as source:
        reader = EnvelopeReader(source, keys)
        packing, recorded_name = artifact_packing(reader.header.attributes)
        expected = {signed.name: signed.algorithm for signed in verification.files}
        file_name = None
        if packing == "file":
            if not verification.is_single_file:
                raise VerificationError(
                    f"the artifact holds a single file but the signature covers a directory of "
                    f"{len(verification.files)} file(s)",
                    hint="is this the signature of another model?",
                )
            file_name = single_file_name(recorded_name, verification)
            expected = {file_name: expected[SINGLE_FILE_RESOURCE]}
        elif verification.is_single_file:
            raise VerificationError(
                "the artifact holds a directory but the signature covers a single file",
                hint="is this the signature of another model?",
            )
        buffers = _segment_buffers(reader.header.segment_size)
        streamed = stream_into_directory(
            # stream_into_directory runs the decryption in its own thread
            reader.decrypted_views(buffers, progress=progress),
            root,
            buffers=buffers,
            packing=packing,
            expected=expected,
            skip=verification.is_ignored,
            file_name=file_name,
            allow_unsigned_files=allow_unsigned_files,
            limits=limits,
        )
    return streamed, expected, file_name


def _stream_plain(
    artifact_uri: str, verification: VerificationResult, root: Path, limits: UnpackLimits
) -> tuple[list[StreamedFile], dict[str, str], str | None]:
    """Write an unencrypted artifact into `root`, hashing it as it goes (see `fetch_model`)."""
    from samd.envelope import MAGIC  # noqa: PLC0415 - see fetch_model
    from samd.signing import SINGLE_FILE_RESOURCE  # noqa: PLC0415
    from samd.storage import open_artifact  # noqa: PLC0415

    expected = {signed.name: signed.algorithm for signed in verification.files}
    file_name = None
    with open_artifact(artifact_uri) as source:
        if source.peek(len(MAGIC))[: len(MAGIC)] == MAGIC:
            raise UsageError(
                f"the artifact {artifact_uri} is encrypted, and no key was given",
                hint="pass --key (the SecureModel's spec.encryption names it)",
            )
        if verification.is_single_file:
            packing: Packing = "file"
            base = artifact_uri.rstrip("/").rsplit("/", 1)[-1]
            recorded = verification.model_name if _usable_file_name(verification.model_name) else base
            file_name = single_file_name(recorded, verification)
            expected = {file_name: expected[SINGLE_FILE_RESOURCE]}
        else:
            packing = "tar"
        streamed = stream_into_directory(
            iter(lambda: source.read(_BUFFER_BYTES), b""),
            root,
            packing=packing,
            expected=expected,
            skip=verification.is_ignored,
            file_name=file_name,
            limits=limits,
        )
    return streamed, expected, file_name


def _finish(  # noqa: PLR0917
    staged: StagedOutput,
    streamed: list[StreamedFile],
    expected: Mapping[str, str],
    file_name: str | None,
    verification: VerificationResult,
    started: float,
    allow_unsigned_files: bool,
    signature: bytes,
    *,
    keep_signature: bool,
) -> FetchResult:
    """Compare the streamed files with the manifest; only then move them into the output."""
    from samd.signing import SINGLE_FILE_RESOURCE, check_files_against_manifest  # noqa: PLC0415

    actual = {item.name: item.digest for item in streamed}
    if file_name is not None:
        actual = {SINGLE_FILE_RESOURCE: actual[file_name]}
    check_files_against_manifest(actual, verification, allow_unsigned_files=allow_unsigned_files)
    if keep_signature:
        if any(item.name == KEPT_SIGNATURE for item in streamed):
            raise VerificationError(f"the model holds a file named {KEPT_SIGNATURE}, which samd reserves")
        (staged.root / KEPT_SIGNATURE).write_bytes(signature)
    staged.commit()
    files = tuple(
        FetchedFile(
            name=item.name, size=item.size, algorithm=expected.get(item.name, "sha256"), digest=item.digest
        )
        for item in streamed
    )
    total = sum(item.size for item in files)
    logger.info("fetched %d verified file(s), %d bytes, into %s", len(files), total, staged.output)
    return FetchResult(
        output=staged.output,
        files=files,
        total_bytes=total,
        seconds=time.monotonic() - started,
        verification=verification,
    )
