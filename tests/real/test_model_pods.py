"""The fraud-detection example on a real node: the loader, the server, the restricted profile and the NetworkPolicy.

Everything here runs in real containers from SAMD's image, in the pod the operator builds: `samd
fetch` downloads the example's encrypted model (a real ONNX fraud model) from an S3-compatible server
over the pod network, decrypts and verifies it into a memory volume, and `samd serve` serves it over
mTLS. Client pods call it through its Service (the ClusterIP: the local control plane has no cluster
DNS) with the client certificate the operator issued, copied to their namespace as users do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import numpy as np
import pytest
from hack.pod_client import Call, client_pod, copied_secret, outcome
from kubernetes import client

from samd.fetch import KEPT_SIGNATURE
from samd.operator.builders.names import client_secret_name, serving_name
from samd.operator.builders.serving import FETCH_CONTAINER, MODEL_DIR, SERVER_CONTAINER, WORKLOAD_USER
from samd.operator.config import OperatorConfig
from tests.support.cluster import scratch_namespace
from tests.support.models import ModelArtifacts, make_model
from tests.support.moto_server import MotoServer
from tests.support.node import (
    RealNode,
    container_state,
    exec_python,
    kubectl,
    last_terminated,
    wait_pod,
)
from tests.support.operator import OperatorProcess
from tests.support.scenario import Scenario, eventually, scenario_fixture
from tests.support.serving import fraud_data, train_fraud_model

pytestmark = pytest.mark.real

MODEL = "fraud-detection"
OTHER_MODEL = "fraud-scoring"
"""A second model in the namespace, never run (0 replicas): its client certificate is another identity."""
CLIENT = "payments-api"
CREDENTIALS_SECRET = "model-storage"
SERVICE_ACCOUNT_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass
class Deployed:
    scenario: Scenario
    selector: str
    template: dict[str, Any]

    @property
    def core(self) -> client.CoreV1Api:
        return self.scenario.core

    @property
    def namespace(self) -> str:
        return self.scenario.namespace

    def pod_name(self, timeout: float = 60.0) -> str:
        names: list[str] = []

        def found() -> bool:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
            names[:] = [str(p.metadata.name) for p in pods if p.metadata.owner_references]
            return bool(names)

        eventually(found, timeout, f"a pod of {MODEL}")
        return names[0]


def prepare_storage(scenario: Scenario, s3: MotoServer) -> str:
    """A private, encrypted bucket, the credentials Secret, and the policy listing the S3 server."""
    bucket = f"models-{scenario.namespace}"[:63]
    storage = s3_client(s3)
    storage.create_bucket(Bucket=bucket)
    storage.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    storage.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    scenario.core.create_namespaced_secret(
        scenario.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=CREDENTIALS_SECRET),
            string_data={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        ),
    )
    # The test's S3 server is plain http on the node's private address: the operator reads from it
    # only because the cluster admin's policy lists it.
    host = urlsplit(s3.endpoint).hostname
    scenario.patch_policy({"allowedEndpoints": [{"cidr": f"{host}/32", "allowHttp": True}]})
    return bucket


def s3_client(s3: MotoServer) -> Any:
    credentials = s3.env()
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=s3.region,
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )


def deploy_example(
    scenario: Scenario,
    s3: MotoServer,
    bucket: str,
    artifacts: ModelArtifacts,
    *,
    name: str = MODEL,
    tamper: bool = False,
    replicas: int = 1,
    allowed_clients: list[dict[str, Any]] | None = None,
) -> Deployed:
    """Upload the model's artifact and signature to S3, apply the SecureModel, wait for its Deployment."""
    storage = s3_client(s3)
    artifact = bytearray(artifacts.artifact.read_bytes())
    if tamper:
        artifact[-40] ^= 0x01  # one bit of the last segment's ciphertext
    prefix = f"{name}/1.4.0"
    storage.put_object(Bucket=bucket, Key=f"{prefix}/model.samd", Body=bytes(artifact))
    storage.put_object(Bucket=bucket, Key=f"{prefix}/model.sig", Body=artifacts.signature.read_bytes())
    body = scenario.example(
        artifact={
            "uri": f"s3://{bucket}/{prefix}/model.samd",
            "endpoint": s3.endpoint,
            "region": s3.region,
            "credentialsSecret": CREDENTIALS_SECRET,
        },
        signature={"uri": f"s3://{bucket}/{prefix}/model.sig"},
    )
    body["metadata"]["name"] = name
    body["spec"]["serving"]["replicas"] = replicas
    if allowed_clients is not None:
        body["spec"]["serving"]["allowedClients"] = allowed_clients
    scenario.apply_model(body)
    scenario.wait_condition(name, "Verified", "True")
    deployment: list[client.V1Deployment] = []

    def created() -> bool:
        with contextlib.suppress(client.ApiException):
            deployment[:] = [scenario.apps.read_namespaced_deployment(serving_name(name), scenario.namespace)]
        return bool(deployment)

    eventually(created, 60, f"the Deployment of {name}")
    spec = scenario.api.sanitize_for_serialization(deployment[0].spec)  # type: ignore[no-untyped-call]
    selector = ",".join(f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items())
    return Deployed(scenario, selector, spec["template"])


