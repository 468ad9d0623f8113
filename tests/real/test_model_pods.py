"""The fraud-detection example on a real node: the loader, the restricted profile and the NetworkPolicy.

Everything here runs in real containers from SAMD's image: `samd fetch` downloads the example's
encrypted model from an S3-compatible server over the pod network, decrypts and verifies it into a
memory volume. The inference server (`samd serve`) is not part of this branch's image yet, so the
operator's server container cannot start; the checks that need a running container use a copy of
the operator's own pod template in which only the server's command is replaced (by a sleeper or a
plain TCP listener): the init container, volumes, identity and security context are the operator's.
"""

from __future__ import annotations

import copy
import hashlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from kubernetes import client

from samd.fetch import KEPT_SIGNATURE
from samd.operator.builders.serving import FETCH_CONTAINER, MODEL_DIR, SERVER_CONTAINER, WORKLOAD_USER
from tests.support.cluster import scratch_namespace
from tests.support.moto_server import MotoServer
from tests.support.node import (
    RealNode,
    container_state,
    exec_python,
    kubectl,
    last_terminated,
    wait_pod,
)
from tests.support.scenario import Scenario, eventually

pytestmark = pytest.mark.real

MODEL = "fraud-detection"
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


def deploy_example(
    scenario: Scenario,
    s3: MotoServer,
    *,
    tamper: bool = False,
    allowed_clients: list[dict[str, Any]] | None = None,
) -> Deployed:
    """Upload the example's artifact and signature to S3, apply the SecureModel, wait for its Deployment."""
    bucket = f"models-{scenario.namespace}"[:63]
    credentials = s3.env()
    storage = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=s3.region,
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )
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
    artifact = bytearray(scenario.artifacts.artifact.read_bytes())
    if tamper:
        artifact[-40] ^= 0x01  # one bit of the last segment's ciphertext
    prefix = f"{MODEL}/1.4.0"
    storage.put_object(Bucket=bucket, Key=f"{prefix}/model.samd", Body=bytes(artifact))
    storage.put_object(
        Bucket=bucket, Key=f"{prefix}/model.sig", Body=scenario.artifacts.signature.read_bytes()
    )
    scenario.core.create_namespaced_secret(
        scenario.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=CREDENTIALS_SECRET),
            string_data={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        ),
    )
    body = scenario.example(
        artifact={
            "uri": f"s3://{bucket}/{prefix}/model.samd",
            "endpoint": s3.endpoint,
            "region": s3.region,
            "credentialsSecret": CREDENTIALS_SECRET,
        },
        signature={"uri": f"s3://{bucket}/{prefix}/model.sig"},
    )
    body["spec"]["serving"]["replicas"] = 1
    # The test's S3 server is plain http on the node's private address: the operator reads from it
    # only because the cluster admin's policy lists it.
    host = urlsplit(s3.endpoint).hostname
    scenario.patch_policy({"allowedEndpoints": [{"cidr": f"{host}/32", "allowHttp": True}]})
    if allowed_clients is not None:
        body["spec"]["serving"]["allowedClients"] = allowed_clients
    scenario.apply_model(body)
    scenario.wait_condition(MODEL, "Verified", "True")
    deployment: list[client.V1Deployment] = []

    def created() -> bool:
        deployment[:] = scenario.apps.list_namespaced_deployment(scenario.namespace).items
        return bool(deployment)

    eventually(created, 60, f"the Deployment of {MODEL}")
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


def template_copy(
    deployed: Deployed, name: str, *, labels: dict[str, str], server_command: list[str]
) -> dict[str, Any]:
    """A pod made from the operator's template, with only the server's command replaced.

    It carries a controller reference (to a ConfigMap of its own) so that the model's ReplicaSet never
    adopts it, even when it has the model's labels.
    """
    owner = deployed.core.create_namespaced_config_map(
        deployed.namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"{name}-owner"))
    )
    template = copy.deepcopy(deployed.template)
    spec = template["spec"]
    server = next(c for c in spec["containers"] if c["name"] == SERVER_CONTAINER)
    server["command"] = server_command
    server.pop("readinessProbe", None)
    spec["terminationGracePeriodSeconds"] = 1  # the stand-in commands do not handle SIGTERM
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": owner.metadata.name,
                    "uid": owner.metadata.uid,
                    "controller": True,
                }
            ],
        },
        "spec": spec,
    }


