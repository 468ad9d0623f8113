"""A real node joined to the local control plane: pods that really run, for the `real` test tier.

containerd and runc (Debian's), kubelet and kube-proxy (built from their Go modules by
``hack/build-node``), Debian's CNI plugins on a bridge of the project's own, and kube-router
(firewall only) enforcing NetworkPolicies. Everything runs with project-owned configuration, state
and sockets under ``.local/node``; nothing of the host's own services is used.

Usage: ``hack/local-node up|down|status``. Needs root and a running ``hack/local-cluster``.

What it changes on the host, all undone by ``down`` (also after a crash: ``down`` works from what
it finds, not from what it remembers): a bridge (``samd-cni0``, whose address is the node IP and
the pods' gateway), ``net.ipv4.ip_forward`` and ``net.bridge.bridge-nf-call-iptables`` (restored
to their earlier values), the iptables chains and ipsets of kube-proxy and kube-router, mounts and
network namespaces under ``.local/node``, cgroups under ``/sys/fs/cgroup/*/samd-node``. While the
node is up, the KWOK fake node carries the taint ``samd.dev/fake-node=kwok:NoSchedule``, so new
pods land on the real node; ``down`` removes the taint.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hack import local_cluster as lc
from hack.build_image import Settings as ImageSettings
from hack.oci_image import Layer, write_archive, write_layer

REPO = Path(__file__).resolve().parent.parent
COMPONENTS = ("containerd", "kubelet", "kube-proxy", "kube-router")
FAKE_NODE_TAINT = {"key": "samd.dev/fake-node", "value": "kwok", "effect": "NoSchedule"}
PAUSE_IMAGE = "samd.local/pause:1"
CGROUP_ROOT = "samd-node"
NODE_LABEL = "samd.dev/node=real"


class NodeError(lc.ClusterError):
    """A failure the user can act on; printed without a traceback."""


@dataclass(frozen=True)
class NodePorts:
    kubelet: int
    kubelet_healthz: int
    kube_proxy_healthz: int
    kube_proxy_metrics: int
    kube_router_health: int
    kube_router_metrics: int

    @classmethod
    def from_base(cls, base: int) -> NodePorts:
        return cls(base + 250, base + 248, base + 256, base + 249, base + 244, base + 245)

    def named(self) -> dict[str, int]:
        return {
            "kubelet": self.kubelet,
            "kubelet healthz": self.kubelet_healthz,
            "kube-proxy healthz": self.kube_proxy_healthz,
            "kube-proxy metrics": self.kube_proxy_metrics,
            "kube-router health": self.kube_router_health,
            "kube-router metrics": self.kube_router_metrics,
        }


@dataclass(frozen=True)
class NodeSettings:
    cluster: lc.Settings
    root: Path
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    ports: NodePorts
    images: tuple[Path, ...]

    @classmethod
    def from_env(cls, images: Sequence[Path] = ()) -> NodeSettings:
        cluster = lc.Settings.from_env()
        subnet = ipaddress.IPv4Network(os.environ.get("SAMD_NODE_SUBNET", "10.244.0.0/24"))
        if subnet.num_addresses < 8:
            raise NodeError(f"SAMD_NODE_SUBNET={subnet} is too small for a node and its pods")
        local = cluster.layout.root.parent
        return cls(
            cluster=cluster,
            root=local / "node",
            name=os.environ.get("SAMD_NODE_NAME", "samd-node-0"),
            bridge=os.environ.get("SAMD_NODE_BRIDGE", "samd-cni0"),
            subnet=subnet,
            ports=NodePorts.from_base(int(os.environ.get("SAMD_CLUSTER_PORT_BASE", "16000"))),
            images=tuple(images) or (ImageSettings.from_env().archive,),
        )

    @property
    def node_ip(self) -> str:
        return str(next(self.subnet.hosts()))

    @property
    def runner(self) -> lc.Settings:
        """local_cluster's process helpers, pointed at the node's folder."""
        return lc.Settings(
            layout=lc.Layout(root=self.root, kubeconfig=self.cluster.layout.kubeconfig),
            ports=self.cluster.ports,
            ready_timeout=self.cluster.ready_timeout,
        )

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"  # images and snapshots: kept by `down`

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def socket(self) -> Path:
        return self.containerd_state / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def saved_sysctls(self) -> Path:
        return self.root / "sysctls.json"


# --- checks -------------------------------------------------------------------------------------

DEBIAN_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "iptables": "iptables",
    "ipset": "ipset",
    "conntrack": "conntrack",
    "ip": "iproute2",
}


def host_problems() -> list[str]:
    """Why this machine cannot run the real node (root, kernel features); empty when it can.

    Missing Debian packages are not among them: `hack/install-node-deps` installs those.
    """
    problems = []
    if os.geteuid() != 0:
        problems.append("the real node needs root (it runs containerd, kubelet and changes host networking)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("the kernel has no overlay filesystem (containerd's overlayfs snapshotter needs it)")
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").is_file():
        problems.append("no memory cgroup under /sys/fs/cgroup: the kubelet cannot run pods here")
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        problems.append(
            "the kernel has no bridge netfilter (/proc/sys/net/bridge missing): NetworkPolicies could not "
            "be enforced between pods on the bridge"
        )
    return problems


def preflight(settings: NodeSettings) -> None:
    problems = host_problems()
    if problems:
        raise NodeError("; ".join(problems))
    missing = sorted({package for tool, package in DEBIAN_TOOLS.items() if shutil.which(tool) is None})
    if not Path("/usr/lib/cni/bridge").is_file():
        missing.append("containernetworking-plugins")
    if missing:
        raise NodeError(
            f"missing Debian packages: {', '.join(missing)}; run hack/install-node-deps (as root)"
        )
    busy = [f"{port} ({name})" for name, port in settings.ports.named().items() if lc.port_in_use(port)]
    if busy:
        raise NodeError(
            f"port(s) already in use: {', '.join(busy)}. Stop what uses them (`ss -ltnp`), "
            "or choose other ports with SAMD_CLUSTER_PORT_BASE"
        )
    context = (
        lc.admin_ssl_context(settings.cluster)
        if (settings.cluster.layout.certs / "ca.crt").is_file()
        else None
    )
    if context is None or not lc.http_ok(
        f"https://127.0.0.1:{settings.cluster.ports.apiserver}/readyz", context
    ):
        raise NodeError("the local control plane is not running; start it first: hack/local-cluster up")


# --- binaries and images ------------------------------------------------------------------------


def node_binaries() -> Path:
    built = subprocess.run(
        [str(REPO / "hack" / "build-node")], stdout=subprocess.PIPE, text=True, check=False
    )
    if built.returncode != 0:
        raise NodeError("building the node's binaries failed (the build log's tail is above)")
    return Path(built.stdout.strip().splitlines()[-1])


def pause_archive(settings: NodeSettings, bin_dir: Path) -> Path:
    """A one-file image holding the pause binary: the pods' sandbox, built here (no registry)."""
    out = settings.root / "images" / "pause.oci.tar"
    if out.is_file():
        return out
    staging = settings.root / "images" / "pause-root"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(bin_dir / "pause", staging / "pause")
    layer: Layer = write_layer(staging, settings.root / "images" / "pause-layer.tar.gz")
    write_archive(
        out,
        name=PAUSE_IMAGE,
        layers=[layer],
        config={"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"},
        history=["pause from hack/pause"],
    )
    shutil.rmtree(staging)
    return out


