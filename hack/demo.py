"""`make demo`: the whole flow of one model on a real local control plane.

1. start the local control plane, install the CRDs;
2. run the webhook (registered with the API server over TLS) and the operator, in the background;
3. build the example fraud-detection model (a real ONNX graph), `samd keygen`, `samd sign`,
   `samd encrypt` it;
4. apply the namespace, the trust policy, the key Secret and the SecureModel; wait until it is Ready;
5. show a tampered signature: the SecureModel is not verified, and a pod claiming it is refused by
   the API server with the webhook's message; so is a pod that mounts the model's key directly;
6. serve the model: run the loader and the server commands of the operator's Deployment as local
   processes (the demo's pods are on a fake KWOK node), with the Secrets and ConfigMap it mounts laid
   out as files, and ask for a prediction as the `payments-api` client over mTLS; a client without a
   certificate and one that is not in spec.serving.clients are refused.

`hack/demo down` (or `make demo-down`) stops everything. State lives in `.local/demo`.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from samd.webhook.configuration import build_webhook_configuration

REPO = Path(__file__).resolve().parent.parent
LOCAL = Path(os.environ.get("SAMD_LOCAL_DIR", REPO / ".local"))
DEMO = LOCAL / "demo"
KUBECONFIG = LOCAL / "kubeconfig"
EXAMPLE = REPO / "examples" / "fraud-detection"
NAMESPACE = "fraud-detection"
WEBHOOK_PORT = int(os.environ.get("SAMD_DEMO_WEBHOOK_PORT", "16900"))
SERVE_PORT = int(os.environ.get("SAMD_DEMO_SERVE_PORT", "16943"))
SERVE_METRICS_PORT = int(os.environ.get("SAMD_DEMO_SERVE_METRICS_PORT", "16944"))
OPERATOR_METRICS_PORT = int(os.environ.get("SAMD_DEMO_OPERATOR_METRICS_PORT", "16945"))
BIN = Path(sys.executable).parent


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m", flush=True)


def run(*argv: str | Path, stdin: str | None = None, check: bool = True, show: bool = True) -> str:
    words = [str(a) for a in argv]
    if show:
        # Show tools by name (`kubectl`, `samd`), not by their folder in the venv or the build cache.
        shown = [Path(w).name if w.startswith(str(BIN)) or "/control-plane/" in w else w for w in words]
        print("$ " + " ".join(shlex.quote(w) for w in shown).replace(str(REPO) + "/", ""), flush=True)
    result = subprocess.run(
        words, input=stdin, capture_output=True, text=True, check=False,
        env={**os.environ, "KUBECONFIG": str(KUBECONFIG)},
    )  # fmt: skip
    if check and result.returncode != 0:
        raise SystemExit(
            f"demo: command failed ({result.returncode}): {' '.join(words)}\n{result.stderr.strip()}"
        )
    return result.stdout + (result.stderr if not check else "")


def tool(name: str) -> Path:
    folder = subprocess.run(
        [str(REPO / "hack" / "build-control-plane")], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(folder) / name


def kubectl(*argv: str, stdin: str | None = None, check: bool = True, show: bool = True) -> str:
    return run(tool("kubectl"), *argv, stdin=stdin, check=check, show=show)


def start_daemon(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    log = (DEMO / f"{name}.log").open("ab")
    proc = subprocess.Popen(  # a daemon: `hack/demo down` stops it
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "KUBECONFIG": str(KUBECONFIG), **(env or {})}, cwd=DEMO,
    )  # fmt: skip
    (DEMO / f"{name}.pid").write_text(f"{proc.pid}\n")
    print(f"started {name} (pid {proc.pid}), log: {DEMO / f'{name}.log'}")


def stop_daemons() -> None:
    for pid_file in sorted(DEMO.glob("*.pid")):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            print(f"stopped {pid_file.stem}")
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink()


def wait_for(what: str, check: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}; see the logs in {DEMO}")
        time.sleep(1)


def condition(name: str, kind: str) -> dict[str, Any]:
    out = kubectl("get", "securemodel", name, "-n", NAMESPACE, "-o", "json", check=False, show=False)
    try:
        conditions = json.loads(out).get("status", {}).get("conditions", [])
    except json.JSONDecodeError:
        return {}
    return next((dict(c) for c in conditions if c["type"] == kind), {})


def build_model(model_dir: Path) -> None:
    """A real ONNX logistic-regression graph scoring 8 card-transaction features."""
    import numpy as np  # noqa: PLC0415 - demo-only dependencies
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    weights = np.array([[0.8], [1.6], [-0.4], [2.1], [0.3], [-1.2], [0.9], [1.1]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "weights"], ["logit0"]),
            helper.make_node("Add", ["logit0", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["fraud_probability"]),
        ],
        "fraud-detection",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("fraud_probability", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([-3.0], np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="samd-demo")
    onnx.checker.check_model(model)
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    # The drift baseline `samd baseline` wrote from the example's validation sample (a unit test
    # regenerates it): it is signed with the model, and the server measures drift against it.
    shutil.copyfile(EXAMPLE / "samd-baseline.json", model_dir / "samd-baseline.json")


def webhook_configuration() -> str:
    ca = (DEMO / "webhook-tls" / "ca.crt").read_bytes()
    configuration = build_webhook_configuration(
        name="samd-demo", url=f"https://127.0.0.1:{WEBHOOK_PORT}/validate", ca_bundle=ca
    )
    return json.dumps(configuration)


def up() -> None:
    DEMO.mkdir(parents=True, exist_ok=True)
    stop_daemons()
    step("Start a real local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK node)")
    print(run(REPO / "hack" / "local-cluster", "up").strip())
    step("Where the model's pods run")
    print(node_choice())
    step("Install the SecureModel and ModelTrustPolicy CRDs")
    print(kubectl("apply", "--server-side", "-f", str(REPO / "crds")).strip())
    print(kubectl("apply", "--server-side", "-f", "-", show=False,
                  stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "samd-system"}})).strip())  # fmt: skip

    step("Run the admission webhook over TLS and register it with the API server")
    run(BIN / "python", "-m", "samd.webhook", "--write-dev-certificates", DEMO / "webhook-tls")
    start_daemon("webhook", [str(BIN / "python"), "-m", "samd.webhook", "--host", "127.0.0.1",
                             "--port", str(WEBHOOK_PORT), "--cert", str(DEMO / "webhook-tls" / "tls.crt"),
                             "--key", str(DEMO / "webhook-tls" / "tls.key"), "--log-format", "json"])  # fmt: skip
    print(kubectl("apply", "--server-side", "-f", "-", stdin=webhook_configuration(), show=False).strip())

    step("Run the operator (development switch: it may read the demo's local files, and only those)")
    start_daemon(
        "operator",
        [str(BIN / "python"), "-m", "samd.operator", "--log-format", "json", "--liveness", ""],
        env={
            "SAMD_ALLOW_LOCAL_FILES": "true",
            "SAMD_LOCAL_FILE_ROOTS": str(DEMO),
            "SAMD_METRICS_PORT": str(OPERATOR_METRICS_PORT),
        },
    )

    step("ML CI: build the fraud-detection model (ONNX), make keys, sign and encrypt it")
    model_dir = DEMO / "model" / "fraud-detection"
    build_model(model_dir)
    samd = BIN / "samd"
    keyset, signer = DEMO / "keyset.json", DEMO / "signer.pem"
    run(samd, "keygen", f"local:{keyset}", "--signing-key", signer, "--force")
    # Signed as the SecureModel's name and version: samd-model.json binds them to the content.
    run(samd, "sign", model_dir, "--private-key", signer, "--signature", DEMO / "fraud-detection.sig",
        "--model-name", "fraud-detection", "--model-version", "1.4.0")  # fmt: skip
    run(
        samd,
        "encrypt",
        model_dir,
        "--key",
        f"local:{keyset}",
        "--output",
        DEMO / "fraud-detection.samd",
        "--force",
    )
    print(run(samd, "inspect", DEMO / "fraud-detection.samd").strip())

    step("Platform team: namespace, trust policy, key Secret and the SecureModel")
    kubectl("apply", "--server-side", "-f", str(EXAMPLE / "namespace.yaml"))
    policy = yaml.safe_load((EXAMPLE / "trustpolicy.yaml").read_text())
    policy["spec"]["signers"][0]["publicKey"] = (DEMO / "signer.pub.pem").read_text()
    policy["spec"]["allowLocalFiles"] = True  # the demo's model is a local file (development only)
    kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(policy))
    secret = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "fraud-detection-key", "namespace": NAMESPACE},
        "data": {"keyset.json": base64.b64encode(keyset.read_bytes()).decode()},
    }  # fmt: skip
    kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(secret))
    kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps(secure_model("fraud-detection", DEMO / "fraud-detection.sig")),
    )
    wait_for(
        "the SecureModel to be Ready", lambda: condition("fraud-detection", "Ready").get("status") == "True"
    )
    print(kubectl("get", "securemodels", "-n", NAMESPACE).strip())
    print(kubectl("get", "modeltrustpolicies").strip())
    print(kubectl("get", "deployment,service,networkpolicy,role,rolebinding,pod", "-n", NAMESPACE).strip())

    step("A tampered signature: the operator refuses to verify it, nothing is served")
    tampered = DEMO / "fraud-detection-tampered.sig"
    bundle = json.loads((DEMO / "fraud-detection.sig").read_text())
    signature = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    signature[8] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()
    tampered.write_text(json.dumps(bundle))
    kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps(secure_model("fraud-detection-tampered", tampered)),
    )
    wait_for(
        "the tampered model's Verified condition",
        lambda: condition("fraud-detection-tampered", "Verified").get("status") == "False",
    )
    print(kubectl("get", "securemodels", "-n", NAMESPACE).strip())
    print("Verified:", condition("fraud-detection-tampered", "Verified").get("message"))

    step("Admission: a pod that claims the tampered model is refused by the API server")
    template = json.loads(
        kubectl("get", "deployment", "fraud-detection", "-n", NAMESPACE, "-o", "json", show=False)
    )["spec"]["template"]
    template["metadata"]["annotations"]["samd.dev/model"] = "fraud-detection-tampered"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": "tampered-model", "namespace": NAMESPACE}, "spec": template["spec"]}  # fmt: skip
    print(kubectl("apply", "-f", "-", stdin=json.dumps(pod), check=False).strip())

    step("Admission: a pod that mounts the model's key without going through its SecureModel is refused")
    thief = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "key-thief", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "sh", "image": "busybox", "command": ["cat", "/keys/keyset.json"],
                                 "volumeMounts": [{"name": "keys", "mountPath": "/keys"}]}],
                 "volumes": [{"name": "keys", "secret": {"secretName": "fraud-detection-key"}}]},
    }  # fmt: skip
    print(kubectl("apply", "-f", "-", stdin=json.dumps(thief), check=False).strip())

    serve_locally()
    show_metrics()

    step("Done")
    print(f"export KUBECONFIG={KUBECONFIG}   # then: kubectl get sm -n {NAMESPACE}")
    print(f"logs: {DEMO}/operator.log, {DEMO}/webhook.log")
    print("stop everything: make demo-down")


def _secret_files(name: str, namespace: str, folder: Path, items: dict[str, str] | None = None) -> Path:
    """A Secret's data as the kubelet mounts it: one file per key (or per `items` key -> path)."""
    data = json.loads(kubectl("get", "secret", name, "-n", namespace, "-o", "json", show=False))["data"]
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in data.items():
        if items is None or key in items:
            path = folder / (items[key] if items else key)
            path.write_bytes(base64.b64decode(value))
            path.chmod(0o600)
    return folder