def running(pod: client.V1Pod, container: str = SERVER_CONTAINER) -> bool:
    state = container_state(pod, container)
    return state is not None and state.running is not None


# --- the loader ---------------------------------------------------------------------------------


def test_the_loader_fetches_decrypts_and_verifies_from_s3_on_the_real_node(
    scenario: Scenario, node: RealNode, node_s3: MotoServer
) -> None:
    deployed = deploy_example(scenario, node_s3)
    name = deployed.pod_name()

    def fetched(pod: client.V1Pod) -> bool:
        return last_terminated(pod, FETCH_CONTAINER, init=True) is not None

    pod = wait_pod(scenario.core, scenario.namespace, name, fetched, what="the loader to finish")
    assert pod.spec.node_name == node.name
    terminated = last_terminated(pod, FETCH_CONTAINER, init=True)
    assert terminated is not None
    assert (terminated.exit_code, terminated.reason) == (0, "Completed"), fetch_log(deployed, name)
    log = fetch_log(deployed, name)
    signed_files = len(list(scenario.artifacts.model.iterdir()))  # the model and its samd-model.json
    assert f"fetched {signed_files} verified file(s)" in log, log


def test_a_tampered_artifact_stops_the_pod_in_init_error_and_nothing_is_served(
    scenario: Scenario, node: RealNode, node_s3: MotoServer
) -> None:
    deployed = deploy_example(scenario, node_s3, tamper=True)
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


# --- the restricted profile, from inside -------------------------------------------------------

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
    "status": {{k: status[k].split() for k in ("Uid", "Gid", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp")}},
    "root": mounts["/"], "models_mount": mounts.get("{MODEL_DIR}"), "tmp_mount": mounts.get("/tmp"),
    "root_writable": root_writable,
    "token": os.path.exists("{SERVICE_ACCOUNT_TOKEN_DIR}"),
    "models": models,
}}))
"""


def test_the_model_pod_runs_as_the_restricted_profile_says_inside_its_containers(
    scenario: Scenario, node: RealNode, node_s3: MotoServer
) -> None:
    deployed = deploy_example(scenario, node_s3)
    probe = template_copy(
        deployed,
        "probe",
        labels={"samd-test": "probe"},
        server_command=["python", "-c", "import time; time.sleep(3600)"],
    )
    scenario.core.create_namespaced_pod(scenario.namespace, probe)  # type: ignore[arg-type]
    pod = wait_pod(scenario.core, scenario.namespace, "probe", running, what="the server container to run")
    assert pod.spec.node_name == node.name
    inside = exec_python(scenario.namespace, "probe", SERVER_CONTAINER, INSIDE)

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
    assert inside["tmp_mount"]["fstype"] == "tmpfs"
    # The loader (the operator's init container, unchanged) wrote the decrypted, verified model.
    # (every signed file, byte for byte, and the signature it verified, kept for the server)
    expected = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in scenario.artifacts.model.iterdir()
    }
    assert {name: inside["models"].get(name) for name in expected} == expected
    assert set(inside["models"]) - set(expected) == {KEPT_SIGNATURE}


# --- the NetworkPolicy ----------------------------------------------------------------------------

LISTENER = """
import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("", {port}))
server.listen()
while True:
    connection, _ = server.accept()
    connection.sendall(b"hello")
    connection.close()
"""

# kube-router adds a new client pod's address to the policy's sets a moment after the pod starts:
# retry for a while. A client that is cut off is refused on every attempt.
CLIENT = """
import socket, sys, time
deadline = time.monotonic() + {patience}
while True:
    try:
        with socket.create_connection(("{ip}", {port}), timeout=2) as connection:
            print("reached", connection.recv(5).decode(), "after", round(time.monotonic() - deadline + {patience}, 1), "s")
            break
    except OSError as error:
        if time.monotonic() > deadline:
            print("cut off:", error)
            sys.exit(1)
        time.sleep(0.2)
