"""A fault-injecting HTTP proxy in front of the local S3-compatible server (moto).

Failures S3 produces under load (SlowDown, 5xx, connections cut mid-body) are injected between the
client and the server; the proxy also records every request and counts the body bytes it sends
back, so retry and resume behaviour is asserted (and measured) on the wire.
"""

from __future__ import annotations

import http.client
import http.server
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.support.threaded_server import serving


@dataclass
class Fault:
    """Applies to the next ``times`` requests with this method whose query has ``query``."""

    method: str
    times: int = 1
    query: str | None = None
    status: int | None = None
    code: str = "SlowDown"
    truncate_after: int | None = None
    before_cut: Callable[[], object] | None = None


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]


def query_matches(query: str, selector: str | None) -> bool:
    """Whether the query string has the parameter ``name`` (or ``name=value``) of ``selector``."""
    if selector is None:
        return True
    name, _, value = selector.partition("=")
    parameters = urllib.parse.parse_qs(query, keep_blank_values=True)
    return name in parameters and (not value or value in parameters[name])


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: S3Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._proxy()

    def do_PUT(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def do_DELETE(self) -> None:
        self._proxy()

    def do_HEAD(self) -> None:
        self._proxy()

    def _proxy(self) -> None:
        assert "chunked" not in self.headers.get("Transfer-Encoding", ""), "the proxy expects sized bodies"
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path, _, query = self.path.partition("?")
        with self.server.lock:
            self.server.seen.append(Seen(self.command, path, query, dict(self.headers.items())))
            fault = next(
                (
                    f
                    for f in self.server.faults
                    if f.times > 0 and f.method == self.command and query_matches(query, f.query)
                ),
                None,
            )
            if fault is not None:
                fault.times -= 1
        if fault is not None and fault.status is not None:
            self._error(fault.status, fault.code)
            return
        upstream = http.client.HTTPConnection(self.server.upstream.netloc, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command == "HEAD":
                return
            if fault is not None and fault.truncate_after is not None:
                self.server.add_sent(min(len(payload), fault.truncate_after))
                self.wfile.write(payload[: fault.truncate_after])
                self.wfile.flush()
                if fault.before_cut is not None:
                    fault.before_cut()
                self.close_connection = True
                return
            self.server.add_sent(len(payload))
            self.wfile.write(payload)
        finally:
            upstream.close()

    def _error(self, status: int, code: str) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by the test proxy</Message><RequestId>test</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class S3Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream = urllib.parse.urlsplit(upstream)
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.errors: list[BaseException | None] = []
        self.sent_bytes = 0
        """Response body bytes sent to clients (cut bodies count what was sent)."""
        self.lock = threading.Lock()

    def add_sent(self, count: int) -> None:
        with self.lock:
            self.sent_bytes += count

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a client hanging up is expected; anything else is a bug
            self.errors.append(error)

    def count(self, method: str, query: str | None = None) -> int:
        return sum(1 for seen in self.seen if seen.method == method and query_matches(seen.query, query))


@contextmanager
def running_proxy(upstream: str) -> Iterator[S3Proxy]:
    """An `S3Proxy` in front of ``upstream``, served from a thread until the block ends."""
    with serving(S3Proxy(upstream)) as server:
        yield server
