"""The HTTPS admission server (aiohttp): POST /validate, /healthz, /readyz, /metrics.

- AdmissionReview v1 in and out; the uid is echoed, the Decision becomes ``allowed``, ``status``
  and ``warnings``.
- TLS 1.3 by default, 1.2 when configured; the certificate and key are re-read when their files
  change (Kubernetes updates a mounted Secret by swapping a symlink), and new connections get the
  new certificate while established ones keep theirs.
- Fails closed: a decider that raises, times out or is not ready yet gives a DENY that says so.
  Bodies that are not an AdmissionReview at all get HTTP 400 (too large: 413) with a metav1.Status
  that names the problem, which the API server shows; the server keeps running.
- One audit line per decision (``samd.webhook.audit``) and Prometheus metrics.
- ``stop()`` (on SIGTERM, see ``__main__``) stops accepting, lets in-flight requests finish and
  closes idle keep-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from samd.errors import SamdError, UsageError
from samd.webhook.audit import AuditRecord, log_decision, log_unparsed
from samd.webhook.config import WebhookConfig
from samd.webhook.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from samd.webhook.metrics import WebhookMetrics
from samd.webhook.review import (
    REASON_INTERNAL_ERROR,
    REASON_INVALID_REVIEW,
    REASON_TIMEOUT,
    AdmissionRequest,
    Decider,
    Decision,
    ReviewError,
    load_json,
    parse_review,
    review_response,
)

logger = logging.getLogger(__name__)

FAIL_CLOSED = (
    "SAMD admission webhook could not decide: {what}; the request is denied because failing open "
    "would admit unverified models — check the webhook logs"
)
_MAX_ERROR_TEXT = 300

# TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are all fine and not configurable here.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


# --- TLS with certificate reload ------------------------------------------------------------------


@dataclass(frozen=True)
class _FileState:
    """What identifies a version of the files: a changed symlink target changes the inode."""

    cert: tuple[int, int, int]
    key: tuple[int, int, int]


def _file_state(cert_file: Path, key_file: Path) -> _FileState:
    def of(path: Path) -> tuple[int, int, int]:
        status = os.stat(path)  # follows symlinks: a Secret volume's ..data swap shows here
        return (status.st_mtime_ns, status.st_ino, status.st_size)

    return _FileState(of(cert_file), of(key_file))


def build_tls_context(cert_file: Path, key_file: Path, min_version: ssl.TLSVersion) -> ssl.SSLContext:
    """A server context for the certificate chain and key; raises UsageError naming what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if min_version <= ssl.TLSVersion.TLSv1_2:
        context.set_ciphers(_TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as error:
        raise UsageError(f"the TLS certificate or key file {error.filename} does not exist") from None
    except (ssl.SSLError, OSError) as error:
        raise UsageError(
            f"cannot use the TLS certificate {cert_file} with the key {key_file}: {error}",
            hint="the files must be PEM, and the key must belong to the certificate",
        ) from None
    return context


def certificate_expiry(cert_file: Path) -> datetime.datetime | None:
    from cryptography import x509  # noqa: PLC0415 - only when a certificate is (re)loaded

    try:
        return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class DevelopmentCertificates:
    ca_file: Path  # the caBundle of the webhook configuration
    cert_file: Path
    key_file: Path


def write_development_certificates(
    directory: Path,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    *,
    validity: datetime.timedelta = datetime.timedelta(days=30),
) -> DevelopmentCertificates:
    """A throw-away CA and a serving certificate for `hosts`, for tests, benchmarks and the demo.

    Writes ca.crt, tls.crt and tls.key (mode 0600) into `directory`; the CA key is not kept. In a
    cluster the chart (or cert-manager) provides the certificate.
    """
    from cryptography import x509  # noqa: PLC0415 - development helper only
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    from samd.operator.builders.certificates import (  # noqa: PLC0415
        CertificateAuthority,
        cert_pem,
        issue_certificate,
        key_pem,
    )

    now = datetime.datetime.now(datetime.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    # A name of its own: clients pick the CA by issuer name, so two development CAs must differ.
    ca = CertificateAuthority.generate(
        now, validity, common_name=f"samd-webhook development CA {os.urandom(4).hex()}"
    )
    key, cert = issue_certificate(
        ca,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        hosts=hosts,
        now=now,
        validity=validity,
    )
    paths = DevelopmentCertificates(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    paths.ca_file.write_bytes(ca.certificate_pem)
    paths.key_file.touch(mode=0o600)
    paths.key_file.write_bytes(key_pem(key))
    paths.cert_file.write_bytes(cert_pem(cert))
    return paths


class CertificateReloader:
    """Serves the newest valid certificate: each handshake switches to it in the SNI callback.

    The listening context given to the socket never changes; its SNI callback (called for every
    ClientHello, with or without a server name) points the connection at the current context.
    A new pair of files is loaded into a NEW context, so a half-written update (a new certificate
    with the old key) fails to load and the old certificate stays in use until the next check.
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        min_version: ssl.TLSVersion,
        metrics: WebhookMetrics | None = None,
    ) -> None:
        self.cert_file, self.key_file, self.min_version = cert_file, key_file, min_version
        self._metrics = metrics
        try:
            self._state = _file_state(cert_file, key_file)  # before loading: a change meanwhile is seen
        except OSError as error:
            raise UsageError(f"cannot read the TLS file {error.filename}: {error.strerror}") from None
        self.listening_context = build_tls_context(cert_file, key_file, min_version)
        self._current = self.listening_context
        self.listening_context.sni_callback = self._select_context
        self._record_expiry()

    @property
    def current_context(self) -> ssl.SSLContext:
        return self._current

    def _select_context(self, connection: ssl.SSLObject, _server_name: str | None, _: ssl.SSLContext) -> None:
        if self._current is not self.listening_context:
            connection.context = self._current

    def _record_expiry(self) -> None:
        expiry = certificate_expiry(self.cert_file)
        if self._metrics is not None and expiry is not None:
            self._metrics.certificate_expiry.set(expiry.timestamp())

    def check(self) -> bool:
        """Reload if the files changed since the last load; True when a new certificate is in use."""
        try:
            state = _file_state(self.cert_file, self.key_file)
        except OSError as error:
            logger.warning("cannot read the TLS files (%s); keeping the certificate in use", error)
            return False
        if state == self._state:
            return False
        try:
            context = build_tls_context(self.cert_file, self.key_file, self.min_version)
        except UsageError as error:
            # Typically the certificate was written and the key not yet: try again at the next check.
            logger.warning("the TLS files changed but cannot be used yet: %s", error)
            if self._metrics is not None:
                self._metrics.certificate_reloads.labels("failed").inc()
            return False
        self._state = state
        self._current = context
        self._record_expiry()
        if self._metrics is not None:
            self._metrics.certificate_reloads.labels("loaded").inc()
        logger.info("loaded the new TLS certificate from %s", self.cert_file)
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # keep watching: a later change may load fine
                logger.exception("checking the TLS files for a change failed")


# --- decisions --------------------------------------------------------------------------------------


def describe_failure(error: BaseException) -> str:
    """What failed, in one line for the client: never a stack trace."""
    if isinstance(error, SamdError):
        text = error.message
    else:
        detail = str(error).splitlines()[0] if str(error) else ""
        text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."


def fail_closed(what: str, reason: str = REASON_INTERNAL_ERROR) -> Decision:
    return Decision(allowed=False, message=FAIL_CLOSED.format(what=what), reason=reason, code=500)


def result_of(decision: Decision, *, failed: bool) -> str:
    if failed:
        return "error"
    if not decision.allowed:
        return "denied"
    return "warned" if decision.warnings else "allowed"


def _status(code: int, reason: str, message: str) -> web.Response:
    """A metav1.Status body: the API server shows its message when a webhook call fails."""
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")


class AdmissionServer:
    """The aiohttp application and its lifecycle: ``start()``, then ``stop()``."""

    def __init__(
        self, config: WebhookConfig, decider: Decider, metrics: WebhookMetrics | None = None
    ) -> None:
        self.config = config
        self.decider = decider
        self.metrics = metrics or WebhookMetrics()
        self.draining = False
        self.app = web.Application(client_max_size=config.max_body_bytes)
        self.app.add_routes(
            [
                web.post("/validate", self.validate),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics_endpoint),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._reloader: CertificateReloader | None = None
        self._watch: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def reloader(self) -> CertificateReloader:
        if self._reloader is None:
            raise RuntimeError("the server is not started")
        return self._reloader

    # --- lifecycle ---

    async def start(self) -> int:
        """Load the certificate, listen, and return the port (useful with port 0)."""
        self._reloader = CertificateReloader(
            self.config.cert_file, self.config.key_file, self.config.tls_min_version, self.metrics
        )
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self.config.shutdown_timeout, handle_signals=False
        )
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        try:
            listener = socket.create_server((self.config.host, self.config.port), family=family, backlog=512)
        except OSError as error:
            await self._runner.cleanup()
            self._runner = None
            raise UsageError(
                f"cannot listen on {self.config.host}:{self.config.port}: {error.strerror}",
                hint="choose another --host or --port",
            ) from None
        site = web.SockSite(self._runner, listener, ssl_context=self._reloader.listening_context)
        await site.start()
        self.port = listener.getsockname()[1]
        self._watch = asyncio.create_task(self._reloader.watch(self.config.cert_reload_interval))
        logger.info(
            "admission webhook listening on https://%s:%d (TLS >= %s)",
            self.config.host,
            self.port,
            "1.3" if self.config.tls_min_version == ssl.TLSVersion.TLSv1_3 else "1.2",
        )
        return self.port

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (up to shutdown_timeout), close connections."""
        self.draining = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        logger.info("admission webhook stopped")

    # --- endpoints ---

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="shutting down\n")
        if not self.decider.ready:
            return web.Response(status=503, text="not ready: the watched state is not synced yet\n")
        return web.Response(text="ok\n")

    async def metrics_endpoint(self, _request: web.Request) -> web.Response:
        self.metrics.ready.set(1 if self.decider.ready and not self.draining else 0)
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def validate(self, request: web.Request) -> web.Response:
        try:
            return await self._validate(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug in the server itself: the API server applies failurePolicy Fail (denies).
            logger.exception("internal error while handling an AdmissionReview")
            return _status(
                500, "InternalError", FAIL_CLOSED.format(what="internal error in the webhook server")
            )

    async def _validate(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        if request.content_type != "application/json":
            self.metrics.invalid_reviews.labels("content_type").inc()
            return _status(
                400,
                "BadRequest",
                f"expected Content-Type application/json (an AdmissionReview), got {request.content_type!r}",
            )
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._too_large(request.content_length)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        try:
            parsed = parse_review(load_json(body))
        except ReviewError as error:
            self.metrics.invalid_reviews.labels("malformed").inc()
            return _status(400, "BadRequest", f"not an AdmissionReview v1: {error}")
        if parsed.request is None:
            problem = parsed.problem or "malformed request"
            decision = Decision(
                allowed=False,
                message=f"SAMD admission webhook refused a malformed AdmissionReview: {problem}",
                reason=REASON_INVALID_REVIEW,
                code=400,
            )
            log_unparsed(parsed.uid, parsed.kind, problem)
            self.metrics.observe_decision("denied", parsed.kind, time.perf_counter() - started)
            return self._answer(parsed.uid, decision)
        decision, failed = await self._decide(parsed.request)
        result = result_of(decision, failed=failed)
        seconds = time.perf_counter() - started
        log_decision(AuditRecord.of(parsed.request, decision, result, seconds))
        self.metrics.observe_decision(result, parsed.request.kind.kind, seconds)
        return self._answer(parsed.uid, decision)

    async def _decide(self, request: AdmissionRequest) -> tuple[Decision, bool]:
        """The decider's Decision, or a fail-closed denial; the flag says whether deciding failed."""
        if not self.decider.ready:
            return (
                fail_closed(
                    "its view of the cluster (SecureModels, trust policies, signatures) is not synced yet, "
                    "retry in a few seconds",
                    reason="NotReady",
                ),
                True,
            )
        try:
            async with asyncio.timeout(self.config.decision_timeout):
                decision: object = await self.decider.decide(request)
        except TimeoutError:
            logger.error(
                "the decision on %s %s/%s took longer than %.1f s",
                request.kind.kind,
                request.namespace,
                request.object_name,
                self.config.decision_timeout,
            )
            return fail_closed(
                f"the decision took longer than {self.config.decision_timeout:g} s", REASON_TIMEOUT
            ), True
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.exception(
                "the decider failed on %s %s/%s", request.kind.kind, request.namespace, request.object_name
            )
            return fail_closed(describe_failure(error)), True
        if not isinstance(decision, Decision):
            logger.error("the decider returned %r instead of a Decision", type(decision).__name__)
            return fail_closed(f"the decider returned {type(decision).__name__}, not a Decision"), True
        return decision, False

    def _answer(self, uid: str, decision: Decision) -> web.Response:
        body: dict[str, Any] = review_response(uid, decision)
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _too_large(self, size: int | None) -> web.Response:
        self.metrics.invalid_reviews.labels("too_large").inc()
        actual = f" ({size} bytes)" if size is not None else ""
        return _status(
            413,
            "RequestEntityTooLarge",
            f"the AdmissionReview{actual} is larger than the webhook's limit of {self.config.max_body_bytes} "
            "bytes; raise --max-body-bytes if objects this large are expected",
        )


async def serve_until_signalled(
    server: AdmissionServer, on_listening: Callable[[int], None] | None = None
) -> None:
    """Start `server`, run until SIGTERM or SIGINT, then shut down gracefully (see ``stop``).

    `on_listening` is called with the port once the server accepts connections.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for number in signals:
        loop.add_signal_handler(number, stop.set)
    try:
        port = await server.start()
        if on_listening is not None:
            on_listening(port)
        await stop.wait()
        logger.info("signal received: finishing in-flight requests, then stopping")
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        await server.stop()