def _mapped(command: list[str], mounts: dict[str, Path]) -> list[str]:
    """The container's command with each mount path replaced by its local folder."""
    words = []
    for word in command:
        mapped = word
        for path, folder in sorted(mounts.items(), key=lambda item: -len(item[0])):
            at = word.find(path)
            if at >= 0 and (at == 0 or word[:at].endswith(":")):
                mapped = word[:at] + str(folder) + word[at + len(path) :]
                break
        words.append(mapped)
    return [str(BIN / "samd"), *words[1:]]


def _flag(argv: list[str], flag: str, value: str) -> None:
    argv[argv.index(flag) + 1] = value


def _ask(name: str, context: ssl.SSLContext, body: bytes | None = None) -> str:
    """One V2 request over mTLS to the local server; what came back, in a line or two."""
    connection = http.client.HTTPSConnection("127.0.0.1", SERVE_PORT, context=context, timeout=10)
    try:
        if body is None:
            connection.request("GET", "/v2/health/ready")
        else:
            path = "/v2/models/fraud-detection/infer"
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        text = answer.read().decode()
        headers = {k: v for k, v in answer.getheaders() if k.lower().startswith("samd-")}
        shown = json.dumps(json.loads(text), indent=2) if answer.status == 200 else text
        shown_headers = json.dumps(headers, indent=2) + "\n" if answer.status == 200 else ""
        return f"{name}: HTTP {answer.status}\n{shown_headers}{shown}"
    except (ssl.SSLError, ConnectionError) as error:
        return f"{name}: refused at the TLS handshake ({type(error).__name__}: {error})"
    finally:
        connection.close()