def ctr(settings: NodeSettings, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["ctr", "--address", str(settings.socket), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise NodeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def import_images(settings: NodeSettings, archives: Sequence[Path]) -> None:
    """Import each OCI archive unless containerd already holds its manifest under its name.

    Keyed by name and digest: an archive rebuilt under the same name (a new digest) replaces the
    image that name pointed to, and one renamed (SAMD_IMAGE) is imported under its new name even when
    its content is unchanged. Each import costs seconds; afterwards the name must point at the archive.
    """
    for archive in archives:
        name, digest = _archive_reference(archive)
        if _image_digests(settings).get(name) == digest:
            continue
        started = time.monotonic()
        ctr(settings, "images", "import", "--no-unpack=false", str(archive))
        held = _image_digests(settings).get(name)
        if held != digest:
            raise NodeError(
                f"containerd holds {name} as {held or 'nothing'} after importing {archive} ({digest}); "
                f"remove it (ctr --address {settings.socket} -n k8s.io images rm {name}) and run up again"
            )
        print(f"  imported {archive.name} as {name} ({digest[:19]}) in {time.monotonic() - started:.1f} s")


def _image_digests(settings: NodeSettings) -> dict[str, str]:
    """Image name -> the manifest (or index) digest containerd's CRI namespace holds for it."""
    rows = [line.split() for line in ctr(settings, "images", "ls").splitlines()[1:]]  # REF TYPE DIGEST ...
    return {row[0]: row[2] for row in rows if len(row) >= 3}


def _archive_reference(archive: Path) -> tuple[str, str]:
    """The name (its `io.containerd.image.name` annotation) and manifest digest of an OCI archive."""
    import tarfile  # noqa: PLC0415

    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise NodeError(f"{archive} is not an OCI archive (no index.json)")
        manifest = json.load(member)["manifests"][0]
    name = (manifest.get("annotations") or {}).get("io.containerd.image.name")
    if not name:
        raise NodeError(f"{archive} names no image (no io.containerd.image.name annotation in index.json)")
    return str(name), str(manifest["digest"])


# --- certificates -------------------------------------------------------------------------------


def load_ca(settings: NodeSettings) -> lc.CertificateAuthority:
    certs = settings.cluster.layout.certs
    key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    return lc.CertificateAuthority(key, cert)  # type: ignore[arg-type]


def generate_node_pki(settings: NodeSettings) -> None:
    ca = load_ca(settings)
    certs = settings.certs
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "ca.crt").write_bytes(lc._pem(ca.cert))
    key, cert = ca.issue(
        settings.name, server_names=[settings.name, "localhost"], server_ips=[settings.node_ip]
    )
    (certs / "kubelet-serving.crt").write_bytes(lc._pem(cert))
    lc._write_key(certs / "kubelet-serving.key", key)
    server = f"https://127.0.0.1:{settings.cluster.ports.apiserver}"
    identities = {
        "kubelet": (f"system:node:{settings.name}", "system:nodes"),
        "kube-proxy": ("system:kube-proxy", None),  # bound to system:node-proxier by default
        "kube-router": ("samd:kube-router", None),
    }
    for component, (common_name, organization) in identities.items():
        key, cert = ca.issue(common_name, organization=organization, client=True)
        cert_path, key_path = certs / f"{component}.crt", certs / f"{component}.key"
        cert_path.write_bytes(lc._pem(cert))
        lc._write_key(key_path, key)
        lc.write_kubeconfig(
            certs / f"{component}.kubeconfig", server, ca.cert, cert=cert_path, key=key_path, user=common_name
        )


def rbac_manifest(settings: NodeSettings) -> str:
    """The node's identity bound to `system:node`; kube-router may read what it enforces."""
    items = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"samd-local-node:{settings.name}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:node",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": f"system:node:{settings.name}",
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "samd-local-kube-router"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "samd-local-kube-router"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "samd-local-kube-router",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "samd:kube-router"}
            ],
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