def fetch_log(deployed: Deployed, pod: str) -> str:
    for previous in (False, True):
        try:
            text = deployed.core.read_namespaced_pod_log(
                pod, deployed.namespace, container=FETCH_CONTAINER, previous=previous
            )
        except client.ApiException:
            continue
        if text.strip():
            return str(text)
    return ""


def ready(pod: client.V1Pod) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses) and all(status.ready for status in statuses)


# --- one served model for the module: the operator's pod, its Service, and the clients' namespaces --


@dataclass
class Served:
    deployed: Deployed
    artifacts: ModelArtifacts
    pod: client.V1Pod
    clients_namespace: str  # allowed by the model's NetworkPolicy (a label of its own)
    other_namespace: str  # not allowed
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # client role -> its outcome

    @property
    def pod_name(self) -> str:
        return str(self.pod.metadata.name)


@pytest.fixture(scope="module")
def fraud_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real fraud model (scikit-learn, exported to ONNX): `samd serve` loads and runs it."""
    return (train_fraud_model(tmp_path_factory.mktemp("onnx")) / "model.onnx").read_bytes()


@pytest.fixture(scope="module")
def served(
    operator: OperatorProcess,
    k8s: client.ApiClient,
    node_s3: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
    fraud_model: bytes,
) -> Iterator[Served]:
    """The example served on the real node (1 replica), and a model beside it that is never run."""
    label = uuid.uuid4().hex[:12]
    with (
        scratch_namespace(k8s) as namespace,
        scratch_namespace(k8s) as clients_namespace,
        scratch_namespace(k8s) as other_namespace,
        contextlib.contextmanager(scenario_fixture)(
            operator, k8s, namespace, tmp_path_factory.mktemp("served")
        ) as scenario,
    ):
        scenario.core.patch_namespace(
            clients_namespace, {"metadata": {"labels": {"samd-test/clients": label}}}
        )
        allowed = [
            {
                "namespaceSelector": {"matchLabels": {"samd-test/clients": label}},
                "podSelector": {"matchLabels": {"app": CLIENT}},
            }
        ]
        work = tmp_path_factory.mktemp("artifacts")
        signing_key, keyset = scenario.artifacts.signing_key, scenario.artifacts.keyset
        artifacts = make_model(work / MODEL, content=fraud_model, signing_key=signing_key, keyset=keyset)
        other = make_model(work / OTHER_MODEL, model_name=OTHER_MODEL, signing_key=signing_key, keyset=keyset)
        bucket = prepare_storage(scenario, node_s3)
        deployed = deploy_example(scenario, node_s3, bucket, artifacts, allowed_clients=allowed)
        deploy_example(
            scenario, node_s3, bucket, other, name=OTHER_MODEL, replicas=0, allowed_clients=allowed
        )
        pod = wait_pod(
            scenario.core,
            namespace,
            deployed.pod_name(),
            ready,
            timeout=120,
            what="the model server to be ready",
        )
        yield Served(deployed, artifacts, pod, clients_namespace, other_namespace)


def copy_client_secret(core: client.CoreV1Api, model: str, source: str, target: str) -> str:
    """Copy the operator's client-certificate Secret to the client's namespace (as users do)."""
    name = client_secret_name(model, CLIENT)

    def issued() -> bool:
        with contextlib.suppress(client.ApiException):
            core.read_namespaced_secret(name, source)
            return True
        return False

    eventually(issued, 30, f"the operator to issue {source}/{name}")
    secret = core.api_client.sanitize_for_serialization(core.read_namespaced_secret(name, source))
    core.create_namespaced_secret(target, copied_secret(secret, target))  # type: ignore[arg-type]
    return name


ROWS, LABELS = fraud_data(16, seed=23)


@pytest.fixture(scope="module")
def calls(served: Served) -> dict[str, dict[str, Any]]:
    """Five client pods at once, each asking for one prediction through the Service; their outcomes.

    | role | namespace | pod labels | certificate |
    | allowed | allowed | app=payments-api | the operator's, for payments-api of this model |
    | no-certificate | allowed | app=payments-api | none (it trusts the CA only) |
    | other-model | allowed | app=payments-api | the operator's, for payments-api of another model |
    | other-namespace | another | app=payments-api | the operator's, for payments-api of this model |
    | other-pod | allowed | app=other | the operator's, for payments-api of this model |
    """
    core, namespace = served.deployed.core, served.deployed.namespace
    service = core.read_namespaced_service(serving_name(MODEL), namespace)
    call = Call(
        address=str(service.spec.cluster_ip),
        port=int(service.spec.ports[0].port),
        server_name=f"{serving_name(MODEL)}.{namespace}.svc",
        model=MODEL,
        rows=ROWS.tolist(),
    )
    ours = {
        target: copy_client_secret(core, MODEL, namespace, target)
        for target in (served.clients_namespace, served.other_namespace)
    }
    foreign = copy_client_secret(core, OTHER_MODEL, namespace, served.clients_namespace)
    image = OperatorConfig.from_env().default_image
    payments = {"app": CLIENT}
    roles = {
        "allowed": (served.clients_namespace, payments, ours[served.clients_namespace], True),
        "no-certificate": (served.clients_namespace, payments, ours[served.clients_namespace], False),
        "other-model": (served.clients_namespace, payments, foreign, True),
        "other-namespace": (served.other_namespace, payments, ours[served.other_namespace], True),
        "other-pod": (served.clients_namespace, {"app": "other"}, ours[served.clients_namespace], True),
    }
    pods = {}
    for role, (target, labels, secret, certificate) in roles.items():
        name = f"{role}-{uuid.uuid4().hex[:6]}"
        body = client_pod(name, call, image=image, labels=labels, tls_secret=secret, certificate=certificate)
        core.create_namespaced_pod(target, body)  # type: ignore[arg-type]
        pods[role] = (target, name)
    for role, (target, name) in pods.items():
        pod = wait_pod(
            core,
            target,
            name,
            lambda p: p.status.phase in {"Succeeded", "Failed"},
            what="the client to finish",
        )
        assert pod.spec.node_name == served.pod.spec.node_name
        log = str(core.read_namespaced_pod_log(name, target))
        assert pod.status.phase == "Succeeded", log
        served.calls[role] = {**outcome(log), "pod_ip": str(pod.status.pod_ip)}
    return served.calls


def server_log(served: Served) -> list[dict[str, Any]]:
    """The server container's JSON log lines."""
    text = kubectl("logs", "-n", served.deployed.namespace, served.pod_name, "-c", SERVER_CONTAINER)
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- the loader ---------------------------------------------------------------------------------


