"""A real Kubernetes control plane on loopback, for tests and the demo.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK's
controller (which keeps a fake node Ready and marks its pods Running, so that
Deployments become Available without a container runtime). Binaries come from
``KUBEBUILDER_ASSETS`` when it is set, else from ``hack/build-control-plane``
(built once from their Go modules and cached outside the repository).

Usage: ``hack/local-cluster up|down|status``. State lives in ``.local/cluster``;
the admin kubeconfig is written to ``.local/kubeconfig``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parent.parent
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
FAKE_NODE = "kwok-node-0"
SERVICE_CIDR = "10.0.0.0/16"  # a /24 holds only 254 Services
AUDIT_POLICY = REPO / "deploy" / "audit-policy.yaml"


class ClusterError(Exception):
    """A failure the user can act on; printed without a traceback."""


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        return cls(base + 379, base + 380, base + 443, base + 257, base + 259, base + 247)

    def named(self) -> dict[str, int]:
        return {
            "etcd client": self.etcd_client,
            "etcd peer": self.etcd_peer,
            "kube-apiserver": self.apiserver,
            "kube-controller-manager": self.controller_manager,
            "kube-scheduler": self.scheduler,
            "kwok": self.kwok,
        }


@dataclass(frozen=True)
class Layout:
    """Where the cluster keeps its state."""

    root: Path
    kubeconfig: Path

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log, written under SAMD's audit policy (deploy/audit-policy.yaml)."""
        return self.root / "audit" / "audit.log"

    def pid_file(self, component: str) -> Path:
        return self.run / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def component_kubeconfig(self, component: str) -> Path:
        return self.certs / f"{component}.kubeconfig"


@dataclass(frozen=True)
class Settings:
    layout: Layout
    ports: Ports
    ready_timeout: float
    # Where pods reach the API server (the `kubernetes` Service's endpoint): loopback unless pods run
    # on a real node (hack/local-node), whose bridge address it then is; the API server then also
    # listens on every address, not only on loopback.
    advertise_address: str = "127.0.0.1"

    @classmethod
    def from_env(cls) -> Settings:
        local = Path(os.environ.get("SAMD_LOCAL_DIR", REPO / ".local"))
        base = int(os.environ.get("SAMD_CLUSTER_PORT_BASE", "16000"))
        return cls(
            layout=Layout(root=local / "cluster", kubeconfig=local / "kubeconfig"),
            ports=Ports.from_base(base),
            ready_timeout=float(os.environ.get("SAMD_CLUSTER_READY_TIMEOUT", "90")),
            advertise_address=os.environ.get("SAMD_CLUSTER_ADVERTISE_ADDRESS", "127.0.0.1"),
        )


# --- binaries -------------------------------------------------------------------------------------


def locate_binaries() -> dict[str, Path]:
    """Binaries from KUBEBUILDER_ASSETS where present, the rest from the build cache."""
    wanted = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
    found: dict[str, Path] = {}
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        for name in wanted:
            candidate = Path(assets) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[name] = candidate
    missing = [name for name in wanted if name not in found]
    if missing:
        built = subprocess.run(
            [str(REPO / "hack" / "build-control-plane")], stdout=subprocess.PIPE, text=True, check=False
        )
        if built.returncode != 0:
            raise ClusterError("building the control-plane binaries failed (the build log's tail is above)")
        cache = Path(built.stdout.strip().splitlines()[-1])
        for name in missing:
            candidate = cache / name
            if not candidate.is_file():
                raise ClusterError(f"binary {name} is missing from {cache}; delete that folder and run again")
            found[name] = candidate
    return found