# --- configuration files ------------------------------------------------------------------------


def containerd_config(settings: NodeSettings) -> str:
    """containerd 1.6's configuration (TOML, written by hand: flat and fully quoted)."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f'root = "{settings.containerd_root}"',
        f'state = "{settings.containerd_state}"',
        'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
        "[grpc]",
        f'  address = "{settings.socket}"',
        "[ttrpc]",
        f'  address = "{settings.socket}.ttrpc"',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{settings.root / "containerd" / "opt"}"',
        f"[{cri}]",
        f'  sandbox_image = "{PAUSE_IMAGE}"',
        # No CAP_SYS_RESOURCE on this kind of machine: runc cannot lower oom_score_adj below ours.
        "  restrict_oom_score_adj = true",
        "  netns_mounts_under_state_dir = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "  enable_selinux = false",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"[{cri}.cni]",
        '  bin_dir = "/usr/lib/cni"',
        f'  conf_dir = "{settings.cni_conf_dir}"',
        "  max_conf_num = 1",
        f"[{cri}.registry]",
        f'  config_path = "{settings.root / "containerd" / "certs.d"}"',
    ]
    return "\n".join(lines) + "\n"


def cni_config(settings: NodeSettings) -> str:
    hosts = list(settings.subnet.hosts())
    return json.dumps(
        {
            "cniVersion": "0.4.0",
            "name": "samd-local",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": settings.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [
                                {
                                    "subnet": str(settings.subnet),
                                    "rangeStart": str(hosts[1]),
                                    "rangeEnd": str(hosts[-1]),
                                    "gateway": settings.node_ip,
                                }
                            ]
                        ],
                        # Without a default route pods get "Network is unreachable" for ClusterIPs.
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(settings.root / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_config(settings: NodeSettings) -> str:
    certs = settings.certs
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": settings.node_ip,
            "port": settings.ports.kubelet,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": settings.ports.kubelet_healthz,
            "tlsCertFile": str(certs / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(certs / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(certs / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{settings.socket}",
            # This kind of machine has cgroup v1 (hybrid) and no systemd-managed kubelet.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failSwapOn": False,
            "resolvConf": "/etc/resolv.conf",  # no cluster DNS: pods use the host's resolver
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "maxPods": 110,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "shutdownGracePeriod": "0s",
            "localStorageCapacityIsolation": True,
        },
        indent=2,
    )


def kube_proxy_config(settings: NodeSettings) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(settings.certs / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "clusterCIDR": str(settings.subnet),
            "hostnameOverride": settings.name,
            "healthzBindAddress": f"127.0.0.1:{settings.ports.kube_proxy_healthz}",
            "metricsBindAddress": f"127.0.0.1:{settings.ports.kube_proxy_metrics}",
            "conntrack": {"maxPerCore": 0},  # leave the host's conntrack table size alone
            "iptables": {"localhostNodePorts": False},
            "nodePortAddresses": [f"{settings.node_ip}/32"],
        },
        indent=2,
    )


# --- host networking ----------------------------------------------------------------------------

SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def bridge_exists(settings: NodeSettings) -> bool:
    return Path(f"/sys/class/net/{settings.bridge}").exists()


def setup_network(settings: NodeSettings) -> None:
    if not settings.saved_sysctls.exists():
        saved = {name: Path(f"/proc/sys/{name}").read_text().strip() for name in SYSCTLS}
        settings.saved_sysctls.write_text(json.dumps(saved))
    for name in SYSCTLS:
        Path(f"/proc/sys/{name}").write_text("1\n")
    if not bridge_exists(settings):
        created = sh("ip", "link", "add", settings.bridge, "type", "bridge", check=False)
        if created.returncode != 0:
            raise NodeError(f"cannot create the bridge {settings.bridge}: {created.stderr.strip()}")
    address = f"{settings.node_ip}/{settings.subnet.prefixlen}"
    if address not in sh("ip", "-o", "addr", "show", "dev", settings.bridge).stdout:
        sh("ip", "addr", "add", address, "dev", settings.bridge)
    sh("ip", "link", "set", settings.bridge, "up")


def teardown_network(settings: NodeSettings) -> list[str]:
    done = []
    if bridge_exists(settings):
        sh("ip", "link", "del", settings.bridge, check=False)
        done.append(f"bridge {settings.bridge}")
    if settings.saved_sysctls.exists():
        for name, value in json.loads(settings.saved_sysctls.read_text()).items():
            with contextlib.suppress(OSError):
                Path(f"/proc/sys/{name}").write_text(f"{value}\n")
        settings.saved_sysctls.unlink()
        done.append("sysctls restored")
    return done


# Chains that kube-proxy --cleanup leaves: kube-router's (its --cleanup-config panics here, in its IPVS
# part) and the kubelet's own.
LEFTOVER_CHAINS = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-", "KUBE-FIREWALL", "KUBE-KUBELET-CANARY",
                   "KUBE-IPTABLES-HINT")  # fmt: skip
KUBE_ROUTER_IPSETS = ("KUBE-SRC-", "KUBE-DST-", "kube-router-")


def remove_leftover_rules() -> bool:
    """Remove the kubelet's and kube-router's chains (with the jumps into them) and kube-router's ipsets."""
    removed = False
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            saved = sh(f"{tool}-save", "-t", table, check=False).stdout.splitlines()
            ours = [
                line.split()[0][1:]
                for line in saved
                if line.startswith(":") and line[1:].startswith(LEFTOVER_CHAINS)
            ]
            if not ours:
                continue
            removed = True
            for line in saved:  # jumps into these chains, from any chain
                words = shlex.split(line)
                if words[:1] == ["-A"] and "-j" in words and words[words.index("-j") + 1] in ours:
                    sh(tool, "-t", table, "-D", *words[1:], check=False)
            for chain in ours:
                sh(tool, "-t", table, "-F", chain, check=False)
            for chain in ours:
                sh(tool, "-t", table, "-X", chain, check=False)
    names = sh("ipset", "list", "-n", check=False).stdout.split()
    for name in names:
        if name.startswith(KUBE_ROUTER_IPSETS):
            sh("ipset", "destroy", name, check=False)
            removed = True
    return removed


