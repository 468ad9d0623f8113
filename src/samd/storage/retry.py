"""Retries with exponential backoff and full jitter, for transient storage failures only: HTTPS
requests and resumed downloads (S3 requests are retried by botocore's standard retry mode).

A failure is transient when trying again can help: a lost connection, a timeout, a 5xx answer,
throttling. Everything else (not found, access denied, bad input) fails at once.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from samd.errors import StorageError, UsageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_jitter = secrets.SystemRandom()


class TransientStorageError(StorageError):
    """A storage failure worth retrying; ``retry_after`` is the server's own hint, in seconds."""

    def __init__(self, message: str, *, hint: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, hint=hint, transient=True)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try.

    ``max_attempts`` bounds the attempts of one request (the first one included), and the
    consecutive failed attempts of a download that makes no progress. ``max_stream_resumes``
    bounds how often one download may resume after its connection broke off, progress or not.
    For S3 only ``max_attempts`` applies to requests: botocore's standard retry mode sends them,
    with its own backoff; the delays here pace HTTPS requests and the resumes of any download.
    """

    max_attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 20.0
    max_stream_resumes: int = 10

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise UsageError("retry delays cannot be negative")
        if self.max_stream_resumes < 0:
            raise UsageError(f"max_stream_resumes cannot be negative, not {self.max_stream_resumes}")

    def backoff_ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` failed attempts in a row: doubles each time, capped."""
        exponent = min(max(failures - 1, 0), 62)  # bounded so the float never overflows
        return float(min(self.max_delay, self.base_delay * 2.0**exponent))

    def delay(self, failures: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt: "full jitter", uniform in [0, ceiling].

        Jitter spreads out clients that failed together, so they do not retry in lockstep. A
        server's Retry-After is honoured, within ``max_delay``.
        """
        wait = _jitter.uniform(0.0, self.backoff_ceiling(failures))
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.max_delay))
        return wait


DEFAULT_RETRY = RetryPolicy()


def gave_up(error: StorageError, attempts: int) -> StorageError:
    """The final error after ``attempts`` transient failures."""
    return StorageError(
        f"{error.message} (gave up after {attempts} attempts)",
        hint=error.hint or "the storage service is unreachable or overloaded; try again later",
        transient=True,
    )


def call_with_retries(operation: Callable[[], T], *, policy: RetryPolicy, action: str) -> T:
    """Run ``operation``, retrying it while it raises a transient `StorageError`.

    ``action`` names the request in log lines (no secrets, no query strings).
    """
    failures = 0
    while True:
        try:
            return operation()
        except StorageError as error:
            if not error.transient:
                raise
            failures += 1
            if failures >= policy.max_attempts:
                raise gave_up(error, failures) from error
            wait = policy.delay(failures, retry_after=getattr(error, "retry_after", None))
            logger.warning(
                "%s failed (%s); retrying in %.2f s (attempt %d of %d)",
                action,
                error.message,
                wait,
                failures + 1,
                policy.max_attempts,
            )
            time.sleep(wait)