# --- certificates ---------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str) -> CertificateAuthority:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        common_name: str,
        *,
        organization: str | None = None,
        server_names: Sequence[str] = (),
        server_ips: Sequence[str] = (),
        client: bool = False,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_kubeconfig(
    path: Path, server: str, ca: x509.Certificate, *, cert: Path, key: Path, user: str
) -> None:
    """A kubeconfig with the credentials embedded (JSON is valid YAML)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "samd-local", "cluster": {"server": server, "certificate-authority-data": b64(_pem(ca))}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(cert.read_bytes()),
                    "client-key-data": b64(key.read_bytes()),
                },
            }
        ],
        "contexts": [{"name": "samd-local", "context": {"cluster": "samd-local", "user": user}}],
        "current-context": "samd-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def generate_pki(settings: Settings) -> None:
    """CA, API server serving certificate, client certificates and the service-account key."""
    certs = settings.layout.certs
    certs.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("samd-local-ca")
    (certs / "ca.crt").write_bytes(_pem(ca.cert))
    _write_key(certs / "ca.key", ca.key)

    key, cert = ca.issue(
        "kube-apiserver",
        server_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
        server_ips=sorted({"127.0.0.1", "10.0.0.1", settings.advertise_address}),
    )
    (certs / "apiserver.crt").write_bytes(_pem(cert))
    _write_key(certs / "apiserver.key", key)

    sa_key = _key()
    _write_key(certs / "sa.key", sa_key)
    (certs / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    server = f"https://127.0.0.1:{settings.ports.apiserver}"
    identities = {
        "admin": ("samd-admin", "system:masters"),
        "kube-controller-manager": ("system:kube-controller-manager", None),
        "kube-scheduler": ("system:kube-scheduler", None),
        "kwok": ("samd-kwok", "system:masters"),
        "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
    }
    for component, (common_name, organization) in identities.items():
        key, cert = ca.issue(common_name, organization=organization, client=True)
        cert_path, key_path = certs / f"{component}.crt", certs / f"{component}.key"
        cert_path.write_bytes(_pem(cert))
        _write_key(key_path, key)
        write_kubeconfig(
            settings.layout.component_kubeconfig(component),
            server,
            ca.cert,
            cert=cert_path,
            key=key_path,
            user=common_name,
        )
    write_kubeconfig(
        settings.layout.kubeconfig,
        server,
        ca.cert,
        cert=certs / "admin.crt",
        key=certs / "admin.key",
        user="samd-admin",
    )


# --- processes ------------------------------------------------------------------------------------


def read_pid(settings: Settings, component: str) -> int | None:
    path = settings.layout.pid_file(component)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    # A component started by this process that exited is a zombie until reaped: reap it first.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    # A component started by an earlier command has exited once it is a zombie waiting for init.
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return None
    return pid


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def start_process(settings: Settings, component: str, argv: list[str]) -> None:
    settings.layout.logs.mkdir(parents=True, exist_ok=True)
    settings.layout.run.mkdir(parents=True, exist_ok=True)
    with settings.layout.log_file(component).open("ab") as log:
        proc = subprocess.Popen(  # a daemon: it outlives this command and is stopped by `down`
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=settings.layout.root,
        )
    settings.layout.pid_file(component).write_text(f"{proc.pid}\n")


def stop_process(settings: Settings, component: str, timeout: float = 15.0) -> bool:
    pid = read_pid(settings, component)
    settings_pid = settings.layout.pid_file(component)
    if pid is None:
        settings_pid.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and read_pid(settings, component) is not None:
        _reap(pid)
        time.sleep(0.1)
    if read_pid(settings, component) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    settings_pid.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# --- readiness ------------------------------------------------------------------------------------


def admin_ssl_context(settings: Settings) -> ssl.SSLContext:
    certs = settings.layout.certs
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(str(certs / "admin.crt"), str(certs / "admin.key"))
    return context


def http_ok(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


def wait_until(settings: Settings, component: str, probe: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + settings.ready_timeout
    while not check():
        if read_pid(settings, component) is None:
            raise ClusterError(
                f"{component} exited during start-up; last lines of {settings.layout.log_file(component)}:\n"
                + log_tail(settings.layout.log_file(component))
            )
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{component} did not become ready ({probe}) within {settings.ready_timeout:.0f} s; "
                f"last lines of {settings.layout.log_file(component)}:\n"
                + log_tail(settings.layout.log_file(component))
                + "\n(raise SAMD_CLUSTER_READY_TIMEOUT on a slow machine)"
            )
        time.sleep(0.2)


def kubectl(binaries: dict[str, Path], settings: Settings, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(binaries["kubectl"]), f"--kubeconfig={settings.layout.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def fake_node_manifest() -> str:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": FAKE_NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": FAKE_NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {
            # Room for `make bench`'s 1,000 single-replica models on the one fake node.
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "2000"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "2000"},
        },
    }
    return json.dumps(node)


# --- commands -------------------------------------------------------------------------------------


def running_components(settings: Settings) -> dict[str, int]:
    return {c: pid for c in COMPONENTS if (pid := read_pid(settings, c)) is not None}


def up(settings: Settings) -> None:
    started = time.monotonic()
    running = running_components(settings)
    if len(running) == len(COMPONENTS) and http_ok(
        f"https://127.0.0.1:{settings.ports.apiserver}/readyz", admin_ssl_context(settings)
    ):
        print(f"local control plane already running; KUBECONFIG={settings.layout.kubeconfig}")
        return
    if running:
        # A half-started or half-stopped cluster: start clean rather than guess.
        down(settings, quiet=True)
    busy = [f"{port} ({name})" for name, port in settings.ports.named().items() if port_in_use(port)]
    if busy:
        raise ClusterError(
            f"port(s) already in use: {', '.join(busy)}. Stop what uses them (`ss -ltnp`), "
            "or choose other ports with SAMD_CLUSTER_PORT_BASE (default 16000)"
        )
    binaries = locate_binaries()
    layout, ports = settings.layout, settings.ports
    loopback = ipaddress.ip_address(settings.advertise_address).is_loopback
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.audit_log.parent.mkdir(parents=True, exist_ok=True)
    generate_pki(settings)
    certs = layout.certs

    start_process(
        settings,
        "etcd",
        [
            str(binaries["etcd"]),
            "--name=samd-local",
            f"--data-dir={layout.etcd_data}",
            f"--listen-client-urls=http://127.0.0.1:{ports.etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{ports.etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
            f"--initial-cluster=samd-local=http://127.0.0.1:{ports.etcd_peer}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ],
    )
    wait_until(
        settings, "etcd", "/health", lambda: http_ok(f"http://127.0.0.1:{ports.etcd_client}/health", None)
    )

    start_process(
        settings,
        "kube-apiserver",
        [
            str(binaries["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            f"--bind-address={'127.0.0.1' if loopback else '0.0.0.0'}",  # noqa: S104 - pods must reach it
            f"--advertise-address={settings.advertise_address}",
            f"--secure-port={ports.apiserver}",
            f"--cert-dir={certs}",
            f"--tls-cert-file={certs / 'apiserver.crt'}",
            f"--tls-private-key-file={certs / 'apiserver.key'}",
            f"--client-ca-file={certs / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # `kubectl logs/exec` on a real node (hack/local-node): the API server's client identity
            # at the kubelet, and the kubelet's address as the node reports it.
            f"--kubelet-client-certificate={certs / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={certs / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--allow-privileged=true",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={certs / 'sa.pub'}",
            f"--service-account-signing-key-file={certs / 'sa.key'}",
            # SAMD's audit policy: who changed which model or policy, who read which Secret (metadata
            # only). Blocking mode writes each entry before the request returns; rotation keeps
            # a long-running local cluster within 3 x 50 MB.
            f"--audit-policy-file={AUDIT_POLICY}",
            f"--audit-log-path={layout.audit_log}",
            "--audit-log-mode=blocking",
            "--audit-log-format=json",
            "--audit-log-maxsize=50",
            "--audit-log-maxbackup=2",
            "--audit-log-maxage=7",
            "--profiling=false",
            "--v=1",
        ],
    )
    context = admin_ssl_context(settings)
    wait_until(
        settings,
        "kube-apiserver",
        "/readyz",
        lambda: http_ok(f"https://127.0.0.1:{ports.apiserver}/readyz", context),
    )

    auth_flags = [
        "--authentication-kubeconfig={kc}",
        "--authorization-kubeconfig={kc}",
        "--kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
    ]

    def with_kubeconfig(component: str) -> list[str]:
        kc = layout.component_kubeconfig(component)
        return [flag.format(kc=kc) for flag in auth_flags]

    start_process(
        settings,
        "kube-controller-manager",
        [
            str(binaries["kube-controller-manager"]),
            *with_kubeconfig("kube-controller-manager"),
            f"--secure-port={ports.controller_manager}",
            f"--cert-dir={certs / 'kube-controller-manager'}",
            f"--service-account-private-key-file={certs / 'sa.key'}",
            f"--root-ca-file={certs / 'ca.crt'}",
            f"--cluster-signing-cert-file={certs / 'ca.crt'}",
            f"--cluster-signing-key-file={certs / 'ca.key'}",
            "--use-service-account-credentials=true",
            "--controllers=*",
            "--concurrent-gc-syncs=5",
            # The default client limit (20 requests/s) caps the controllers at a few Deployments a
            # second; `make bench` rolls out 1,000 at once.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--v=1",
        ],
    )
    start_process(
        settings,
        "kube-scheduler",
        [
            str(binaries["kube-scheduler"]),
            *with_kubeconfig("kube-scheduler"),
            f"--secure-port={ports.scheduler}",
            f"--cert-dir={certs / 'kube-scheduler'}",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--v=1",
        ],
    )
    start_process(
        settings,
        "kwok",
        [
            str(binaries["kwok"]),
            f"--kubeconfig={layout.component_kubeconfig('kwok')}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            # Heartbeat through a node Lease: kwok's status updates alone come every ~55 s, past the
            # node controller's 50 s grace period, so the node flapped NotReady and its pods' Ready
            # conditions were set to False for good.
            "--node-lease-duration-seconds=40",
            "--cidr=10.1.0.1/16",  # pod IPs; a /24 holds only 254 pods
            "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{ports.kwok}",
        ],
    )
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # self-signed health endpoints on loopback
    wait_until(
        settings,
        "kube-controller-manager",
        "/healthz",
        lambda: http_ok(f"https://127.0.0.1:{ports.controller_manager}/healthz", insecure),
    )
    wait_until(
        settings,
        "kube-scheduler",
        "/healthz",
        lambda: http_ok(f"https://127.0.0.1:{ports.scheduler}/healthz", insecure),
    )
    kubectl(binaries, settings, "apply", "-f", "-", stdin=fake_node_manifest())

    def node_ready() -> bool:
        status = kubectl(
            binaries,
            settings,
            "get",
            "node",
            FAKE_NODE,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        )
        return status.strip() == "True"

    wait_until(settings, "kwok", f"node {FAKE_NODE} Ready", node_ready)
    print(
        f"local control plane up in {time.monotonic() - started:.1f} s: "
        f"https://127.0.0.1:{ports.apiserver}, fake node {FAKE_NODE}\n"
        f"  export KUBECONFIG={layout.kubeconfig}"
    )


def down(settings: Settings, *, quiet: bool = False) -> None:
    stopped = [c for c in reversed(COMPONENTS) if stop_process(settings, c)]
    # etcd's data is disposable: the next `up` starts from an empty cluster.
    if settings.layout.etcd_data.exists():
        subprocess.run(["rm", "-rf", str(settings.layout.etcd_data)], check=True)
    if not quiet:
        print(f"stopped: {', '.join(stopped)}" if stopped else "local control plane was not running")


def status(settings: Settings) -> int:
    running = running_components(settings)
    for component in COMPONENTS:
        pid = running.get(component)
        print(f"{component:<24} {'running (pid ' + str(pid) + ')' if pid else 'stopped'}")
    if not running:
        return 1
    ready = http_ok(f"https://127.0.0.1:{settings.ports.apiserver}/readyz", admin_ssl_context(settings))
    print(f"{'api server /readyz':<24} {'ok' if ready else 'not ready'}")
    print(f"{'kubeconfig':<24} {settings.layout.kubeconfig}")
    return 0 if ready and len(running) == len(COMPONENTS) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/local-cluster",
        description="Run a real local Kubernetes control plane (etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler, KWOK fake node) on loopback.",
        epilog="Environment: KUBEBUILDER_ASSETS (use these binaries instead of building), "
        "SAMD_CLUSTER_PORT_BASE (default 16000), SAMD_LOCAL_DIR (default .local), "
        "SAMD_CLUSTER_READY_TIMEOUT (seconds, default 90), SAMD_CACHE_DIR (binary cache), "
        "SAMD_CLUSTER_ADVERTISE_ADDRESS (the API server's address for pods; default 127.0.0.1, set it to "
        "the real node's bridge address, 10.244.0.1 by default, for pods that call the API).",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        if args.command == "up":
            try:
                up(settings)
            except BaseException:
                down(settings, quiet=True)  # never leave half a cluster running
                raise
            return 0
        if args.command == "down":
            down(settings)
            return 0
        return status(settings)
    except ClusterError as error:
        print(f"local-cluster: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
