"""HTTPS downloads against a real local TLS server, with a CA made by the test.

The server counts every request it answers, so retry behaviour is asserted on the wire: how
many requests a failure cost, and with which Range headers a broken download resumed.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import os
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samd.errors import StorageError, UsageError
from samd.storage import RetryPolicy, artifact_size, open_artifact
from tests.support.threaded_server import serving

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
PAYLOAD = os.urandom((2 << 20) + 777)
ETAG = '"v1-strong"'


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_bundle: Path
    server_chain: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("samd test CA"))
        .issuer_name(_name("samd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key.pem")
    pki.ca_bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_chain.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki


# --- the server ---------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    if_range: str | None


@dataclass
class Behaviour:
    """What the server does; counters are consumed as requests arrive."""

    fail_first: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    status: int | None = None  # answer every request with this status
    drop_after: list[int] = field(default_factory=list)  # per request: cut the body after N bytes
    etag: str | None = ETAG
    last_modified: str | None = None
    honour_ranges: bool = True
    content_length: bool = True
    redirect_to: str | None = None
    payload: bytes = PAYLOAD
    replaced_after: int | None = None  # after this many requests the object is a new version


class Handler(http.server.BaseHTTPRequestHandler):
    server: ArtifactServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        behaviour = self.server.behaviour
        with self.server.lock:
            self.server.seen.append(
                Seen(self.command, self.path, self.headers.get("Range"), self.headers.get("If-Range"))
            )
            failing = behaviour.fail_first > 0
            if failing:
                behaviour.fail_first -= 1
            drop = behaviour.drop_after.pop(0) if behaviour.drop_after and not head else None
            if behaviour.replaced_after is not None and len(self.server.seen) > behaviour.replaced_after:
                behaviour.etag, behaviour.payload = '"v2"', behaviour.payload[::-1]
                behaviour.replaced_after = None
        if behaviour.redirect_to is not None and self.path == "/model.samd":
            self._empty(302, {"Location": behaviour.redirect_to})
            return
        if failing or behaviour.status is not None:
            status = behaviour.fail_status if failing else behaviour.status
            assert status is not None
            extra = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            self._empty(status, extra)
            return
        data, status, headers = behaviour.payload, 200, {"Accept-Ranges": "bytes"}
        if behaviour.etag:
            headers["ETag"] = behaviour.etag
        if behaviour.last_modified:
            headers["Last-Modified"] = behaviour.last_modified
        requested = self.headers.get("Range")
        validator = self.headers.get("If-Range")
        if requested and behaviour.honour_ranges and validator in (behaviour.etag, behaviour.last_modified):
            start = int(requested.removeprefix("bytes=").rstrip("-"))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            data, status = data[start:], 206
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if behaviour.content_length:
            self.send_header("Content-Length", str(len(data)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return
        if drop is not None:
            self.wfile.write(data[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def _empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class ArtifactServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.tls = tls is not None
        self.behaviour = Behaviour()
        self.seen: list[Seen] = []
        self.errors: list[BaseException | None] = []
        self.lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        # A client that hangs up mid-response (as a refusing downloader does) is not a server bug;
        # anything else is, and fails the test at teardown.
        if not isinstance(error, OSError):
            self.errors.append(error)

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str = "/model.samd", query: str = "") -> str:
        return f"{self.base}{path}{query}"

    def gets(self) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == "GET"]


@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test servers are on loopback; a proxy set in the environment must not sit in between."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _serve(tls: ssl.SSLContext | None) -> Iterator[ArtifactServer]:
    with serving(ArtifactServer(tls)) as server:
        yield server
    assert server.errors == [], f"the test server itself failed: {server.errors}"


@pytest.fixture
def server(pki: Pki) -> Iterator[ArtifactServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_chain, pki.server_key)
    yield from _serve(context)


@pytest.fixture
def plain_server() -> Iterator[ArtifactServer]:
    yield from _serve(None)


def download(url: str, pki: Pki, **options: object) -> bytes:
    with open_artifact(url, ca_bundle=pki.ca_bundle, retry=FAST, **options) as reader:  # type: ignore[arg-type]
        return reader.read()


# --- tests --------------------------------------------------------------------------------------


def test_download_over_verified_tls(server: ArtifactServer, pki: Pki) -> None:
    with open_artifact(server.url(), ca_bundle=pki.ca_bundle) as reader:
        assert reader.size == len(PAYLOAD)
        buffer = bytearray(1 << 20)
        received = bytearray()
        while count := reader.readinto(buffer):
            received += buffer[:count]
    assert received == PAYLOAD
    assert len(server.gets()) == 1


def test_size_comes_from_a_head_request(server: ArtifactServer, pki: Pki) -> None:
    assert artifact_size(server.url(), ca_bundle=pki.ca_bundle) == len(PAYLOAD)
    assert [seen.method for seen in server.seen] == ["HEAD"]


def test_an_untrusted_certificate_is_refused_and_not_retried(server: ArtifactServer) -> None:
    # No CA bundle: the system trust store does not know the test CA.
    with (
        pytest.raises(StorageError, match="TLS certificate is not trusted") as raised,
        open_artifact(server.url(), retry=FAST),
    ):
        pass
    assert not raised.value.transient
    assert raised.value.hint is not None
    assert "CA bundle" in raised.value.hint
    assert server.seen == []  # the handshake failed before any request


def test_a_missing_ca_bundle_is_a_usage_error(server: ArtifactServer, tmp_path: Path) -> None:
    with (
        pytest.raises(UsageError, match="does not exist"),
        open_artifact(server.url(), ca_bundle=tmp_path / "nope.pem"),
    ):
        pass


def test_503_twice_then_success_costs_three_requests(server: ArtifactServer, pki: Pki) -> None:
    server.behaviour.fail_first = 2
    assert download(server.url(), pki) == PAYLOAD
    assert len(server.gets()) == 3


@pytest.mark.parametrize("status", [500, 502, 504, 429, 408])
def test_each_transient_status_is_retried(server: ArtifactServer, pki: Pki, status: int) -> None:
    server.behaviour.fail_first, server.behaviour.fail_status = 1, status
    assert download(server.url(), pki) == PAYLOAD
    assert len(server.gets()) == 2


def test_a_persistent_503_gives_up_after_the_attempt_limit(server: ArtifactServer, pki: Pki) -> None:
    server.behaviour.status = 503
    with pytest.raises(StorageError, match=r"answered 503 \(gave up after 4 attempts\)") as raised:
        download(server.url(), pki)
    assert raised.value.transient
    assert str(server.url()) in raised.value.message
    assert len(server.gets()) == FAST.max_attempts


def test_retry_after_is_waited_for(server: ArtifactServer, pki: Pki) -> None:
    server.behaviour.fail_first, server.behaviour.retry_after = 1, "1"
    policy = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=5.0)
    with open_artifact(server.url(), ca_bundle=pki.ca_bundle, retry=policy) as reader:
        assert reader.read() == PAYLOAD
    assert len(server.gets()) == 2


@pytest.mark.parametrize(
    ("status", "reason"), [(404, "not found"), (410, "not found"), (403, "access denied")]
)
def test_permanent_errors_cost_exactly_one_request(
    server: ArtifactServer, pki: Pki, status: int, reason: str
) -> None:
    server.behaviour.status = status
    with pytest.raises(StorageError, match=reason) as raised:
        download(server.url(), pki)
    assert not raised.value.transient
    assert len(server.gets()) == 1


def test_a_404_on_head_is_not_retried_either(server: ArtifactServer, pki: Pki) -> None:
    server.behaviour.status = 404
    with pytest.raises(StorageError, match="not found"):
        artifact_size(server.url(), ca_bundle=pki.ca_bundle, retry=FAST)
    assert len(server.seen) == 1


def test_a_dropped_connection_resumes_with_a_pinned_range(server: ArtifactServer, pki: Pki) -> None:
    server.behaviour.drop_after = [300_000, 1_000_000]
    assert download(server.url(), pki) == PAYLOAD
    assert [(seen.range, seen.if_range) for seen in server.gets()] == [
        (None, None),
        ("bytes=300000-", ETAG),
        ("bytes=1300000-", ETAG),
    ]


def test_last_modified_pins_the_resume_when_there_is_no_strong_etag(server: ArtifactServer, pki: Pki) -> None:
    stamp = "Wed, 21 Oct 2026 07:28:00 GMT"
    server.behaviour.etag, server.behaviour.last_modified = 'W/"weak"', stamp
    server.behaviour.drop_after = [4096]
    assert download(server.url(), pki) == PAYLOAD
    assert [seen.if_range for seen in server.gets()] == [None, stamp]


def test_an_object_replaced_mid_download_is_detected(server: ArtifactServer, pki: Pki) -> None:
    # The resume carries If-Range with the old ETag; the server, holding a new version, answers
    # 200 with the whole new object, which must not be spliced onto the old bytes.
    server.behaviour.drop_after = [4096]
    server.behaviour.replaced_after = 1
    with pytest.raises(StorageError, match="the object changed") as raised:
        download(server.url(), pki)
    assert not raised.value.transient
    assert [seen.range for seen in server.gets()] == [None, "bytes=4096-"]


def test_a_server_without_validators_cannot_resume(server: ArtifactServer, pki: Pki) -> None:
    server.behaviour.etag = None
    server.behaviour.drop_after = [4096]
    with pytest.raises(StorageError, match="cannot be resumed") as raised:
        download(server.url(), pki)
    assert raised.value.transient
    assert len(server.gets()) == 1


def test_a_body_cut_short_is_never_taken_for_the_whole_artifact(server: ArtifactServer, pki: Pki) -> None:
    # Every response is cut: the download must fail, not return a truncated artifact.
    server.behaviour.drop_after = [1000] * 20
    with pytest.raises(StorageError, match="broke off") as raised:
        download(server.url(), pki)
    assert raised.value.transient


def test_unknown_length_downloads_read_to_the_end(server: ArtifactServer, pki: Pki) -> None:
    server.behaviour.content_length = False
    with open_artifact(server.url(), ca_bundle=pki.ca_bundle) as reader:
        assert reader.size is None
        assert reader.read() == PAYLOAD


def test_redirects_within_https_are_followed(server: ArtifactServer, pki: Pki) -> None:
    server.behaviour.redirect_to = server.url("/moved.samd")
    assert download(server.url(), pki) == PAYLOAD
    assert [seen.path for seen in server.gets()] == ["/model.samd", "/moved.samd"]


def test_a_redirect_to_plain_http_is_refused(
    server: ArtifactServer, plain_server: ArtifactServer, pki: Pki
) -> None:
    server.behaviour.redirect_to = plain_server.url()
    with pytest.raises(StorageError, match="which is not https://") as raised:
        download(server.url(), pki)
    assert not raised.value.transient
    assert plain_server.seen == []


def test_plain_http_needs_explicit_permission(plain_server: ArtifactServer, pki: Pki) -> None:
    with pytest.raises(UsageError, match="refusing plain http://"):
        download(plain_server.url(), pki)
    assert plain_server.seen == []
    assert download(plain_server.url(), pki, allow_http=True) == PAYLOAD


def test_errors_never_show_the_query_string_of_a_presigned_url(server: ArtifactServer, pki: Pki) -> None:
    server.behaviour.status = 403
    with pytest.raises(StorageError) as raised:
        download(server.url(query="?X-Amz-Signature=s3cr3t"), pki)
    assert "s3cr3t" not in str(raised.value)
    assert "/model.samd?..." in str(raised.value)


def test_a_connection_refused_is_transient_and_retried() -> None:
    # Bind a port, then close it: nothing listens there.
    with ArtifactServer(None) as gone:
        url = gone.url().replace("http://", "https://")
    with (
        pytest.raises(StorageError, match=r"connection failed.*gave up after 4 attempts") as raised,
        open_artifact(url, retry=FAST),
    ):
        pass
    assert raised.value.transient
