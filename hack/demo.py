"""`make demo`: the whole flow of one model on a real local control plane.

1. start the local control plane, install the CRDs;
2. run the webhook (registered with the API server over TLS) and the operator, in the background;
3. build the example fraud-detection model (a real ONNX graph), `samd keygen`, `samd sign`,
   `samd encrypt` it;
4. apply the namespace, the trust policy, the key Secret and the SecureModel; wait until it is Ready;
5. show a tampered signature: the SecureModel is not verified, and a pod claiming it is refused by
   the API server with the webhook's message; so is a pod that mounts the model's key directly;
6. serve the model and ask for a prediction as the `payments-api` client over mTLS:
   - on a real node (hack/local-node: when run as root on a kernel with overlayfs, a memory cgroup
     and bridge netfilter): the model is stored in an S3-compatible server (moto) on the node's
     address, the operator's pods really fetch, decrypt, verify and serve it, and client pods call it
     through its Service: `payments-api` in the `payments` namespace gets a prediction, a pod without
     a certificate is refused by the server, a pod in another namespace is cut off by the
     NetworkPolicy;
   - otherwise on KWOK's fake node (no container runs there; the demo says why): the loader and the
     server commands of the operator's Deployment run as local processes, with the Secrets and
     ConfigMap it mounts laid out as files; a client without a certificate and one that is not in
     spec.serving.clients are refused.
7. show the metrics endpoints (drift of shifted traffic, when the server runs here; the operator's),
   then start a real Prometheus with SAMD's alert rules (`for:` shortened) and a real Alertmanager,
   and print the alerts that fire: at least `SamdModelNotReady` for the tampered model.

`SAMD_DEMO_NODE=fake` keeps the demo on the fake node; `SAMD_DEMO_NODE=real` fails instead of falling
back. `hack/demo down` (or `make demo-down`) stops everything. State lives in `.local/demo`.
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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hack import local_node
from hack.alerting import (
    ScrapeJob,
    alertmanager_alerts,
    alertmanager_config,
    firing_alerts,
    prometheus_config,
    write_shortened_rules,
)
from hack.pod_client import Call, client_pod, copied_secret, outcome

from samd.operator.config import OperatorConfig
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
S3_PORT = int(os.environ.get("SAMD_DEMO_S3_PORT", "16945"))
BUCKET = "models"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo"}  # moto takes any
PREFIX = "fraud-detection/1.4.0"
CLIENT_CERTIFICATE_SECRET = "fraud-detection-client-payments-api"  # noqa: S105 - a Secret's name
FEATURES = [[1.2, 0.4, -0.3, 1.8, 0.2, -0.5, 0.7, 1.1], [0.1, -0.2, 0.3, -0.4, 0.0, 0.6, -0.1, 0.2]]
OPERATOR_METRICS_PORT = int(os.environ.get("SAMD_DEMO_OPERATOR_METRICS_PORT", "16946"))
PROMETHEUS_PORT = int(os.environ.get("SAMD_DEMO_PROMETHEUS_PORT", "16947"))
ALERTMANAGER_PORT = int(os.environ.get("SAMD_DEMO_ALERTMANAGER_PORT", "16948"))
ALERT_TIMEOUT = 40.0  # seconds: scrapes and evaluations every second, `for:` shortened to 2 s
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
    choice = node_choice()  # before anything starts: a forced real node that cannot run fails at once
    DEMO.mkdir(parents=True, exist_ok=True)
    stop_daemons()
    step("Start a real local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK node)")
    print(run(REPO / "hack" / "local-cluster", "up").strip())
    step("Where the model's pods run")
    node_ip = join_node(choice)
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

    if node_ip is None:
        step("Run the operator (development switch: it may read the demo's local files, and only those)")
        operator_env = {"SAMD_ALLOW_LOCAL_FILES": "true", "SAMD_LOCAL_FILE_ROOTS": str(DEMO)}
    else:
        step(
            "Run the operator (its own storage credentials; model pods may reach the S3 server: SAMD_STORAGE_EGRESS)"
        )
        operator_env = {
            "SAMD_STORAGE_EGRESS": f"{node_ip}/32:{S3_PORT}",
            **S3_CREDENTIALS,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    start_daemon(
        "operator", [str(BIN / "python"), "-m", "samd.operator", "--log-format", "json", "--liveness", ""],
        env={**operator_env, "SAMD_METRICS_PORT": str(OPERATOR_METRICS_PORT)},
    )  # fmt: skip

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
    tampered = DEMO / "fraud-detection-tampered.sig"
    bundle = json.loads((DEMO / "fraud-detection.sig").read_text())
    signature = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    signature[8] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()
    tampered.write_text(json.dumps(bundle))
    storage = Storage.local() if node_ip is None else Storage.s3(node_ip)

    step("Platform team: namespace, trust policy, key Secret and the SecureModel")
    kubectl("apply", "--server-side", "-f", str(EXAMPLE / "namespace.yaml"))
    policy = yaml.safe_load((EXAMPLE / "trustpolicy.yaml").read_text())
    policy["spec"]["signers"][0]["publicKey"] = (DEMO / "signer.pub.pem").read_text()
    policy["spec"].update(storage.policy)
    kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(policy))
    secret = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "fraud-detection-key", "namespace": NAMESPACE},
        "data": {"keyset.json": base64.b64encode(keyset.read_bytes()).decode()},
    }  # fmt: skip
    kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(secret))
    if storage.credentials is not None:
        kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(storage.credentials))
    kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps(secure_model("fraud-detection", storage.artifact, storage.signature)),
    )
    wait_for(
        "the SecureModel to be Ready", lambda: condition("fraud-detection", "Ready").get("status") == "True"
    )
    print(kubectl("get", "securemodels", "-n", NAMESPACE).strip())
    print(kubectl("get", "modeltrustpolicies").strip())
    print(kubectl("get", "deployment,service,networkpolicy,role,rolebinding,pod", "-n", NAMESPACE).strip())

    step("A tampered signature: the operator refuses to verify it, nothing is served")
    kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps(secure_model("fraud-detection-tampered", storage.artifact, storage.tampered)),
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

    if node_ip is None:
        serve_locally()
        show_metrics(served_here=True)
    else:
        serve_on_node()
        show_metrics(served_here=False)
    show_alert(served_here=node_ip is None)

    step("Done")
    print(f"export KUBECONFIG={KUBECONFIG}   # then: kubectl get sm -n {NAMESPACE}")
    print(f"logs: {DEMO}/operator.log, {DEMO}/webhook.log")
    print(
        f"alerts: http://127.0.0.1:{PROMETHEUS_PORT}/alerts (Prometheus), http://127.0.0.1:{ALERTMANAGER_PORT} (Alertmanager)"
    )
    print("stop everything: make demo-down")


# --- where the pods run -------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeChoice:
    real: bool
    reason: str


def node_choice(wanted: str | None = None, problems: list[str] | None = None) -> NodeChoice:
    """A real node when this machine can run one (root, kernel features), unless SAMD_DEMO_NODE=fake.

    `problems` (default: what hack/local-node finds on this host) are the reasons it cannot.
    """
    wanted = os.environ.get("SAMD_DEMO_NODE", "auto") if wanted is None else wanted
    if wanted not in {"auto", "real", "fake"}:
        raise SystemExit(f"demo: SAMD_DEMO_NODE={wanted!r} is not one of auto, real, fake")
    if wanted == "fake":
        return NodeChoice(real=False, reason="SAMD_DEMO_NODE=fake asks for the fake node")
    problems = local_node.host_problems() if problems is None else problems
    if problems and wanted == "real":
        raise SystemExit(
            f"demo: SAMD_DEMO_NODE=real, but this machine cannot run a real node: {'; '.join(problems)}"
        )
    if problems:
        return NodeChoice(real=False, reason="; ".join(problems))
    return NodeChoice(
        real=True,
        reason="running as root, and the kernel has overlayfs, a memory cgroup and bridge netfilter",
    )


def join_node(choice: NodeChoice) -> str | None:
    """Join the real node (building what it needs, cached) and return its address; None: the fake node."""
    if not choice.real:
        real = kubectl("get", "nodes", "-l", local_node.NODE_LABEL, "-o", "name", show=False).strip()
        if real:
            raise SystemExit(
                f"demo: a real node is joined ({real}) and the fake node is tainted, so the model's pods "
                "would run there, but this demo stays on the fake node "
                f"({choice.reason}). Run `hack/local-node down` first."
            )
        print(
            "on KWOK's fake node kwok-node-0: pods are marked Running, no container starts; the last step "
            f"runs the operator's loader and server commands as local processes. Not on a real node: "
            f"{choice.reason}. (As root, `make demo` uses a real node; `make real` tests one.)"
        )
        return None
    print(
        f"on a real node (containerd, kubelet, kube-proxy, kube-router), because the demo is {choice.reason}."
    )
    print("Its parts are built once and cached: the Debian packages, kubelet and kube-proxy, SAMD's image.")
    subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "node-deps", "node", "image"], check=True
    )  # shown as it goes: a first build takes minutes
    print(run(REPO / "hack" / "local-node", "up").strip())
    return local_node.NodeSettings.from_env().node_ip


@dataclass(frozen=True)
class Storage:
    """Where the SecureModels point: the demo's local files (fake node), or S3 on the node's address."""

    artifact: dict[str, Any]
    signature: dict[str, Any]
    tampered: dict[str, Any]
    policy: dict[str, Any]  # what the trust policy must allow for it
    credentials: dict[str, Any] | None  # the storage credentials Secret

    @classmethod
    def local(cls) -> Storage:
        return cls(
            artifact={"uri": f"file://{DEMO / 'fraud-detection.samd'}"},
            signature={"uri": f"file://{DEMO / 'fraud-detection.sig'}"},
            tampered={"uri": f"file://{DEMO / 'fraud-detection-tampered.sig'}"},
            policy={"allowLocalFiles": True},  # the demo's model is a local file (development only)
            credentials=None,
        )

    @classmethod
    def s3(cls, node_ip: str) -> Storage:
        """Start an S3-compatible server (moto) on the node's address and upload the model there."""
        import boto3  # noqa: PLC0415 - only the real node's demo stores in S3

        step(
            f"Store the encrypted model and its signature in S3 (a local moto server on {node_ip}:{S3_PORT})"
        )
        endpoint = f"http://{node_ip}:{S3_PORT}"
        start_daemon(
            "s3",
            [str(BIN / "python"), "-m", "moto.server", "--host", node_ip, "--port", str(S3_PORT)],
            env={"MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def answers() -> bool:
            try:
                with direct.open(f"{endpoint}/moto-api/", timeout=1):
                    return True
            except OSError:
                return False

        wait_for("the S3 server", answers, 30)
        s3 = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        # SAMD checks the storage posture: encrypted at rest, public access blocked.
        s3.put_bucket_encryption(
            Bucket=BUCKET,
            ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
        )  # fmt: skip
        s3.put_public_access_block(
            Bucket=BUCKET,
            PublicAccessBlockConfiguration={"BlockPublicAcls": True, "IgnorePublicAcls": True,
                                            "BlockPublicPolicy": True, "RestrictPublicBuckets": True},
        )  # fmt: skip
        for key, path in (
            ("model.samd", DEMO / "fraud-detection.samd"),
            ("model.sig", DEMO / "fraud-detection.sig"),
            ("model-tampered.sig", DEMO / "fraud-detection-tampered.sig"),
        ):
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=path.read_bytes())
            print(f"uploaded s3://{BUCKET}/{PREFIX}/{key} ({path.stat().st_size} bytes)")
        return cls(
            artifact={
                "uri": f"s3://{BUCKET}/{PREFIX}/model.samd",
                "endpoint": endpoint,
                "region": "us-east-1",
                "credentialsSecret": "model-storage",
            },
            signature={"uri": f"s3://{BUCKET}/{PREFIX}/model.sig"},
            tampered={"uri": f"s3://{BUCKET}/{PREFIX}/model-tampered.sig"},
            # Plain http on a private address: allowed only because the cluster admin lists it.
            policy={"allowedEndpoints": [{"cidr": f"{node_ip}/32", "allowHttp": True}]},
            credentials={
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "model-storage", "namespace": NAMESPACE},
                "stringData": S3_CREDENTIALS,
            },
        )  # fmt: skip


