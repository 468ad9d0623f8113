"""`samd serve` as a process: mTLS identity, handshakes refused, limits, a stock V2 client,
provenance, metrics, certificate reload and graceful shutdown, with a real trained ONNX model."""

from __future__ import annotations

import datetime
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samd.operator.builders.certificates import CertificateAuthority, cert_pem, issue_certificate, key_pem
from tests.support.serving import (
    ServerProcess,
    SignedModel,
    TlsFiles,
    V2Client,
    as_fetched,
    client_context,
    fraud_data,
    serve_argv,
    sign_directory,
    start_server,
    train_fraud_model,
    write_model_tls,
)
from tests.unit.test_builders_example import fraud_detection

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"


@dataclass(frozen=True)
class Served:
    server: ServerProcess
    tls: TlsFiles
    signed: SignedModel
    model_dir: Path

    def client(self, name: str = "payments-api", **kwargs: object) -> V2Client:
        return V2Client(self.server.port, client_context(self.tls.ca, *self.tls.client(name)), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SignedModel, TlsFiles]:
    work = tmp_path_factory.mktemp("serving")
    signed = sign_directory(train_fraud_model(work / "model"), work)
    fetched = as_fetched(signed, work / "fetched")
    tls = write_model_tls(
        work / "tls",
        fraud_detection(),
        ["payments-api", "risk-dashboard", "intruder"],
        foreign=["payments-api"],
    )
    return fetched, signed, tls


@pytest.fixture(scope="module")
def served(material: tuple[Path, SignedModel, TlsFiles]) -> Iterator[Served]:
    fetched, signed, tls = material
    argv = serve_argv(
        fetched, tls, signed, clients=["payments-api", "risk-dashboard"],
        extra=["--rate-limit", "5", "--burst", "30", "--max-batch", "64", "--cert-reload-interval", "0.2"],
    )  # fmt: skip
    server = start_server(argv)
    try:
        yield Served(server, tls, signed, fetched)
    finally:
        if server.process.poll() is None:
            server.stop()


def test_an_allowed_client_gets_a_prediction_with_the_models_provenance(served: Served) -> None:
    client = served.client()
    rows, labels = fraud_data(32, seed=11)
    answer = client.infer(MODEL, rows)
    assert answer.status == 200, answer.body
    document = answer.json()
    outputs = {output["name"]: output for output in document["outputs"]}
    assert outputs["label"]["shape"] == [32]
    accuracy = float(np.mean(np.array(outputs["label"]["data"]) == labels))
    assert accuracy > 0.9  # the real trained model, not a stand-in
    digest = served.signed.manifest_digest()
    assert document["model_name"] == MODEL
    assert document["model_version"] == "1.4.0"
    assert document["parameters"]["samd_manifest_digest"] == digest
    assert document["parameters"]["samd_signer"].startswith("sha256:")
    assert answer.headers["samd-manifest-digest"] == digest
    assert answer.headers["samd-model-version"] == "1.4.0"
    assert answer.headers["samd-signer"] == document["parameters"]["samd_signer"]
    metadata = client.request("GET", f"/v2/models/{MODEL}").json()
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    client.close()


@pytest.mark.parametrize(
    ("client_name", "message"),
    [
        ("intruder", "client 'intruder' is not allowed to call this model"),
        ("foreign:payments-api", "its certificate's organization is samd:other-namespace:other-model"),
    ],
)
def test_a_certificate_of_another_client_or_model_gets_403(
    served: Served, client_name: str, message: str
) -> None:
    client = served.client(client_name)
    for path in ("/v2/health/ready", f"/v2/models/{MODEL}"):
        answer = client.request("GET", path)
        assert answer.status == 403
        assert message in answer.json()["error"]
    answer = client.infer(MODEL, fraud_data(1)[0])
    assert answer.status == 403
    client.close()
    refused = served.server.wait_for_records(
        lambda r: r.get("event") == "request_refused" and r["status"] == 403 and message in r["detail"]
    )
    assert refused, f"no request_refused line saying {message!r} in the server's log"


def _handshake(served: Served, context: ssl.SSLContext) -> None:
    V2Client(served.server.port, context).request("GET", "/v2/health/live")


