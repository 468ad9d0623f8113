"""The operator suite: N SecureModels applied at once, timed until every one is Ready.

Against the real local control plane (`hack/local-cluster`, started here unless it runs already),
the SAMD operator runs as its container runs it, a subprocess `python -m samd.operator` watching the
whole cluster. For each N, each measurement in a fresh namespace of its own:

1. the reference: `python -m bench.noop_operator`, a kopf operator with one no-op handler, gets N
   trivial objects (`noops.bench.samd.dev`) and the time until every one has its status set;
2. the control plane alone, no operator: N one-replica Deployments, until every one is available
   (each SecureModel has such a Deployment, so this is a floor under SAMD's time);
3. SAMD's objects alone, no operator: for each of N models, the bench writes what the operator would
   (the SecureModel, the objects its builders give, server-side applied, and two status writes),
   until every Deployment is available: a floor under SAMD's time for this object set;
4. SAMD: a ModelTrustPolicy with the signer's key and the key Secret are in place; N SecureModels
   that all point at one signed and encrypted model (file://, one replica each, so the fake node
   holds them) are created at once, and the time until every one is Ready (verified, key checked,
   certificates issued, RBAC, NetworkPolicy, Deployment available on the fake node) is taken.

Each operator handles one warm-up object before the clock starts, so start-up (imports, the first
listing, the CA Secret) is not counted. The clock starts before the first create and stops when a
watch sees the last object become ready; creating N objects (8 client threads) is inside the time
for both operators. Peak memory is the kernel's high-water mark of the operator process (VmHWM)
just before it is stopped. The namespace is deleted, and gone, before the next measurement.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from bench import noop_operator
from bench.report import REPO, Row

GROUP, VERSION, PLURAL = "samd.dev", "v1alpha1", "securemodels"
OPERATOR_NAMESPACE = "samd-system"
EXAMPLE = REPO / "examples" / "fraud-detection"
KEY_SECRET = "bench-model-key"  # noqa: S105 - a Secret's name

TARGET_SECONDS_1000 = 120.0
TARGET_RATE_VS_NOOP = 0.5
TARGET_PEAK_RSS_MB = 250.0
CREATE_THREADS = 8
MB = 1e6


@dataclass(frozen=True)
class Settings:
    counts: tuple[int, ...] = (100, 1000)
    timeout: float = 600.0  # per measurement, until every object is ready
    work: Path = REPO / ".local" / "bench" / "operator"


@dataclass(frozen=True)
class Measurement:
    operator: str
    count: int
    ready: int  # how many were ready when the clock stopped (== count unless it timed out)
    seconds: float  # first create to the last object ready (or to the timeout)
    create_seconds: float  # first create to the last create answered
    peak_rss_mb: float
    cpu_seconds: float  # the operator process's user + system time while the clock ran
    control_plane_cpu_seconds: float  # etcd, API server, controllers, scheduler and KWOK, same window
    api_requests: float  # requests the API server answered in the same window (watches excluded)

    @property
    def complete(self) -> bool:
        return self.ready == self.count

    @property
    def rate(self) -> float:
        return self.ready / self.seconds if self.seconds > 0 else 0.0


def log(message: str) -> None:
    print(f"[bench operator] {message}", file=sys.stderr, flush=True)


# --- the operator processes -------------------------------------------------------------------------


class OperatorProcess:
    """One operator subprocess with its log in a file; its peak memory is read from /proc."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd
            )
        self.log_path = log_path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.proc.args!r} exited with {self.proc.returncode}; see {self.log_path}")

    def peak_rss_mb(self) -> float:
        """The kernel's high-water mark of the process's resident memory (VmHWM, in kB)."""
        self.check_alive()
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
        raise RuntimeError(f"no VmHWM in /proc/{self.proc.pid}/status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process so far (all its threads), from /proc/<pid>/stat."""
        self.check_alive()
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class NoProcess:
    """The control-plane-alone measurement runs no operator."""

    def cpu_seconds(self) -> float:
        return 0.0

    def peak_rss_mb(self) -> float:
        return 0.0

    def stop(self) -> None:
        pass


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_plane_cpu_seconds() -> float:
    """CPU time used so far by the local control plane's processes (0 for a component not running)."""
    from hack.local_cluster import COMPONENTS, Settings, read_pid  # noqa: PLC0415

    settings = Settings.from_env()
    total = 0.0
    for component in COMPONENTS:
        pid = read_pid(settings, component)
        if pid is not None:
            with contextlib.suppress(OSError):
                total += process_cpu_seconds(pid)
    return total


def api_requests_so_far(api: client.ApiClient) -> float:
    """Requests the API server has answered since it started, from its metrics (watches excluded)."""
    response = api.call_api(
        *api.param_serialize(method="GET", resource_path="/metrics", auth_settings=["BearerToken"])
    )
    body: bytes = response.read() or b""  # type: ignore[no-untyped-call]
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("apiserver_request_total{") and 'verb="WATCH"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- watching readiness ------------------------------------------------------------------------------


class ReadinessWatch:
    """Watches one custom resource in one namespace; notes when every expected object is ready at once."""

    def __init__(
        self,
        api: client.ApiClient,
        resource: tuple[str, str, str],
        namespace: str,
        expected: set[str],
        is_ready: Callable[[dict[str, Any]], bool],
    ) -> None:
        # A client of its own, so that the watch never waits for the creating threads' connections.
        self._api = client.ApiClient(api.configuration)
        self.custom = client.CustomObjectsApi(self._api)
        self.resource = resource
        self.namespace = namespace
        self.expected = expected
        self.is_ready = is_ready
        self.ready: set[str] = set()
        self.all_ready_at: float | None = None
        self.listed = threading.Event()
        self.done = threading.Event()
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readiness-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self.listed.wait(30):
            raise RuntimeError(f"could not list {self.resource[2]} in {self.namespace}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        if not self._thread.is_alive():
            self._api.close()  # type: ignore[no-untyped-call]

    def wait(self, timeout: float) -> bool:
        finished = self.done.wait(timeout)
        if self.failure is not None:
            raise RuntimeError(f"watching {self.resource[2]} failed") from self.failure
        return finished

    def _observe(self, obj: dict[str, Any], deleted: bool = False) -> None:
        name = obj.get("metadata", {}).get("name")
        if name not in self.expected:
            return
        if not deleted and self.is_ready(obj):
            self.ready.add(name)
        else:
            self.ready.discard(name)
        if self.all_ready_at is None and len(self.ready) == len(self.expected):
            self.all_ready_at = time.monotonic()
            self.done.set()

    def _run(self) -> None:
        group, version, plural = self.resource
        try:
            while not self._stop.is_set():
                listing: dict[str, Any] = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
                    group, version, self.namespace, plural
                )
                for obj in listing.get("items", []):
                    self._observe(obj)
                self.listed.set()
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.custom.list_namespaced_custom_object,
                    group,
                    version,
                    self.namespace,
                    plural,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=5,
                )
                try:
                    for event in stream:
                        self._observe(event["object"], deleted=event["type"] == "DELETED")
                        if self._stop.is_set():
                            return
                except ApiException as error:
                    if error.status != 410:  # 410 Gone: the version is too old; list again
                        raise
        except BaseException as error:  # reported to the waiting thread
            self.failure = error
            self.done.set()