def test_the_loader_fetches_decrypts_and_verifies_from_s3_on_the_real_node(
    served: Served, node: RealNode
) -> None:
    assert served.pod.spec.node_name == node.name
    terminated = last_terminated(served.pod, FETCH_CONTAINER, init=True)
    assert terminated is not None
    log = fetch_log(served.deployed, served.pod_name)
    assert (terminated.exit_code, terminated.reason) == (0, "Completed"), log
    signed_files = len(list(served.artifacts.model.iterdir()))  # the model and its samd-model.json
    assert f"fetched {signed_files} verified file(s)" in log, log


def test_a_tampered_artifact_stops_the_pod_in_init_error_and_nothing_is_served(
    scenario: Scenario, node: RealNode, node_s3: MotoServer
) -> None:
    bucket = prepare_storage(scenario, node_s3)
    deployed = deploy_example(scenario, node_s3, bucket, scenario.artifacts, tamper=True)
    name = deployed.pod_name()

    def failed(pod: client.V1Pod) -> bool:
        terminated = last_terminated(pod, FETCH_CONTAINER, init=True)
        return terminated is not None and terminated.exit_code != 0

    pod = wait_pod(scenario.core, scenario.namespace, name, failed, what="the loader to fail")
    assert pod.spec.node_name == node.name
    terminated = last_terminated(pod, FETCH_CONTAINER, init=True)
    assert terminated is not None
    assert (terminated.exit_code, terminated.reason) == (4, "Error")  # IntegrityError
    log = fetch_log(deployed, name)
    assert "tampered" in log.lower() or "authentication" in log.lower(), log
    # `kubectl get pod` shows Init:Error (or Init:CrashLoopBackOff while it waits to retry).
    shown = shown_status(scenario, name)
    assert shown in {"Init:Error", "Init:CrashLoopBackOff"}, shown
    # Nothing is served: the server never started and the Service has no endpoint.
    pod = scenario.core.read_namespaced_pod(name, scenario.namespace)
    server = container_state(pod, SERVER_CONTAINER)
    assert server is not None
    assert server.running is None
    assert server.terminated is None
    slices = client.DiscoveryV1Api(scenario.api).list_namespaced_endpoint_slice(scenario.namespace).items
    assert all(not (e.conditions and e.conditions.ready) for s in slices for e in (s.endpoints or []))