def serve_locally() -> None:
    from cryptography import x509  # noqa: PLC0415 - demo-only
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    from samd.operator.builders.certificates import (  # noqa: PLC0415
        CertificateAuthority,
        cert_pem,
        issue_certificate,
        key_pem,
    )

    step("Serve: the operator's loader and server commands, run here as the pod would run them")
    pod = json.loads(
        kubectl("get", "deployment", "fraud-detection", "-n", NAMESPACE, "-o", "json", show=False)
    )["spec"]["template"]["spec"]
    local = DEMO / "pod"
    if local.exists():
        shutil.rmtree(local)
    model = local / "models"
    model.mkdir(parents=True)
    trust = local / "trust"
    trust.mkdir()
    configmap = json.loads(
        kubectl("get", "configmap", "fraud-detection-trust", "-n", NAMESPACE, "-o", "json", show=False)
    )
    for key, value in configmap["data"].items():
        (trust / key).write_text(value)
    mounts = {
        "/models": model,
        "/var/run/samd/trust": trust,
        "/var/run/samd/keys": _secret_files("fraud-detection-key", NAMESPACE, local / "keys"),
        "/var/run/samd/tls": _secret_files("fraud-detection-tls", NAMESPACE, local / "tls"),
    }
    loader = _mapped(pod["initContainers"][0]["command"], mounts)
    print(run(*loader).strip())
    server = _mapped(pod["containers"][0]["command"], mounts)
    # Here the server shares the host's network: loopback, and ports of the demo's own.
    _flag(server, "--port", str(SERVE_PORT))
    _flag(server, "--metrics-port", str(SERVE_METRICS_PORT))
    server[2:2] = ["--host", "127.0.0.1"]
    start_daemon("server", server)
    client = _secret_files("fraud-detection-client-payments-api", NAMESPACE, local / "client-payments-api")

    def context(cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        tls = ssl.create_default_context(cafile=str(client / "ca.crt"))
        tls.check_hostname = False  # the certificate names the Service; the demo calls 127.0.0.1
        if cert is not None and key is not None:
            tls.load_cert_chain(cert, key)
        return tls

    wait_for(
        "the model server",
        lambda: "HTTP" in _ask("probe", context(client / "tls.crt", client / "tls.key")),
        60,
    )

    step(
        "A prediction for payments-api over mTLS (its certificate: the Secret fraud-detection-client-payments-api)"
    )
    features = [[1.2, 0.4, -0.3, 1.8, 0.2, -0.5, 0.7, 1.1], [0.1, -0.2, 0.3, -0.4, 0.0, 0.6, -0.1, 0.2]]
    body = json.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 8], "data": features}]}
    )
    print(_ask("payments-api", context(client / "tls.crt", client / "tls.key"), body.encode()))

    step("Refused: a client without a certificate, and a client that is not in spec.serving.clients")
    print(_ask("no certificate", context(), body.encode()))
    operator_ca = json.loads(
        kubectl("get", "secret", "samd-operator-ca", "-n", "samd-system", "-o", "json", show=False)
    )
    ca = CertificateAuthority.from_secret_data(operator_ca["data"])
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"samd:{NAMESPACE}:fraud-detection"),
            x509.NameAttribute(NameOID.COMMON_NAME, "batch-scoring"),
        ]
    )
    key, certificate = issue_certificate(
        ca, subject=subject, usage=ExtendedKeyUsageOID.CLIENT_AUTH, hosts=[], now=now,
        validity=datetime.timedelta(hours=1),
    )  # fmt: skip
    other = local / "client-batch-scoring"
    other.mkdir()
    (other / "tls.crt").write_bytes(cert_pem(certificate))
    (other / "tls.key").write_bytes(key_pem(key))
    print(
        _ask(
            "batch-scoring (issued by the operator's CA, not a listed client)",
            context(other / "tls.crt", other / "tls.key"),
            body.encode(),
        )
    )
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{SERVE_METRICS_PORT}/metrics", timeout=10).read().decode()
    )
    print(
        "\n".join(
            line
            for line in metrics.splitlines()
            if line.startswith(
                ("samd_serving_requests_total", "samd_serving_refused", "samd_serving_forbidden")
            )
        )
    )