# --- serving on the real node -------------------------------------------------------------------


def serve_on_node() -> None:
    step(
        "Serve: the operator's pods on the real node (the loader fetched, decrypted and verified; samd serve runs)"
    )
    print(
        kubectl("get", "pods", "-n", NAMESPACE, "-l", "samd.dev/model=fraud-detection", "-o", "wide").strip()
    )
    pods = kubectl(
        "get", "pods", "-n", NAMESPACE, "-l", "samd.dev/model=fraud-detection", "-o", "name", show=False
    ).split()
    if pods:
        print(kubectl("logs", "-n", NAMESPACE, pods[0].removeprefix("pod/"), "-c", "samd-fetch").strip())

    step("Give payments-api its client certificate: copy the operator's Secret to its namespace")
    for namespace in ("payments", "elsewhere"):
        kubectl("apply", "--server-side", "-f", "-", show=False,
                stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))  # fmt: skip
        secret = json.loads(
            kubectl("get", "secret", CLIENT_CERTIFICATE_SECRET, "-n", NAMESPACE, "-o", "json", show=False)
        )
        kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            stdin=json.dumps(copied_secret(secret, namespace)),
            show=False,
        )
    print(
        f"Secret {CLIENT_CERTIFICATE_SECRET} (issued by the operator in {NAMESPACE}) copied, its type and data, "
        "to the namespace payments; and to `elsewhere`, to show that a certificate alone does not get through"
    )

    service = json.loads(
        kubectl("get", "service", "fraud-detection", "-n", NAMESPACE, "-o", "json", show=False)
    )
    call = Call(
        address=service["spec"]["clusterIP"],
        port=int(service["spec"]["ports"][0]["port"]),
        server_name=f"fraud-detection.{NAMESPACE}.svc",
        model="fraud-detection",
        rows=FEATURES,
        patience=6.0,
    )
    step(f"Predictions from client pods, over mTLS through the Service ({call.address}:{call.port})")
    print(
        f"(no cluster DNS here: the clients connect to the ClusterIP and check the server certificate "
        f"against {call.server_name}, a name the operator put in it)"
    )
    image = OperatorConfig.from_env().default_image
    clients = [
        ("payments-api in payments", "payments", {"app": "payments-api"}, True),
        ("payments-api in payments, without a certificate", "payments", {"app": "payments-api"}, False),
        ("payments-api in the namespace `elsewhere`", "elsewhere", {"app": "payments-api"}, True),
    ]
    started = []
    for title, namespace, labels, certificate in clients:
        name = f"client-{uuid.uuid4().hex[:6]}"
        body = client_pod(
            name,
            call,
            image=image,
            labels=labels,
            tls_secret=CLIENT_CERTIFICATE_SECRET,
            certificate=certificate,
        )
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(body), show=False)
        started.append((title, namespace, name))

    def finished(namespace: str, name: str) -> bool:
        phase = kubectl(
            "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}", show=False, check=False
        )
        return phase.strip() in {"Succeeded", "Failed"}

    for title, namespace, name in started:
        wait_for(f"the client pod {namespace}/{name}", lambda n=namespace, p=name: finished(n, p), 90)
        print(f"{title}: {describe(outcome(kubectl('logs', name, '-n', namespace, show=False)))}")


