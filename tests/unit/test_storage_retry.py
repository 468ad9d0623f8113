"""Retries: backoff with jitter, transient failures only, bounded; resuming broken downloads."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pytest

from samd.errors import StorageError, UsageError
from samd.storage import RetryPolicy, TransientStorageError
from samd.storage.retry import call_with_retries
from samd.storage.stream import ArtifactReader, OpenedBody, ResumingReader

pytestmark = pytest.mark.unit

FAST = RetryPolicy(max_attempts=4, base_delay=0.0, max_delay=0.0, max_stream_resumes=6)


def test_backoff_ceiling_doubles_from_the_base_delay_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    assert [policy.backoff_ceiling(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.backoff_ceiling(10_000) == 1.0  # no overflow, however many failures


def test_delays_are_jittered_within_the_ceiling() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=5.0)
    samples = [policy.delay(3) for _ in range(500)]
    assert all(0.0 <= sample <= 0.4 for sample in samples)
    assert len(set(samples)) > 400  # spread out, not a fixed schedule
    assert max(samples) > 0.3
    assert min(samples) < 0.1


def test_a_server_retry_after_is_honoured_within_the_cap() -> None:
    policy = RetryPolicy(base_delay=0.01, max_delay=2.0)
    assert all(policy.delay(1, retry_after=1.5) >= 1.5 for _ in range(50))
    assert all(policy.delay(1, retry_after=60) <= 2.0 for _ in range(50))


@pytest.mark.parametrize(
    "arguments",
    [{"max_attempts": 0}, {"base_delay": -1.0}, {"max_delay": -0.5}, {"max_stream_resumes": -1}],
)
def test_nonsense_policies_are_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        RetryPolicy(**arguments)  # type: ignore[arg-type]


class Flaky:
    """Fails with the given errors, one per call, then returns "done"."""

    def __init__(self, *errors: StorageError) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_transient_failures_are_retried_until_success() -> None:
    operation = Flaky(TransientStorageError("503"), TransientStorageError("timeout"))
    assert call_with_retries(operation, policy=FAST, action="GET x") == "done"
    assert operation.calls == 3


def test_permanent_failures_are_not_retried() -> None:
    denied = StorageError("access denied", hint="fix the policy")
    operation = Flaky(denied)
    with pytest.raises(StorageError) as raised:
        call_with_retries(operation, policy=FAST, action="GET x")
    assert raised.value is denied
    assert operation.calls == 1


def test_attempts_are_bounded_and_the_final_error_says_so() -> None:
    operation = Flaky(*(TransientStorageError(f"503 number {n}") for n in range(10)))
    with pytest.raises(StorageError, match=r"503 number 3 \(gave up after 4 attempts\)") as raised:
        call_with_retries(operation, policy=FAST, action="GET x")
    assert raised.value.transient
    assert raised.value.hint  # says what to do
    assert operation.calls == FAST.max_attempts


# --- resuming downloads -------------------------------------------------------------------------


@dataclass
class Break:
    """On the open at ``at_open`` (0 = first), deliver ``after`` bytes, then fail (or end early)."""

    at_open: int
    after: int
    ends_early: bool = False


class _ScriptedBody:
    def __init__(self, data: bytes, start: int, fail_after: int | None, ends_early: bool) -> None:
        self._data = data
        self._position = start
        self._left = fail_after
        self._ends_early = ends_early
        self.closed = False

    def readinto(self, buffer: memoryview, /) -> int:
        if self._left == 0:
            if self._ends_early:
                return 0
            raise TransientStorageError("connection reset by peer")
        size = len(buffer) if self._left is None else min(len(buffer), self._left, 7)
        chunk = self._data[self._position : self._position + size]
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        if self._left is not None:
            self._left -= len(chunk)
        return len(chunk)

    def close(self) -> None:
        self.closed = True


@dataclass
class ScriptedSource:
    data: bytes
    breaks: list[Break] = field(default_factory=list)
    resumable: bool = True
    shift_start_on_resume: int = 0
    opened_at: list[int] = field(default_factory=list)
    bodies: list[_ScriptedBody] = field(default_factory=list)

    @property
    def description(self) -> str:
        return "s3://bucket-x/model.samd"

    @property
    def can_resume(self) -> bool:
        return self.resumable

    def open(self, offset: int) -> OpenedBody:
        number = len(self.opened_at)
        self.opened_at.append(offset)
        scripted = next((b for b in self.breaks if b.at_open == number), None)
        start = offset + (self.shift_start_on_resume if offset else 0)
        body = _ScriptedBody(
            self.data, start, scripted.after if scripted else None, scripted.ends_early if scripted else False
        )
        self.bodies.append(body)
        return OpenedBody(body=body, start=start, total_size=len(self.data))


def read_all(source: ScriptedSource, policy: RetryPolicy = FAST) -> bytes:
    with ArtifactReader(ResumingReader(source, policy=policy), uri="x", size=None, buffer_size=64) as reader:
        return reader.read()


DATA = bytes(range(256)) * 40


def test_a_download_that_breaks_off_resumes_from_the_delivered_offset() -> None:
    source = ScriptedSource(DATA, breaks=[Break(at_open=0, after=1000), Break(at_open=1, after=555)])
    assert read_all(source) == DATA
    assert source.opened_at == [0, 1000, 1555]
    assert all(body.closed for body in source.bodies)


def test_a_body_shorter_than_announced_is_not_taken_for_the_end() -> None:
    source = ScriptedSource(DATA, breaks=[Break(at_open=0, after=4000, ends_early=True)])
    assert read_all(source) == DATA
    assert source.opened_at == [0, 4000]


def test_without_a_version_validator_a_broken_download_fails_instead_of_mixing_versions() -> None:
    source = ScriptedSource(DATA, breaks=[Break(at_open=0, after=100)], resumable=False)
    with pytest.raises(StorageError, match="cannot be resumed") as raised:
        read_all(source)
    assert raised.value.transient
    assert source.opened_at == [0]


def test_a_download_that_never_progresses_gives_up_after_max_attempts() -> None:
    breaks = [Break(at_open=0, after=10)] + [Break(at_open=n, after=0) for n in range(1, 20)]
    source = ScriptedSource(DATA, breaks=breaks)
    with pytest.raises(StorageError, match="gave up after 4 attempts") as raised:
        read_all(source)
    assert raised.value.transient
    assert source.opened_at == [0] + [10] * (FAST.max_attempts - 1)


def test_a_download_that_drips_and_breaks_forever_stops_at_the_resume_limit() -> None:
    source = ScriptedSource(DATA, breaks=[Break(at_open=n, after=5) for n in range(50)])
    with pytest.raises(StorageError, match="already resumed 6 times"):
        read_all(source)
    assert len(source.opened_at) == FAST.max_stream_resumes + 1


class GivenUpSource(ScriptedSource):
    """Its client already retried: opening after the break fails with a final (but transient) error."""

    def open(self, offset: int) -> OpenedBody:
        if offset:
            self.opened_at.append(offset)
            raise StorageError(
                "cannot read s3://bucket-x/model.samd: SlowDown (gave up after 5 attempts)", transient=True
            )
        return super().open(offset)


def test_an_open_its_client_already_retried_is_not_retried_again() -> None:
    source = GivenUpSource(DATA, breaks=[Break(at_open=0, after=100)])
    with pytest.raises(StorageError, match=r"gave up after 5 attempts\)$") as raised:
        read_all(source)
    assert raised.value.transient  # the caller may try again later
    assert source.opened_at == [0, 100]  # one resume attempt: the client's retries are not multiplied


def test_a_resume_that_returns_other_bytes_is_refused() -> None:
    source = ScriptedSource(DATA, breaks=[Break(at_open=0, after=100)], shift_start_on_resume=50)
    with pytest.raises(StorageError, match="got bytes from 150") as raised:
        read_all(source)
    assert not raised.value.transient


def test_a_permanent_read_error_is_not_retried() -> None:
    class Denied(ScriptedSource):
        def open(self, offset: int) -> OpenedBody:
            opened = super().open(offset)

            class DeniedBody(_ScriptedBody):
                def readinto(self, buffer: memoryview, /) -> int:
                    raise StorageError("access denied")

            return OpenedBody(DeniedBody(DATA, 0, None, False), opened.start, opened.total_size)

    source = Denied(DATA)
    with pytest.raises(StorageError, match="access denied"):
        read_all(source)
    assert source.opened_at == [0]


def test_readinto_fills_a_large_caller_buffer_in_place() -> None:
    source = ScriptedSource(DATA)
    buffer = bytearray(len(DATA) + 10)
    with ArtifactReader(ResumingReader(source, policy=FAST), uri="x", size=None, buffer_size=64) as reader:
        count = reader.readinto(buffer)
        assert reader.readinto(bytearray(10)) == 0
    assert bytes(buffer[:count]) == DATA


def test_an_empty_object_reads_as_empty() -> None:
    assert read_all(ScriptedSource(b"")) == b""


def test_the_reader_is_a_binary_stream() -> None:
    reader = ArtifactReader(ResumingReader(ScriptedSource(DATA), policy=FAST), uri="x", size=len(DATA))
    assert isinstance(reader, io.BufferedIOBase)
    assert reader.readable()
    assert not reader.seekable()
    reader.close()
    assert reader.closed