# --- processes ----------------------------------------------------------------------------------


def shims(settings: NodeSettings) -> list[int]:
    """containerd shims serving this node's containerd (they outlive it), by their -address argument."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(settings.socket).encode() in argv:
            pids.append(int(proc.name))
    return pids


def kill_shims(settings: NodeSettings) -> int:
    """Kill this node's shims with their containers (a shim's children die with their cgroup)."""
    found = shims(settings)
    for pid in found:
        for child in _descendants(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while found and time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in found):
        time.sleep(0.1)
    return len(found)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
    result, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            result.append(child)
            todo.append(child)
    return result


def unmount_under(root: Path) -> int:
    """Unmount everything mounted below ``root`` (deepest first, lazily for what stays busy)."""
    prefix = str(root.resolve()) + "/"
    count = 0
    for _ in range(3):
        targets = sorted(
            (line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()),
            key=len,
            reverse=True,
        )
        ours = [t.replace("\\040", " ") for t in targets if t.startswith(prefix)]
        if not ours:
            break
        for target in ours:
            if sh("umount", target, check=False).returncode != 0:
                sh("umount", "-l", target, check=False)
            count += 1
    return count


def create_cgroups() -> None:
    """The kubelet's cgroupRoot must exist in every cgroup v1 hierarchy (cpuset filled from its parent)."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        if controller.is_symlink() or not controller.is_dir() or controller.name == "unified":
            continue
        top = controller / CGROUP_ROOT
        top.mkdir(exist_ok=True)
        for inherited in ("cpuset.cpus", "cpuset.mems"):
            if (top / inherited).exists() and not (top / inherited).read_text().strip():
                (top / inherited).write_text((controller / inherited).read_text())


