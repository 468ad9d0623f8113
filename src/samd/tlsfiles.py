"""TLS server files that change while the server runs (a Kubernetes Secret volume swaps them).

The admission webhook and the model server both serve TLS from mounted files and must pick up a
renewed certificate without dropping live connections. `ReloadingContext` builds an `SSLContext`
from the files and builds a NEW one when they change, so that a half-written update (a new
certificate with the old key) fails to load and the context in use stays until the next check.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from samd.errors import UsageError

logger = logging.getLogger(__name__)

FileState = tuple[tuple[int, int, int], ...]


def file_state(paths: Sequence[Path]) -> FileState:
    """What identifies a version of the files: a changed symlink target changes the inode."""

    def of(path: Path) -> tuple[int, int, int]:
        status = os.stat(path)  # follows symlinks: a Secret volume's ..data swap shows here
        return (status.st_mtime_ns, status.st_ino, status.st_size)

    return tuple(of(path) for path in paths)


def load_certificate(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """Load the certificate chain and key into `context`; UsageError names what is wrong."""
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as error:
        raise UsageError(f"the TLS certificate or key file {error.filename} does not exist") from None
    except (ssl.SSLError, OSError) as error:
        raise UsageError(
            f"cannot use the TLS certificate {cert_file} with the key {key_file}: {error}",
            hint="the files must be PEM, and the key must belong to the certificate",
        ) from None


def certificate_expiry(cert_file: Path) -> datetime.datetime | None:
    from cryptography import x509  # noqa: PLC0415 - only when a certificate is (re)loaded

    try:
        return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


class CertificateMetrics(Protocol):
    """The two metrics a server keeps about its certificate."""

    certificate_reloads: Any  # Counter labelled by result: loaded, failed
    certificate_expiry: Any  # Gauge: the certificate's notAfter as a Unix time


class ReloadingContext:
    """The current context built from `paths` by `build`; `check()` builds a new one when they change."""

    def __init__(
        self,
        paths: Sequence[Path],
        build: Callable[[], ssl.SSLContext],
        *,
        metrics: CertificateMetrics | None = None,
    ) -> None:
        self.paths = tuple(paths)
        self._build = build
        self._metrics = metrics
        try:
            self._state = file_state(self.paths)  # before loading: a change meanwhile is seen
        except OSError as error:
            raise UsageError(f"cannot read the TLS file {error.filename}: {error.strerror}") from None
        self.context = build()
        self._record_expiry()

    def _record_expiry(self) -> None:
        expiry = certificate_expiry(self.paths[0])
        if self._metrics is not None and expiry is not None:
            self._metrics.certificate_expiry.set(expiry.timestamp())

    def check(self) -> bool:
        """Reload if the files changed since the last load; True when a new context is in use."""
        try:
            state = file_state(self.paths)
        except OSError as error:
            logger.warning("cannot read the TLS files (%s); keeping the certificate in use", error)
            return False
        if state == self._state:
            return False
        try:
            context = self._build()
        except UsageError as error:
            # Typically the certificate was written and the key not yet: try again at the next check.
            logger.warning("the TLS files changed but cannot be used yet: %s", error.message)
            if self._metrics is not None:
                self._metrics.certificate_reloads.labels("failed").inc()
            return False
        self._state = state
        self.context = context
        self._record_expiry()
        if self._metrics is not None:
            self._metrics.certificate_reloads.labels("loaded").inc()
        logger.info("loaded the new TLS files %s", ", ".join(str(path) for path in self.paths))
        return True

    async def watch(self, interval: float) -> None:
        """Check every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # keep watching: a later change may load fine
                logger.exception("checking the TLS files for a change failed")
