"""The admission suite: AdmissionReviews per second and their latency over keep-alive TLS on loopback.

Three servers, one after the other, each in its own process (so that it never shares the load
generator's interpreter lock), all the same stack (`samd.webhook.server`: TLS 1.3, parsing, audit
log line, metrics):

- no-op: a decider that allows everything without looking (the reference);
- warm: the real decider (`samd.webhook.decide.PolicyDecider`) over in-memory watched state, with
  the verification cache warm: every pod is the one the operator builds for one of the signed
  models, so the request runs every policy check but verifies no signature;
- cache-miss: the same, with a cache of ONE entry while the pods name the models round-robin, so
  every request verifies its model's signature bundle (the server's cache counters are read back
  to show that misses == requests).

The load generator is a closed loop: `connections` keep-alive TLS connections (aiohttp), each
sending the next review as soon as the previous answer arrived, for a fixed duration after a
warm-up. Every answer is checked (allowed, and for the real decider reason Verified). Latency is
measured per request by the generator; the server's CPU time per review comes from the kernel's
accounting of the server process (/proc/PID/stat) over the measured window.

`python -m bench.admission serve ...` is the server side; the suite starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import REPO, Row

TARGET_WARM_RPS = 1000.0
TARGET_WARM_P99_MS = 10.0
TARGET_VS_NOOP = 0.7
TARGET_MISS_P99_MS = 25.0

LOADER_IMAGE = "samd:0.1.0"
UID_PLACEHOLDER = "00000000-0000-4000-8000-000000000000"
CASES = ("noop", "warm", "miss")


@dataclass(frozen=True)
class Settings:
    duration: float = 10.0
    warmup: float = 2.0
    connections: int = 4
    models: int = 64
    models_per_namespace: int = 8
    repeat: int = 3  # runs per case; the best is kept
    loop: str = "auto"  # auto: uvloop when installed, else asyncio
    work: Path = REPO / ".local" / "bench" / "admission"


@dataclass(frozen=True)
class Measurement:
    case: str
    requests: int
    seconds: float
    latencies_ms: Sequence[float] = field(repr=False)
    server_cpu_seconds: float
    client_cpu_seconds: float
    failures: int
    first_failure: str
    cache: dict[str, float]
    load_average: float  # of the machine (1 min) when the case started: other work shares the CPUs

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50(self) -> float:
        return self.percentile(0.50)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    @property
    def cpu_us_per_review(self) -> float:
        return self.server_cpu_seconds / self.requests * 1e6

    @property
    def client_cpu_us_per_review(self) -> float:
        return self.client_cpu_seconds / self.requests * 1e6


def log(message: str) -> None:
    print(f"[bench admission] {message}", file=sys.stderr, flush=True)


# --- the workload: signed models, their state and the pods the operator builds -----------------------


def prepare(work: Path, count: int, per_namespace: int) -> tuple[Path, Path]:
    """Sign `count` models, `per_namespace` in each namespace; write the watched state (state.json)
    and one review per model (reviews.json)."""
    from tests.support.signing import write_key_pair  # noqa: PLC0415

    from samd.operator.builders.context import BuilderSettings, ModelContext  # noqa: PLC0415
    from samd.operator.builders.serving import build_deployment, build_signature_config_map  # noqa: PLC0415
    from samd.operator.config import OperatorConfig  # noqa: PLC0415
    from samd.signing import Signer, sign_model  # noqa: PLC0415
    from samd.spec import parse_secure_model  # noqa: PLC0415

    signing_key = write_key_pair(work)
    public_pem = signing_key.public_pem.read_text()
    signer = Signer.from_private_key(signing_key.private_pem)
    # The pods the operator builds with its default settings (the webhook compares with those).
    settings = BuilderSettings.of(OperatorConfig(default_image=LOADER_IMAGE))
    models: list[dict[str, Any]] = []
    config_maps: list[dict[str, Any]] = []
    reviews: list[str] = []
    model_namespaces: list[str] = []
    for index in range(count):
        name = f"model-{index:03d}"
        namespace = f"ml-{index // per_namespace:02d}"
        directory = work / "models" / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.onnx").write_bytes(os.urandom(4096))
        signature = work / "models" / f"{name}.sig"
        # Signed as the SecureModel's name and version, as the trust policy requires by default.
        digest = sign_model(
            directory, signature, signer, model_name=name, model_version="1.4.2"
        ).manifest_digest
        secure_model = {
            "apiVersion": "samd.dev/v1alpha1",
            "kind": "SecureModel",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1},
            "spec": {
                "format": "onnx",
                "version": "1.4.2",
                "owner": "ml-ops",
                "artifact": {"uri": f"s3://models/{name}/model.samd"},
                "signature": {"uri": f"s3://models/{name}/model.sig"},
                "encryption": {"keyRef": {"provider": "local", "secretName": f"{name}-keys"}},
                "serving": {"clients": [{"name": "checkout"}]},
            },
        }
        context = ModelContext(
            name=name,
            namespace=namespace,
            uid=f"uid-{name}",
            spec=parse_secure_model(secure_model["spec"]),  # type: ignore[arg-type]
            manifest_digest=digest,
            settings=settings,
        )
        deployment = build_deployment(context)
        assert deployment is not None
        template = deployment["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                **template["metadata"],
                "generateName": f"{name}-6d4cf56db6-",
                "namespace": namespace,
            },
            "spec": template["spec"],
        }
        models.append(secure_model)
        model_namespaces.append(namespace)
        config_maps.append(build_signature_config_map(context, signature.read_bytes()))
        reviews.append(_review(pod, namespace))
    policy = {
        "apiVersion": "samd.dev/v1alpha1",
        "kind": "ModelTrustPolicy",
        "metadata": {"name": "production", "uid": "uid-production", "generation": 1},
        "spec": {
            "namespaceSelector": {"matchLabels": {"samd.dev/protected": "true"}},
            "mode": "enforce",
            "signers": [{"name": "ml-ci", "publicKey": public_pem}],
            "allowedFormats": ["onnx"],
        },
    }
    namespaces = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/metadata.name": name, "samd.dev/protected": "true"},
            },
        }
        for name in sorted(set(model_namespaces))
    ]
    state_file, reviews_file = work / "state.json", work / "reviews.json"
    state_file.write_text(
        json.dumps(
            {"models": models, "policies": [policy], "namespaces": namespaces, "config_maps": config_maps}
        )
    )
    reviews_file.write_text(json.dumps(reviews))
    return state_file, reviews_file


def _review(pod: dict[str, Any], namespace: str) -> str:
    """A CREATE of `pod` as the API server sends it (the replicaset controller creating it)."""
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": UID_PLACEHOLDER,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {
                    "username": "system:serviceaccount:kube-system:replicaset-controller",
                    "uid": "5d8f2c7e-93a1-4f0b-8d7e-2b6c1a9e4f3d",
                    "groups": [
                        "system:serviceaccounts",
                        "system:serviceaccounts:kube-system",
                        "system:authenticated",
                    ],
                },
                "object": pod,
                "oldObject": None,
                "dryRun": False,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        }
    )


# --- the server process ---------------------------------------------------------------------------------


class AllowEverything:
    """The no-op reference: the same server, a decider that does nothing."""

    ready = True

    async def decide(self, request: Any) -> Any:
        from samd.webhook.review import Decision  # noqa: PLC0415

        return Decision(True, "no-op webhook", "NoOp")


def _serve(arguments: argparse.Namespace) -> int:
    import prometheus_client  # noqa: PLC0415

    from samd.logs import configure_logging  # noqa: PLC0415
    from samd.webhook.cache import VerificationCache  # noqa: PLC0415
    from samd.webhook.config import WebhookConfig  # noqa: PLC0415
    from samd.webhook.metrics import WebhookMetrics  # noqa: PLC0415
    from samd.webhook.server import AdmissionServer, serve_until_signalled  # noqa: PLC0415

    configure_logging("INFO", "json")
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    cache: VerificationCache[Any] = VerificationCache(max_entries=1 if arguments.mode == "miss" else 4096)
    decider: Any
    if arguments.mode == "noop":
        decider = AllowEverything()
    else:
        from samd.webhook.decide import DecisionConfig, PolicyDecider  # noqa: PLC0415
        from samd.webhook.state import WatchedState  # noqa: PLC0415

        objects = json.loads(Path(arguments.state).read_text())
        decider = PolicyDecider(WatchedState.from_objects(**objects), cache, DecisionConfig((LOADER_IMAGE,)))
    config = WebhookConfig(
        cert_file=Path(arguments.cert), key_file=Path(arguments.key), host="127.0.0.1", port=0
    )
    server = AdmissionServer(config, decider, WebhookMetrics(cache_stats=lambda: cache.stats))

    def listening(port: int) -> None:
        staging = Path(arguments.port_file + ".new")
        staging.write_text(str(port))
        staging.replace(arguments.port_file)

    runner = _loop_factory(arguments.loop)
    with asyncio.Runner(loop_factory=runner) as loop_runner:
        loop_runner.run(serve_until_signalled(server, listening))
    return 0


def _loop_factory(name: str) -> Any:
    if name == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        if name == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def loop_in_use(name: str) -> str:
    return "asyncio" if _loop_factory(name) is None else "uvloop"


# --- the load generator ------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Window:
    completed: int
    seconds: float
    latencies_ms: list[float]
    cpu_seconds: float
    client_cpu_seconds: float
    failures: int
    first_failure: str
    cache: dict[str, float]


async def _load(
    port: int,
    ca_file: Path,
    reviews: Sequence[str],
    settings: Settings,
    *,
    pid: int,
    expect_reason: str | None,
) -> _Window:
    import aiohttp  # noqa: PLC0415

    context = ssl.create_default_context(cafile=str(ca_file))
    url = f"https://127.0.0.1:{port}/validate"
    templates = [review.encode() for review in reviews]
    placeholder = UID_PLACEHOLDER.encode()
    latencies: list[float] = []
    measuring = False
    stop = False
    completed = failures = 0
    first_failure = ""
    counter = 0

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal completed, failures, first_failure, counter
        index = offset
        while not stop:
            counter += 1
            uid = f"{counter:08x}-0000-4000-8000-000000000000".encode()
            body = templates[index % len(templates)].replace(placeholder, uid, 1)
            index += settings.connections
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                answer = await response.read()
            elapsed = time.perf_counter() - started
            decoded = json.loads(answer)["response"]
            ok = (
                response.status == 200
                and decoded["uid"] == uid.decode()
                and decoded["allowed"] is True
                and (expect_reason is None or decoded["status"]["reason"] == expect_reason)
            )
            if measuring:
                latencies.append(elapsed * 1000)
                completed += 1
                if not ok:
                    failures += 1
                    first_failure = first_failure or json.dumps(decoded)[:300]

    connector = aiohttp.TCPConnector(ssl=context, limit=settings.connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(worker(session, offset)) for offset in range(settings.connections)]
        await asyncio.sleep(settings.warmup)
        counters_before = await _cache_counters(port, ca_file)
        measuring = True
        cpu_before, client_before, started = _cpu_seconds(pid), time.process_time(), time.perf_counter()
        await asyncio.sleep(settings.duration)
        measuring = False
        seconds, cpu = time.perf_counter() - started, _cpu_seconds(pid) - cpu_before
        client_cpu = time.process_time() - client_before
        counters_after = await _cache_counters(port, ca_file)
        stop = True
        await asyncio.gather(*tasks)
    cache = {
        key: counters_after.get(key, 0) - counters_before.get(key, 0) for key in ("hit", "miss", "coalesced")
    }
    return _Window(completed, seconds, latencies, cpu, client_cpu, failures, first_failure, cache)


async def _cache_counters(port: int, ca_file: Path) -> dict[str, float]:
    import aiohttp  # noqa: PLC0415
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    context = ssl.create_default_context(cafile=str(ca_file))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(f"https://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    counters = {}
    for family in text_string_to_metric_families(text):
        if family.name == "samd_webhook_verification_cache_lookups":
            for sample in family.samples:
                counters[sample.labels["result"]] = sample.value
    return counters


def measure(
    case: str, settings: Settings, certs: Any, state_file: Path, reviews: Sequence[str]
) -> Measurement:
    port_file = settings.work / f"{case}.port"
    port_file.unlink(missing_ok=True)
    log_file = settings.work / f"{case}-server.log"
    command = [
        sys.executable,
        "-m",
        "bench.admission",
        "serve",
        case,
        "--state",
        str(state_file),
        "--cert",
        str(certs.cert_file),
        "--key",
        str(certs.key_file),
        "--port-file",
        str(port_file),
        "--loop",
        settings.loop,
    ]
    with log_file.open("wb") as server_log:
        process = subprocess.Popen(command, cwd=REPO, stdout=server_log, stderr=server_log)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {case} server did not start; see {log_file}")
            time.sleep(0.05)
        port = int(port_file.read_text())
        expect = None if case == "noop" else "Verified"
        load_average = os.getloadavg()[0]
        with asyncio.Runner(loop_factory=_loop_factory(settings.loop)) as runner:
            window = runner.run(
                _load(port, certs.ca_file, reviews, settings, pid=process.pid, expect_reason=expect)
            )
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        if process.poll() is None:
            process.kill()
            process.wait()
    return Measurement(
        case,
        window.completed,
        window.seconds,
        window.latencies_ms,
        window.cpu_seconds,
        window.client_cpu_seconds,
        window.failures,
        window.first_failure,
        window.cache,
        load_average,
    )


def run(settings: Settings) -> list[Row]:
    from samd.webhook.server import write_development_certificates  # noqa: PLC0415

    settings.work.mkdir(parents=True, exist_ok=True)
    log(f"signing {settings.models} models and building their pods")
    state_file, reviews_file = prepare(settings.work, settings.models, settings.models_per_namespace)
    reviews = json.loads(reviews_file.read_text())
    certs = write_development_certificates(settings.work / "certs")
    runs: dict[str, list[Measurement]] = {case: [] for case in CASES}
    # The cases take turns, so that load from other work on the machine hits them alike.
    for attempt in range(1, settings.repeat + 1):
        for case in CASES:
            log(
                f"{case} (run {attempt} of {settings.repeat}): {settings.connections} keep-alive TLS "
                f"connections, {settings.warmup:g} s warm-up, {settings.duration:g} s measured "
                f"({loop_in_use(settings.loop)} event loop in the server)"
            )
            result = measure(case, settings, certs, state_file, reviews)
            runs[case].append(result)
            log(
                f"{case}: {result.throughput:.0f} reviews/s, p50 {result.p50:.2f} ms, p99 {result.p99:.2f} ms, "
                f"server CPU {result.cpu_us_per_review:.0f} us/review, load generator CPU "
                f"{result.client_cpu_us_per_review:.0f} us/review, cache {result.cache}, "
                f"failures {result.failures}, load average before {result.load_average:.1f}"
            )
            if result.failures:
                log(f"{case}: first unexpected answer: {result.first_failure}")
    # The best run of each case (the highest throughput: the one least disturbed by other work).
    results = {case: max(measured, key=lambda m: m.throughput) for case, measured in runs.items()}
    failures = sum(m.failures for measured in runs.values() for m in measured)
    return build_rows(results, settings, failures)


def build_rows(results: dict[str, Measurement], settings: Settings, failures: int) -> list[Row]:
    noop, warm, miss = results["noop"], results["warm"], results["miss"]

    def summary(result: Measurement) -> str:
        return f"{result.throughput:,.0f}/s, p50 {result.p50:.2f} ms, p99 {result.p99:.2f} ms"

    ratio = warm.throughput / noop.throughput
    verified_every_time = miss.cache["miss"] >= miss.requests  # the window's requests all verified
    rows = [
        Row(f"no-op TLS webhook, same server stack ({settings.connections} connections)", summary(noop)),
        Row(
            "warm cache: reviews/s vs the no-op webhook",
            f"{warm.throughput:,.0f}/s",
            f"{noop.throughput:,.0f}/s (no-op)",
            f"{ratio:.2f}x",
            f">= {TARGET_VS_NOOP}x",
            ratio >= TARGET_VS_NOOP,
        ),
        Row(
            "warm cache: reviews/s",
            f"{warm.throughput:,.0f}/s",
            "",
            "",
            f">= {TARGET_WARM_RPS:,.0f}/s",
            warm.throughput >= TARGET_WARM_RPS,
        ),
        Row(
            "warm cache: p99 latency",
            f"{warm.p99:.2f} ms (p50 {warm.p50:.2f} ms)",
            f"{noop.p99:.2f} ms (no-op p99)",
            f"{warm.p99 / noop.p99:.2f}x",
            f"< {TARGET_WARM_P99_MS:g} ms",
            warm.p99 < TARGET_WARM_P99_MS,
        ),
        Row(
            "cache miss (every review verifies a signature): p99 latency",
            f"{miss.p99:.2f} ms (p50 {miss.p50:.2f} ms)",
            f"{warm.p99:.2f} ms (warm p99)",
            f"{miss.p99 / warm.p99:.2f}x",
            f"< {TARGET_MISS_P99_MS:g} ms",
            miss.p99 < TARGET_MISS_P99_MS,
        ),
        Row("cache miss: reviews/s", f"{miss.throughput:,.0f}/s", f"{warm.throughput:,.0f}/s (warm)"),
        Row(
            "cache miss: verifications in the window",
            f"{miss.cache['miss']:.0f} for {miss.requests} reviews",
            "",
            "",
            "one per review",
            verified_every_time,
        ),
        Row(
            "server CPU per review",
            f"warm {warm.cpu_us_per_review:.0f} us, miss {miss.cpu_us_per_review:.0f} us",
            f"no-op {noop.cpu_us_per_review:.0f} us",
            f"{warm.cpu_us_per_review / noop.cpu_us_per_review:.2f}x",
        ),
        Row(
            "server capacity on one core (1 / server CPU per review)",
            f"warm {1e6 / warm.cpu_us_per_review:,.0f}/s, miss {1e6 / miss.cpu_us_per_review:,.0f}/s",
            f"no-op {1e6 / noop.cpu_us_per_review:,.0f}/s",
        ),
        Row(
            "load generator CPU per review (aiohttp client, its own process)",
            f"no-op {noop.client_cpu_us_per_review:.0f} us, warm {warm.client_cpu_us_per_review:.0f} us, "
            f"miss {miss.client_cpu_us_per_review:.0f} us",
        ),
        Row(
            "machine load average (1 min) before each case",
            f"no-op {noop.load_average:.1f}, warm {warm.load_average:.1f}, miss {miss.load_average:.1f}",
            f"{os.cpu_count()} CPUs",
        ),
        Row(
            f"unexpected answers in all {settings.repeat} runs (not allowed, or not Verified)",
            str(failures),
            "",
            "",
            "0",
            failures == 0,
        ),
    ]
    return rows


NOTES = """\
How: three server processes in turn, each the same `samd.webhook.server` stack (TLS 1.3, strict
parsing, the JSON audit log line to a file, metrics) on the {loop} event loop: a no-op decider; the
real decider (`PolicyDecider`) over in-memory watched state with a warm verification cache; the
same with a one-entry cache while the pods name {models} signed models round-robin, so that every
review verifies a signature (the server's cache counters confirm one verification per review).
The warm case sends each model's pod again and again, as a ReplicaSet does: after the first, the
decider answers identical pod content from the admissions it made at the same state revision; the
miss case keeps one, like its cache, so each of its reviews is checked and verified in full.
{per_namespace} models per namespace, one ModelTrustPolicy. The load generator (another process,
aiohttp) keeps {connections} keep-alive TLS connections busy in a closed loop for {duration:g} s
after a {warmup:g} s warm-up, sending CREATE reviews of the pod the operator builds for each model,
and checks every answer. Each case runs {repeat} times, the cases taking turns; the table shows each
case's best run (the highest throughput: the one least disturbed by other work on the machine).
Latencies are measured by the generator; CPU per review from the kernel's
accounting of each process. On this 2-CPU machine the generator and the server each need one CPU,
so a throughput can be bounded by the generator (its CPU per review is shown) as much as by the
server; the server's capacity on one core is derived from its CPU time per review. Other work on
the machine (load average above) makes latencies and throughputs drift between runs."""


def section(rows: Sequence[Row], settings: Settings, command: str) -> str:
    from bench.report import markdown_table, run_stamp  # noqa: PLC0415

    notes = NOTES.format(
        models=settings.models,
        per_namespace=settings.models_per_namespace,
        repeat=settings.repeat,
        connections=settings.connections,
        duration=settings.duration,
        warmup=settings.warmup,
        loop=loop_in_use(settings.loop),
    )
    return f"{run_stamp(command)}\n\n{markdown_table(rows)}\n\n{notes}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """The server side: `python -m bench.admission serve {noop,warm,miss} ...`."""
    parser = argparse.ArgumentParser(prog="python -m bench.admission")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one benchmark server until SIGTERM")
    serve.add_argument("mode", choices=CASES)
    serve.add_argument("--state", required=True)
    serve.add_argument("--cert", required=True)
    serve.add_argument("--key", required=True)
    serve.add_argument("--port-file", required=True)
    serve.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    return _serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
