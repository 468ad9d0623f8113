"""Mutual TLS 1.3 for the model port: the context, its reload, and handshakes that can be counted.

The listening socket accepts plain TCP and each connection is upgraded with `loop.start_tls` using
the context current at that moment; a handshake that fails (no client certificate, one the CA did
not issue, TLS 1.2 or older) is counted by reason and logged, which an ssl-wrapped listener would
swallow. A new certificate, key or client CA is loaded into a NEW context when its files change:
new connections get it, established ones keep theirs (nothing is dropped), and a half-written update
that fails to load leaves the previous context in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samd.errors import UsageError
from samd.logs import decision_fields
from samd.serving.metrics import ServingMetrics
from samd.tlsfiles import ReloadingContext, load_certificate

logger = logging.getLogger(__name__)
refusals = logging.getLogger("samd.serving.refused")

HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    client_ca_file: Path


def build_mtls_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3 only, a client certificate from the client CA required; UsageError names what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    load_certificate(context, files.cert_file, files.key_file)
    try:
        context.load_verify_locations(cafile=files.client_ca_file)
    except FileNotFoundError:
        raise UsageError(f"the client CA file {files.client_ca_file} does not exist") from None
    except (ssl.SSLError, OSError) as error:
        raise UsageError(
            f"cannot read the client CA {files.client_ca_file}: {error}",
            hint="it must hold the PEM certificate of the CA that issues the clients' certificates",
        ) from None
    return context


def context_reloader(files: TlsFiles, metrics: ServingMetrics) -> ReloadingContext:
    """The current mTLS context, built again when the certificate, key or client CA changes."""
    return ReloadingContext(
        (files.cert_file, files.key_file, files.client_ca_file),
        lambda: build_mtls_context(files),
        metrics=metrics,
    )


def refusal_reason(error: BaseException) -> str:
    """A bounded label for why a handshake failed."""
    if isinstance(error, TimeoutError):
        return "timeout"
    text = f"{getattr(error, 'reason', '') or ''} {error}".upper()
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "CERTIFICATE_REQUIRED" in text:
        return "no_certificate"
    if "CERTIFICATE_VERIFY_FAILED" in text or "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text:
        return "untrusted_certificate"
    if "VERSION" in text or "UNSUPPORTED_PROTOCOL" in text:
        return "protocol_version"
    return "other"


class TlsAcceptor:
    """Accepts connections and upgrades each with the reloader's current context; counts the outcomes.

    Sockets are accepted here and handed to `connect_accepted_socket` with TLS, so that nothing is
    read from a connection before its TLS layer is in place, and a failed handshake raises here
    (where it is counted and logged) instead of being dropped silently by the event loop.
    """

    def __init__(
        self,
        reloader: ReloadingContext,
        protocol_factory: Callable[[], asyncio.Protocol],
        metrics: ServingMetrics,
    ) -> None:
        self._reloader = reloader
        self._factory = protocol_factory
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._listener: socket.socket | None = None

    def start(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.get_running_loop().create_task(self._accept(listener))

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, peer = await loop.sock_accept(listener)
            except OSError as error:  # EMFILE and the like: wait a little rather than spin
                logger.warning("accepting a connection failed: %s", error)
                await asyncio.sleep(0.1)
                continue
            with contextlib.suppress(OSError):  # answers are small: never wait for an ACK to send one
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._handshake(connection, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(self, connection: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._factory,
                connection,
                ssl=self._reloader.context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, TimeoutError, ConnectionError, EOFError) as error:
            reason = refusal_reason(error)
            self._metrics.refused_handshakes.labels(reason).inc()
            refusals.warning(
                "TLS handshake refused",
                extra=decision_fields(
                    component="server",
                    event="handshake_refused",
                    decision="refused",
                    reason=reason,
                    peer=_peer(peer),
                    detail=str(error),
                ),
            )
            connection.close()
            return
        self._metrics.handshakes.inc()

    async def close(self) -> None:
        """Stop accepting; abandon handshakes in progress."""
        tasks = [task for task in (self._accepting, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            self._listener.close()


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
