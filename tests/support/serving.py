"""Serving test material: a real fraud model (scikit-learn -> ONNX), mTLS files issued by the
operator's certificate builders, a `samd serve`/`samd proxy` process, and an mTLS V2 client."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samd.fetch import KEPT_SIGNATURE
from samd.operator.builders.certificates import (
    CertificateAuthority,
    cert_pem,
    issue_certificate,
    issue_client_certificate,
    key_pem,
    server_dns_names,
)
from samd.operator.builders.context import ModelContext
from samd.operator.builders.serving import client_organization
from samd.signing import Signer, sign_model
from tests.support.processes import stop
from tests.support.signing import write_key_pair
from tests.support.webhook import free_port

FEATURES = 8
SAMD = Path(sys.executable).parent / "samd"


def fraud_data(rows: int, seed: int = 7) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Synthetic card transactions: 8 features, fraud when a weighted sum is high."""
    generator = np.random.default_rng(seed)
    features = generator.normal(size=(rows, FEATURES)).astype(np.float32)
    weights = np.array([0.8, 1.6, -0.4, 2.1, 0.3, -1.2, 0.9, 1.1], dtype=np.float32)
    labels = (features @ weights > 1.5).astype(np.int64)
    return features, labels


def train_fraud_model(model_dir: Path) -> Path:
    """A logistic regression trained on `fraud_data`, exported to ONNX (tensors only, no ZipMap)."""
    from skl2onnx import convert_sklearn  # noqa: PLC0415 - heavy; only the serving tests need it
    from skl2onnx.common.data_types import FloatTensorType  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    features, labels = fraud_data(2000)
    classifier = LogisticRegression(max_iter=500).fit(features, labels)
    onnx_model = convert_sklearn(
        classifier,
        initial_types=[("features", FloatTensorType([None, FEATURES]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=17,
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.onnx").write_bytes(onnx_model.SerializeToString())
    return model_dir


@dataclass(frozen=True)
class SignedModel:
    model_dir: Path
    signature: Path
    public_key_pem: str
    trust_config: Path  # signers.json, as the operator's trust ConfigMap holds it

    def manifest_digest(self) -> str:
        bundle = json.loads(self.signature.read_bytes())
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        return "sha256:" + str(statement["subject"][0]["digest"]["sha256"])


def sign_directory(model_dir: Path, work: Path) -> SignedModel:
    """Sign a model directory with a fresh EC key; write the trust file that trusts the key."""
    key = write_key_pair(work, "model-signer")
    signature = work / f"{model_dir.name}.sig"
    sign_model(model_dir, signature, Signer.from_private_key(key.private_pem))
    public = key.public_pem.read_text()
    trust = work / "signers.json"
    trust.write_text(json.dumps([{"name": "ml-ci", "publicKey": public}]))
    return SignedModel(model_dir, signature, public, trust)


def as_fetched(signed: SignedModel, output: Path) -> Path:
    """The model directory as `samd fetch --keep-signature` leaves it (without running fetch)."""
    shutil.copytree(signed.model_dir, output)
    shutil.copyfile(signed.signature, output / KEPT_SIGNATURE)
    return output


# --- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    directory: Path  # tls.crt, tls.key, ca.crt: the layout of a kubernetes.io/tls Secret volume
    clients: Mapping[str, Path]  # client name -> its directory (tls.crt, tls.key, ca.crt)
    organization: str
    server_name: str  # a DNS name of the server certificate

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def client(self, name: str) -> tuple[Path, Path]:
        return self.clients[name] / "tls.crt", self.clients[name] / "tls.key"


def write_secret(directory: Path, data: Mapping[str, str]) -> Path:
    """A Secret's `data` laid out as the kubelet mounts it (one file per key, owner-read only)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in data.items():
        path = directory / name
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o400 if name.endswith(".key") else 0o444)
    return directory


def write_model_tls(
    directory: Path, ctx: ModelContext, clients: Sequence[str], *, foreign: Sequence[str] = ()
) -> TlsFiles:
    """The operator's CA, a server certificate for the model's Service names and 127.0.0.1, and a
    client Secret per name (issued exactly as the operator issues them). `foreign` clients get
    certificates from the same CA but with another model's organization."""
    now = datetime.datetime.now(datetime.UTC)
    ca = CertificateAuthority.generate(now, common_name=f"samd-test-ca-{os.urandom(3).hex()}")
    hosts = [*server_dns_names(ctx), "127.0.0.1", "localhost"]
    key, certificate = issue_certificate(
        ca,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        hosts=hosts,
        now=now,
        validity=datetime.timedelta(days=1),
    )
    server = directory / "server"
    server.mkdir(parents=True, exist_ok=True)
    (server / "tls.crt").write_bytes(cert_pem(certificate))
    (server / "tls.key").write_bytes(key_pem(key))
    (server / "ca.crt").write_bytes(ca.certificate_pem)
    client_dirs = {}
    for name in clients:
        secret = issue_client_certificate(ca, ctx, name, now)
        client_dirs[name] = write_secret(directory / f"client-{name}", secret["data"])
    for name in foreign:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "samd:other-namespace:other-model"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        key, certificate = issue_certificate(
            ca, subject=subject, usage=ExtendedKeyUsageOID.CLIENT_AUTH, hosts=[], now=now,
            validity=datetime.timedelta(days=1),
        )  # fmt: skip
        folder = directory / f"foreign-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tls.crt").write_bytes(cert_pem(certificate))
        (folder / "tls.key").write_bytes(key_pem(key))
        client_dirs[f"foreign:{name}"] = folder
    return TlsFiles(server, client_dirs, client_organization(ctx), hosts[0])


# --- an mTLS V2 client -------------------------------------------------------------------------


def client_context(
    ca: Path, cert: Path | None = None, key: Path | None = None, *, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    if maximum is not None:
        context.maximum_version = maximum
    return context


class _Connection(http.client.HTTPSConnection):
    def __init__(self, port: int, context: ssl.SSLContext, server_name: str, timeout: float) -> None:
        super().__init__("127.0.0.1", port, context=context, timeout=timeout)
        self._server_name = server_name
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class V2Client:
    """A keep-alive HTTPS connection to a V2 server."""

    port: int
    context: ssl.SSLContext
    server_name: str = "localhost"
    timeout: float = 10.0
    _connection: _Connection | None = field(default=None, repr=False)

    def request(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Answer:
        if self._connection is None:
            self._connection = _Connection(self.port, self.context, self.server_name, self.timeout)
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        self._connection.request(method, path, body=payload, headers=sent)
        response = self._connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def infer(self, model: str, rows: np.ndarray[Any, Any], name: str = "features") -> Answer:
        body = {
            "inputs": [
                {"name": name, "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}
            ]
        }
        return self.request("POST", f"/v2/models/{model}/infer", body)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# --- a serving process -------------------------------------------------------------------------


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    lines: list[str]
    port: int = 0
    metrics_port: int | None = None
    pump: threading.Thread | None = None

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in list(self.lines):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def wait_for_records(
        self, matches: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The log records that match, once there is one: the server's output is read by a thread, so
        a line written just before an answer may not have been read when the answer arrives."""
        deadline = time.monotonic() + timeout
        while True:
            found = [record for record in self.log_records() if matches(record)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Close the log pipe once the process is gone (the pump thread then ends)."""
        if self.pump is not None:
            self.pump.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def metrics(self) -> str:
        if self.metrics_port is None:
            raise RuntimeError("the server was started without --metrics-port")
        connection = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()


def _pump(stream: Any, lines: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        lines.append(raw.decode(errors="replace").rstrip("\n"))


def start_server(
    argv: Sequence[str | Path], env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> ServerProcess:
    """Run a `samd serve`/`samd proxy` command; return once it listens (or raise with its log)."""
    process = subprocess.Popen(
        [str(word) for word in argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    pump = threading.Thread(target=_pump, args=(process.stderr, lines), daemon=True)
    pump.start()
    server = ServerProcess(process, lines, pump=pump)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in server.log_records():
            if record.get("event") == "listening":
                server.port = int(record["port"])
                server.metrics_port = record.get("metrics_port")
                return server
        if process.poll() is not None:
            server.close()
            raise RuntimeError(f"the server exited ({process.returncode}):\n" + "\n".join(lines[-30:]))
        time.sleep(0.05)
    process.kill()
    process.wait()
    server.close()
    raise RuntimeError("the server did not listen in time:\n" + "\n".join(lines[-30:]))


@contextmanager
def running(argv: Sequence[str | Path], env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    server = start_server(argv, env)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()
        else:
            server.close()


def serve_argv(
    model_dir: Path, tls: TlsFiles, signed: SignedModel, *, clients: Sequence[str], extra: Sequence[str] = ()
) -> list[str | Path]:
    """`samd serve` as the operator runs it, with ports chosen by the system."""
    argv: list[str | Path] = [
        SAMD, "serve", "--model-dir", model_dir, "--model-name", "fraud-detection", "--model-version", "1.4.0",
        "--expect-digest", signed.manifest_digest(), "--trust-config", signed.trust_config,
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
        "--tls-cert", tls.directory / "tls.crt", "--tls-key", tls.directory / "tls.key", "--client-ca", tls.ca,
        "--client-organization", tls.organization, "--log-format", "json",
    ]  # fmt: skip
    for client in clients:
        argv += ["--allowed-client", client]
    return [*argv, *extra]


# --- MLServer: a third-party V2 server -----------------------------------------------------------


def write_mlserver_sklearn_model(model_dir: Path, name: str = "fraud-detection") -> Path:
    """The fraud classifier as MLServer's scikit-learn runtime serves it: a joblib file and its
    model-settings.json, which declares the inputs the proxy checks requests against."""
    import joblib  # noqa: PLC0415 - comes with scikit-learn
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    features, labels = fraud_data(2000)
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(features, labels), model_dir / "model.joblib")
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1.4.0"},
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
    }
    (model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return model_dir


def mlserver_env(port: int) -> dict[str, str]:
    """MLServer on loopback only, as the operator's `model_server_env` convention sets it, in one process."""
    return {
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_GRPC_PORT": str(free_port()),
        "MLSERVER_METRICS_PORT": str(free_port()),
        "MLSERVER_PARALLEL_WORKERS": "0",
        "MLSERVER_METRICS_ENDPOINT": "",
        "MLSERVER_LOGGING_LEVEL": "WARNING",
    }


@contextmanager
def mlserver(models: Path, port: int, timeout: float = 90.0) -> Iterator[subprocess.Popen[bytes]]:
    """`mlserver start MODELS` on 127.0.0.1:PORT, until it answers its health check."""
    log = (models.parent / f"mlserver-{port}.log").open("wb")
    process = subprocess.Popen(
        [Path(sys.executable).parent / "mlserver", "start", str(models)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **mlserver_env(port)},
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlserver exited ({process.returncode}); see {log.name}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/v2/health/ready")
                if connection.getresponse().status == 200:
                    connection.close()
                    break
                connection.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlserver did not get ready in {timeout:.0f} s; see {log.name}")
            time.sleep(0.25)
        yield process
    finally:
        stop(process, timeout=20)
        log.close()
