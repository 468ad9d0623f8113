"""The serving front end's checks, without a server: V2 inputs, limits, identity, rate limits,
provenance, and the model files checked again at load."""

from __future__ import annotations

import json
import re
import shutil
import ssl
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from samd.errors import UsageError, VerificationError
from samd.fetch import KEPT_SIGNATURE
from samd.serving.access import IdentityPolicy, RateLimiter
from samd.serving.backends import check_upstream
from samd.serving.model import read_kept_signature, verify_model_files
from samd.serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    Limits,
    ModelMetadata,
    RefusedError,
    TensorSpec,
    infer_document,
    parse_infer_request,
    split_body,
)
from samd.serving.server import Provenance
from samd.serving.tls import refusal_reason
from samd.signing import Verifier, verify_bundle
from tests.support.serving import as_fetched, sign_directory

pytestmark = pytest.mark.unit

METADATA = ModelMetadata(
    name="fraud-detection",
    version="1.4.0",
    platform="onnxruntime_onnx",
    inputs=(TensorSpec("features", "FP32", (-1, 8)), TensorSpec("country", "INT64", (-1, 1))),
    outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))),
)
LIMITS = Limits(max_body_bytes=1 << 20, max_batch=16, max_elements=64)


def _inputs(rows: int = 2, **changes: Any) -> dict[str, Any]:
    features = {"name": "features", "datatype": "FP32", "shape": [rows, 8], "data": [0.5] * (rows * 8)}
    country = {"name": "country", "datatype": "INT64", "shape": [rows, 1], "data": list(range(rows))}
    features.update(changes)
    return {"inputs": [features, country]}


def _refused(document: dict[str, Any], binary: bytes = b"", limits: Limits = LIMITS) -> RefusedError:
    with pytest.raises(RefusedError) as caught:
        parse_infer_request(document, binary, METADATA, limits)
    return caught.value


def test_a_well_formed_request_is_decoded_to_arrays_of_the_declared_types() -> None:
    request = parse_infer_request(_inputs(3), b"", METADATA, LIMITS)
    assert request.inputs["features"].dtype == np.float32
    assert request.inputs["features"].shape == (3, 8)
    assert request.inputs["country"].dtype == np.int64
    assert request.outputs == ()


def test_binary_tensor_data_is_decoded_and_must_add_up() -> None:
    rows = np.arange(16, dtype=np.float32).reshape(2, 8)
    document = _inputs(2)
    del document["inputs"][0]["data"]
    document["inputs"][0]["parameters"] = {"binary_data_size": rows.nbytes}
    header = json.dumps(document).encode()
    json_part, binary = split_body(header + rows.tobytes(), str(len(header)))
    request = parse_infer_request(json.loads(json_part), binary, METADATA, LIMITS)
    assert np.array_equal(request.inputs["features"], rows)
    assert "needs 64" in _refused(document, rows.tobytes()[:-4]).message
    assert "no input claims" in _refused(document, rows.tobytes() + b"xx").message
    with pytest.raises(RefusedError, match=HEADER_LENGTH):
        split_body(b"{}", "12")


@pytest.mark.parametrize(
    ("document", "reason", "words"),
    [
        (
            _inputs(2, name="amount"),
            "unknown_input",
            ["'amount' is not an input", "'features' (FP32 [-1, 8])"],
        ),
        (_inputs(2, datatype="FP64"), "wrong_datatype", ["'features' has datatype 'FP64'", "takes FP32"]),
        (_inputs(2, shape=[2, 7]), "wrong_shape", ["'features' has shape [2, 7]", "takes [-1, 8]"]),
        (_inputs(2, shape=[2, 8, 1]), "wrong_shape", ["'features' has shape [2, 8, 1]"]),
        (_inputs(2, data=[0.5] * 15), "wrong_data", ["'features' has 15 values", "needs 16"]),
        (_inputs(2, data=["x"] * 16), "wrong_data", ["'features'", "FP32"]),
        (_inputs(17, data=[0.0] * 136), "batch_too_large", ["batch of 17", "limit of 16"]),
        ({"inputs": []}, "malformed", ["non-empty 'inputs'"]),
        ({"inputs": [_inputs()["inputs"][0]]}, "missing_input", ["lacks input 'country' (INT64 [-1, 1])"]),
        ({**_inputs(), "outputs": [{"name": "score"}]}, "unknown_output", ["'score' is not an output"]),
    ],
)
def test_a_wrong_input_is_refused_with_what_is_wrong_and_how(
    document: dict[str, Any], reason: str, words: list[str]
) -> None:
    refused = _refused(document)
    assert (refused.status, refused.reason) == (400, reason)
    for word in words:
        assert word in refused.message


def test_the_element_limit_applies_to_every_input() -> None:
    limits = Limits(max_body_bytes=1 << 20, max_batch=1000, max_elements=100)
    refused = _refused(_inputs(13, data=[0.0] * 104), limits=limits)
    assert refused.reason == "tensor_too_large"
    assert "104 elements" in refused.message


def test_outputs_come_back_in_the_requested_order_and_encoding() -> None:
    request = InferRequest(
        id="r1", inputs={}, outputs=("probabilities", "label"), binary_outputs=frozenset({"probabilities"})
    )
    results = {"label": np.array([1, 0]), "probabilities": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    document, parts = infer_document(request, results)
    assert [entry["name"] for entry in document["outputs"]] == ["probabilities", "label"]
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert parts == [results["probabilities"].tobytes()]
    assert document["outputs"][1] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}
    assert document["id"] == "r1"


