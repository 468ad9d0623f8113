"""The end-to-end admission suite: pods created through the real API server per second, and their p99.

This is how Kyverno publishes its admission figure (pods created per second through the API server
and the p99 of those creates), so the two can stand side by side. Against the real local control plane
(`hack/local-cluster`), in one run and one namespace covered by a ModelTrustPolicy:

1. set-up: the operator makes one SecureModel of the fraud-detection example Ready; the pod template
   of the Deployment it built is the pod the benchmark creates (the pod SAMD's webhook must verify:
   model label, loader, whole-pod comparison, signature). The operator is then stopped and the
   Deployment deleted, so that no ReplicaSet adopts (and deletes) the benchmark's pods;
2. three cases, each after the previous one's pods are gone:
   - no webhook: the API server alone (the reference);
   - no-op webhook: the same server stack as SAMD's (`python -m bench.admission serve noop`),
     registered with SAMD's own rules and match conditions, allowing everything;
   - SAMD: `python -m samd.webhook` watching the cluster, registered the same way.
   In each, `connections` keep-alive HTTPS connections (aiohttp, the kubeconfig's client certificate)
   each create the next pod (generateName) as soon as the previous create answered, for a fixed
   duration after a warm-up. Every create must answer 201; a refusal is a failure of the run.

Pods are created, never scheduled (the local control plane runs no scheduler), so the figure is the
admission path: authentication, authorization, the webhook round trip, and the write to etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bench.operator import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    bench_namespace,
    ensure_namespace,
    process_cpu_seconds,
    samd_target,
    trust_policy,
    wait_ready,
)
from bench.report import REPO, Row

TARGET_RATE_VS_NONE = 0.8
TARGET_P99_VS_NONE = 2.0
CONFIGURATION = "samd-bench-e2e"
CASES = ("none", "noop", "samd")
LABELS = {"none": "no webhook", "noop": "no-op webhook", "samd": "SAMD's webhook"}
# Kyverno's published figure (its docs' scaling section): beside ours, with the machine sizes stated.
KYVERNO = "Kyverno (published): 1,875 pods/s, p99 445 ms, 3 replicas on 32 vCPU"


@dataclass(frozen=True)
class Settings:
    duration: float = 15.0
    warmup: float = 3.0
    connections: int = 8
    rounds: int = 2  # the three cases in turn, this many times; each case's best round is kept
    work: Path = REPO / ".local" / "bench" / "admission-e2e"


@dataclass(frozen=True)
class Measurement:
    case: str
    created: int
    seconds: float
    latencies_ms: Sequence[float] = field(repr=False)
    failures: int
    first_failure: str
    webhook_cpu_seconds: float  # of the webhook process over the window (0 for no webhook)
    verified: int  # pods SAMD's webhook logged as allowed with reason Verified (the proof it ran)
    load_average: float

    @property
    def rate(self) -> float:
        return self.created / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def log(message: str) -> None:
    print(f"[admission-e2e] {message}", file=sys.stderr, flush=True)


# --- set-up -----------------------------------------------------------------------------------------


def model_pod(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The pod of the Deployment the operator built for the model, as a pod to create by generateName."""
    deployment = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    template: dict[str, Any] = api.sanitize_for_serialization(deployment.spec.template)  # type: ignore[no-untyped-call]
    metadata = {key: value for key, value in template["metadata"].items() if key in ("labels", "annotations")}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**metadata, "generateName": f"{name}-"},
        "spec": template["spec"],
    }