# --- one measurement ---------------------------------------------------------------------------------


def secure_model_ready(obj: dict[str, Any]) -> bool:
    generation = obj.get("metadata", {}).get("generation")
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(
                condition.get("status") == "True" and condition.get("observedGeneration") == generation
            )
    return False


@dataclass
class Target:
    """What one measurement runs: an operator, its objects and what ready means for them."""

    label: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    resource: tuple[str, str, str]
    body: Callable[[str, str], dict[str, Any]]  # (namespace, name) -> object
    is_ready: Callable[[dict[str, Any]], bool]
    prepare: Callable[[client.ApiClient, str], None] = lambda api, namespace: None
    namespace_labels: dict[str, str] = field(default_factory=dict)
    # How the objects come into being, when creating `body` objects is not all of it.
    create: Callable[[client.ApiClient, str, Sequence[str]], None] | None = None


@contextlib.contextmanager
def bench_namespace(api: client.ApiClient, labels: dict[str, str]) -> Iterator[str]:
    """A fresh namespace, deleted afterwards; waits until it is gone so runs do not overlap."""
    core = client.CoreV1Api(api)
    name = f"samd-bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"samd.dev/bench": "true", **labels})
        )
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                core.read_namespace(name)
            except ApiException as error:
                if error.status == 404:
                    break
                raise
            time.sleep(1)
        else:
            log(f"namespace {name} was still terminating after 600 s")