def test_no_certificate_an_untrusted_one_and_tls_1_2_are_refused_at_the_handshake(
    served: Served, tmp_path: Path
) -> None:
    before = served.server.metrics()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(served, client_context(served.tls.ca))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(
            served,
            client_context(served.tls.ca, *served.tls.client("payments-api"), maximum=ssl.TLSVersion.TLSv1_2),
        )
    # A certificate with the right names from another CA.
    now = datetime.datetime.now(datetime.UTC)
    other = CertificateAuthority.generate(now, common_name="another CA")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, served.tls.organization),
            x509.NameAttribute(NameOID.COMMON_NAME, "payments-api"),
        ]
    )
    key, certificate = issue_certificate(
        other,
        subject=subject,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        hosts=[],
        now=now,
        validity=datetime.timedelta(hours=1),
    )
    (tmp_path / "c.crt").write_bytes(cert_pem(certificate))
    (tmp_path / "c.key").write_bytes(key_pem(key))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(served, client_context(served.tls.ca, tmp_path / "c.crt", tmp_path / "c.key"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = served.server.metrics()
        if all(
            _value(metrics, f'samd_serving_refused_handshakes_total{{reason="{reason}"}}')
            > _value(before, f'samd_serving_refused_handshakes_total{{reason="{reason}"}}')
            for reason in ("no_certificate", "protocol_version", "untrusted_certificate")
        ):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"refused handshakes not counted:\n{metrics}")


def _value(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_wrong_inputs_oversized_batches_and_bodies_are_refused_with_a_reason(served: Served) -> None:
    client = served.client()
    wrong = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 7], "data": [0.0] * 7}]}
    answer = client.request("POST", f"/v2/models/{MODEL}/infer", wrong)
    assert answer.status == 400
    assert (
        answer.json()["error"]
        == "input 'features' has shape [1, 7] but the model takes [-1, 8] (-1: any size)"
    )
    answer = client.infer(MODEL, np.zeros((65, 8), np.float32))
    assert answer.status == 400
    assert "batch of 65" in answer.json()["error"]
    answer = client.request("POST", f"/v2/models/{MODEL}/infer", b"x" * (9 * 1024 * 1024))
    assert answer.status == 413
    client.close()
    client = served.client()
    answer = client.request("POST", "/v2/models/other-model/infer", wrong)
    assert answer.status == 404
    assert "this server serves fraud-detection version 1.4.0" in answer.json()["error"]
    client.close()
    metrics = served.server.metrics()
    assert _value(metrics, 'samd_serving_validation_failures_total{reason="wrong_shape"}') >= 1
    assert _value(metrics, 'samd_serving_validation_failures_total{reason="batch_too_large"}') >= 1
    assert _value(metrics, 'samd_serving_validation_failures_total{reason="too_large"}') >= 1


def test_a_client_over_its_rate_gets_429_with_retry_after(served: Served) -> None:
    client = served.client("risk-dashboard")
    statuses = []
    for _ in range(40):
        answer = client.request("GET", "/v2/health/ready")
        statuses.append(answer.status)
        if answer.status == 429:
            assert int(answer.headers["retry-after"]) >= 1
            assert "over its rate limit of 5 requests/s" in answer.json()["error"]
            break
    assert 429 in statuses
    # Another client is not affected.
    other = served.client()
    assert other.request("GET", "/v2/health/ready").status == 200
    client.close()
    other.close()
    metrics = served.server.metrics()
    assert _value(metrics, 'samd_serving_rate_limited_total{client="risk-dashboard"}') >= 1
    assert (
        _value(
            metrics,
            'samd_serving_requests_total{client="risk-dashboard",endpoint="ready",outcome="rate_limited"}',
        )
        >= 1
    )