def node_choice() -> str:
    """The demo's pods run on KWOK's fake node; say why, and refuse a cluster with a real node joined."""
    real = kubectl("get", "nodes", "-l", "samd.dev/node=real", "-o", "name", show=False).strip()
    if real:
        raise SystemExit(
            f"demo: a real node is joined ({real}) and the fake node is tainted, so the model's pods would "
            "run there; the demo does not drive a real node yet (its prediction runs the server as a local "
            "process). Run `hack/local-node down` first."
        )
    reasons = ["the demo does not drive a real node yet (it serves the model as a local process)"]
    if os.geteuid() != 0:
        reasons.append("a real node needs root")
    return (
        "on KWOK's fake node kwok-node-0: pods are marked Running, no container starts. Not on a real "
        f"node because {'; and '.join(reasons)}. `make real` runs this example's loader, security "
        "profile and NetworkPolicy in real containers (hack/local-node)."
    )


def secure_model(name: str, signature: Path) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLE / "securemodel.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"]["artifact"] = {"uri": f"file://{DEMO / 'fraud-detection.samd'}"}
    body["spec"]["signature"] = {"uri": f"file://{signature}"}
    return body


def down() -> None:
    if DEMO.exists():
        stop_daemons()
    print(run(REPO / "hack" / "local-cluster", "down", show=False).strip())


