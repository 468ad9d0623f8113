"""HTTPS downloads (read only): TLS verified by default, no downgrade to plain HTTP.

Built on the standard library (`urllib.request`), so proxies from HTTPS_PROXY/NO_PROXY apply.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import logging
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from samd.errors import StorageError, UsageError
from samd.storage.defaults import NETWORK_TIMEOUT
from samd.storage.guard import AddressPolicy, pinned_connection
from samd.storage.retry import DEFAULT_RETRY, RetryPolicy, TransientStorageError, call_with_retries
from samd.storage.stream import DEFAULT_BUFFER_SIZE, ArtifactReader, OpenedBody, ResumingReader
from samd.storage.uri import HttpUrl, redact_url

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = NETWORK_TIMEOUT
MAX_REDIRECTS = 5
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a few redirects, never from https:// to plain http:// (unless allowed) or elsewhere."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, allow_http: bool) -> None:
        super().__init__()
        self._allow_http = allow_http

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = newurl.split(":", 1)[0].lower()
        allowed = ("https", "http") if self._allow_http else ("https",)
        if scheme not in allowed:
            fp.close()
            raise StorageError(
                f"{redact_url(req.full_url)} redirects to {redact_url(newurl)}, which is not https://",
                hint="refusing to download an artifact over an unencrypted or unsupported connection",
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    if ca_bundle is not None and not ca_bundle.is_file():
        raise UsageError(f"the CA bundle {ca_bundle} does not exist or is not a file")
    try:
        context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    except (ssl.SSLError, OSError) as error:
        raise UsageError(f"cannot load the CA bundle {ca_bundle}: {error}", hint="give a PEM file") from error
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Pinned:
    """Mixin for http.client connections: connect only to an address the policy allows, the one checked.

    http.client connects through ``self._create_connection((host, port), timeout, source)``; that
    is replaced, so TLS (server name and certificate checks against the host name) stays as it is.
    No proxy: the address checked must be the address connected to.
    """

    host: str

    def _pin(self, policy: AddressPolicy, scheme: str) -> None:
        def create(address: tuple[str, int], timeout: Any = None, source: Any = None) -> socket.socket:
            return pinned_connection(address, policy, scheme=scheme, timeout=timeout, source=source)

        self._create_connection = create


class GuardedHTTPConnection(_Pinned, http.client.HTTPConnection):
    def __init__(self, host: str, *args: Any, address_policy: AddressPolicy, **kwargs: Any) -> None:
        super().__init__(host, *args, **kwargs)
        self._pin(address_policy, "http")


class GuardedHTTPSConnection(_Pinned, http.client.HTTPSConnection):
    def __init__(self, host: str, *args: Any, address_policy: AddressPolicy, **kwargs: Any) -> None:
        super().__init__(host, *args, **kwargs)
        self._pin(address_policy, "https")


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, address_policy: AddressPolicy) -> None:
        super().__init__(context=context)
        self._connection = functools.partial(GuardedHTTPSConnection, address_policy=address_policy)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._context)  # type: ignore[attr-defined]


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, address_policy: AddressPolicy) -> None:
        super().__init__()
        self._connection = functools.partial(GuardedHTTPConnection, address_policy=address_policy)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class HttpClient:
    """The connection settings shared by every request to one URL.

    With an ``address_policy`` (the operator's reads), every connection, the first and each
    redirect's, goes to an address the policy allows, the very address that was checked, and never
    through a proxy (a proxy would resolve the name itself).
    """

    def __init__(
        self,
        *,
        ca_bundle: Path | None = None,
        allow_http: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        context = _tls_context(ca_bundle)
        handlers: list[urllib.request.BaseHandler]
        if address_policy is None:
            handlers = [urllib.request.HTTPSHandler(context=context)]
        else:
            handlers = [
                urllib.request.ProxyHandler({}),
                _GuardedHTTPSHandler(context, address_policy),
                _GuardedHTTPHandler(address_policy),
            ]
        self._opener = urllib.request.build_opener(*handlers, _SafeRedirects(allow_http))
        self._timeout = timeout

    def request(self, url: HttpUrl, *, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
        """Send one request; raise a classified `StorageError` on any failure or non-2xx answer."""
        shown = str(url)
        request = urllib.request.Request(url.url, method=method, headers=headers or {})  # noqa: S310 - scheme checked
        try:
            return self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as error:
            with error:
                raise http_status_error(error.code, error.headers, action=method, uri=shown) from None
        except urllib.error.URLError as error:
            raise _connection_error(error.reason, uri=shown) from error
        except (http.client.HTTPException, OSError) as error:
            raise _connection_error(error, uri=shown) from error


def http_status_error(status: int, headers: Any, *, action: str, uri: str) -> StorageError:
    if status in _TRANSIENT_STATUS:
        return TransientStorageError(
            f"{action} {uri} failed: the server answered {status}",
            retry_after=_retry_after(headers.get("Retry-After") if headers is not None else None),
        )
    if status in {404, 410}:
        return StorageError(f"{action} {uri} failed: not found ({status})", hint="check the URL")
    if status in (401, 403):
        return StorageError(
            f"{action} {uri} failed: access denied ({status})",
            hint="the URL may need credentials, or a presigned URL may have expired",
        )
    return StorageError(f"{action} {uri} failed: the server answered {status}")


def _connection_error(reason: object, *, uri: str) -> StorageError:
    if isinstance(reason, StorageError):
        return reason
    if isinstance(reason, ssl.SSLCertVerificationError):
        return StorageError(
            f"cannot download {uri}: the server's TLS certificate is not trusted ({reason.verify_message})",
            hint="pass the CA bundle that signed the server certificate",
        )
    if isinstance(reason, ssl.SSLError) and not isinstance(reason, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return StorageError(f"cannot download {uri}: TLS failed ({reason})")
    if isinstance(reason, socket.gaierror):
        # Name resolution fails transiently when cluster DNS restarts.
        return TransientStorageError(f"cannot download {uri}: the host name does not resolve ({reason})")
    if isinstance(reason, OSError | http.client.HTTPException):
        return TransientStorageError(f"cannot download {uri}: connection failed ({reason})")
    return StorageError(f"cannot download {uri}: {reason}")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


class _HttpBody:
    def __init__(self, response: Any, uri: str) -> None:
        self._response = response
        self._uri = uri

    def readinto(self, buffer: memoryview, /) -> int:
        try:
            return int(self._response.readinto(buffer))
        except (http.client.HTTPException, OSError) as error:
            raise TransientStorageError(f"the download of {self._uri} broke off ({error!r})") from error

    def close(self) -> None:
        self._response.close()


class HttpSource:
    """One HTTP resource opened at any offset; resumes are pinned with If-Range to its validator."""

    def __init__(self, url: HttpUrl, client: HttpClient) -> None:
        self._url = url
        self._client = client
        self._validator: str | None = None

    @property
    def description(self) -> str:
        return str(self._url)

    @property
    def can_resume(self) -> bool:
        return self._validator is not None

    def open(self, offset: int) -> OpenedBody:
        uri = self.description
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self._validator is not None:
                headers["If-Range"] = self._validator
        response = self._client.request(self._url, headers=headers)
        status = response.status
        if not offset:
            if status != 200:
                response.close()
                raise StorageError(f"GET {uri} answered {status}, expected 200")
            etag = response.headers.get("ETag")
            # A weak ETag cannot pin a byte range (RFC 9110 §13.1.5); Last-Modified can.
            self._validator = (
                etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
            )
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            return OpenedBody(body=_HttpBody(response, uri), start=0, total_size=total)
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if status != 206 or match is None:
            response.close()
            raise StorageError(
                f"resuming the download of {uri} at byte {offset} failed: the object changed "
                f"or the server ignored the range request (status {status})",
                hint="try again",
            )
        total = None if match.group(3) == "*" else int(match.group(3))
        return OpenedBody(body=_HttpBody(response, uri), start=int(match.group(1)), total_size=total)


def open_https(
    url: HttpUrl,
    *,
    client: HttpClient,
    policy: RetryPolicy = DEFAULT_RETRY,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
) -> ArtifactReader:
    raw = ResumingReader(HttpSource(url, client), policy=policy)
    return ArtifactReader(raw, uri=str(url), size=raw.total_size, buffer_size=buffer_size)


def https_size(url: HttpUrl, *, client: HttpClient, policy: RetryPolicy = DEFAULT_RETRY) -> int | None:
    """The size from a HEAD request's Content-Length, or None when the server does not say."""

    def head() -> int | None:
        with client.request(url, method="HEAD", headers={"Accept-Encoding": "identity"}) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None

    return call_with_retries(head, policy=policy, action=f"HEAD {url}")
