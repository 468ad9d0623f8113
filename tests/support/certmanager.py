"""A real cert-manager (controller and cainjector, built by hack/build-cert-manager) on the local
control plane, for the tests of cert-manager as SAMD's certificate issuer.

Both run as local processes against the session's API server, without leader election, with the
CRDs of their own release. cert-manager's own webhook is not run: it only defaults and validates
cert-manager's objects, and the tests create valid ones.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import REPO, Cluster
from tests.support.processes import stop
from tests.support.scenario import eventually

BUILD = REPO / "hack" / "build-cert-manager"
CLUSTER_RESOURCE_NAMESPACE = "cert-manager"
"""Where the Secrets of ClusterIssuers (a CA's key pair) live."""
CONTROLLERS = (
    "issuers,clusterissuers,certificaterequests-approver,certificaterequests-issuer-ca,"
    "certificaterequests-issuer-selfsigned,certificates-trigger,certificates-issuing,"
    "certificates-key-manager,certificates-request-manager,certificates-readiness,"
    "certificates-revision-manager"
)


@dataclass(frozen=True)
class CertManager:
    home: Path
    logs: Path
    cluster_resource_namespace: str = CLUSTER_RESOURCE_NAMESPACE


def build() -> Path:
    built = subprocess.run([str(BUILD)], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        raise RuntimeError(f"hack/build-cert-manager failed:\n{built.stderr}")
    return Path(built.stdout.strip())


def install_crds(k8s: client.ApiClient, crd_dir: Path, timeout: float = 60.0) -> None:
    """Create or replace cert-manager's CRDs of the release that runs, and wait until each is established."""
    extensions = client.ApiextensionsV1Api(k8s)
    for path in sorted(crd_dir.glob("crd-*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        try:
            extensions.create_custom_resource_definition(crd)
        except ApiException as error:
            if error.status != 409:
                raise
            crd["metadata"]["resourceVersion"] = extensions.read_custom_resource_definition(
                name
            ).metadata.resource_version
            extensions.replace_custom_resource_definition(name, crd)

        def established(name: str = name) -> bool:
            conditions = extensions.read_custom_resource_definition(name).status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        eventually(established, timeout, f"CRD {name} established")


def _start(binary: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen([str(binary), *args], stdout=out, stderr=subprocess.STDOUT, cwd="/")
    time.sleep(0.5)
    if process.poll() is not None:
        raise RuntimeError(f"{binary.name} exited at start-up:\n{log.read_text(errors='replace')[-3000:]}")
    return process


def cert_manager_fixture(cluster: Cluster, k8s: client.ApiClient, logs: Path) -> Iterator[CertManager]:
    home = build()
    install_crds(k8s, home / "crds")
    core = client.CoreV1Api(k8s)
    try:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=CLUSTER_RESOURCE_NAMESPACE))
        )
    except ApiException as error:
        if error.status != 409:
            raise
    common = (f"--kubeconfig={cluster.kubeconfig}", "--leader-elect=false", "--v=2")
    controller = _start(
        home / "bin" / "controller",
        logs / "controller.log",
        *common,
        f"--cluster-resource-namespace={CLUSTER_RESOURCE_NAMESPACE}",
        f"--controllers={CONTROLLERS}",
        # Another session's cert-manager may run on this machine: any free port for the metrics.
        "--metrics-listen-address=127.0.0.1:0",
    )
    try:
        cainjector = _start(home / "bin" / "cainjector", logs / "cainjector.log", *common)
        try:
            yield CertManager(home=home, logs=logs)
        finally:
            stop(cainjector)
    finally:
        stop(controller)


def ca_cluster_issuer(k8s: client.ApiClient, name: str) -> str:
    """A CA ClusterIssuer whose CA certificate a self-signed ClusterIssuer issued (cert-manager's own
    bootstrap recipe); returns the CA Secret's name, in the cluster resource namespace."""
    custom = client.CustomObjectsApi(k8s)
    group, version = "cert-manager.io", "v1"
    custom.create_cluster_custom_object(
        group,
        version,
        "clusterissuers",
        {"apiVersion": f"{group}/{version}", "kind": "ClusterIssuer", "metadata": {"name": f"{name}-selfsigned"},
         "spec": {"selfSigned": {}}},
    )  # fmt: skip
    ca_secret = f"{name}-ca"
    custom.create_namespaced_custom_object(
        group,
        version,
        CLUSTER_RESOURCE_NAMESPACE,
        "certificates",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "Certificate",
            "metadata": {"name": ca_secret, "namespace": CLUSTER_RESOURCE_NAMESPACE},
            "spec": {
                "isCA": True,
                "commonName": f"{name} test CA",
                "secretName": ca_secret,
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": f"{name}-selfsigned", "kind": "ClusterIssuer", "group": group},
            },
        },
    )
    custom.create_cluster_custom_object(
        group,
        version,
        "clusterissuers",
        {"apiVersion": f"{group}/{version}", "kind": "ClusterIssuer", "metadata": {"name": name},
         "spec": {"ca": {"secretName": ca_secret}}},
    )  # fmt: skip
    return ca_secret


def delete_ca_cluster_issuer(k8s: client.ApiClient, name: str) -> None:
    custom = client.CustomObjectsApi(k8s)
    for issuer in (name, f"{name}-selfsigned"):
        custom.delete_cluster_custom_object("cert-manager.io", "v1", "clusterissuers", issuer)
    custom.delete_namespaced_custom_object(
        "cert-manager.io", "v1", CLUSTER_RESOURCE_NAMESPACE, "certificates", f"{name}-ca"
    )
    client.CoreV1Api(k8s).delete_namespaced_secret(f"{name}-ca", CLUSTER_RESOURCE_NAMESPACE)
