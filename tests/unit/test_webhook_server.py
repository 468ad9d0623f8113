"""The admission server over real TLS on loopback: answers, fail-closed, limits, reload, probes, metrics, SIGTERM.

The server runs in the test's event loop (or, for SIGTERM, in a subprocess) with a throw-away CA;
the client is aiohttp verifying that CA, as the API server verifies the caBundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from samd.errors import UsageError
from samd.webhook.__main__ import main as webhook_main
from samd.webhook.cache import VerificationCache, VerificationKey
from samd.webhook.config import WebhookConfig, build_parser, config_from_arguments
from samd.webhook.metrics import WebhookMetrics
from samd.webhook.review import AdmissionRequest, Decision
from samd.webhook.server import (
    AdmissionServer,
    DevelopmentCertificates,
    write_development_certificates,
)

pytestmark = pytest.mark.unit

SAVED = Path(__file__).parent / "admission"
FAIL_CLOSED_TAIL = (
    "; the request is denied because failing open would admit unverified models — check the webhook logs"
)


def saved_body(name: str = "pod-create.json") -> bytes:
    return (SAVED / name).read_bytes()


@dataclass
class FakeDecider:
    """A decider whose answer, failure, delay and readiness the test sets."""

    decision: Decision = field(default_factory=lambda: Decision(True, "model verified", "Verified"))
    error: BaseException | None = None
    delay: float = 0.0
    ready: bool = True
    seen: list[AdmissionRequest] = field(default_factory=list)

    async def decide(self, request: AdmissionRequest) -> Decision:
        self.seen.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.decision


@pytest.fixture
def certs(tmp_path: Path) -> DevelopmentCertificates:
    return write_development_certificates(tmp_path / "certs")


def client_context(*cas: Path, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for ca in cas:
        context.load_verify_locations(ca)
    if max_version is not None:
        context.maximum_version = max_version
    return context


@dataclass
class Running:
    server: AdmissionServer
    decider: FakeDecider
    certs: DevelopmentCertificates
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    async def review(self, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
        # BytesIO: aiohttp warns about large raw bytes bodies (it still sends a Content-Length).
        async with self.session.post(
            self.url + "/validate", data=io.BytesIO(body), headers={"Content-Type": content_type}
        ) as response:
            return response.status, await response.json(content_type=None)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.session.get(self.url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


def config_for(certs: DevelopmentCertificates, **settings: Any) -> WebhookConfig:
    return WebhookConfig(
        cert_file=certs.cert_file, key_file=certs.key_file, host="127.0.0.1", port=0, **settings
    )


async def start(
    certs: DevelopmentCertificates,
    decider: FakeDecider,
    metrics: WebhookMetrics | None = None,
    **settings: Any,
) -> AdmissionServer:
    server = AdmissionServer(config_for(certs, **settings), decider, metrics)
    await server.start()
    return server


@pytest.fixture
async def running(certs: DevelopmentCertificates) -> AsyncIterator[Running]:
    decider = FakeDecider()
    server = await start(certs, decider)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(certs.ca_file)))
    try:
        yield Running(server, decider, certs, session)
    finally:
        await session.close()
        await server.stop()


def with_request(body: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    document = json.loads(body)
    change(document["request"])
    return json.dumps(document).encode()


# --- answers ---------------------------------------------------------------------------------------


async def test_an_allowed_review_echoes_the_uid_over_tls_1_3(running: Running) -> None:
    status, answer = await running.review(saved_body())

    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert answer["response"]["allowed"] is True
    assert answer["response"]["status"]["reason"] == "Verified"
    assert running.decider.seen[0].kind.kind == "Pod"


async def test_a_denial_carries_the_deciders_message_reason_code_and_warnings(running: Running) -> None:
    running.decider.decision = Decision(
        allowed=False,
        message="pod ml-prod/fraud: the signature of SecureModel fraud does not verify under policy prod",
        reason="SignatureInvalid",
        warnings=("also: policy audit is in warn mode",),
        model="fraud",
        policy="prod",
    )

    status, answer = await running.review(saved_body())

    assert status == 200  # an answered review is HTTP 200 whatever the decision
    response = answer["response"]
    assert response["allowed"] is False
    assert response["status"] == {
        "code": 403,
        "message": "pod ml-prod/fraud: the signature of SecureModel fraud does not verify under policy prod",
        "reason": "SignatureInvalid",
    }
    assert response["warnings"] == ["also: policy audit is in warn mode"]


async def test_a_dry_run_is_decided_like_any_request_and_marked_in_the_audit_line(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    running.decider.decision = Decision(
        False, "digest mismatch", "DigestMismatch", model="fraud", policy="prod"
    )
    caplog.set_level(logging.INFO, logger="samd.audit")

    _, answer = await running.review(saved_body("deployment-update-dry-run.json"))

    assert answer["response"]["allowed"] is False
    assert running.decider.seen[0].dry_run is True
    [record] = [r for r in caplog.records if r.name == "samd.audit"]
    assert record.__dict__["dry_run"] is True
    assert "(dry run)" in record.getMessage()


async def test_one_audit_line_per_decision_names_who_what_and_why(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    running.decider.decision = Decision(
        False, "loader image changed", "LoaderAltered", model="fraud", policy="prod"
    )
    caplog.set_level(logging.INFO, logger="samd.audit")

    await running.review(saved_body())

    records = [r for r in caplog.records if r.name == "samd.audit"]
    assert len(records) == 1
    fields = records[0].__dict__
    assert fields["user"] == "system:serviceaccount:kube-system:replicaset-controller"
    assert "system:authenticated" in fields["groups"]
    assert fields["operation"] == "CREATE"
    assert fields["kind"] == "Pod"
    assert fields["namespace"] == "ml-prod"
    assert fields["object"] == "fraud-detection-7d9c8b-*"
    assert fields["model"] == {"namespace": "ml-prod", "name": "fraud"}
    assert fields["component"] == "webhook"
    assert fields["event"] == "admission"
    assert fields["policy"] == "prod"
    assert fields["decision"] == "denied"
    assert fields["reason"] == "LoaderAltered"
    assert fields["dry_run"] is False
    assert fields["duration_ms"] >= 0
    assert "loader image changed" in records[0].getMessage()


# --- fail closed -----------------------------------------------------------------------------------


async def test_a_decider_exception_denies_with_what_failed_and_no_stack_trace(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    running.decider.error = RuntimeError('state store exploded\n  File "/srv/samd/decide.py", line 3')
    caplog.set_level(logging.INFO)

    status, answer = await running.review(saved_body())

    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False
    assert response["status"]["message"] == (
        "SAMD admission webhook could not decide: RuntimeError: state store exploded" + FAIL_CLOSED_TAIL
    )
    assert response["status"]["reason"] == "InternalError"
    assert "decide.py" not in json.dumps(answer)
    assert "Traceback" not in json.dumps(answer)
    # The stack trace goes to the webhook's own log, where the message tells the person to look.
    assert any(r.exc_info and r.name == "samd.webhook.server" for r in caplog.records)
    [audit] = [r for r in caplog.records if r.name == "samd.audit"]
    assert audit.__dict__["decision"] == "error"


async def test_a_decision_that_takes_too_long_is_denied_in_time(certs: DevelopmentCertificates) -> None:
    decider = FakeDecider(delay=5)
    server = await start(certs, decider, decision_timeout=0.2)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(certs.ca_file))
        ) as s:
            running = Running(server, decider, certs, s)
            started = asyncio.get_running_loop().time()
            _, answer = await running.review(saved_body())
            elapsed = asyncio.get_running_loop().time() - started
    finally:
        await server.stop()

    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["reason"] == "Timeout"
    assert "the decision took longer than 0.2 s" in answer["response"]["status"]["message"]
    assert elapsed < 2


async def test_a_decider_returning_something_else_than_a_decision_is_denied(running: Running) -> None:
    running.decider.decision = None  # type: ignore[assignment]

    _, answer = await running.review(saved_body())

    assert answer["response"]["allowed"] is False
    assert "returned NoneType, not a Decision" in answer["response"]["status"]["message"]


async def test_until_the_state_is_synced_readyz_is_503_and_reviews_are_denied(running: Running) -> None:
    running.decider.ready = False

    async with running.session.get(running.url + "/readyz") as response:
        assert response.status == 503
    async with running.session.get(running.url + "/healthz") as response:
        assert response.status == 200  # the process is up: no restart needed
    _, answer = await running.review(saved_body())
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["reason"] == "NotReady"
    assert running.decider.seen == []  # not asked: it has nothing to decide with

    running.decider.ready = True

    async with running.session.get(running.url + "/readyz") as response:
        assert response.status == 200
    _, answer = await running.review(saved_body())
    assert answer["response"]["allowed"] is True


# --- bad bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (saved_body(), "text/plain", "expected Content-Type application/json"),
        (b"not json at all", "application/json", "not valid JSON"),
        (
            saved_body("malformed-v1beta1.json"),
            "application/json",
            "expected apiVersion 'admission.k8s.io/v1'",
        ),
        (saved_body("malformed-wrong-kind.json"), "application/json", "kind 'AdmissionReview'"),
        (saved_body("malformed-missing-uid.json"), "application/json", "has no uid"),
        (b"[" * 200_000 + b"]" * 200_000, "application/json", "nested too deeply"),
    ],
)
async def test_a_body_that_is_no_review_gets_400_with_a_status_message(
    running: Running, body: bytes, content_type: str, expected: str
) -> None:
    status, answer = await running.review(body, content_type)

    assert status == 400
    assert answer["kind"] == "Status"
    assert answer["reason"] == "BadRequest"
    assert expected in answer["message"]
    assert running.decider.seen == []
    # And the server is still there.
    status, answer = await running.review(saved_body())
    assert answer["response"]["allowed"] is True


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("malformed-unknown-operation.json", "request.operation"),
        ("malformed-wrong-types.json", "request.dryRun"),
        ("malformed-missing-kind.json", "request.kind"),
    ],
)
async def test_a_malformed_request_with_a_uid_is_denied_naming_the_problem(
    running: Running, name: str, expected: str
) -> None:
    status, answer = await running.review(saved_body(name))

    assert status == 200
    response = answer["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["allowed"] is False
    assert response["status"]["reason"] == "InvalidAdmissionReview"
    assert response["status"]["message"].startswith(
        "SAMD admission webhook refused a malformed AdmissionReview: "
    )
    assert expected in response["status"]["message"]
    assert running.decider.seen == []


async def test_an_oversized_body_gets_413_and_the_server_survives(running: Running) -> None:
    limit = running.server.config.max_body_bytes
    assert limit == 3 << 20  # the default
    oversized = with_request(saved_body(), lambda r: r["object"]["metadata"].update(note="x" * limit))

    status, answer = await running.review(oversized)

    assert status == 413
    assert answer["reason"] == "RequestEntityTooLarge"
    assert f"larger than the webhook's limit of {limit} bytes" in answer["message"]
    status, answer = await running.review(saved_body())
    assert (status, answer["response"]["allowed"]) == (200, True)


async def test_an_oversized_chunked_body_without_content_length_gets_413(running: Running) -> None:
    limit = running.server.config.max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    async with running.session.post(
        running.url + "/validate", data=chunks(), headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
        assert "larger than the webhook's limit" in (await response.json())["message"]
    status, _ = await running.review(saved_body())
    assert status == 200


async def test_a_huge_string_within_the_limit_is_decided(running: Running) -> None:
    body = with_request(saved_body(), lambda r: r["object"]["metadata"].update(note="x" * (2 << 20)))

    status, answer = await running.review(body)

    assert (status, answer["response"]["allowed"]) == (200, True)
    assert len(running.decider.seen[0].object["metadata"]["note"]) == 2 << 20


async def test_a_smaller_configured_limit_is_enforced(certs: DevelopmentCertificates) -> None:
    decider = FakeDecider()
    server = await start(certs, decider, max_body_bytes=4096)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(certs.ca_file))
        ) as s:
            status, answer = await Running(server, decider, certs, s).review(saved_body())
    finally:
        await server.stop()
    assert status == 413
    assert "limit of 4096 bytes" in answer["message"]


# --- metrics ----------------------------------------------------------------------------------------


async def test_metrics_count_decisions_by_result_and_kind_with_latency_and_cache(
    certs: DevelopmentCertificates,
) -> None:
    cache: VerificationCache[str] = VerificationCache()
    decider = FakeDecider()
    server = await start(certs, decider, WebhookMetrics(cache_stats=lambda: cache.stats))
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(certs.ca_file))
        ) as s:
            running = Running(server, decider, certs, s)
            await running.review(saved_body())  # allowed Pod
            decider.decision = Decision(True, "warn mode", "Warned", warnings=("would be denied",))
            await running.review(saved_body("deployment-update-dry-run.json"))  # warned Deployment
            decider.decision = Decision(False, "no", "SignatureInvalid")
            await running.review(saved_body())  # denied Pod
            decider.error = RuntimeError("boom")
            await running.review(saved_body("securemodel-create.json"))  # error SecureModel
            await running.review(saved_body("malformed-unknown-operation.json"))  # malformed: denied Pod
            await running.review(b"nope")  # 400
            for _ in range(3):
                await cache.get_or_compute(VerificationKey.of(b"b", "p", 1), lambda: "ok")
            samples = await running.metrics()
    finally:
        await server.stop()

    def decisions(result: str, kind: str) -> float:
        return samples[("samd_webhook_admission_decisions_total", (("kind", kind), ("result", result)))]

    assert decisions("allowed", "Pod") == 1
    assert decisions("warned", "Deployment") == 1
    assert decisions("denied", "Pod") == 2
    assert decisions("error", "SecureModel") == 1
    assert decisions("allowed", "Deployment") == 0
    assert samples[("samd_webhook_admission_duration_seconds_count", (("kind", "Pod"),))] == 3
    assert samples[("samd_webhook_admission_duration_seconds_bucket", (("kind", "Pod"), ("le", "+Inf")))] == 3
    assert samples[("samd_webhook_invalid_reviews_total", (("reason", "malformed"),))] == 1
    assert samples[("samd_webhook_verification_cache_lookups_total", (("result", "hit"),))] == 2
    assert samples[("samd_webhook_verification_cache_lookups_total", (("result", "miss"),))] == 1
    assert samples[("samd_webhook_verification_cache_entries", ())] == 1
    assert samples[("samd_webhook_ready", ())] == 1
    assert samples[("samd_webhook_certificate_expiry_timestamp_seconds", ())] > 0


async def test_an_unknown_kind_does_not_grow_the_label_set(running: Running) -> None:
    body = with_request(saved_body(), lambda r: r["kind"].update(kind="Anything" * 20))

    await running.review(body)
    samples = await running.metrics()

    kinds = {
        dict(labels).get("kind") for (name, labels) in samples if name.startswith("samd_webhook_admission")
    }
    assert "Anything" * 20 not in kinds
    assert (
        samples[("samd_webhook_admission_decisions_total", (("kind", "other"), ("result", "allowed")))] == 1
    )


# --- TLS -----------------------------------------------------------------------------------------------


async def handshake(port: int, context: ssl.SSLContext) -> tuple[str, bytes]:
    """Open a new TLS connection; return the protocol version and the server certificate (DER)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object.version(), ssl_object.getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()