def remove_controllers(api: client.ApiClient, namespace: str) -> None:
    """Delete the model's Deployment and ReplicaSets so nothing adopts the benchmark's pods."""
    apps = client.AppsV1Api(api)
    apps.delete_collection_namespaced_deployment(namespace, propagation_policy="Foreground")
    apps.delete_collection_namespaced_replica_set(namespace, propagation_policy="Foreground")
    deadline = time.monotonic() + 60
    while (
        apps.list_namespaced_replica_set(namespace).items or apps.list_namespaced_deployment(namespace).items
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the model's Deployment in {namespace} was not deleted within 60 s")
        time.sleep(0.5)
    delete_pods(api, namespace)


def delete_pods(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    deadline = time.monotonic() + 300
    while core.list_namespaced_pod(namespace, limit=1).items:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pods in {namespace} were not deleted within 300 s")
        time.sleep(0.5)


@contextlib.contextmanager
def running(argv: Sequence[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd="/"
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_https(url: str, ca: Path, process: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    import urllib.request  # noqa: PLC0415

    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}; see its log under {REPO / '.local'}"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2, context=context) as response,  # noqa: S310 - loopback
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


@contextlib.contextmanager
def registered(api: client.ApiClient, url: str, ca: Path) -> Iterator[None]:
    """SAMD's webhook configuration (its rules, match conditions and failure policy), pointed at `url`."""
    from samd.webhook.configuration import build_webhook_configuration  # noqa: PLC0415

    registrations = client.AdmissionregistrationV1Api(api)
    configuration = build_webhook_configuration(name=CONFIGURATION, url=url, ca_bundle=ca.read_bytes())
    registrations.create_validating_webhook_configuration(configuration)  # type: ignore[arg-type]
    try:
        time.sleep(2)  # the API server picks up webhook configurations asynchronously
        yield
    finally:
        with contextlib.suppress(ApiException):
            registrations.delete_validating_webhook_configuration(CONFIGURATION)
        time.sleep(2)


@contextlib.contextmanager
def webhook(case: str, api: client.ApiClient, kubeconfig: Path, work: Path) -> Iterator[int | None]:
    """Nothing, the no-op server or SAMD's webhook, registered; yields the server's PID."""
    if case == "none":
        yield None
        return
    tls = work / "tls"
    if not (tls / "tls.crt").exists():
        subprocess.run(
            [sys.executable, "-m", "samd.webhook", "--write-dev-certificates", str(tls)], check=True, cwd="/"
        )
    from tests.support.webhook import free_port  # noqa: PLC0415 - test support, like the cluster's

    port = free_port()
    certificate = ["--cert", str(tls / "tls.crt"), "--key", str(tls / "tls.key")]
    if case == "noop":
        port_file = work / "noop.port"
        port_file.unlink(missing_ok=True)
        state = work / "empty-state.json"
        state.write_text("{}")
        argv = [sys.executable, "-m", "bench.admission", "serve", "noop", "--state", str(state),
                *certificate, "--port-file", str(port_file)]  # fmt: skip
        env = {"PYTHONPATH": str(REPO)}
    else:
        argv = [sys.executable, "-m", "samd.webhook", "--host", "127.0.0.1", "--port", str(port), *certificate,
                "--log-format", "json"]  # fmt: skip
        env = {"KUBECONFIG": str(kubeconfig)}
    with running(argv, env, work / f"{case}.log") as process:
        if case == "noop":
            deadline = time.monotonic() + 30
            while not port_file.exists():
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the no-op webhook did not start; see {work / 'noop.log'}")
                time.sleep(0.1)
            port = int(port_file.read_text())
        else:
            wait_https(f"https://127.0.0.1:{port}/readyz", tls / "ca.crt", process, "SAMD's webhook")
        with registered(api, f"https://127.0.0.1:{port}/validate", tls / "ca.crt"):
            yield process.pid


# --- the load ---------------------------------------------------------------------------------------


async def _create_pods(
    api: client.ApiClient, namespace: str, pod: dict[str, Any], settings: Settings, pid: int | None
) -> tuple[int, float, list[float], int, str, float]:
    import aiohttp  # noqa: PLC0415

    configuration = api.configuration
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    context.load_cert_chain(configuration.cert_file, configuration.key_file)
    url = f"{configuration.host}/api/v1/namespaces/{namespace}/pods"
    body = json.dumps(pod).encode()
    latencies: list[float] = []
    measuring = stop = False
    created = failures = 0
    first_failure = ""

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal created, failures, first_failure
        while not stop:
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                answer = await response.read()
            elapsed = time.perf_counter() - started
            if not measuring:
                continue
            if response.status == 201:
                created += 1
                latencies.append(elapsed * 1000)
            else:
                failures += 1
                first_failure = first_failure or f"{response.status}: {answer[:300]!r}"

    connector = aiohttp.TCPConnector(ssl=context, limit=settings.connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(settings.connections)]
        await asyncio.sleep(settings.warmup)
        measuring = True
        cpu_before = process_cpu_seconds(pid) if pid else 0.0
        started = time.perf_counter()
        await asyncio.sleep(settings.duration)
        measuring = False
        seconds = time.perf_counter() - started
        cpu = process_cpu_seconds(pid) - cpu_before if pid else 0.0
        stop = True
        await asyncio.gather(*tasks)
    return created, seconds, latencies, failures, first_failure, cpu


def verified_pods(log_path: Path, namespace: str) -> int:
    """Pods SAMD's webhook allowed as Verified in this case's log: it ran every check for each one."""
    count = 0
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if (
            entry.get("kind") == "Pod"
            and entry.get("namespace") == namespace
            and entry.get("reason") == "Verified"
        ):
            count += 1
    return count


def measure(
    case: str,
    api: client.ApiClient,
    kubeconfig: Path,
    *,
    namespace: str,
    pod: dict[str, Any],
    settings: Settings,
) -> Measurement:
    delete_pods(api, namespace)
    with webhook(case, api, kubeconfig, settings.work) as pid:
        load = os.getloadavg()[0]
        created, seconds, latencies, failures, first_failure, cpu = asyncio.run(
            _create_pods(api, namespace, pod, settings, pid)
        )
    verified = verified_pods(settings.work / "samd.log", namespace) if case == "samd" else 0
    result = Measurement(case, created, seconds, latencies, failures, first_failure, cpu, verified, load)
    if not created:
        raise RuntimeError(f"{LABELS[case]}: no pod was created; the first answer was {first_failure}")
    log(
        f"{LABELS[case]}: {result.rate:,.0f} pods/s, p50 {result.percentile(0.5):.1f} ms, "
        f"p99 {result.percentile(0.99):.1f} ms, {failures} failed"
    )
    return result


def run(settings: Settings) -> list[Row]:
    from tests.support.cluster import local_control_plane  # noqa: PLC0415
    from tests.support.crds import install_crds  # noqa: PLC0415
    from tests.support.models import make_model  # noqa: PLC0415

    settings.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Measurement] = {}
    with local_control_plane() as cluster, tempfile.TemporaryDirectory(prefix="samd-bench-e2e-") as scratch:
        api = cluster.api_client()
        install_crds(api)
        ensure_namespace(api, OPERATOR_NAMESPACE)
        artifacts = make_model(Path(scratch) / "model")
        samd = samd_target(cluster.kubeconfig, artifacts)
        with (
            trust_policy(api, samd.namespace_labels["samd.dev/trust"], artifacts.public_key_pem),
            bench_namespace(api, samd.namespace_labels) as namespace,
        ):
            samd.prepare(api, namespace)
            operator = OperatorProcess(samd.argv, samd.env, settings.work / "operator.log", samd.cwd)
            try:
                client.CustomObjectsApi(api).create_namespaced_custom_object(
                    *samd.resource[:2], namespace, samd.resource[2], samd.body(namespace, "fraud-detection")
                )
                wait_ready(api, samd, namespace, "fraud-detection", timeout=120)
                pod = model_pod(api, namespace, "fraud-detection")
            finally:
                operator.stop()
            remove_controllers(api, namespace)
            for case in (case for _ in range(settings.rounds) for case in CASES):
                result = measure(
                    case,
                    api,
                    cluster.kubeconfig,
                    namespace=namespace,
                    pod=copy.deepcopy(pod),
                    settings=settings,
                )
                if case not in results or result.rate > results[case].rate:
                    results[case] = result
            delete_pods(api, namespace)
    return build_rows(results, settings)


# --- the table ------------------------------------------------------------------------------------------


def build_rows(results: dict[str, Measurement], settings: Settings) -> list[Row]:
    none, noop, samd = results["none"], results["noop"], results["samd"]
    failures = sum(result.failures for result in results.values())

    def summary(result: Measurement) -> str:
        return (
            f"{result.rate:,.0f} pods/s, p50 {result.percentile(0.5):.1f} ms, "
            f"p99 {result.percentile(0.99):.1f} ms"
        )

    rate_ratio = samd.rate / none.rate
    p99_ratio = samd.percentile(0.99) / none.percentile(0.99)
    cpu_per_pod = samd.webhook_cpu_seconds / samd.created * 1e6 if samd.created else float("nan")
    noop_cpu_per_pod = noop.webhook_cpu_seconds / noop.created * 1e6 if noop.created else float("nan")
    return [
        Row(f"no webhook, {settings.connections} connections (reference)", summary(none)),
        Row("no-op webhook, same rules and server stack", summary(noop), summary(none), f"{noop.rate / none.rate:.2f}x"),
        Row(
            "SAMD's webhook: pods created per second",
            f"{samd.rate:,.0f}/s",
            f"{none.rate:,.0f}/s (no webhook)",
            f"{rate_ratio:.2f}x",
            f">= {TARGET_RATE_VS_NONE}x",
            rate_ratio >= TARGET_RATE_VS_NONE,
        ),
        Row(
            "SAMD's webhook: p99 of a create",
            f"{samd.percentile(0.99):.1f} ms",
            f"{none.percentile(0.99):.1f} ms (no webhook)",
            f"{p99_ratio:.2f}x",
            f"<= {TARGET_P99_VS_NONE}x",
            p99_ratio <= TARGET_P99_VS_NONE,
        ),
        Row("webhook CPU per admitted pod", f"{cpu_per_pod:,.0f} us (SAMD)", f"{noop_cpu_per_pod:,.0f} us (no-op)"),
        Row(
            "pods SAMD's webhook verified, of those created in its case (warm-up included)",
            f"{samd.verified:,}",
            f"{samd.created:,} created in the measured window",
            "",
            ">= created",
            samd.verified >= samd.created,
        ),
        Row("creates refused or failed (must be 0)", f"{failures}", samd.first_failure or noop.first_failure or none.first_failure, "", "0", failures == 0),
        Row(
            "machine load average (1 min) at each case's start",
            ", ".join(f"{LABELS[case]} {results[case].load_average:.1f}" for case in CASES),
        ),
        Row("published comparison", KYVERNO, f"this run: {os.cpu_count()} CPUs shared by the API server, etcd, webhook and load"),
    ]  # fmt: skip


def section(rows: Sequence[Row], settings: Settings, command: str) -> str:
    from bench.report import markdown_table, run_stamp  # noqa: PLC0415

    return (
        f"{run_stamp(command)}\n\nPods created through the real local API server by {settings.connections} "
        f"keep-alive connections for {settings.duration:.0f} s after {settings.warmup:.0f} s of warm-up, "
        "each pod the one the operator built for a Ready SecureModel (so SAMD's webhook runs every check), "
        "with no webhook, a no-op webhook and SAMD's webhook registered in the same run. See "
        "`bench/admission_e2e.py` for the method.\n\n" + markdown_table(rows) + "\n"
    )