def test_a_stock_v2_client_works_unchanged(served: Served) -> None:
    import tritonclient.http as triton  # noqa: PLC0415

    cert, key = served.tls.client("payments-api")
    client = triton.InferenceServerClient(
        url=f"127.0.0.1:{served.server.port}",
        ssl=True,
        ssl_options={"keyfile": str(key), "certfile": str(cert), "ca_certs": str(served.tls.ca)},
    )
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL)
        assert client.get_model_metadata(MODEL)["platform"] == "onnxruntime_onnx"
        rows, _ = fraud_data(4, seed=3)
        for binary in (True, False):
            tensor = triton.InferInput("features", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            wanted = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
            result = client.infer(MODEL, [tensor], outputs=wanted)
            probabilities = result.as_numpy("probabilities")
            assert probabilities.shape == (4, 2)
            assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
            assert (
                result.get_response()["parameters"]["samd_manifest_digest"] == served.signed.manifest_digest()
            )
    finally:
        client.close()


def test_a_new_certificate_is_used_without_dropping_live_connections(served: Served, tmp_path: Path) -> None:
    client = served.client()
    assert client.request("GET", "/v2/health/live").status == 200
    before = client._connection.sock.getpeercert()["serialNumber"]
    server_dir = served.tls.directory
    now = datetime.datetime.now(datetime.UTC)
    # Renewed by the same CA (the CA's key is not kept on disk: re-issue with a CA kept in the test).
    ca_pem = server_dir / "ca.crt"
    ca = CertificateAuthority.generate(now, common_name="rotated CA")
    key, certificate = issue_certificate(
        ca,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        hosts=["localhost", "127.0.0.1"],
        now=now,
        validity=datetime.timedelta(hours=1),
    )
    old = {name: (server_dir / name).read_bytes() for name in ("tls.crt", "tls.key", "ca.crt")}
    try:
        # The new CA trusts both the old and the new clients' issuers, as during a CA rotation.
        staged = tmp_path / "staged"
        staged.mkdir()
        (staged / "tls.key").write_bytes(key_pem(key))
        (staged / "tls.crt").write_bytes(cert_pem(certificate))
        (staged / "ca.crt").write_bytes(old["ca.crt"] + ca.certificate_pem)
        for name in ("tls.key", "tls.crt", "ca.crt"):
            os.replace(staged / name, server_dir / name)
        # The live connection keeps working on its old session.
        deadline = time.monotonic() + 10
        while _value(served.server.metrics(), 'samd_serving_certificate_reloads_total{result="loaded"}') < 1:
            assert time.monotonic() < deadline, "the new certificate was not loaded"
            time.sleep(0.1)
        assert client.request("GET", "/v2/health/live").status == 200
        # A new connection gets the new certificate.
        trusting_both = client_context(ca_pem, *served.tls.client("payments-api"))
        fresh = V2Client(served.server.port, trusting_both)
        assert fresh.request("GET", "/v2/health/live").status == 200
        after = str(fresh._connection.sock.getpeercert()["serialNumber"])
        assert after != before
        assert int(after, 16) == certificate.serial_number
        fresh.close()
    finally:
        for name, data in old.items():
            (server_dir / name).write_bytes(data)
        client.close()
    deadline = time.monotonic() + 10
    while _value(served.server.metrics(), 'samd_serving_certificate_reloads_total{result="loaded"}') < 2:
        assert time.monotonic() < deadline, "the old certificate was not loaded back"
        time.sleep(0.1)


def test_sigterm_lets_the_server_stop_cleanly(material: tuple[Path, SignedModel, TlsFiles]) -> None:
    fetched, signed, tls = material
    server = start_server(serve_argv(fetched, tls, signed, clients=["payments-api"]))
    client = V2Client(server.port, client_context(tls.ca, *tls.client("payments-api")))
    assert client.request("GET", "/v2/health/ready").status == 200
    assert server.stop() == 0
    client.close()
    assert any(record.get("message") == "model server stopped" for record in server.log_records())


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ("digest", 3, "is pinned"),
        ("no-model", 2, "holds no verified model"),
        ("certificate", 2, "cannot use the TLS certificate"),
        ("tampered", 3, "differ from what was signed"),
    ],
)
def test_start_up_errors_are_clear_and_exit_non_zero(
    material: tuple[Path, SignedModel, TlsFiles], tmp_path: Path, change: str, code: int, message: str
) -> None:
    fetched, signed, tls = material
    model_dir = fetched
    argv = serve_argv(fetched, tls, signed, clients=["payments-api"])
    if change == "digest":
        argv[argv.index("--expect-digest") + 1] = "sha256:" + "0" * 64
    elif change == "no-model":
        argv[argv.index("--model-dir") + 1] = tmp_path
    elif change == "certificate":
        broken = tmp_path / "tls.crt"
        broken.write_text("not a certificate")
        argv[argv.index("--tls-cert") + 1] = broken
    else:
        model_dir = as_fetched(
            SignedModel(fetched, signed.signature, "", signed.trust_config), tmp_path / "copy"
        )
        (model_dir / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes() + b"\0")
        argv[argv.index("--model-dir") + 1] = model_dir
    result = subprocess.run(
        [str(word) for word in argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr  # one clear line, not a stack trace