def der(cert_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert_file.read_text())


async def test_tls_1_2_clients_are_refused_by_default(running: Running) -> None:
    version, _ = await handshake(running.server.port or 0, client_context(running.certs.ca_file))
    assert version == "TLSv1.3"

    # The server answers a TLS 1.2 ClientHello with a protocol_version alert and closes.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake(
            running.server.port or 0,
            client_context(running.certs.ca_file, max_version=ssl.TLSVersion.TLSv1_2),
        )


async def test_tls_1_2_is_accepted_when_configured(certs: DevelopmentCertificates) -> None:
    server = await start(certs, FakeDecider(), tls_min_version=ssl.TLSVersion.TLSv1_2)
    try:
        version, _ = await handshake(
            server.port or 0, client_context(certs.ca_file, max_version=ssl.TLSVersion.TLSv1_2)
        )
        newest, _ = await handshake(server.port or 0, client_context(certs.ca_file))
    finally:
        await server.stop()
    assert version == "TLSv1.2"
    assert newest == "TLSv1.3"


async def test_a_client_that_does_not_trust_the_ca_cannot_connect(running: Running, tmp_path: Path) -> None:
    stranger = write_development_certificates(tmp_path / "stranger")

    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(running.server.port or 0, client_context(stranger.ca_file))


