"""Drift at `samd serve`: a baseline written by `samd baseline` from the validation sample, signed
inside the model directory, read only from the verified files; shifted traffic moves the gauge past
the threshold and unshifted traffic does not."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from samd.drift import BASELINE_FILE, PSI_MODERATE, PSI_SIGNIFICANT
from tests.support.serving import (
    SAMD,
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

SHIFTED_FEATURE = 3  # the feature the fraud model weighs most


def signed_model_with_baseline(work: Path) -> tuple[Path, SignedModel, TlsFiles]:
    """The fraud model with a baseline `samd baseline` wrote from a held-out sample, signed, as fetched."""
    model_dir = train_fraud_model(work / "model")
    validation, _ = fraud_data(2000, seed=21)  # held out: not the training rows
    np.savez(work / "validation.npz", features=validation)
    written = subprocess.run(
        [SAMD, "baseline", model_dir, "--sample", work / "validation.npz", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(written.stdout)
    assert report["rows"] == 2000
    assert len(report["inputs"]) == 8
    assert report["outputs"], "the outputs come from running the model on the sample"
    signed = sign_directory(model_dir, work)  # the baseline is signed with the weights
    fetched = as_fetched(signed, work / "fetched")
    tls = write_model_tls(work / "tls", fraud_detection(), ["payments-api"])
    return fetched, signed, tls


@pytest.fixture(scope="module")
def drift_material(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SignedModel, TlsFiles]:
    return signed_model_with_baseline(tmp_path_factory.mktemp("drift"))


@pytest.fixture
def served(drift_material: tuple[Path, SignedModel, TlsFiles]) -> Iterator[tuple[ServerProcess, V2Client]]:
    fetched, signed, tls = drift_material
    argv = serve_argv(
        fetched, tls, signed, clients=["payments-api"],
        extra=["--drift-window", "1000", "--rate-limit", "1000", "--burst", "1000"],
    )  # fmt: skip
    server = start_server(argv)
    client = V2Client(server.port, client_context(tls.ca, *tls.client("payments-api")))
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def _psi(server: ServerProcess) -> dict[tuple[str, str], float]:
    values = {}
    for family in text_string_to_metric_families(server.metrics()):
        if family.name == "samd_drift_population_stability_index":
            for sample in family.samples:
                values[(sample.labels["direction"], sample.labels["feature"])] = sample.value
    return values


def _send(client: V2Client, rows: np.ndarray) -> None:
    for start in range(0, rows.shape[0], 50):
        answer = client.infer("fraud-detection", rows[start : start + 50])
        assert answer.status == 200, answer.body


def test_unshifted_traffic_stays_below_and_shifted_traffic_crosses_the_threshold(
    served: tuple[ServerProcess, V2Client],
) -> None:
    server, client = served
    unshifted, _ = fraud_data(1000, seed=22)
    _send(client, unshifted)
    calm = _psi(server)
    outputs = sorted(feature for direction, feature in calm if direction == "output")
    assert outputs == ["label", "probabilities[0]", "probabilities[1]"]
    assert len(calm) == 8 + 3
    assert max(calm.values()) < PSI_MODERATE, calm

    shifted, _ = fraud_data(1100, seed=23)
    shifted[:, SHIFTED_FEATURE] += 1.0  # one standard deviation
    _send(client, shifted)
    drifted = _psi(server)
    assert drifted[("input", f"features[{SHIFTED_FEATURE}]")] > PSI_SIGNIFICANT, drifted
    assert drifted[("input", "features[0]")] < PSI_MODERATE, drifted

    def outputs_psi(measured: dict[tuple[str, str], float]) -> float:
        return max(value for (direction, _), value in measured.items() if direction == "output")

    assert outputs_psi(drifted) > 2 * outputs_psi(calm)  # the predictions move with the feature


def test_a_baseline_changed_after_signing_stops_the_server(
    drift_material: tuple[Path, SignedModel, TlsFiles], tmp_path: Path
) -> None:
    fetched, signed, tls = drift_material
    tampered = tmp_path / "models"
    shutil.copytree(fetched, tampered)
    document = json.loads((tampered / BASELINE_FILE).read_text())
    for column in document["inputs"]:  # an attacker flattening the baseline so nothing looks drifted
        column["edges"], column["proportions"] = [], [1.0]
    (tampered / BASELINE_FILE).write_text(json.dumps(document))
    argv = serve_argv(tampered, tls, signed, clients=["payments-api"])
    with pytest.raises(RuntimeError, match=rf"exited \(3\)[\s\S]*{BASELINE_FILE}"):
        start_server(argv).stop()