POLICY = IdentityPolicy("samd:fraud:fraud-detection", frozenset({"payments-api"}))


def _peercert(common_name: str, organization: str | None = "samd:fraud:fraud-detection") -> dict[str, Any]:
    subject = [(("commonName", common_name),)]
    if organization is not None:
        subject.insert(0, (("organizationName", organization),))
    return {"subject": tuple(subject)}


def test_only_the_models_allowed_clients_are_identified() -> None:
    assert POLICY.identify(_peercert("payments-api")).name == "payments-api"
    refused = [
        (
            POLICY.identify,
            _peercert("risk-dashboard"),
            "client_not_allowed",
            "'risk-dashboard' is not allowed",
        ),
        (
            POLICY.identify,
            _peercert("payments-api", "samd:fraud:other"),
            "wrong_organization",
            "samd:fraud:other",
        ),
        (POLICY.identify, _peercert("payments-api", None), "wrong_organization", "organization is none"),
        (POLICY.identify, None, "no_certificate", "certificate is required"),
    ]
    for identify, peercert, reason, words in refused:
        with pytest.raises(RefusedError) as caught:
            identify(peercert)
        assert (caught.value.status, caught.value.reason) == (403, reason)
        assert words in caught.value.message


def test_each_client_has_its_own_token_bucket_with_a_retry_after() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("payments-api")
    with pytest.raises(RefusedError) as caught:
        limiter.check("payments-api")
    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "1"}
    limiter.check("risk-dashboard")  # another client's bucket is full
    now[0] += 0.5  # one token back at 2/s
    limiter.check("payments-api")
    with pytest.raises(RefusedError):
        limiter.check("payments-api")


def test_provenance_goes_on_headers_and_parameters_even_for_non_ascii_signers() -> None:
    provenance = Provenance("fraud-detection", "1.4.0", "sha256:ab", "CN=Zoë,O=ML")
    headers = provenance.headers()
    assert headers["Samd-Signer"] == "CN=Zo%C3%AB,O=ML"
    assert headers["Samd-Manifest-Digest"] == "sha256:ab"
    assert provenance.parameters()["samd_signer"] == "CN=Zoë,O=ML"


# --- the model checked again at load ---


@pytest.fixture
def fetched(tmp_path: Path) -> tuple[Path, Any]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"onnx bytes")
    (model / "metadata.json").write_text("{}")
    signed = sign_directory(model, tmp_path / "signing")
    output = as_fetched(signed, tmp_path / "fetched")
    verification = verify_bundle(
        read_kept_signature(output), Verifier.from_public_key(signed.public_key_pem.encode())
    )
    return output, verification


def test_the_kept_signature_and_every_file_are_checked_at_load(fetched: tuple[Path, Any]) -> None:
    output, verification = fetched
    model = verify_model_files(output, verification, verification.manifest_digest)
    assert set(model.files) == {"model.onnx", "metadata.json"}
    assert model.read_verified("model.onnx") == b"onnx bytes"


def test_a_model_changed_after_the_fetch_is_refused(fetched: tuple[Path, Any]) -> None:
    output, verification = fetched
    (output / "model.onnx").write_bytes(b"other bytes")
    with pytest.raises(VerificationError, match="differ from what was signed"):
        verify_model_files(output, verification, None)
    (output / "model.onnx").write_bytes(b"onnx bytes")
    (output / "extra.bin").write_bytes(b"x")
    with pytest.raises(VerificationError, match="not covered by the signature"):
        verify_model_files(output, verification, None)


def test_another_pinned_digest_or_no_kept_signature_is_refused(
    fetched: tuple[Path, Any], tmp_path: Path
) -> None:
    output, verification = fetched
    with pytest.raises(VerificationError, match="is pinned"):
        verify_model_files(output, verification, "sha256:" + "0" * 64)
    bare = tmp_path / "bare"
    shutil.copytree(output, bare)
    (bare / KEPT_SIGNATURE).unlink()
    with pytest.raises(UsageError, match="--keep-signature"):
        read_kept_signature(bare)
    with pytest.raises(UsageError, match="no model directory"):
        read_kept_signature(tmp_path / "missing")


@pytest.mark.parametrize(
    "url", ["http://10.0.0.7:8080", "https://127.0.0.1:8080", "http://127.0.0.1", "http://127.0.0.1:8080/v2"]
)
def test_the_proxy_upstream_must_be_plain_http_on_loopback(url: str) -> None:
    with pytest.raises(UsageError, match=re.escape("must be http://127.0.0.1:PORT")):
        check_upstream(url)


def test_loopback_upstreams_are_accepted() -> None:
    assert check_upstream("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert check_upstream("http://[::1]:8080") == "http://[::1]:8080"
    assert check_upstream("http://localhost:9000") == "http://localhost:9000"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            ssl.SSLError(1, "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return a certificate"),
            "no_certificate",
        ),
        (
            ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
            "untrusted_certificate",
        ),
        (ssl.SSLError(1, "[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol"), "protocol_version"),
        (TimeoutError(), "timeout"),
        (ConnectionResetError(), "other"),
    ],
)
def test_refused_handshakes_get_a_bounded_reason(error: BaseException, reason: str) -> None:
    assert refusal_reason(error) == reason