"""
PATIENCE = 8.0


def client_pod(name: str, ip: str, port: int, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "client",
                    "image": "samd:0.1.0",
                    "command": ["python", "-c", CLIENT.format(ip=ip, port=port, patience=PATIENCE)],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                }
            ],
        },
    }


def connect_from(
    core: client.CoreV1Api, target: str, port: int, clients: list[tuple[str, dict[str, str]]]
) -> list[tuple[bool, str]]:
    """Start one client pod per (namespace, labels) at once; whether each reached the target, and its log."""
    names = []
    for namespace, labels in clients:
        name = f"client-{uuid.uuid4().hex[:6]}"
        core.create_namespaced_pod(namespace, client_pod(name, target, port, labels))  # type: ignore[arg-type]
        names.append((namespace, name))
    results = []
    for namespace, name in names:
        pod = wait_pod(
            core,
            namespace,
            name,
            lambda p: p.status.phase in {"Succeeded", "Failed"},
            what="the client to finish",
        )
        results.append((pod.status.phase == "Succeeded", str(core.read_namespaced_pod_log(name, namespace))))
    return results


@pytest.fixture
def client_namespaces(scenario: Scenario) -> Iterator[tuple[str, str, str]]:
    """An allowed client namespace (by a label of its own) and another, unlabelled one."""
    label = uuid.uuid4().hex[:12]
    with scratch_namespace(scenario.api) as allowed, scratch_namespace(scenario.api) as other:
        scenario.core.patch_namespace(allowed, {"metadata": {"labels": {"samd-test/clients": label}}})
        yield allowed, other, label


def test_the_network_policy_admits_the_allowed_client_and_cuts_off_another_namespace(
    scenario: Scenario, node: RealNode, node_s3: MotoServer, client_namespaces: tuple[str, str, str]
) -> None:
    allowed_ns, other_ns, label = client_namespaces
    allowed_clients = [
        {
            "namespaceSelector": {"matchLabels": {"samd-test/clients": label}},
            "podSelector": {"matchLabels": {"app": "payments-api"}},
        }
    ]
    deployed = deploy_example(scenario, node_s3, allowed_clients=allowed_clients)
    port = int(scenario.model(MODEL)["spec"]["serving"]["port"])
    model_labels = dict(deployed.template["metadata"]["labels"])
    listener = template_copy(
        deployed, "listener", labels=model_labels, server_command=["python", "-c", LISTENER.format(port=port)]
    )
    scenario.core.create_namespaced_pod(scenario.namespace, listener)  # type: ignore[arg-type]
    # Its init container fetched from S3 under the model's NetworkPolicy (egress to storage is open).
    pod = wait_pod(scenario.core, scenario.namespace, "listener", running, what="the listener to run")
    assert pod.spec.node_name == node.name
    ip = str(pod.status.pod_ip)
    wait_for_firewall(scenario.namespace, "listener")

    allowed, other_namespace, other_pod = connect_from(
        scenario.core,
        ip,
        port,
        [
            (allowed_ns, {"app": "payments-api"}),
            (other_ns, {"app": "payments-api"}),
            (allowed_ns, {"app": "other"}),
        ],
    )
    assert allowed[0], allowed[1]
    assert "reached hello" in allowed[1]
    assert not other_namespace[0], other_namespace[1]  # the same pod labels, in another namespace
    assert "cut off" in other_namespace[1]
    assert not other_pod[0], other_pod[1]  # the allowed namespace, another pod
    assert "cut off" in other_pod[1]


def wait_for_firewall(namespace: str, pod: str, timeout: float = 30.0) -> None:
    """Wait until kube-router has installed the pod's firewall chain (it syncs after pod events)."""

    def installed() -> bool:
        rules = subprocess.run(
            ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True
        ).stdout
        return any(
            pod in line and namespace in line and "KUBE-POD-FW-" in line for line in rules.splitlines()
        )

    deadline = time.monotonic() + timeout
    while not installed():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"kube-router did not install a firewall chain for {namespace}/{pod} in {timeout} s"
            )
        time.sleep(0.3)