def install(
    source: DevelopmentCertificates, target: DevelopmentCertificates, *, key: bool = True, cert: bool = True
) -> None:
    """Replace the served files the way a Secret volume update does: a new file, renamed into place."""
    for wanted, src, dst in (
        (key, source.key_file, target.key_file),
        (cert, source.cert_file, target.cert_file),
    ):
        if wanted:
            staging = dst.with_suffix(".new")
            shutil.copyfile(src, staging)
            os.replace(staging, dst)


async def get_healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """GET /healthz on an open keep-alive connection; the status line."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return lines[0]


async def test_new_connections_get_the_new_certificate_after_the_files_change(tmp_path: Path) -> None:
    await certificate_reload_scenario(tmp_path)


def test_certificate_reload_and_reviews_work_on_uvloop_as_in_production(tmp_path: Path) -> None:
    # `python -m samd.webhook` runs on uvloop, whose TLS is its own: the SNI switch must work there too.
    async def scenario() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        certs = write_development_certificates(tmp_path / "reviews")
        server = await start(certs, FakeDecider())
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_context(certs.ca_file))
            ) as s:
                status, answer = await Running(server, FakeDecider(), certs, s).review(saved_body())
        finally:
            await server.stop()
        assert (status, answer["response"]["allowed"]) == (200, True)
        await certificate_reload_scenario(tmp_path / "reload")

    uvloop.run(scenario())


async def certificate_reload_scenario(tmp_path: Path) -> None:
    first = write_development_certificates(tmp_path / "first")
    second = write_development_certificates(tmp_path / "second")
    third = write_development_certificates(tmp_path / "third")
    serving = DevelopmentCertificates(first.ca_file, tmp_path / "tls.crt", tmp_path / "tls.key")
    install(first, serving)
    metrics = WebhookMetrics()
    server = await start(serving, FakeDecider(), metrics, cert_reload_interval=0.05)
    trusts_all = client_context(first.ca_file, second.ca_file, third.ca_file)
    port = server.port or 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusts_all)  # kept alive
    try:
        assert (await handshake(port, trusts_all))[1] == der(first.cert_file)
        assert await get_healthz(reader, writer) == b"HTTP/1.1 200 OK"

        install(second, serving)
        for _ in range(100):
            if (await handshake(port, trusts_all))[1] == der(second.cert_file):
                break
            await asyncio.sleep(0.05)
        assert (await handshake(port, trusts_all))[1] == der(second.cert_file)

        # The connection opened before the change goes on with the certificate it had.
        assert await get_healthz(reader, writer) == b"HTTP/1.1 200 OK"
        assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True) == der(first.cert_file)

        # Half an update (the third certificate with the second key) is not used...
        install(third, serving, key=False)
        assert server.reloader.check() is False
        assert (await handshake(port, trusts_all))[1] == der(second.cert_file)
        # ...until the key follows.
        install(third, serving, cert=False)
        assert server.reloader.check() is True
        assert (await handshake(port, trusts_all))[1] == der(third.cert_file)
        # A client trusting only the first CA is now refused: the old certificate is gone.
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(port, client_context(first.ca_file))
    finally:
        writer.close()
        await server.stop()
    assert metrics.certificate_reloads.labels("loaded")._value.get() == 2
    assert metrics.certificate_reloads.labels("failed")._value.get() >= 1


async def test_unusable_certificate_files_stop_the_start_with_a_clear_error(tmp_path: Path) -> None:
    first = write_development_certificates(tmp_path / "first")
    second = write_development_certificates(tmp_path / "second")
    mismatched = DevelopmentCertificates(first.ca_file, first.cert_file, second.key_file)
    missing = DevelopmentCertificates(first.ca_file, tmp_path / "absent.crt", first.key_file)

    with pytest.raises(UsageError, match="the key must belong to the certificate"):
        await start(mismatched, FakeDecider())
    with pytest.raises(UsageError, match=r"absent\.crt: No such file"):
        await start(missing, FakeDecider())


# --- graceful shutdown ----------------------------------------------------------------------------------

SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import uvloop
    from samd.logs import configure_logging
    from samd.webhook.config import WebhookConfig
    from samd.webhook.review import Decision
    from samd.webhook.server import AdmissionServer, serve_until_signalled

    class Slow:
        ready = True

        async def decide(self, request):
            await asyncio.sleep(float(sys.argv[3]))
            return Decision(True, "slow but verified", "Verified")

    configure_logging("INFO", "json")
    config = WebhookConfig(cert_file=Path(sys.argv[1]), key_file=Path(sys.argv[2]), host="127.0.0.1", port=0)
    uvloop.run(serve_until_signalled(AdmissionServer(config, Slow())))  # as python -m samd.webhook does
    """
)


