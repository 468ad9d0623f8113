"""The two backends of the front end: a runtime in this process (`samd serve`) and an upstream
V2 server on localhost (`samd proxy`)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

import orjson

from samd.errors import UsageError
from samd.serving.model import Runtime
from samd.serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ModelMetadata,
    RefusedError,
    infer_document,
    load_document,
    split_body,
    tensor_specs,
)

logger = logging.getLogger(__name__)


class InProcessBackend:
    """A runtime loaded in this process; inference runs on the event loop's thread.

    Small models (the fraud model takes microseconds) are fastest run inline; onnxruntime uses its
    own threads (`--threads`) within one call.
    """

    def __init__(self, runtime: Runtime, name: str, version: str | None) -> None:
        self._runtime = runtime
        self._metadata = ModelMetadata(name, version, runtime.platform, runtime.inputs, runtime.outputs)

    @property
    def metadata(self) -> ModelMetadata | None:
        return self._metadata

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def infer(
        self, request: InferRequest, body: bytes, headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], list[bytes]]:
        try:
            results = self._runtime.infer(request.inputs, request.outputs)
        except Exception as error:  # the runtime's own exception types
            logger.warning("the model failed on a checked request: %s", error)
            raise RefusedError(
                400, "model_error", f"the model could not run on this input: {str(error)[:300]}"
            ) from None
        return infer_document(request, results)


def check_upstream(url: str) -> str:
    """The upstream's base URL, refused unless it is plain HTTP on a loopback address."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parsed.scheme != "http" or not loopback or parsed.port is None or parsed.path not in ("", "/"):
        raise UsageError(
            f"the upstream {url!r} must be http://127.0.0.1:PORT (or [::1], localhost)",
            hint="the model server in the pod must listen on localhost only; samd proxy is its only way in",
        )
    return f"http://{parsed.netloc}"


class UpstreamBackend:
    """A V2 model server on localhost; ready once it is ready and declares the model's inputs."""

    def __init__(
        self, url: str, model_name: str, *, timeout: float = 30.0, poll_interval: float = 0.5
    ) -> None:
        self.url = check_upstream(url)
        self.model_name = model_name
        self._timeout = timeout
        self._poll = poll_interval
        self._metadata: ModelMetadata | None = None
        self._session: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def metadata(self) -> ModelMetadata | None:
        return self._metadata

    async def start(self) -> None:
        import aiohttp  # noqa: PLC0415

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            auto_decompress=False,
        )
        self._task = asyncio.create_task(self._wait_until_ready())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _wait_until_ready(self) -> None:
        import aiohttp  # noqa: PLC0415

        last_problem = ""
        model_url = f"{self.url}/v2/models/{urllib.parse.quote(self.model_name, safe='')}"
        while self._metadata is None:
            problem = ""
            try:
                async with self._session.get(f"{model_url}/ready") as answer:
                    if answer.status != 200:
                        problem = (
                            f"the model server says model {self.model_name} is not ready ({answer.status})"
                        )
                if not problem:
                    async with self._session.get(model_url) as answer:
                        document = orjson.loads(await answer.read())
                    self._metadata = self._parse_metadata(document)
                    logger.info(
                        "the model server at %s serves %s: inputs %s",
                        self.url,
                        self.model_name,
                        ", ".join(spec.describe() for spec in self._metadata.inputs),
                    )
                    return
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as error:
                problem = f"the model server at {self.url} is not reachable yet ({type(error).__name__})"
            except ValueError as error:
                problem = f"the model server's metadata for {self.model_name} cannot be used: {error}"
            if problem != last_problem:
                logger.warning("%s; retrying", problem)
                last_problem = problem
            await asyncio.sleep(self._poll)

    def _parse_metadata(self, document: Any) -> ModelMetadata:
        if not isinstance(document, dict):
            raise ValueError("it is not a JSON object")
        inputs = tensor_specs(document.get("inputs", []), "inputs")
        outputs = tensor_specs(document.get("outputs", []), "outputs")
        if not inputs:
            raise ValueError(
                "it declares no inputs, so requests cannot be checked; declare them "
                "(MLServer: 'inputs' in model-settings.json)"
            )
        return ModelMetadata(self.model_name, None, str(document.get("platform", "")), inputs, outputs)

    async def infer(
        self, request: InferRequest, body: bytes, headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], list[bytes]]:
        import aiohttp  # noqa: PLC0415

        forward = {"Content-Type": headers.get("Content-Type", "application/json")}
        if HEADER_LENGTH in headers:
            forward[HEADER_LENGTH] = headers[HEADER_LENGTH]
        url = f"{self.url}/v2/models/{urllib.parse.quote(self.model_name, safe='')}/infer"
        try:
            async with self._session.post(url, data=body, headers=forward) as answer:
                payload = await answer.read()
                status = answer.status
                length = answer.headers.get(HEADER_LENGTH)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise RefusedError(
                502, "upstream", f"the model server did not answer ({type(error).__name__})"
            ) from None
        if status != 200:
            text = payload[:300].decode("utf-8", "replace")
            raise RefusedError(
                status if 400 <= status < 500 else 502,
                "upstream",
                f"the model server answered {status}: {text}",
            )
        try:
            header, binary = split_body(payload, length)
            document = load_document(header)
        except RefusedError:
            raise RefusedError(502, "upstream", "the model server's answer is not a V2 response") from None
        return document, [binary] if binary else []
