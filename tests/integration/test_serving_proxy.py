"""`samd proxy` before a real third-party V2 server (MLServer with its scikit-learn runtime):
the same identity, limits, input checks and provenance as `samd serve`."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest

from tests.support.serving import (
    SAMD,
    ServerProcess,
    SignedModel,
    TlsFiles,
    V2Client,
    as_fetched,
    client_context,
    fraud_data,
    mlserver,
    serve_argv,
    sign_directory,
    start_server,
    write_mlserver_sklearn_model,
    write_model_tls,
)
from tests.support.webhook import free_port
from tests.unit.test_builders_example import fraud_detection

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"


def proxy_argv(fetched: Path, tls: TlsFiles, signed: SignedModel, upstream: int) -> list[str | Path]:
    argv = serve_argv(fetched, tls, signed, clients=["payments-api"])
    argv[1] = "proxy"
    return [*argv, "--upstream", f"http://127.0.0.1:{upstream}"]


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SignedModel, TlsFiles]:
    work = tmp_path_factory.mktemp("proxy")
    model_dir = write_mlserver_sklearn_model(work / "model")
    # A drift baseline from a held-out sample and the model's own predictions on it, signed with the model.
    validation, _ = fraud_data(1000, seed=41)
    predictions = joblib.load(model_dir / "model.joblib").predict(validation).reshape(-1, 1)
    np.savez(work / "validation.npz", features=validation, predict=predictions)
    subprocess.run(
        [SAMD, "baseline", model_dir, "--sample", work / "validation.npz", "--output-tensor", "predict"],
        check=True, capture_output=True,
    )  # fmt: skip
    signed = sign_directory(model_dir, work)
    fetched = as_fetched(signed, work / "fetched")
    tls = write_model_tls(work / "tls", fraud_detection(), ["payments-api", "intruder"])
    return fetched, signed, tls


@pytest.fixture(scope="module")
def proxied(material: tuple[Path, SignedModel, TlsFiles]) -> Iterator[ServerProcess]:
    fetched, signed, tls = material
    port = free_port()
    # MLServer reads the verified model directory the loader wrote, as in the pod.
    with mlserver(fetched, port):
        server = start_server(proxy_argv(fetched, tls, signed, port))
        try:
            client = V2Client(server.port, client_context(tls.ca, *tls.client("payments-api")))
            deadline = time.monotonic() + 30
            while client.request("GET", "/v2/health/ready").status != 200:
                assert time.monotonic() < deadline, "the proxy did not get ready:\n" + "\n".join(
                    server.lines[-10:]
                )
                time.sleep(0.2)
            client.close()
            yield server
        finally:
            if server.process.poll() is None:
                server.stop()


def test_a_prediction_from_the_third_party_server_comes_with_the_verified_provenance(
    proxied: ServerProcess, material: tuple[Path, SignedModel, TlsFiles]
) -> None:
    _, signed, tls = material
    client = V2Client(proxied.port, client_context(tls.ca, *tls.client("payments-api")))
    rows, labels = fraud_data(50, seed=5)
    answer = client.infer(MODEL, rows)
    assert answer.status == 200, answer.body
    document = answer.json()
    predicted = np.array(document["outputs"][0]["data"]).ravel()
    assert float(np.mean(predicted == labels)) > 0.9
    assert document["parameters"]["samd_manifest_digest"] == signed.manifest_digest()
    assert answer.headers["samd-manifest-digest"] == signed.manifest_digest()
    assert answer.headers["samd-signer"] == document["parameters"]["samd_signer"]
    metadata = client.request("GET", f"/v2/models/{MODEL}").json()
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    client.close()


def test_the_proxy_refuses_what_serve_refuses_before_the_model_server_sees_it(
    proxied: ServerProcess, material: tuple[Path, SignedModel, TlsFiles]
) -> None:
    _, _, tls = material
    client = V2Client(proxied.port, client_context(tls.ca, *tls.client("payments-api")))
    wrong = {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 8], "data": [0.0] * 8}]}
    answer = client.request("POST", f"/v2/models/{MODEL}/infer", wrong)
    assert answer.status == 400
    assert answer.json()["error"] == "input 'features' has datatype 'FP64' but the model takes FP32"
    client.close()
    intruder = V2Client(proxied.port, client_context(tls.ca, *tls.client("intruder")))
    answer = intruder.infer(MODEL, fraud_data(1)[0])
    assert answer.status == 403
    assert "'intruder' is not allowed" in answer.json()["error"]
    intruder.close()
    with pytest.raises((ssl.SSLError, ConnectionError)):  # refused at the handshake
        V2Client(proxied.port, client_context(tls.ca)).request("GET", "/v2/health/live")
    metrics = proxied.metrics()
    assert 'samd_serving_forbidden_total{reason="client_not_allowed"}' in metrics
    assert 'samd_serving_validation_failures_total{reason="wrong_datatype"}' in metrics
    assert 'samd_serving_refused_handshakes_total{reason="no_certificate"}' in metrics


def test_the_proxy_is_not_ready_without_its_upstream_and_refuses_a_remote_one(
    material: tuple[Path, SignedModel, TlsFiles],
) -> None:
    fetched, signed, tls = material
    server = start_server(proxy_argv(fetched, tls, signed, free_port()))
    try:
        client = V2Client(server.port, client_context(tls.ca, *tls.client("payments-api")))
        assert client.request("GET", "/v2/health/live").status == 200
        assert client.request("GET", "/v2/health/ready").status == 503
        assert client.infer(MODEL, fraud_data(1)[0]).status == 503
        client.close()
    finally:
        assert server.stop() == 0
    argv = [str(word) for word in proxy_argv(fetched, tls, signed, 8080)]
    argv[-1] = "http://10.1.2.3:8080"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "must be http://127.0.0.1:PORT" in result.stderr


def test_the_proxy_measures_drift_of_inputs_and_upstream_outputs_against_the_signed_baseline(
    proxied: ServerProcess, material: tuple[Path, SignedModel, TlsFiles]
) -> None:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    _, _, tls = material
    client = V2Client(proxied.port, client_context(tls.ca, *tls.client("payments-api")))
    try:
        rows, _ = fraud_data(300, seed=42)
        rows[:, 0] += 1.5
        for start in range(0, 300, 50):
            assert client.infer(MODEL, rows[start : start + 50]).status == 200
    finally:
        client.close()
    psi = {
        (sample.labels["direction"], sample.labels["feature"]): sample.value
        for family in text_string_to_metric_families(proxied.metrics())
        if family.name == "samd_drift_population_stability_index"
        for sample in family.samples
    }
    assert psi[("input", "features[0]")] > 0.25
    assert psi[("input", "features[5]")] < 0.25
    assert ("output", "predict") in psi  # read from MLServer's answers
    assert psi[("output", "predict")] == psi[("output", "predict")]  # measured: not NaN