def describe(result: dict[str, Any]) -> str:
    """A client pod's outcome, for a person."""
    if result["outcome"] == "unreachable":
        return f"cut off by the NetworkPolicy (no connection: {result['error']})"
    if result["outcome"] == "refused":
        return f"refused by the server at the TLS handshake ({result['error']})"
    if result["status"] != 200:
        return f"HTTP {result['status']}: {json.dumps(result['body'])}"
    outputs = {output["name"]: output["data"] for output in result["body"]["outputs"]}
    return f"HTTP 200\n{json.dumps(result['headers'], indent=2)}\noutputs: {json.dumps(outputs)}"


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
    features = FEATURES
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


def secure_model(name: str, artifact: dict[str, Any], signature: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLE / "securemodel.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"]["artifact"] = artifact
    body["spec"]["signature"] = signature
    return body


def down() -> None:
    if DEMO.exists():
        stop_daemons()
    if os.geteuid() == 0:  # only root can have joined a real node
        print(run(REPO / "hack" / "local-node", "down", show=False).strip())
    print(run(REPO / "hack" / "local-cluster", "down", show=False).strip())


def print_metrics(port: int, prefixes: tuple[str, ...]) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    print(f"http://127.0.0.1:{port}/metrics:")
    print("\n".join("  " + line for line in text.splitlines() if line.startswith(prefixes)))