def shown_status(scenario: Scenario, pod: str) -> str:
    """The STATUS column of `kubectl get pod`, as a person sees it."""
    return kubectl("get", "pod", pod, "-n", scenario.namespace, "--no-headers").split()[2]


# --- the restricted profile, from inside the running server -------------------------------------

INSIDE = f"""
import json, os, hashlib
status = dict(line.split(":", 1) for line in open("/proc/1/status").read().splitlines())
mounts = {{}}
for line in open("/proc/self/mountinfo"):
    left, right = line.split(" - ")
    fields = left.split()
    mounts[fields[4]] = {{"options": fields[5], "fstype": right.split()[0]}}
try:
    open("/root-write-test", "w")
    root_writable = True
except OSError as error:
    root_writable = error.strerror
models = {{name: hashlib.sha256(open(os.path.join("{MODEL_DIR}", name), "rb").read()).hexdigest()
          for name in os.listdir("{MODEL_DIR}")}}
print(json.dumps({{
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "command": open("/proc/1/cmdline").read().split("\\0")[:3],
    "status": {{k: status[k].split() for k in ("Uid", "Gid", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp")}},
    "root": mounts["/"], "models_mount": mounts.get("{MODEL_DIR}"), "tmp_mount": mounts.get("/tmp"),
    "root_writable": root_writable,
    "token": os.path.exists("{SERVICE_ACCOUNT_TOKEN_DIR}"),
    "models": models,
}}))
"""