def create_all(api: client.ApiClient, target: Target, namespace: str, names: Sequence[str]) -> None:
    if target.create is not None:
        target.create(api, namespace, names)
        return
    custom = client.CustomObjectsApi(api)
    group, version, plural = target.resource

    def create(name: str) -> None:
        custom.create_namespaced_custom_object(
            group, version, namespace, plural, target.body(namespace, name)
        )

    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, names))


def wait_ready(api: client.ApiClient, target: Target, namespace: str, name: str, timeout: float) -> None:
    custom = client.CustomObjectsApi(api)
    group, version, plural = target.resource
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(  # type: ignore[assignment]
            group, version, namespace, plural, name
        )
        if target.is_ready(obj):
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"{target.label}: the warm-up object {namespace}/{name} was not ready in {timeout:.0f} s"
    )


def measure(api: client.ApiClient, target: Target, count: int, settings: Settings) -> Measurement:
    names = [f"bench-{index:05d}" for index in range(count)]
    with bench_namespace(api, target.namespace_labels) as namespace:
        target.prepare(api, namespace)
        log_path = settings.work / f"{target.label.replace(' ', '-')}-{count}.log"
        process = (
            OperatorProcess(target.argv, target.env, log_path, target.cwd) if target.argv else NoProcess()
        )
        try:
            create_all(api, target, namespace, ["warm-up"])
            wait_ready(api, target, namespace, "warm-up", timeout=120)
            readiness = ReadinessWatch(api, target.resource, namespace, set(names), target.is_ready)
            readiness.start()
            try:
                cpu_before, control_plane_before = process.cpu_seconds(), control_plane_cpu_seconds()
                requests_before = api_requests_so_far(api)
                started = time.monotonic()
                create_all(api, target, namespace, names)
                created = time.monotonic()
                readiness.wait(max(0.0, settings.timeout - (created - started)))
                finished = readiness.all_ready_at or time.monotonic()
                ready = len(readiness.ready) if readiness.all_ready_at is None else count
                cpu = process.cpu_seconds() - cpu_before
                control_plane_cpu = control_plane_cpu_seconds() - control_plane_before
                requests = api_requests_so_far(api) - requests_before
            finally:
                readiness.stop()
            peak = process.peak_rss_mb()
        finally:
            process.stop()
    result = Measurement(
        target.label,
        count,
        ready,
        finished - started,
        created - started,
        peak,
        cpu,
        control_plane_cpu,
        requests,
    )
    log(
        f"{target.label}, {count}: {result.ready}/{count} ready in {result.seconds:.1f} s "
        f"({result.rate:.1f}/s; created in {result.create_seconds:.1f} s), peak RSS {peak:.0f} MB, operator CPU {cpu:.1f} s, control plane CPU {control_plane_cpu:.1f} s; log {log_path}"
    )
    return result


# --- the targets ---------------------------------------------------------------------------------------

CONTROL_PLANE_ALONE = "plain Deployments"


def deployment_available(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(
        int(status.get("availableReplicas") or 0) >= 1
        and status.get("observedGeneration") == obj.get("metadata", {}).get("generation")
    )


def deployments_target() -> Target:
    """What the control plane alone takes: one-replica Deployments, no operator, until available."""

    def body(namespace: str, name: str) -> dict[str, Any]:
        labels = {"app": name}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "model", "image": "samd:0.1.0"}]},
                },
            },
        }

    # The generic object calls take any API group's path; apps/v1 Deployments fit them.
    return Target(
        label=CONTROL_PLANE_ALONE,
        argv=[],
        env={},
        cwd=REPO,
        resource=("apps", "v1", "deployments"),
        body=body,
        is_ready=deployment_available,
    )