async def test_sigterm_finishes_in_flight_requests_then_exits_0(
    certs: DevelopmentCertificates, tmp_path: Path
) -> None:
    script = tmp_path / "serve.py"
    script.write_text(SERVER_SCRIPT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(certs.cert_file),
        str(certs.key_file),
        "1.5",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        port = None
        while port is None:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, "the server exited before listening"
            entry = json.loads(line)
            if entry["message"].startswith("admission webhook listening on"):
                port = int(entry["message"].split(":")[2].split()[0])
        context = client_context(certs.ca_file)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:

            async def review() -> Any:
                async with session.post(
                    f"https://127.0.0.1:{port}/validate",
                    data=saved_body(),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    return response.status, await response.json()

            in_flight = asyncio.create_task(review())
            await asyncio.sleep(0.5)  # the request is now waiting for its (slow) decision
            process.send_signal(signal.SIGTERM)
            status, answer = await asyncio.wait_for(in_flight, 10)
        assert status == 200
        assert answer["response"]["allowed"] is True
        assert answer["response"]["status"]["message"] == "slow but verified"
        remaining = await asyncio.wait_for(process.stderr.read(), 15)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert b"Traceback" not in remaining
        with pytest.raises(ConnectionRefusedError):  # no longer listening
            await handshake(port, context)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- slow, hostile and vanishing clients ---------------------------------------------------------------

READ_TIMEOUT = 1.0
HEAD = (
    b"POST /validate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n"
)


@contextlib.asynccontextmanager
async def guarded_server(certs: DevelopmentCertificates) -> AsyncIterator[Running]:
    """A server with a short read timeout and a limit of three connections."""
    decider = FakeDecider()
    server = await start(certs, decider, read_timeout=READ_TIMEOUT, max_connections=3)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(certs.ca_file)))
    try:
        yield Running(server, decider, certs, session)
    finally:
        await session.close()
        await server.stop()


