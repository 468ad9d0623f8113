"""The mTLS front end shared by `samd serve` (a model in process) and `samd proxy` (an upstream).

Every request goes through one middleware: identify the client by its certificate (403 if it is
not one of the model's allowed clients), take a token from its bucket (429), answer, then count
and time the outcome and log one JSON line if it was refused. Inference requests are checked
against the model's declared inputs and the limits (400/413) before the backend sees them, and
every response carries the model's provenance: name, version, verified manifest digest, signer.
No endpoint ever returns model bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from samd import __version__
from samd.errors import UsageError
from samd.logs import decision_fields
from samd.serving.access import IdentityPolicy, RateLimiter
from samd.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from samd.serving.metrics import ServingMetrics
from samd.serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    Limits,
    ModelMetadata,
    RefusedError,
    encode_response,
    error_body,
    load_document,
    parse_infer_request,
    split_body,
)
from samd.serving.tls import TlsAcceptor, TlsFiles, context_reloader
from samd.tlsfiles import ReloadingContext

logger = logging.getLogger(__name__)
refusals = logging.getLogger("samd.serving.refused")

PROVENANCE_HEADERS = {
    "model_name": "Samd-Model-Name",
    "model_version": "Samd-Model-Version",
    "manifest_digest": "Samd-Manifest-Digest",
    "signer": "Samd-Signer",
}
"""Provenance field -> response header; in V2 `parameters` the fields are prefixed with `samd_`."""


@dataclass(frozen=True)
class Provenance:
    model_name: str
    model_version: str | None
    manifest_digest: str
    signer: str

    def headers(self) -> dict[str, str]:
        values = {
            "model_name": self.model_name,
            "model_version": self.model_version or "",
            "manifest_digest": self.manifest_digest,
            "signer": self.signer,
        }
        # Header values must be ASCII; a certificate subject may not be: percent-encode those bytes.
        return {
            PROVENANCE_HEADERS[key]: urllib.parse.quote(value, safe=" !#$&'()*+,/:;=?@[]~<>\"{}|^`\\")
            for key, value in values.items()
        }

    def parameters(self) -> dict[str, str]:
        return {
            "samd_model_name": self.model_name,
            "samd_model_version": self.model_version or "",
            "samd_manifest_digest": self.manifest_digest,
            "samd_signer": self.signer,
        }


class Backend(Protocol):
    """What answers requests once the front end has checked them: a runtime or an upstream server."""

    @property
    def metadata(self) -> ModelMetadata | None:
        """The model's declared inputs and outputs; None while not ready."""
        ...

    async def infer(
        self, request: InferRequest, body: bytes, headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], list[bytes]]:
        """The V2 response document and its binary parts (the provenance is added by the caller)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class FrontEndConfig:
    port: int
    tls: TlsFiles
    identity: IdentityPolicy
    provenance: Provenance
    rate: float
    burst: int
    limits: Limits = field(default_factory=Limits)
    host: str = "0.0.0.0"  # noqa: S104 - the pod's port; the NetworkPolicy admits only the listed clients
    metrics_host: str = "0.0.0.0"  # noqa: S104
    metrics_port: int | None = None
    cert_reload_interval: float = 10.0
    shutdown_timeout: float = 15.0
    keepalive_timeout: float = 75.0


def _endpoint(request: web.Request) -> str:
    route = request.match_info.route
    name = route.name if route is not None else None
    return name or "other"


class FrontEnd:
    """The HTTPS application and its lifecycle: ``start()``, then ``stop()``."""

    def __init__(
        self, config: FrontEndConfig, backend: Backend, metrics: ServingMetrics | None = None
    ) -> None:
        self.config = config
        self.backend = backend
        self.metrics = metrics or ServingMetrics(config.identity.allowed_clients)
        self.limiter = RateLimiter(config.rate, config.burst)
        self.draining = False
        self._provenance_headers = config.provenance.headers()
        self._provenance_parameters = config.provenance.parameters()
        self.app = web.Application(client_max_size=config.limits.max_body_bytes, middlewares=[self._front])
        name = config.provenance.model_name
        self.app.add_routes(
            [
                web.get("/v2/health/live", self.live, name="live"),
                web.get("/v2/health/ready", self.ready, name="ready"),
                web.get("/v2", self.server_metadata, name="server"),
                web.get("/v2/models/{model}", self.model_metadata, name="metadata"),
                web.get("/v2/models/{model}/versions/{version}", self.model_metadata),
                web.get("/v2/models/{model}/ready", self.model_ready),
                web.get("/v2/models/{model}/versions/{version}/ready", self.model_ready),
                web.post("/v2/models/{model}/infer", self.infer, name="infer"),
                web.post("/v2/models/{model}/versions/{version}/infer", self.infer),
            ]
        )
        self._endpoint_names = {"live", "ready", "server", "metadata", "infer"}
        # (client, endpoint, status) -> (request counter, latency histogram); clients are the allowed
        # ones or None, statuses a few: bounded.
        self._series: dict[tuple[str | None, str, int], tuple[Any, Any]] = {}
        self._model = name
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._acceptor: TlsAcceptor | None = None
        self._reloader: ReloadingContext | None = None
        self._watch: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    @property
    def reloader(self) -> ReloadingContext:
        if self._reloader is None:
            raise RuntimeError("the server is not started")
        return self._reloader

    # --- lifecycle ---

    async def start(self) -> int:
        """Load the certificates, start the backend, listen; return the port (useful with port 0)."""
        config = self.config
        self._reloader = context_reloader(config.tls, self.metrics)
        await self.backend.start()
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            shutdown_timeout=config.shutdown_timeout,
            handle_signals=False,
            keepalive_timeout=config.keepalive_timeout,
        )
        await self._runner.setup()
        server = self._runner.server
        if server is None:
            raise RuntimeError("the aiohttp runner has no server after setup")
        self._acceptor = TlsAcceptor(self._reloader, server, self.metrics)
        listener = _listen(config.host, config.port)
        self.port = listener.getsockname()[1]
        self._acceptor.start(listener)
        if config.metrics_port is not None:
            self.metrics_port = await self._start_metrics(config.metrics_host, config.metrics_port)
        self._watch = asyncio.create_task(self._reloader.watch(config.cert_reload_interval))
        logger.info(
            "serving model %s on https://%s:%d (TLS 1.3, client certificates of %s required)",
            self._model,
            config.host,
            self.port,
            config.identity.organization,
            extra={"event": "listening", "port": self.port, "metrics_port": self.metrics_port},
        )
        return self.port

    async def _start_metrics(self, host: str, port: int) -> int:
        app = web.Application()
        app.add_routes([web.get("/metrics", self.metrics_endpoint)])
        self._metrics_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._metrics_runner.setup()
        listener = _listen(host, port)
        site = web.SockSite(self._metrics_runner, listener)
        await site.start()
        return int(listener.getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (up to shutdown_timeout), close connections."""
        self.draining = True
        self.metrics.ready.set(0)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._acceptor is not None:
            await self._acceptor.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.backend.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        logger.info("model server stopped")

    # --- the middleware: identity, rate limit, metrics, provenance ---

    @web.middleware
    async def _front(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        endpoint = _endpoint(request)
        endpoint = endpoint if endpoint in self._endpoint_names else "other"
        client: str | None = None
        try:
            transport = request.transport
            peercert = transport.get_extra_info("peercert") if transport is not None else None
            client = self.config.identity.identify(peercert).name
            self.limiter.check(client)
            response = await handler(request)
        except RefusedError as refused:
            response = self._refused(request, refused, client)
        except web.HTTPException as error:  # aiohttp's own: 404 for an unknown path, 405 ...
            reason = "not_found" if error.status == 404 else "other"
            response = self._refused(request, RefusedError(error.status, reason, error.reason), client)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("internal error while answering %s %s", request.method, request.path)
            failure = RefusedError(500, "error", "internal error in the model server; see its log")
            response = self._refused(request, failure, client)
        response.headers.update(self._provenance_headers)
        key = (client, endpoint, response.status)
        series = self._series.get(key)
        if series is None:  # the label lookups, once per combination (they cost more than the rest)
            label = self.metrics.client_label(client)
            series = self._series[key] = (
                self.metrics.requests.labels(label, endpoint, _outcome(response.status)),
                self.metrics.duration.labels(endpoint),
            )
        series[0].inc()
        series[1].observe(time.perf_counter() - started)
        return response

    def _refused(self, request: web.Request, refused: RefusedError, client: str | None) -> web.Response:
        if refused.status == 403:
            self.metrics.forbidden.labels(refused.reason).inc()
        elif refused.status == 429:
            self.metrics.rate_limited.labels(self.metrics.client_label(client)).inc()
        elif refused.status in (400, 413):
            self.metrics.validation_failures.labels(refused.reason).inc()
        if refused.reason in ("model_error", "upstream"):
            self.metrics.inference_errors.labels(refused.reason).inc()
        elif refused.status == 500:
            self.metrics.inference_errors.labels("internal").inc()
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        refusals.warning(
            "request refused",
            extra=decision_fields(
                component="server",
                event="request_refused",
                decision="refused",
                reason=refused.reason,
                user=client,
                model=(None, self.config.provenance.model_name),
                status=refused.status,
                client=client,
                method=request.method,
                path=request.path,
                peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None,
                detail=refused.message,
            ),
        )
        return web.Response(
            status=refused.status,
            body=error_body(refused.message),
            content_type="application/json",
            headers=refused.headers,
        )

    # --- endpoints ---

    def _json(self, document: Mapping[str, Any], status: int = 200) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(document), content_type="application/json")

    def _is_ready(self) -> bool:
        return not self.draining and self.backend.metadata is not None

    async def live(self, _request: web.Request) -> web.Response:
        return self._json({"live": True})

    async def ready(self, _request: web.Request) -> web.Response:
        ready = self._is_ready()
        return self._json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, _request: web.Request) -> web.Response:
        return self._json({"name": "samd", "version": __version__, "extensions": ["binary_tensor_data"]})

    def _metadata_for(self, request: web.Request) -> ModelMetadata:
        model = request.match_info["model"]
        version = request.match_info.get("version")
        provenance = self.config.provenance
        if model != self._model or (version is not None and version != provenance.model_version):
            wanted = f"{model} version {version}" if version is not None else model
            served = self._model + (
                f" version {provenance.model_version}" if provenance.model_version else ""
            )
            raise RefusedError(
                404, "not_found", f"model {wanted} is not served here; this server serves {served}"
            )
        metadata = self.backend.metadata
        if metadata is None or self.draining:
            raise RefusedError(503, "unavailable", f"model {model} is not ready")
        return metadata

    async def model_metadata(self, request: web.Request) -> web.Response:
        metadata = self._metadata_for(request)
        document = metadata.to_dict()
        document["name"] = self._model
        document["versions"] = (
            [self.config.provenance.model_version] if self.config.provenance.model_version else []
        )
        document["parameters"] = self._provenance_parameters
        return self._json(document)

    async def model_ready(self, request: web.Request) -> web.Response:
        self._metadata_for(request)
        return self._json({"name": self._model, "ready": True})

    async def infer(self, request: web.Request) -> web.Response:
        metadata = self._metadata_for(request)
        limit = self.config.limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RefusedError(
                413, "too_large", f"the request body is larger than this server's limit of {limit} bytes"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RefusedError(
                413, "too_large", f"the request body is larger than this server's limit of {limit} bytes"
            ) from None
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        parsed = parse_infer_request(load_document(header), binary, metadata, self.config.limits)
        document, parts = await self.backend.infer(parsed, body, request.headers)
        drift = self.metrics.drift.monitor
        if drift is not None:  # one append; decoded and binned per batch (samd.drift)
            drift.observe_answer(parsed.inputs, document, parts)
        document["model_name"] = self._model
        if self.config.provenance.model_version:
            document["model_version"] = self.config.provenance.model_version
        parameters = document.get("parameters")
        document["parameters"] = {
            **(parameters if isinstance(parameters, dict) else {}),
            **self._provenance_parameters,
        }
        payload, headers = encode_response(document, parts)
        return web.Response(status=200, body=payload, headers=headers)

    async def metrics_endpoint(self, _request: web.Request) -> web.Response:
        self.metrics.ready.set(1 if self._is_ready() else 0)
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def _outcome(status: int) -> str:
    return {
        400: "invalid",
        403: "forbidden",
        404: "not_found",
        413: "too_large",
        429: "rate_limited",
        503: "unavailable",
    }.get(status, "ok" if status < 400 else "error")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as error:
        raise UsageError(
            f"cannot listen on {host}:{port}: {error.strerror}", hint="choose another port"
        ) from None


async def serve_until_signalled(front: FrontEnd, on_listening: Callable[[int], None] | None = None) -> None:
    """Start `front`, run until SIGTERM or SIGINT, then shut down gracefully (see ``stop``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for number in signals:
        loop.add_signal_handler(number, stop.set)
    try:
        port = await front.start()
        # What start-up made lives as long as the server: keep it out of the collector's full passes,
        # which would otherwise walk the model runtime's and libraries' objects in the middle of requests.
        gc.collect()
        gc.freeze()
        if on_listening is not None:
            on_listening(port)
        await stop.wait()
        logger.info("signal received: finishing in-flight requests, then stopping")
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        await front.stop()