def noop_target(kubeconfig: Path) -> Target:
    return Target(
        label="no-op kopf",
        argv=[sys.executable, "-m", "bench.noop_operator", "--log-format", "json"],
        env={"KUBECONFIG": str(kubeconfig)},
        cwd=REPO,
        resource=(noop_operator.GROUP, noop_operator.VERSION, noop_operator.PLURAL),
        body=lambda namespace, name: {
            "apiVersion": f"{noop_operator.GROUP}/{noop_operator.VERSION}",
            "kind": noop_operator.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"size": "small"},
        },
        is_ready=noop_operator.is_handled,
    )


def samd_target(kubeconfig: Path, artifacts: Any) -> Target:
    trust = uuid.uuid4().hex[:12]
    template = yaml.safe_load((EXAMPLE / "securemodel.yaml").read_text())
    spec = template["spec"]
    spec["artifact"] = {"uri": artifacts.artifact_uri}
    spec["signature"] = {"uri": artifacts.signature_uri}
    spec["encryption"]["keyRef"]["secretName"] = KEY_SECRET
    spec["serving"]["replicas"] = 1

    def body(namespace: str, name: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SecureModel",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }

    def prepare(api: client.ApiClient, namespace: str) -> None:
        client.CoreV1Api(api).create_namespaced_secret(namespace, artifacts.keyset_secret(KEY_SECRET))

    return Target(
        label="samd operator",
        argv=[sys.executable, "-m", "samd.operator", "--liveness", "", "--log-format", "json"],
        env={
            "KUBECONFIG": str(kubeconfig),
            "SAMD_NAMESPACE": OPERATOR_NAMESPACE,
            "SAMD_METRICS_PORT": "0",  # any free port: the benchmark does not scrape it
            # The model is a local file: the development switch, for its directory only.
            "SAMD_ALLOW_LOCAL_FILES": "true",
            "SAMD_LOCAL_FILE_ROOTS": str(Path(artifacts.artifact).parent),
        },
        cwd=Path("/"),
        resource=(GROUP, VERSION, PLURAL),
        body=body,
        is_ready=secure_model_ready,
        prepare=prepare,
        namespace_labels={"samd.dev/trust": trust},
    )


OBJECTS_ALONE = "SAMD's objects alone"


def samd_objects_target(samd: Target, artifacts: Any, public_key_pem: str) -> Target:
    """What the control plane alone takes for what SAMD writes: no operator, the bench writes it.

    For each model: the SecureModel, every object the operator would apply for it (built by the
    operator's own builders, applied by server-side apply in the operator's order), and the two
    status writes that take a model to Ready; done until every Deployment is available. A floor
    under SAMD's time that only fewer or smaller objects would lower.
    """
    from samd.operator.builders import build_owned_objects  # noqa: PLC0415
    from samd.operator.builders.certificates import (  # noqa: PLC0415
        CertificateAuthority,
        issue_client_certificate,
        issue_server_certificate,
    )
    from samd.operator.builders.context import ModelContext  # noqa: PLC0415
    from samd.operator.builders.serving import build_signature_config_map  # noqa: PLC0415
    from samd.operator.conditions import (  # noqa: PLC0415
        READY_DEPENDS_ON,
        Condition,
        ConditionType,
        merge_conditions,
        ready_condition,
    )
    from samd.operator.config import OperatorConfig  # noqa: PLC0415
    from samd.operator.reconcile import builder_settings  # noqa: PLC0415
    from samd.spec import TrustedSigner, parse_secure_model  # noqa: PLC0415

    spec = parse_secure_model(samd.body("", "")["spec"])
    settings = builder_settings(OperatorConfig(namespace=OPERATOR_NAMESPACE))
    signers = [TrustedSigner(name="ml-platform-ci", public_key=public_key_pem)]
    bundle = artifacts.signature.read_bytes()
    digest = artifacts.manifest_digest()
    now = datetime.datetime.now(datetime.UTC)
    authority = CertificateAuthority.generate(now)

    def status(serving: bool) -> dict[str, Any]:
        """What the operator writes: every check True, Serving (and so Ready) once available."""
        message = "written by the bench, in place of the operator"
        checks = {kind: Condition(kind, True, "Bench", message) for kind in READY_DEPENDS_ON}
        checks[ConditionType.SERVING] = Condition(ConditionType.SERVING, serving, "Bench", message)
        conditions = merge_conditions([], [*checks.values(), ready_condition(checks)], generation=1, now=now)
        return {
            "status": {
                "observedGeneration": 1,
                "conditions": conditions,
                "serving": {"deployment": "x", "service": "x", "readyReplicas": int(serving), "replicas": 1},
            }
        }

    def apply(api: client.ApiClient, manifest: dict[str, Any]) -> None:
        group_version, kind = manifest["apiVersion"], manifest["kind"]
        plural = f"{kind.lower()}s" if not kind.endswith("y") else f"{kind[:-1].lower()}ies"
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        meta = manifest["metadata"]
        response = api.call_api(
            *api.param_serialize(
                method="PATCH",
                resource_path=f"{root}/namespaces/{meta['namespace']}/{plural}/{meta['name']}",
                query_params=[("fieldManager", "samd-operator"), ("force", "true")],
                header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
                body=manifest,
                auth_settings=["BearerToken"],
            )
        )
        response.read()  # type: ignore[no-untyped-call]
        if response.status >= 300:
            raise RuntimeError(
                f"applying {kind} {meta['name']}: {response.status} {(response.data or b'')[:300]!r}"
            )

    def create(api: client.ApiClient, namespace: str, names: Sequence[str]) -> None:
        custom = client.CustomObjectsApi(api)

        def one(name: str) -> None:
            model = custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, samd.body(namespace, name)
            )
            uid = model["metadata"]["uid"]  # type: ignore[index]
            ctx = ModelContext(
                name=name, namespace=namespace, uid=uid, spec=spec, manifest_digest=digest, settings=settings
            )
            certificates = [issue_server_certificate(authority, ctx, now)]
            certificates += [
                issue_client_certificate(authority, ctx, c.name, now) for c in spec.serving.clients
            ]
            owned = build_owned_objects(ctx, now, signers)
            for manifest in [build_signature_config_map(ctx, bundle), *certificates, *owned]:
                apply(api, manifest)
            for serving in (False, True):
                custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, name, status(serving)
                )

        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(one, names))

    return Target(
        label=OBJECTS_ALONE,
        argv=[],
        env={},
        cwd=REPO,
        resource=("apps", "v1", "deployments"),  # named after their model
        body=samd.body,
        is_ready=deployment_available,
        prepare=samd.prepare,
        namespace_labels=samd.namespace_labels,
        create=create,
    )


