"""The HTTPS admission server (aiohttp): POST /validate, /healthz, /readyz, /metrics.

- AdmissionReview v1 in and out; the uid is echoed, the Decision becomes ``allowed``, ``status``
  and ``warnings``.
- TLS 1.3 by default, 1.2 when configured; the certificate and key are re-read when their files
  change (Kubernetes updates a mounted Secret by swapping a symlink), and new connections get the
  new certificate while established ones keep theirs.
- Fails closed: a decider that raises, times out or is not ready yet gives a DENY that says so.
  Bodies that are not an AdmissionReview at all get HTTP 400 (too large: 413) with a metav1.Status
  that names the problem, which the API server shows; the server keeps running.
- Slow or hostile clients cannot hold the server: a client gets ``read_timeout`` (3 s) for its TLS
  handshake, for its first request's headers and for each request body (then 408 and the connection
  is closed), and at most ``max_connections`` connections are open at once (one more is closed as
  soon as it is accepted). A client that resets its connection is counted
  (``samd_webhook_client_resets_total``) and logged at debug level, without a traceback.
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
from samd.events import emit
from samd.tlsfiles import ReloadingContext, load_certificate
from samd.webhook.audit import AuditRecord, log_decision, log_unparsed, security_event
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


def build_tls_context(cert_file: Path, key_file: Path, min_version: ssl.TLSVersion) -> ssl.SSLContext:
    """A server context for the certificate chain and key; raises UsageError naming what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if min_version <= ssl.TLSVersion.TLSv1_2:
        context.set_ciphers(_TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    load_certificate(context, cert_file, key_file)
    return context


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


class CertificateReloader(ReloadingContext):
    """Serves the newest valid certificate: each handshake switches to it in the SNI callback.

    The listening context given to the socket never changes; its SNI callback (called for every
    ClientHello, with or without a server name) points the connection at the current context.
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        min_version: ssl.TLSVersion,
        metrics: WebhookMetrics | None = None,
    ) -> None:
        super().__init__(
            (cert_file, key_file),
            lambda: build_tls_context(cert_file, key_file, min_version),
            metrics=metrics,
        )
        self.listening_context = self.context
        self.listening_context.sni_callback = self._select_context

    @property
    def current_context(self) -> ssl.SSLContext:
        return self.context

    def _select_context(self, connection: ssl.SSLObject, _server_name: str | None, _: ssl.SSLContext) -> None:
        if self.context is not self.listening_context:
            connection.context = self.context


# --- connections -------------------------------------------------------------------------------------


class _ConnectionGate:
    """Counts the open connections against the limit (the metrics gauge follows)."""

    def __init__(self, limit: int, metrics: WebhookMetrics) -> None:
        self.limit = limit
        self.open = 0
        self._metrics = metrics

    def admit(self) -> bool:
        if self.open >= self.limit:
            self._metrics.connections_refused.inc()
            return False
        self.open += 1
        self._metrics.connections_open.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        self._metrics.connections_open.set(self.open)


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's request handler does the HTTP; this adds what it lacks.

    - The first request's headers must be complete within the read timeout (aiohttp waits for them
      forever: a client that connects and sends nothing, or a byte at a time, would hold a connection).
      Only the first request's head is looked at, so later traffic passes straight through.
    - The gate learns when the connection ends.
    """

    __slots__ = ("_gate", "_handler", "_metrics", "_tail", "_timer", "_transport")

    def __init__(
        self, handler: asyncio.Protocol, gate: _ConnectionGate, metrics: WebhookMetrics, timeout: float
    ) -> None:
        self._handler = handler
        self._gate: _ConnectionGate | None = gate
        self._metrics = metrics
        self._transport: asyncio.BaseTransport | None = None
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            timeout, self._headers_timed_out
        )

    def _headers_timed_out(self) -> None:
        self._timer = None
        self._metrics.connection_timeouts.labels("headers").inc()
        logger.debug("closing a connection whose first request headers did not arrive in time")
        if isinstance(self._transport, asyncio.Transport):
            self._transport.abort()
        elif self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        try:
            self._handler.connection_lost(exc)
        finally:
            self.release()

    def release(self) -> None:
        """The connection is over (or never got past its handshake): once only."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._gate is not None:
            self._gate.release()
            self._gate = None


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
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._gate = _ConnectionGate(config.max_connections, self.metrics)
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
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener, self._reloader.listening_context))
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
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for handshake in list(self._handshakes):
            handshake.cancel()
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        logger.info("admission webhook stopped")

    # --- connections ---

    async def _accept(self, listener: socket.socket, context: ssl.SSLContext) -> None:
        """Accept connections up to the limit; each one's TLS handshake runs on its own."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as error:  # out of file descriptors, for one: try again shortly
                logger.warning("accepting a connection failed: %s", error)
                await asyncio.sleep(0.1)
                continue
            if not self._gate.admit():
                sock.close()
                logger.debug("closed a connection at once: %d connections are open", self._gate.limit)
                continue
            task = asyncio.create_task(self._connect(sock, context))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _connect(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        """The TLS handshake of one accepted connection, within the read timeout; then aiohttp serves it."""
        handler_factory = self._runner.server if self._runner is not None else None
        assert handler_factory is not None  # noqa: S101 - connections are accepted only while running
        loop = asyncio.get_running_loop()
        timeout = self.config.read_timeout
        connected: list[_Connection] = []

        def connection() -> _Connection:
            created = _Connection(handler_factory(), self._gate, self.metrics, timeout)
            connected.append(created)
            return created

        try:
            async with asyncio.timeout(timeout):
                # The handshake timeout is asyncio's own backstop; ours above fires first.
                await loop.connect_accepted_socket(
                    connection, sock, ssl=context, ssl_handshake_timeout=timeout + 1
                )
            return
        except TimeoutError:
            self.metrics.connection_timeouts.labels("handshake").inc()
            logger.debug("closed a connection whose TLS handshake took longer than %g s", timeout)
        except (ConnectionError, ssl.SSLEOFError):
            self.metrics.client_resets.labels("handshake").inc()
            logger.debug("a client reset its connection during the TLS handshake")
        except OSError as error:  # ssl.SSLError included: not TLS, no common version or cipher
            self.metrics.handshake_failures.inc()
            logger.debug("a TLS handshake failed: %s", error)
        except asyncio.CancelledError:
            self._abandon(sock, connected)
            raise
        self._abandon(sock, connected)

    def _abandon(self, sock: socket.socket, connected: list[_Connection]) -> None:
        """Close a connection whose handshake failed: aiohttp never saw it, so release it here."""
        sock.close()
        if connected:
            connected[0].release()
        else:
            self._gate.release()

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

    async def validate(self, request: web.Request) -> web.StreamResponse:
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

    async def _validate(self, request: web.Request) -> web.StreamResponse:
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
            async with asyncio.timeout(self.config.read_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        except TimeoutError:
            return await self._body_timed_out(request)
        except ConnectionError:
            # The client went away mid-body: nobody reads an answer, and nothing is wrong here.
            self.metrics.client_resets.labels("request").inc()
            logger.debug("a client reset its connection while sending its request")
            return web.Response(status=400)
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
            self.metrics.observe_denial(decision.reason)
            return self._answer(parsed.uid, decision)
        decision, failed = await self._decide(parsed.request)
        result = result_of(decision, failed=failed)
        seconds = time.perf_counter() - started
        record = AuditRecord.of(parsed.request, decision, result, seconds)
        log_decision(record)
        attempt = security_event(record)
        if attempt is not None:
            emit(attempt)  # enqueued only: the answer is not delayed
        self.metrics.observe_decision(result, parsed.request.kind.kind, seconds)
        if not decision.allowed:
            self.metrics.observe_denial(decision.reason)
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

    async def _body_timed_out(self, request: web.Request) -> web.StreamResponse:
        """408, then close at once: the rest of the body is not waited for."""
        self.metrics.invalid_reviews.labels("body_timeout").inc()
        logger.debug("closing a connection whose request body did not arrive in time")
        response = _status(
            408,
            "RequestTimeout",
            f"the AdmissionReview did not arrive within {self.config.read_timeout:g} s (--read-timeout)",
        )
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
        return response

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