@pytest.fixture
async def guarded(certs: DevelopmentCertificates) -> AsyncIterator[Running]:
    async with guarded_server(certs) as running:
        yield running


async def open_tls(running: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", running.server.port, ssl=client_context(running.certs.ca_file)
    )


def half_a_review() -> bytes:
    body = saved_body()
    return HEAD % len(body) + body[: len(body) // 2]


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed or killed client does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def wait_for_metric(running: Running, name: str, labels: dict[str, str], value: float) -> None:
    key = (name, tuple(sorted(labels.items())))
    for _ in range(100):
        if (await running.metrics()).get(key) == value:
            return
        await asyncio.sleep(0.05)
    assert (await running.metrics()).get(key) == value


async def test_a_client_sending_half_a_body_is_cut_off_and_others_are_served(guarded: Running) -> None:
    reader, writer = await open_tls(guarded)
    writer.write(half_a_review())
    await writer.drain()
    started = time.monotonic()

    meanwhile = await guarded.review(saved_body())  # the stalled client holds nothing up
    answer = await asyncio.wait_for(reader.read(), READ_TIMEOUT + 5)
    elapsed = time.monotonic() - started
    writer.close()

    assert meanwhile[0] == 200
    assert elapsed < READ_TIMEOUT + 2
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in answer
    assert b"did not arrive within 1 s" in answer
    assert await reader.read() == b""  # closed
    assert (await guarded.review(saved_body()))[0] == 200
    await wait_for_metric(guarded, "samd_webhook_invalid_reviews_total", {"reason": "body_timeout"}, 1)


async def trickle(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, data: bytes) -> None:
    """Send `data` a byte at a time (50 ms apart) until done or the server closes the connection."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            if reader.at_eof():
                return
            await asyncio.sleep(0.05)


async def test_a_client_trickling_its_headers_is_cut_off(guarded: Running) -> None:
    reader, writer = await open_tls(guarded)
    started = time.monotonic()

    await trickle(writer, reader, b"POST /validate HTTP/1.1\r\nHost: webhook\r\nContent-Type: appl")
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), READ_TIMEOUT + 5) == b""

    assert time.monotonic() - started < READ_TIMEOUT + 2
    writer.close()
    await wait_for_metric(guarded, "samd_webhook_connection_timeouts_total", {"stage": "headers"}, 1)


async def test_a_client_that_never_starts_tls_is_cut_off(guarded: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.server.port)
    started = time.monotonic()

    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), READ_TIMEOUT + 5) == b""
    assert time.monotonic() - started < READ_TIMEOUT + 2
    writer.close()
    await wait_for_metric(guarded, "samd_webhook_connection_timeouts_total", {"stage": "handshake"}, 1)


async def test_a_keep_alive_connection_serves_many_requests_past_the_read_timeout(guarded: Running) -> None:
    # The header deadline is for the first request only: the API server keeps connections open.
    for _ in range(3):
        assert (await guarded.review(saved_body()))[0] == 200
        await asyncio.sleep(READ_TIMEOUT / 2)

    samples = await guarded.metrics()
    assert samples[("samd_webhook_connections_open", ())] == 1
    assert samples[("samd_webhook_connection_timeouts_total", (("stage", "headers"),))] == 0


async def test_client_resets_are_counted_and_not_logged_as_errors(
    guarded: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, writer = await open_tls(guarded)
    writer.write(half_a_review())
    await writer.drain()
    await asyncio.sleep(0.2)
    reset(writer)
    _, raw = await asyncio.open_connection("127.0.0.1", guarded.server.port)
    reset(raw)  # before its TLS handshake

    await wait_for_metric(guarded, "samd_webhook_client_resets_total", {"stage": "request"}, 1)
    await wait_for_metric(guarded, "samd_webhook_client_resets_total", {"stage": "handshake"}, 1)
    await wait_for_metric(guarded, "samd_webhook_connections_open", {}, 1)  # the metrics client only
    assert (await guarded.review(saved_body()))[0] == 200
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert all(r.exc_info is None for r in caplog.records)
    assert any("reset its connection while sending" in r.getMessage() for r in caplog.records)


async def answered(running: Running) -> bool:
    """Whether a new connection gets an answer (a 400 to a tiny request) or is closed without one."""
    try:
        reader, writer = await asyncio.wait_for(open_tls(running), 5)
        # TLS 1.3: the client may finish its handshake before it sees that the server closed.
        writer.write(HEAD % 2 + b"{}")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 5)
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        return False
    writer.close()
    return answer.startswith(b"HTTP/1.1 ")


async def test_connections_over_the_limit_are_closed_at_once(guarded: Running) -> None:
    held = [await open_tls(guarded) for _ in range(3)]
    started = time.monotonic()

    assert await answered(guarded) is False
    refused_after = time.monotonic() - started
    for _ in range(2):  # one for the metrics client below, one for the next connection
        _, writer = held.pop()
        writer.close()
        await writer.wait_closed()

    await wait_for_metric(guarded, "samd_webhook_connections_refused_total", {}, 1)
    assert refused_after < 1
    assert await answered(guarded) is True
    for _, writer in held:
        writer.close()


def test_the_guards_against_slow_and_vanishing_clients_work_on_uvloop_as_in_production(
    certs: DevelopmentCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    # uvloop accepts, times out and reports resets in its own code: each scenario on a fresh server.
    scenarios: list[Callable[[Running], Any]] = [
        test_a_client_sending_half_a_body_is_cut_off_and_others_are_served,
        test_a_client_trickling_its_headers_is_cut_off,
        test_a_client_that_never_starts_tls_is_cut_off,
        lambda running: test_client_resets_are_counted_and_not_logged_as_errors(running, caplog),
        test_connections_over_the_limit_are_closed_at_once,
    ]

    async def run_all() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        for scenario in scenarios:
            async with guarded_server(certs) as running:
                await scenario(running)

    uvloop.run(run_all())


# --- command line and configuration --------------------------------------------------------------------


def test_flags_win_over_environment_variables_which_win_over_defaults() -> None:
    env = {
        "SAMD_WEBHOOK_CERT": "/env/tls.crt",
        "SAMD_WEBHOOK_KEY": "/env/tls.key",
        "SAMD_WEBHOOK_PORT": "9443",
    }
    arguments = build_parser(env).parse_args(["--port", "10443", "--tls-min-version", "1.2"])

    config = config_from_arguments(arguments)

    assert config.cert_file == Path("/env/tls.crt")
    assert config.port == 10443
    assert config.tls_min_version == ssl.TLSVersion.TLSv1_2
    assert config.max_body_bytes == 3 << 20
    assert config.decision_timeout < 5  # answers before the configuration's timeoutSeconds
    assert config.read_timeout < 5  # a stalled client is cut off before the API server gives up
    assert config.max_connections == 1024


def test_the_read_timeout_and_connection_limit_are_settings() -> None:
    env = {"SAMD_WEBHOOK_CERT": "c", "SAMD_WEBHOOK_KEY": "k", "SAMD_WEBHOOK_MAX_CONNECTIONS": "64"}

    config = config_from_arguments(build_parser(env).parse_args(["--read-timeout", "1.5"]))

    assert config.read_timeout == 1.5
    assert config.max_connections == 64


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "the TLS certificate and key are required"),
        (["--cert", "c", "--key", "k", "--port", "https"], {}, "--port 'https' is not a number"),
        (["--cert", "c", "--key", "k", "--port", "70000"], {}, "not a TCP port"),
        (["--cert", "c", "--key", "k"], {"SAMD_WEBHOOK_TLS_MIN_VERSION": "1.1"}, "write 1.2 or 1.3"),
        (["--cert", "c", "--key", "k", "--max-body-bytes", "10"], {}, "at least 1024 bytes"),
        (["--cert", "c", "--key", "k", "--decision-timeout", "0"], {}, "decision_timeout must be positive"),
        (["--cert", "c", "--key", "k", "--read-timeout", "-1"], {}, "read_timeout must be positive"),
        (
            ["--cert", "c", "--key", "k"],
            {"SAMD_WEBHOOK_MAX_CONNECTIONS": "0"},
            "max_connections must be at least 1",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        config_from_arguments(build_parser(env).parse_args(argv))


def test_the_command_writes_development_certificates_that_a_client_trusts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert webhook_main(["--write-dev-certificates", str(tmp_path / "dev")]) == 0

    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "dev" / name) for name in ("ca.crt", "tls.crt", "tls.key")]
    assert oct((tmp_path / "dev" / "tls.key").stat().st_mode & 0o777) == "0o600"
    context = client_context(tmp_path / "dev" / "ca.crt")
    context.load_cert_chain(tmp_path / "dev" / "tls.crt", tmp_path / "dev" / "tls.key")  # the pair matches


def test_the_command_without_certificates_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        webhook_main([])

    assert exited.value.code == 2
    assert "the TLS certificate and key are required" in capsys.readouterr().err


async def test_a_port_in_use_stops_the_start_with_a_clear_error(running: Running) -> None:
    taken = running.server.port or 0
    second = AdmissionServer(replace_port(config_for(running.certs), taken), FakeDecider())

    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{taken}: Address already in use"):
        await second.start()


def replace_port(config: WebhookConfig, port: int) -> WebhookConfig:
    return dataclasses.replace(config, port=port)


async def test_denials_are_counted_by_reason_and_unknown_reasons_do_not_grow_the_label_set(
    running: Running,
) -> None:
    def denials() -> dict[str, float]:
        return {
            sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(running.server.metrics.exposition().decode())
            if family.name == "samd_webhook_denials"
            for sample in family.samples
        }

    before = denials()
    assert before["BypassAttempt"] == 0  # present from the start, so increase() sees the first one
    for reason in ("BypassAttempt", "KeyExposed", "SomethingNew"):
        running.decider.decision = Decision(allowed=False, message="refused", reason=reason)
        status, _ = await running.review(saved_body())
        assert status == 200
    after = denials()
    assert after["BypassAttempt"] == 1
    assert after["KeyExposed"] == 1
    assert after["other"] == 1
    assert set(after) == set(before)
