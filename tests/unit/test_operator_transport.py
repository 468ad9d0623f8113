"""The aiohttp transport under the API client, against a real HTTP server on loopback: what a request
sends, what comes back (streamed, gzip), and each failure as the httpx error its callers handle."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samd.operator.builders.certificates import CertificateAuthority, cert_pem, issue_certificate, key_pem
from samd.operator.transport import AiohttpTransport

pytestmark = pytest.mark.unit

FIRST_SEEN = web.AppKey("first_seen", asyncio.Event)


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {"method": request.method, "headers": dict(request.headers), "body": body.decode()}, status=201
    )


async def _gzipped(_: web.Request) -> web.Response:
    payload = gzip.compress(json.dumps({"items": ["x"] * 1000}).encode())
    return web.Response(
        body=payload, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )


async def _watch(request: web.Request) -> web.StreamResponse:
    """Two change lines, the second only after the client has seen the first (a long-lived body)."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b'{"type": "ADDED"}\n')
    await request.app[FIRST_SEEN].wait()
    await response.write(b'{"type": "MODIFIED"}\n')
    await response.write_eof()
    return response


async def _cut(request: web.Request) -> web.StreamResponse:
    """Promises 1,000 bytes, sends 10, and drops the connection."""
    response = web.StreamResponse(headers={"Content-Length": "1000"})
    await response.prepare(request)
    await response.write(b"0123456789")
    assert request.transport is not None
    request.transport.close()
    return response


async def _slow(_: web.Request) -> web.Response:
    await asyncio.sleep(1)
    return web.Response(text="late")


@dataclass(frozen=True)
class Server:
    url: str
    first_seen: asyncio.Event  # the watch route's second line waits for it


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    app = web.Application()
    first_seen = app[FIRST_SEEN] = asyncio.Event()
    app.router.add_route("*", "/echo", _echo)
    app.router.add_get("/gzip", _gzipped)
    app.router.add_get("/watch", _watch)
    app.router.add_get("/cut", _cut)
    app.router.add_get("/slow", _slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Server(f"http://127.0.0.1:{runner.addresses[0][1]}", first_seen)
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=AiohttpTransport(False, connections=4)) as client:
        yield client


async def test_a_request_arrives_with_its_method_headers_and_body(
    server: Server, http: httpx2.AsyncClient
) -> None:
    response = await http.patch(
        f"{server.url}/echo?fieldManager=samd-operator",
        content=b'{"a": 1}',
        headers={"Authorization": "Bearer t0ken", "Content-Type": "application/apply-patch+yaml"},
    )
    assert response.status_code == 201
    seen = response.json()
    assert seen["method"] == "PATCH"
    assert seen["body"] == '{"a": 1}'
    assert seen["headers"]["Authorization"] == "Bearer t0ken"
    assert seen["headers"]["Content-Type"] == "application/apply-patch+yaml"
    assert seen["headers"]["Content-Length"] == "8"


async def test_a_gzipped_answer_is_decoded(server: Server, http: httpx2.AsyncClient) -> None:
    response = await http.get(f"{server.url}/gzip")
    assert response.json() == {"items": ["x"] * 1000}


async def test_a_long_lived_body_is_read_as_it_arrives(server: Server, http: httpx2.AsyncClient) -> None:
    lines = []
    async with http.stream("GET", f"{server.url}/watch", timeout=httpx2.Timeout(2.0, read=None)) as response:
        async for line in response.aiter_lines():
            lines.append(json.loads(line)["type"])
            server.first_seen.set()  # the server sends the second line only now: no buffering to the end
    assert lines == ["ADDED", "MODIFIED"]


async def test_a_connection_dropped_mid_body_is_a_read_error(
    server: Server, http: httpx2.AsyncClient
) -> None:
    with pytest.raises(httpx2.TransportError):
        await http.get(f"{server.url}/cut")
    # The pool is still good for the next request.
    assert (await http.get(f"{server.url}/gzip")).status_code == 200


async def test_no_answer_in_time_is_a_timeout(server: Server, http: httpx2.AsyncClient) -> None:
    with pytest.raises(httpx2.TimeoutException):
        await http.get(f"{server.url}/slow", timeout=httpx2.Timeout(0.2))


async def test_a_refused_connection_is_a_connect_error(http: httpx2.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nobody listens once the probe is closed
    with pytest.raises(httpx2.ConnectError):
        await http.get(f"http://127.0.0.1:{port}/")


def _tls_server_context(ca: CertificateAuthority, directory: Path) -> ssl.SSLContext:
    now = datetime.datetime.now(datetime.UTC)
    key, certificate = issue_certificate(
        ca,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        hosts=["127.0.0.1"],
        now=now,
        validity=datetime.timedelta(hours=1),
    )
    (directory / "tls.crt").write_bytes(cert_pem(certificate))
    (directory / "tls.key").write_bytes(key_pem(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    return context


async def test_tls_is_verified_against_the_cluster_ca_it_is_given(tmp_path: Path) -> None:
    """The API server's certificate must chain to the CA of the kubeconfig (the context the
    transport is given); a server with another CA's certificate is refused before any request."""
    now = datetime.datetime.now(datetime.UTC)
    cluster_ca, other_ca = CertificateAuthority.generate(now), CertificateAuthority.generate(now)
    app = web.Application()
    app.router.add_route("*", "/echo", _echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_tls_server_context(cluster_ca, tmp_path))
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/echo"

    def trusting(ca: CertificateAuthority) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=cert_pem(ca.certificate).decode())

    try:
        async with httpx2.AsyncClient(
            transport=AiohttpTransport(trusting(cluster_ca), connections=2)
        ) as http:
            assert (await http.get(url)).status_code == 201
        async with httpx2.AsyncClient(transport=AiohttpTransport(trusting(other_ca), connections=2)) as http:
            with pytest.raises(httpx2.ConnectError):
                await http.get(url)
    finally:
        await runner.cleanup()