@contextlib.contextmanager
def trust_policy(api: client.ApiClient, label: str, public_key_pem: str) -> Iterator[None]:
    policy = yaml.safe_load((EXAMPLE / "trustpolicy.yaml").read_text())
    policy["metadata"]["name"] = f"samd-bench-{label}"
    policy["spec"]["namespaceSelector"] = {"matchLabels": {"samd.dev/trust": label}}
    policy["spec"]["signers"][0]["publicKey"] = public_key_pem
    # Every SecureModel of the run shares one artifact under its own generated name, which the
    # artifact's signature cannot name: measure the operator without the name and version binding.
    policy["spec"]["versionPolicy"] = {"requireSignedVersion": False}
    policy["spec"]["allowLocalFiles"] = True  # the benchmark's model is a local file
    custom = client.CustomObjectsApi(api)
    custom.create_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy)
    try:
        yield
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy["metadata"]["name"])


def install_noop_crd(api: client.ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(api)
    custom = client.CustomObjectsApi(api)
    try:
        extensions.create_custom_resource_definition(noop_operator.crd_manifest())  # type: ignore[arg-type]
    except ApiException as error:
        if error.status != 409:
            raise
    deadline = time.monotonic() + 60
    while True:
        try:
            custom.list_cluster_custom_object(
                noop_operator.GROUP, noop_operator.VERSION, noop_operator.PLURAL
            )
            return
        except ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as error:
        if error.status != 409:
            raise


def run(settings: Settings) -> list[Row]:
    # The test-support helpers set up a cluster exactly as the integration tests do.
    from tests.support.cluster import local_control_plane  # noqa: PLC0415
    from tests.support.crds import install_crds  # noqa: PLC0415
    from tests.support.models import make_model  # noqa: PLC0415

    settings.work.mkdir(parents=True, exist_ok=True)
    measurements: dict[tuple[str, int], Measurement] = {}
    with local_control_plane() as cluster, tempfile.TemporaryDirectory(prefix="samd-bench-model-") as scratch:
        api = cluster.api_client()
        install_crds(api)
        install_noop_crd(api)
        ensure_namespace(api, OPERATOR_NAMESPACE)
        artifacts = make_model(Path(scratch) / "model")
        noop = noop_target(cluster.kubeconfig)
        samd = samd_target(cluster.kubeconfig, artifacts)
        with trust_policy(api, samd.namespace_labels["samd.dev/trust"], artifacts.public_key_pem):
            for count in settings.counts:
                objects_alone = samd_objects_target(samd, artifacts, artifacts.public_key_pem)
                for target in (noop, deployments_target(), objects_alone, samd):
                    measurements[(target.label, count)] = measure(api, target, count, settings)
    return build_rows(measurements, settings)


# --- the table ------------------------------------------------------------------------------------------


def _time(m: Measurement) -> str:
    if m.complete:
        return f"{m.seconds:.1f} s ({m.rate:.1f}/s)"
    return f"{m.ready}/{m.count} ready after {m.seconds:.0f} s"


def build_rows(measurements: dict[tuple[str, int], Measurement], settings: Settings) -> list[Row]:
    rows: list[Row] = []
    for count in settings.counts:
        samd, noop = measurements[("samd operator", count)], measurements[("no-op kopf", count)]
        alone = measurements[(CONTROL_PLANE_ALONE, count)]
        objects = measurements[(OBJECTS_ALONE, count)]
        ratio = samd.rate / noop.rate if noop.rate else 0.0
        rows.append(
            Row(
                f"{count} SecureModels applied at once until all Ready",
                _time(samd),
                f"{_time(noop)} no-op kopf",
                f"{ratio:.2f}x rate",
                f">= {TARGET_RATE_VS_NOOP}x rate",
                samd.complete and ratio >= TARGET_RATE_VS_NOOP,
            )
        )
        rows.append(
            Row(
                f"control plane alone: {count} one-replica Deployments until available",
                _time(alone),
                f"SAMD {_time(samd)}",
                f"SAMD takes {samd.seconds / alone.seconds:.1f}x" if alone.complete and alone.seconds else "",
            )
        )
        rows.append(
            Row(
                f"control plane alone: SAMD's objects and status writes for {count} models, "
                "written by the bench, until every Deployment is available",
                _time(objects),
                f"SAMD {_time(samd)}",
                f"SAMD takes {samd.seconds / objects.seconds:.2f}x"
                if objects.complete and objects.seconds
                else "",
            )
        )
        if count == 1000:
            rows.append(
                Row(
                    "1000 SecureModels until all Ready",
                    f"{samd.seconds:.1f} s",
                    f"{objects.seconds:.1f} s SAMD's objects alone",
                    "",
                    f"< {TARGET_SECONDS_1000:.0f} s",
                    samd.complete and samd.seconds < TARGET_SECONDS_1000,
                )
            )
        rows.append(
            Row(
                f"operator peak RSS, {count} SecureModels",
                f"{samd.peak_rss_mb:.0f} MB",
                f"{noop.peak_rss_mb:.0f} MB no-op kopf",
                f"{samd.peak_rss_mb / noop.peak_rss_mb:.2f}x" if noop.peak_rss_mb else "",
                f"< {TARGET_PEAK_RSS_MB:.0f} MB" if count == 1000 else "",
                samd.peak_rss_mb < TARGET_PEAK_RSS_MB if count == 1000 else None,
            )
        )
        rows.append(
            Row(
                f"operator CPU time per object, {count} objects",
                f"{samd.cpu_seconds / count * 1000:.0f} ms",
                f"{noop.cpu_seconds / count * 1000:.0f} ms no-op kopf",
                f"{samd.cpu_seconds / noop.cpu_seconds:.1f}x" if noop.cpu_seconds else "",
            )
        )
        rows.append(
            Row(
                f"control-plane CPU time per object, {count} objects",
                f"{samd.control_plane_cpu_seconds / count * 1000:.0f} ms",
                f"{noop.control_plane_cpu_seconds / count * 1000:.0f} ms no-op kopf; "
                f"{alone.control_plane_cpu_seconds / count * 1000:.0f} ms per plain Deployment; "
                f"{objects.control_plane_cpu_seconds / count * 1000:.0f} ms per model's objects alone",
                f"{samd.control_plane_cpu_seconds / noop.control_plane_cpu_seconds:.1f}x"
                if noop.control_plane_cpu_seconds
                else "",
            )
        )
        rows.append(
            Row(
                f"API requests per object, {count} objects (watches excluded)",
                f"{samd.api_requests / count:.1f}",
                f"{noop.api_requests / count:.1f} no-op kopf; {alone.api_requests / count:.1f} per plain Deployment; "
                f"{objects.api_requests / count:.1f} per model's objects alone",
                f"{samd.api_requests / noop.api_requests:.1f}x" if noop.api_requests else "",
            )
        )
        rows.append(
            Row(
                f"creating {count} objects (8 client threads), inside the times above",
                f"{samd.create_seconds:.1f} s",
                f"{noop.create_seconds:.1f} s no-op kopf",
            )
        )
    return rows


NOTES = """\
How: against the local control plane (etcd, kube-apiserver, controller-manager, scheduler and a
KWOK fake node, all on this machine and sharing its CPUs with the operator), each operator runs as
a subprocess watching the whole cluster and handles one warm-up object first. In one fresh namespace
per measurement, N objects are created at once by 8 client threads; the clock runs from the first
create until a watch sees the last object ready. Ready for SAMD is the `Ready` condition `True` for
the current generation: the signature verified under a ModelTrustPolicy, the data key unwrapped with
the key Secret, certificates issued, RBAC, NetworkPolicy, Service and a one-replica Deployment
available on the fake node. All N SecureModels point at one signed and
encrypted model (file://), each verified on its own. The reference is a kopf operator with default
settings whose one on.create handler patches `status.handled` on a `noops.bench.samd.dev` object.
The rate ratio is SAMD's models per second over the reference's objects per second. A second
reference, with no operator, is the control plane alone rolling out N one-replica Deployments: a
floor under SAMD's time that no operator change moves (each SecureModel also has one). A third,
also with no operator: the bench itself writes, for each model, the SecureModel, every object the
operator would apply (built by the operator's builders, server-side applied in its order by 8
client threads) and the two status writes that take a model to Ready, until every Deployment is
available: what the control plane needs for SAMD's object set, which only fewer or smaller objects
would lower; SAMD's time over it is the operator's own overhead. Peak RSS is the kernel's
high-water mark (VmHWM) of the operator process at the end of the measurement. CPU times are the
operator's and the control plane's (etcd, API server, controller-manager, scheduler, KWOK) user
plus system time while the clock ran; the machine is shared, so the times are only comparable
within one run. API requests are the API server's own count (its metrics) in the same window.

What bounds SAMD here: the control plane and the operator share two CPUs and the run is CPU-bound
(operator and control-plane CPU add up to about two CPUs for the whole time). The objects-alone row
is the floor for the object set the issue asks of each model: the SecureModel and its two status
writes, a ServiceAccount, three Roles, three RoleBindings and one per grant, one NetworkPolicy, two
ConfigMaps, the server and client certificate Secrets, a Service and a hardened one-replica
Deployment, whose rollout (ReplicaSet, Pod, their status updates, endpoints) is the largest share
and costs the control plane about twice what a plain Deployment's does. SAMD's time over that floor
is the operator's own work: watching, verifying, checking the key, issuing certificates and its
HTTP requests. The no-op reference handles one small object per item, so its rate is out of reach
of anything that rolls out a Deployment per item (see the plain Deployments row)."""


def section(rows: Sequence[Row], command: str) -> str:
    from bench.report import markdown_table, run_stamp  # noqa: PLC0415

    return f"{run_stamp(command)}\n\n{markdown_table(rows)}\n\n{NOTES}\n"


def parse_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"model counts {text!r}: write e.g. 100,1000") from None
    if not counts or any(count < 1 for count in counts):
        raise ValueError(f"model counts {text!r}: write one or more positive numbers, e.g. 100,1000")
    return counts