def show_metrics(*, served_here: bool) -> None:
    """The metrics endpoints: drift of shifted traffic against the signed baseline (when the server runs
    here as a process), and the operator's."""
    import numpy as np  # noqa: PLC0415 - demo-only

    operator_lines = (
        "samd_operator_model_ready",
        "samd_operator_reconciles_total",
        'samd_operator_models{condition="Ready"',
    )
    if not served_here:
        step("Metrics: the operator's endpoint (the model pods' own port 9090 is for Prometheus' pods only)")
        print_metrics(OPERATOR_METRICS_PORT, operator_lines)
        return

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
    print_metrics(SERVE_METRICS_PORT, ("samd_drift_population_stability_index", "samd_drift_window_rows"))
    print_metrics(OPERATOR_METRICS_PORT, operator_lines)
    print("Alert rules: deploy/prometheus/samd-alerts.yaml; SamdModelDrift fires when a PSI stays above "
          "0.25 for 15 minutes (docs/monitoring.md)")  # fmt: skip


WATCHED_ALERT = ("SamdModelNotReady", "fraud-detection-tampered")


def show_alert(*, served_here: bool) -> None:
    """A real Prometheus with SAMD's rules scrapes the demo's endpoints until an alert fires, and hands
    it to a real Alertmanager: the tampered model is not Ready (the operator runs here in both paths,
    so this works in both)."""
    step("Alerts: a real Prometheus loads SAMD's rules (`for:` shortened to 2 s) and scrapes the demo")
    folder = DEMO / "prometheus"
    if folder.exists():
        shutil.rmtree(folder)  # fresh databases: only this run's alerts
    folder.mkdir(parents=True)
    write_shortened_rules(folder / "samd-alerts.yaml")
    jobs = [
        ScrapeJob("samd-operator", f"127.0.0.1:{OPERATOR_METRICS_PORT}"),
        ScrapeJob("samd-webhook", f"127.0.0.1:{WEBHOOK_PORT}", DEMO / "webhook-tls" / "ca.crt", "localhost"),
    ]
    if served_here:
        jobs.append(ScrapeJob("samd-model", f"127.0.0.1:{SERVE_METRICS_PORT}"))
    config = prometheus_config(
        jobs, rule_file="samd-alerts.yaml", alertmanager=f"127.0.0.1:{ALERTMANAGER_PORT}"
    )
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    # No receiver is configured: Alertmanager only holds the alerts (docs/monitoring.md: route them).
    (folder / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config()))
    start_daemon(
        "alertmanager",
        [installed("prometheus-alertmanager"), "--config.file", str(folder / "alertmanager.yml"),
         "--storage.path", str(folder / "alertmanager-data"),
         "--web.listen-address", f"127.0.0.1:{ALERTMANAGER_PORT}", "--cluster.listen-address", ""],
    )  # fmt: skip
    start_daemon(
        "prometheus",
        [installed("prometheus"), "--config.file", str(folder / "prometheus.yml"),
         "--storage.tsdb.path", str(folder / "data"), "--web.listen-address", f"127.0.0.1:{PROMETHEUS_PORT}"],
    )  # fmt: skip
    print(f"scraping every second: {', '.join(f'{job.name} ({job.target})' for job in jobs)}")
    prometheus, alertmanager = f"http://127.0.0.1:{PROMETHEUS_PORT}", f"http://127.0.0.1:{ALERTMANAGER_PORT}"
    firing: list[dict[str, Any]] = []

    def watched(alerts: list[dict[str, Any]]) -> bool:
        return any((a["labels"].get("alertname"), a["labels"].get("model")) == WATCHED_ALERT for a in alerts)

    def fired() -> bool:
        try:
            firing[:] = firing_alerts(prometheus)
        except OSError:
            return False  # not listening yet
        return watched(firing)

    def delivered() -> bool:
        try:
            return watched(alertmanager_alerts(alertmanager))
        except OSError:
            return False

    started = time.monotonic()
    wait_for(f"Prometheus to fire {WATCHED_ALERT[0]} for {WATCHED_ALERT[1]}", fired, ALERT_TIMEOUT)
    print(f"$ curl {prometheus}/api/v1/alerts   # firing after {time.monotonic() - started:.0f} s")
    for alert in sorted(firing, key=lambda a: (a["labels"]["alertname"], sorted(a["labels"].items()))):
        labels = {k: v for k, v in alert["labels"].items() if k != "alertname"}
        print(f"FIRING {alert['labels']['alertname']} {json.dumps(labels, sort_keys=True)}")
        print(f"  {alert['annotations'].get('summary', '')}")
        print(f"  runbook_url: {alert['annotations'].get('runbook_url', '')}")
    wait_for(f"Alertmanager to receive {WATCHED_ALERT[0]}", delivered, 15)
    print(
        f"Alertmanager ({alertmanager}/#/alerts) received {WATCHED_ALERT[0]} for {WATCHED_ALERT[1]}; "
        "give it a receiver (chat, paging, a SOAR webhook) to be told"
    )


def installed(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise SystemExit(f"demo: no `{program}` on PATH; `make deps` installs it (hack/install-system-deps)")
    return found


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