def show_metrics() -> None:
    """The metrics endpoints: drift of shifted traffic against the signed baseline, and the operator."""
    import numpy as np  # noqa: PLC0415 - demo-only

    step("Metrics: drift against the model's signed baseline, and the operator's endpoint")
    client = DEMO / "pod" / "client-payments-api"
    context = ssl.create_default_context(cafile=str(client / "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(client / "tls.crt", client / "tls.key")
    # The validation sample with velocity_1h moved up by one standard deviation: 400 predictions.
    rows = np.loadtxt(EXAMPLE / "validation.csv", delimiter=",", skiprows=1, dtype=np.float32)[:400]
    rows[:, 3] += 1.0
    for start in range(0, len(rows), 50):
        batch = rows[start : start + 50]
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(batch.shape),
                            "data": batch.ravel().tolist()}]}  # fmt: skip
        _ask("drifted traffic", context, json.dumps(body).encode())
    print("400 predictions whose velocity_1h moved by one standard deviation (PSI > 0.25 is significant):")
    for port, prefixes in (
        (SERVE_METRICS_PORT, ("samd_drift_population_stability_index", "samd_drift_window_rows")),
        (OPERATOR_METRICS_PORT, ("samd_operator_model_ready", "samd_operator_reconciles_total", "samd_operator_models{condition=\"Ready\"")),
    ):  # fmt: skip
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        print(f"http://127.0.0.1:{port}/metrics:")
        print("\n".join("  " + line for line in text.splitlines() if line.startswith(prefixes)))
    print("Alert rules: deploy/prometheus/samd-alerts.yaml; SamdModelDrift fires when a PSI stays above "
          "0.25 for 15 minutes (docs/monitoring.md)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="hack/demo", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("command", nargs="?", choices=["up", "down"], default="up")
    args = parser.parse_args()
    up() if args.command == "up" else down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