def remove_cgroups() -> int:
    removed = 0
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / CGROUP_ROOT
        if not top.is_dir():
            continue
        for folder, _dirs, _files in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
            with contextlib.suppress(OSError):
                Path(folder).rmdir()
                removed += 1
    return removed


def wait_http(settings: NodeSettings, component: str, url: str) -> None:
    lc.wait_until(settings.runner, component, url, lambda: lc.http_ok(url, None))


# --- commands -----------------------------------------------------------------------------------


def running(settings: NodeSettings) -> dict[str, int]:
    return {c: pid for c in COMPONENTS if (pid := lc.read_pid(settings.runner, c)) is not None}


def kubectl(settings: NodeSettings, *args: str, stdin: str | None = None, check: bool = True) -> str:
    binaries = {"kubectl": Path(lc.locate_binaries()["kubectl"])}
    if not check:
        with contextlib.suppress(lc.ClusterError):
            return lc.kubectl(binaries, settings.cluster, *args, stdin=stdin)
        return ""
    return lc.kubectl(binaries, settings.cluster, *args, stdin=stdin)


def node_ready(settings: NodeSettings) -> bool:
    status = kubectl(
        settings,
        "get",
        "node",
        settings.name,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        check=False,
    )
    return status.strip() == "True"


def up(settings: NodeSettings) -> None:
    started = time.monotonic()
    if len(running(settings)) == len(COMPONENTS) and node_ready(settings):
        print(f"node {settings.name} already up ({settings.node_ip} on {settings.bridge})")
        import_images(settings, [a for a in settings.images if a.is_file()])
        return
    if running(settings) or bridge_exists(settings):
        down(settings, quiet=True)  # half up: start clean rather than guess
    preflight(settings)
    bin_dir = node_binaries()
    for folder in (settings.root, settings.cni_conf_dir, settings.kubelet_root, settings.containerd_state):
        folder.mkdir(parents=True, exist_ok=True)
    generate_node_pki(settings)
    kubectl(settings, "apply", "-f", "-", stdin=rbac_manifest(settings))
    setup_network(settings)
    create_cgroups()
    (settings.root / "containerd.toml").write_text(containerd_config(settings))
    (settings.cni_conf_dir / "10-samd.conflist").write_text(cni_config(settings))
    (settings.root / "kubelet.json").write_text(kubelet_config(settings))
    (settings.root / "kube-proxy.json").write_text(kube_proxy_config(settings))

    runner = settings.runner
    lc.start_process(runner, "containerd", ["containerd", "--config", str(settings.root / "containerd.toml")])
    lc.wait_until(
        runner, "containerd", str(settings.socket), lambda: ctr(settings, "version", check=False) != ""
    )
    archives = [pause_archive(settings, bin_dir), *(a for a in settings.images if a.is_file())]
    missing = [str(a) for a in settings.images if not a.is_file()]
    if missing:
        print(f"  warning: no image archive at {', '.join(missing)} (run `make image` to build SAMD's image)")
    import_images(settings, archives)

    lc.start_process(
        runner,
        "kubelet",
        [
            str(bin_dir / "kubelet"),
            f"--config={settings.root / 'kubelet.json'}",
            f"--kubeconfig={settings.certs / 'kubelet.kubeconfig'}",
            f"--root-dir={settings.kubelet_root}",
            f"--cert-dir={settings.certs / 'kubelet'}",
            f"--hostname-override={settings.name}",
            f"--node-ip={settings.node_ip}",
            f"--node-labels={NODE_LABEL}",
            "--v=1",
        ],
    )
    lc.start_process(
        runner,
        "kube-proxy",
        [str(bin_dir / "kube-proxy"), f"--config={settings.root / 'kube-proxy.json'}", "--v=1"],
    )
    wait_http(settings, "kubelet", f"http://127.0.0.1:{settings.ports.kubelet_healthz}/healthz")
    lc.wait_until(runner, "kubelet", f"node {settings.name} registered", lambda: kubectl(
        settings, "get", "node", settings.name, "-o", "name", check=False) != "")  # fmt: skip
    # kube-router reads the node's pod range; the controller manager does not allocate one here.
    kubectl(settings, "patch", "node", settings.name, "--type=merge", "-p",
            json.dumps({"spec": {"podCIDR": str(settings.subnet), "podCIDRs": [str(settings.subnet)]}}), check=False)  # fmt: skip
    lc.start_process(
        runner,
        "kube-router",
        [
            str(bin_dir / "kube-router"),
            f"--kubeconfig={settings.certs / 'kube-router.kubeconfig'}",
            f"--hostname-override={settings.name}",
            "--run-firewall=true",
            "--run-router=false",
            "--run-service-proxy=false",
            "--enable-cni=false",
            "--enable-ipv6=false",
            f"--service-cluster-ip-range={lc.SERVICE_CIDR}",
            f"--health-port={settings.ports.kube_router_health}",
            f"--metrics-port={settings.ports.kube_router_metrics}",
            "--v=1",
        ],
    )
    wait_http(settings, "kube-proxy", f"http://127.0.0.1:{settings.ports.kube_proxy_healthz}/healthz")
    wait_http(settings, "kube-router", f"http://127.0.0.1:{settings.ports.kube_router_health}/healthz")
    lc.wait_until(runner, "kubelet", f"node {settings.name} Ready", lambda: node_ready(settings))
    taint_fake_node(settings, add=True)
    print(
        f"node {settings.name} up in {time.monotonic() - started:.1f} s: {settings.node_ip} on {settings.bridge} "
        f"({settings.subnet}); the fake node {lc.FAKE_NODE} is tainted {FAKE_NODE_TAINT['key']}:NoSchedule"
    )


