"""Why the operator follows its owned objects with its own reflector and not kopf's indices: measured.

`python -m bench.owned_index [--counts 300,1000]` — a one-off measurement, not part of `make bench`.

Against the local control plane, for each N: N SecureModels (not reconciled: no operator runs) and,
for each, every object the operator would own (built by the operator's builders, server-side
applied, one serving replica scaled to 0 so that no pod is made). Then two processes follow those
objects at the same time, each in its own way, over the same events:

- `reflector`: the operator's `OwnedObjects` (one label-selected `samd.reflector.Reflector` per
  owned kind, a small `OwnedRef` per object indexed by model), re-queueing disabled;
- `kopf`: a kopf operator with one `@kopf.index` per owned kind (same label selector), each keeping
  the same `OwnedRef` per object under its model: the least kopf needs to answer the same question.

Each process reports how many objects it has processed. The bench reads, from /proc, each one's RSS
and CPU time (user + system) once the initial lists are indexed, and again after it touched every
object once (a merge-patched annotation: one MODIFIED event per object, as a status update of each
Deployment or a re-apply would give).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROGRESS_INTERVAL = 0.2
THREADS = 8


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return (int(fields["VmRSS"].split()[0]) / 1000, int(fields["VmHWM"].split()[0]) / 1000)


# --- the two followers (child processes) ------------------------------------------------------------


class Progress:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.processed = 0
        self.baseline = rss_mb()[0]

    async def report(self) -> None:
        while True:
            partial = self.path.with_suffix(".partial")
            partial.write_text(json.dumps({"processed": self.processed, "baseline_rss_mb": self.baseline}))
            partial.replace(self.path)  # the bench never reads half a file
            await asyncio.sleep(PROGRESS_INTERVAL)


async def follow_with_reflector(progress: Progress) -> None:
    from samd.operator.config import OperatorConfig  # noqa: PLC0415
    from samd.operator.handlers import OwnedObjects  # noqa: PLC0415
    from samd.operator.kube import connect  # noqa: PLC0415
    from samd.operator.reconcile import Reconciler  # noqa: PLC0415

    class Counted(OwnedObjects):
        def _relisted(self, kind: str, items: list[dict[str, Any]]) -> None:
            progress.processed += len(items)
            super()._relisted(kind, items)

        def _changed(self, change: str, obj: dict[str, Any]) -> None:
            progress.processed += 1
            super()._changed(change, obj)

        def _requeue(self, owner: tuple[str, str], why: str) -> None:
            pass  # measured: the index, not the reconciles it would ask for

    reporter = asyncio.create_task(progress.report())
    async with connect() as kube:
        owned = Counted(kube, Reconciler(kube=kube, config=OperatorConfig()), holds=lambda _namespace: True)
        await owned.follow()
    reporter.cancel()


def follow_with_kopf(progress: Progress) -> None:
    import kopf  # noqa: PLC0415

    # Importing the handlers registers the operator's own handlers in kopf's default registry:
    # this follower runs its own registry, holding only the indices measured.
    from samd.operator.handlers import OWNED_KINDS, OWNED_LABELS  # noqa: PLC0415
    from samd.operator.steps.shared import OwnedRef, owning_model  # noqa: PLC0415

    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False
        asyncio.create_task(progress.report())  # noqa: RUF006 - runs as long as the operator

    for api_version, kind in OWNED_KINDS:
        group, _, version = api_version.rpartition("/")

        async def index(body: kopf.Body, meta: kopf.Meta, namespace: str | None, **_: Any) -> dict[Any, Any]:
            progress.processed += 1
            model = owning_model(meta)
            return {} if model is None else {(namespace, model): OwnedRef.of(body)}

        kopf.index(group, version, kind, labels=OWNED_LABELS, id=f"owned-{kind}", registry=registry)(index)

    asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=True))


# --- the bench (parent) -----------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_objects(
    api: Any, namespace: str, count: int, kubeconfig: Path, artifacts: Any
) -> list[tuple[str, str, str, str]]:
    """N SecureModels and what the operator would own for each; the owned objects' (apiVersion, kind,
    name, plural) to touch later."""
    from kubernetes import client  # noqa: PLC0415

    from bench.operator import GROUP, PLURAL, VERSION, samd_target  # noqa: PLC0415
    from samd.operator.builders import build_owned_objects  # noqa: PLC0415
    from samd.operator.builders.certificates import (  # noqa: PLC0415
        CertificateAuthority,
        issue_client_certificate,
        issue_server_certificate,
    )
    from samd.operator.builders.context import ModelContext  # noqa: PLC0415
    from samd.operator.builders.serving import build_signature_config_map  # noqa: PLC0415
    from samd.operator.config import OperatorConfig  # noqa: PLC0415
    from samd.operator.reconcile import builder_settings  # noqa: PLC0415
    from samd.spec import TrustedSigner, parse_secure_model  # noqa: PLC0415

    samd = samd_target(kubeconfig, artifacts)
    now = datetime.datetime.now(datetime.UTC)
    authority = CertificateAuthority.generate(now)
    settings = builder_settings(OperatorConfig(namespace="samd-system"))
    signers = [TrustedSigner(name="ci", public_key=artifacts.public_key_pem)]
    bundle = artifacts.signature.read_bytes()
    custom = client.CustomObjectsApi(api)
    dynamic_paths: list[tuple[str, str, str, str]] = []

    def apply(manifest: dict[str, Any]) -> tuple[str, str, str, str]:
        group_version, kind = manifest["apiVersion"], manifest["kind"]
        plural = f"{kind.lower()}s" if not kind.endswith("y") else f"{kind[:-1].lower()}ies"
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{root}/namespaces/{namespace}/{plural}/{manifest['metadata']['name']}"
        response = api.call_api(
            *api.param_serialize(
                method="PATCH",
                resource_path=path,
                query_params=[("fieldManager", "samd-operator"), ("force", "true")],
                header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
                body=manifest,
                auth_settings=["BearerToken"],
            )
        )
        response.read()
        if response.status >= 300:
            raise RuntimeError(f"applying {kind}: {response.status} {(response.data or b'')[:300]!r}")
        return (group_version, kind, manifest["metadata"]["name"], path)

    def one(index: int) -> list[tuple[str, str, str, str]]:
        name = f"m{index:05d}"
        body = samd.body(namespace, name)
        body["spec"] = {**body["spec"], "serving": {**body["spec"]["serving"], "replicas": 0}}
        model = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        context = ModelContext(
            name=name,
            namespace=namespace,
            uid=model["metadata"]["uid"],  # type: ignore[index]
            spec=parse_secure_model(body["spec"]),
            manifest_digest=artifacts.manifest_digest(),
            settings=settings,
        )
        manifests = [
            build_signature_config_map(context, bundle),
            issue_server_certificate(authority, context, now),
        ]
        manifests += [
            issue_client_certificate(authority, context, c.name, now) for c in context.spec.serving.clients
        ]
        manifests += build_owned_objects(context, now, signers)
        return [apply(manifest) for manifest in manifests]

    with ThreadPoolExecutor(THREADS) as pool:
        for applied in pool.map(one, range(count)):
            dynamic_paths.extend(applied)
    return dynamic_paths


def touch(api: Any, paths: Sequence[tuple[str, str, str, str]], mark: str) -> None:
    def one(entry: tuple[str, str, str, str]) -> None:
        response = api.call_api(
            *api.param_serialize(
                method="PATCH",
                resource_path=entry[3],
                header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
                body={"metadata": {"annotations": {"bench.samd.dev/touched": mark}}},
                auth_settings=["BearerToken"],
            )
        )
        response.read()
        if response.status >= 300:
            raise RuntimeError(f"touching {entry[1]} {entry[2]}: {response.status}")

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, paths))


def processed(path: Path) -> tuple[int, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0, 0.0
    return int(data["processed"]), float(data["baseline_rss_mb"])


def snapshot(pid: int) -> dict[str, float]:
    rss, peak = rss_mb(pid)
    return {"rss_mb": rss, "peak_rss_mb": peak, "cpu_s": process_cpu_seconds(pid)}


def wait_processed(
    progress: dict[str, Path], children: dict[str, subprocess.Popen[bytes]], at_least: int, timeout: float
) -> dict[str, dict[str, float]]:
    """Each follower's figures when it has processed `at_least` objects (seconds since the wait began,
    RSS, CPU); one that has not within `timeout` is reported as it stands then, `complete` 0."""
    started = time.monotonic()
    done: dict[str, dict[str, float]] = {}
    while len(done) < len(progress):
        elapsed = time.monotonic() - started
        for mode, path in progress.items():
            count = processed(path)[0]
            if mode not in done and (count >= at_least or elapsed > timeout):
                done[mode] = {"seconds": elapsed, "processed": count, "complete": float(count >= at_least)}
                done[mode].update(snapshot(children[mode].pid))
        time.sleep(0.2)
    return done


def measure(
    count: int, kubeconfig: Path, api: Any, artifacts: Any, work: Path, *, timeout: float, touch_up_to: int
) -> dict[str, dict[str, float]]:
    from kubernetes import client  # noqa: PLC0415

    namespace = f"bench-index-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    started = time.monotonic()
    paths = write_objects(api, namespace, count, kubeconfig, artifacts)
    print(
        f"{count} models: {len(paths)} owned objects written in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    progress = {mode: work / f"{mode}-{count}.json" for mode in ("reflector", "kopf")}
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    children = {
        mode: subprocess.Popen(
            [sys.executable, "-m", "bench.owned_index", "--follow", mode, "--progress", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(work / f"{mode}-{count}.log").open("w"),
        )
        for mode, path in progress.items()
    }
    results: dict[str, dict[str, float]] = {mode: {"objects": len(paths)} for mode in children}
    try:
        for mode, figures in wait_processed(progress, children, len(paths), timeout=timeout).items():
            results[mode].update(
                baseline_rss_mb=processed(progress[mode])[1],
                listed_seconds=figures["seconds"],
                listed_complete=figures["complete"],
                listed_processed=figures["processed"],
                listed_rss_mb=figures["rss_mb"],
                listed_cpu_s=figures["cpu_s"],
            )
        if count <= touch_up_to and all(figures["listed_complete"] for figures in results.values()):
            time.sleep(2)  # let each settle after its last event
            before = {mode: process_cpu_seconds(child.pid) for mode, child in children.items()}
            started = time.monotonic()
            touch(api, paths, "1")
            touched = time.monotonic() - started
            for mode, figures in wait_processed(progress, children, 2 * len(paths), timeout=timeout).items():
                results[mode].update(
                    touch_seconds=touched,
                    touch_complete=figures["complete"],
                    touched_rss_mb=figures["rss_mb"],
                    peak_rss_mb=figures["peak_rss_mb"],
                    touch_cpu_s=figures["cpu_s"] - before[mode],
                )
    finally:
        for child in children.values():
            child.terminate()
            child.wait(timeout=30)
        client.CoreV1Api(api).delete_namespace(namespace)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="300,1000", help="numbers of models, comma-separated")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds each phase may take")
    parser.add_argument(
        "--touch-up-to", type=int, default=1000, help="touch every object only up to this many models"
    )
    parser.add_argument("--follow", choices=["reflector", "kopf"], help=argparse.SUPPRESS)
    parser.add_argument("--progress", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.follow is not None:
        progress = Progress(options.progress)
        if options.follow == "reflector":
            asyncio.run(follow_with_reflector(progress))
        else:
            follow_with_kopf(progress)
        return 0

    from tests.support.cluster import local_control_plane  # noqa: PLC0415
    from tests.support.crds import install_crds  # noqa: PLC0415
    from tests.support.models import make_model  # noqa: PLC0415

    with local_control_plane() as cluster, tempfile.TemporaryDirectory(prefix="samd-bench-index-") as scratch:
        api = cluster.api_client()
        install_crds(api)
        artifacts = make_model(Path(scratch) / "model")
        all_results = {}
        for count in (int(c) for c in options.counts.split(",")):
            all_results[count] = results = measure(
                count,
                cluster.kubeconfig,
                api,
                artifacts,
                Path(scratch),
                timeout=options.timeout,
                touch_up_to=options.touch_up_to,
            )
            for mode, figures in results.items():
                print(json.dumps({"models": count, "follower": mode, **figures}), flush=True)
        print(json.dumps(all_results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