def test_the_model_server_runs_as_the_restricted_profile_says_inside_its_container(served: Served) -> None:
    inside = exec_python(served.deployed.namespace, served.pod_name, SERVER_CONTAINER, INSIDE)

    # PID 1 of the container is the operator's `samd serve`, the process that answers predictions.
    assert Path(inside["command"][1]).name == "samd"
    assert inside["command"][2] == "serve"
    assert inside["uid"] == inside["gid"] == WORKLOAD_USER
    assert inside["status"]["Uid"] == [str(WORKLOAD_USER)] * 4  # real, effective, saved, filesystem
    assert inside["status"]["CapEff"] == ["0000000000000000"]  # every capability dropped
    assert inside["status"]["CapBnd"] == ["0000000000000000"]
    assert inside["status"]["NoNewPrivs"] == ["1"]  # allowPrivilegeEscalation: false
    assert inside["status"]["Seccomp"] == ["2"]  # a filter: RuntimeDefault
    assert inside["root"]["options"].split(",")[0] == "ro"
    assert inside["root_writable"] == "Read-only file system"
    assert inside["token"] is False  # no service-account token mounted
    assert inside["models_mount"]["fstype"] == "tmpfs"  # the model lives in memory only
    assert inside["models_mount"]["options"].split(",")[0] == "ro"  # and the server only reads it
    assert inside["tmp_mount"]["fstype"] == "tmpfs"
    # The loader wrote the decrypted, verified model: every signed file, byte for byte, and the
    # signature it verified, kept for the server.
    expected = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in served.artifacts.model.iterdir()
    }
    assert {name: inside["models"].get(name) for name in expected} == expected
    assert set(inside["models"]) - set(expected) == {KEPT_SIGNATURE}


# --- predictions through the Service, the NetworkPolicy, the server's own checks ----------------


def test_the_allowed_client_gets_a_prediction_over_mtls_through_the_service(
    served: Served, calls: dict[str, dict[str, Any]]
) -> None:
    allowed = calls["allowed"]
    assert allowed["outcome"] == "answered", allowed
    assert allowed["status"] == 200, allowed
    # Provenance: the model, its version and the signed manifest the pod was pinned to.
    headers = allowed["headers"]
    assert headers["samd-model-name"] == MODEL
    assert headers["samd-model-version"] == "1.4.0"
    assert headers["samd-manifest-digest"] == served.artifacts.manifest_digest()
    assert headers["samd-signer"].startswith("sha256:")
    assert allowed["body"]["parameters"]["samd_manifest_digest"] == served.artifacts.manifest_digest()
    # The real trained model answered: its labels agree with the data's.
    outputs = {output["name"]: output for output in allowed["body"]["outputs"]}
    assert outputs["label"]["shape"] == [len(ROWS)]
    assert float(np.mean(np.array(outputs["label"]["data"]) == LABELS)) > 0.8


def test_the_network_policy_cuts_off_another_namespace_and_another_pod(
    calls: dict[str, dict[str, Any]],
) -> None:
    # The same labels and the right certificate, from a namespace the policy does not name.
    assert calls["other-namespace"]["outcome"] == "unreachable", calls["other-namespace"]
    # The allowed namespace, a pod the policy does not name.
    assert calls["other-pod"]["outcome"] == "unreachable", calls["other-pod"]


def test_the_server_refuses_a_client_without_a_certificate_or_with_another_models(
    served: Served, calls: dict[str, dict[str, Any]]
) -> None:
    # Both reach the server (the NetworkPolicy admits their namespace and labels); the server refuses.
    no_certificate, other_model = calls["no-certificate"], calls["other-model"]
    assert no_certificate["outcome"] == "refused", no_certificate
    assert other_model["outcome"] == "answered", other_model
    assert other_model["status"] == 403, other_model
    organization = f"samd:{served.deployed.namespace}:{OTHER_MODEL}"
    assert f"its certificate's organization is {organization}" in other_model["body"]["error"]
    # The server's own log names each refusal and the client pod it came from.
    refusals = {
        (line["event"], line["reason"], line["peer"].rsplit(":", 1)[0])
        for line in server_log(served)
        if line.get("event") in {"handshake_refused", "request_refused"} and line.get("peer")
    }
    assert ("handshake_refused", "no_certificate", no_certificate["pod_ip"]) in refusals, refusals
    assert ("request_refused", "wrong_organization", other_model["pod_ip"]) in refusals, refusals