def taint_fake_node(settings: NodeSettings, *, add: bool) -> None:
    taint = f"{FAKE_NODE_TAINT['key']}={FAKE_NODE_TAINT['value']}:{FAKE_NODE_TAINT['effect']}"
    kubectl(
        settings, "taint", "node", lc.FAKE_NODE, taint if add else f"{taint}-", "--overwrite", check=False
    )


def down(settings: NodeSettings, *, quiet: bool = False) -> None:
    done: list[str] = []
    api_up = (settings.cluster.layout.certs / "ca.crt").is_file() and lc.http_ok(
        f"https://127.0.0.1:{settings.cluster.ports.apiserver}/readyz", lc.admin_ssl_context(settings.cluster)
    )
    for component in ("kube-router", "kube-proxy", "kubelet"):
        if lc.stop_process(settings.runner, component):
            done.append(component)
    if killed := kill_shims(settings):
        done.append(f"{killed} container shims")
    if lc.stop_process(settings.runner, "containerd"):
        done.append("containerd")
    bin_dir = _cached_node_bin()
    if bin_dir is not None and (bin_dir / "kube-proxy").is_file():
        sh(str(bin_dir / "kube-proxy"), "--cleanup", check=False)  # its iptables chains
    if remove_leftover_rules():
        done.append("kubelet and kube-router chains, ipsets")
    if mounts := unmount_under(settings.root):
        done.append(f"{mounts} mounts")
    done += teardown_network(settings)
    if cgroups := remove_cgroups():
        done.append(f"{cgroups} cgroups")
    for transient in (settings.containerd_state, settings.kubelet_root, settings.root / "cni"):
        if transient.exists() and unmount_under(transient) == 0:
            subprocess.run(["rm", "-rf", "--one-file-system", str(transient)], check=False)
    if api_up:
        taint_fake_node(settings, add=False)
        if kubectl(
            settings, "delete", "node", settings.name, "--ignore-not-found", "--wait=false", check=False
        ):
            done.append(f"node {settings.name} deleted")
    if not quiet:
        print(f"stopped: {', '.join(done)}" if done else "the node was not running")


def _cached_node_bin() -> Path | None:
    cache = Path(
        os.environ.get("SAMD_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "samd"
    )
    found = sorted((cache / "node").glob("kube-*/bin"))
    return found[-1] if found else None


def status(settings: NodeSettings) -> int:
    pids = running(settings)
    for component in COMPONENTS:
        pid = pids.get(component)
        print(f"{component:<24} {'running (pid ' + str(pid) + ')' if pid else 'stopped'}")
    ready = bool(pids) and node_ready(settings)
    print(f"{'node ' + settings.name:<24} {'Ready' if ready else 'not ready'}")
    print(f"{'bridge ' + settings.bridge:<24} {'present' if bridge_exists(settings) else 'absent'}")
    return 0 if ready and len(pids) == len(COMPONENTS) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/local-node",
        description="Join a real node (containerd, kubelet, kube-proxy, kube-router) to the local control plane.",
        epilog="Environment: SAMD_CLUSTER_PORT_BASE (ports: base+244..base+256), SAMD_NODE_BRIDGE "
        "(default samd-cni0), SAMD_NODE_SUBNET (default 10.244.0.0/24; the first address is the node's), "
        "SAMD_NODE_NAME (default samd-node-0), SAMD_LOCAL_DIR, SAMD_CACHE_DIR.",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--image", action="append", type=Path, default=[],
                        help="OCI archive to import (default: .local/image/samd-0.1.0.oci.tar)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        settings = NodeSettings.from_env(args.image)
        if args.command == "up":
            try:
                up(settings)
            except BaseException:
                down(settings, quiet=True)  # never leave half a node behind
                raise
            return 0
        if args.command == "down":
            down(settings)
            return 0
        return status(settings)
    except lc.ClusterError as error:
        print(f"local-node: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
