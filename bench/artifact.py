"""The artifact suite: `samd encrypt` and `samd fetch` on a 1 GiB model against physical references.

References, measured in the same run on the same machine:
- `openssl speed` SHA-256 and AES-256-GCM on one core (16 KiB blocks);
- the pipeline SAMD replaces: decrypt with Tink's Python streaming AEAD (AES256_GCM_HKDF_1MB),
  then verify with the upstream `model_signing` library;
- `model_signing` verify alone.

The model (random bytes, a directory of a few files) is generated once under .local/bench/ and
reused; artifacts and outputs go to a tmpfs (/dev/shm) so that disk speed does not enter the
figures. `samd` runs as a subprocess, as the init container runs it; its peak memory is measured
by GNU time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import REPO, Row

SAMD = str(Path(sys.executable).with_name("samd"))
MIB = 1 << 20
GB = 1e9

TARGET_FETCH_VS_SHA256 = 0.9
TARGET_FETCH_VS_REFERENCE = 1.5
TARGET_ENCRYPT_GBPS = 1.0
TARGET_PEAK_RSS_MIB = 64


def _default_scratch() -> Path:
    shm = Path("/dev/shm")  # noqa: S108 - a tmpfs, so that disk speed stays out of the figures
    return shm / "samd-bench" if shm.is_dir() else REPO / ".local" / "bench" / "scratch"


@dataclass(frozen=True)
class Settings:
    size_mib: int = 1024
    small_mib: int = 64
    repeat: int = 3
    work: Path = REPO / ".local" / "bench"
    scratch: Path = field(default_factory=_default_scratch)
    keep: bool = False


@dataclass(frozen=True)
class Run:
    """One `samd` subprocess: its JSON result, wall time and peak resident memory."""

    document: dict[str, Any]
    wall_seconds: float
    peak_rss_mib: float


def log(message: str) -> None:
    print(f"[bench artifact] {message}", file=sys.stderr, flush=True)


# --- references ------------------------------------------------------------------------------


def openssl_speed(*algorithm: str, seconds: int = 3) -> float:
    """Bytes per second of `openssl speed` on one core with 16 KiB blocks, by the wall clock.

    `-elapsed`: by default `openssl speed` divides by its CPU time, which a busy machine does not
    slow down, while every samd figure here is wall-clock time; the reference must be too.
    """
    completed = subprocess.run(
        ["openssl", "speed", "-elapsed", "-bytes", "16384", "-seconds", str(seconds), *algorithm],
        capture_output=True,
        text=True,
        check=True,
    )
    name = algorithm[-1].lower()
    for line in completed.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].lower() == name and fields[1].endswith("k"):
            return float(fields[1][:-1]) * 1000
    raise RuntimeError(
        f"could not read the `openssl speed {' '.join(algorithm)}` result:\n{completed.stdout}"
    )


# --- the workload ----------------------------------------------------------------------------


def model_layout(total_mib: int) -> dict[str, int]:
    """A few files like a real model: two weight shards, embeddings, small config files."""
    total = total_mib * MIB
    small = {"config.json": 4096, "tokenizer.json": 2 * MIB}
    rest = total - sum(small.values())
    shards = {
        "weights-00001-of-00002.bin": rest // 2,
        "weights-00002-of-00002.bin": rest * 3 // 8,
    }
    shards["embeddings.bin"] = rest - sum(shards.values())
    return {**shards, **small}


def ensure_model(directory: Path, total_mib: int) -> int:
    """Create the model once (random bytes); reuse it while its layout is unchanged."""
    layout = model_layout(total_mib)
    marker = directory.with_name(directory.name + ".layout.json")
    wanted = json.dumps(layout, sort_keys=True)
    if directory.is_dir() and marker.exists() and marker.read_text() == wanted:
        return sum(layout.values())
    log(f"generating a {total_mib} MiB model in {directory} (once)")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    block = os.urandom(4 * MIB)
    for name, size in layout.items():
        with (directory / name).open("wb") as out:
            left = size
            while left:
                # A fresh random prefix per block keeps the data incompressible and unique.
                chunk = os.urandom(64) + block[64 : min(len(block), left)]
                out.write(chunk[:left])
                left -= min(len(chunk), left)
    marker.write_text(wanted)
    return sum(layout.values())


GNU_TIME = "/usr/bin/time"


def run_samd(*args: str | Path) -> Run:
    """Run `samd ... --json`; return its result, wall time and peak RSS.

    The peak RSS comes from GNU time, not from wait4 here: a child forked from this (large)
    process keeps the parent's high-water mark across exec, which would inflate the figure.
    """
    if not Path(GNU_TIME).exists():
        raise RuntimeError(f"{GNU_TIME} is needed to measure peak memory: apt-get install time")
    command = [SAMD, *map(str, args), "--json"]
    with (
        tempfile.NamedTemporaryFile("r") as usage,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        started = time.perf_counter()
        completed = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", usage.name, *command], stdout=stdout, stderr=stderr, check=False
        )
        wall = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read().decode(), stderr.read().decode()
        peak_kib = usage.read().strip().splitlines()[-1] if completed.returncode == 0 else "0"
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}):\n{errors}{output}")
    return Run(document=json.loads(output), wall_seconds=wall, peak_rss_mib=int(peak_kib) / 1024)


def best_of(count: int, prepare: Callable[[], None], action: Callable[[], Run]) -> list[Run]:
    runs = []
    for _ in range(count):
        prepare()
        runs.append(action())
    return runs


def remove(path: Path) -> Callable[[], None]:
    def clean() -> None:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    return clean


# --- the reference pipeline: Tink streaming AEAD, then upstream model_signing ----------------


@dataclass(frozen=True)
class ReferenceTimes:
    decrypt_seconds: float
    verify_seconds: float

    @property
    def total(self) -> float:
        return self.decrypt_seconds + self.verify_seconds


def tink_primitive() -> Any:
    import tink  # noqa: PLC0415 - only the benchmark needs Tink
    from tink import streaming_aead  # noqa: PLC0415

    streaming_aead.register()
    handle = tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)
    return handle.primitive(streaming_aead.StreamingAead)


def tink_encrypt_files(primitive: Any, model: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(model.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(model).as_posix()
        with (
            path.open("rb") as source,
            (target / (name + ".tink")).open("wb") as sink,
            primitive.new_encrypting_stream(sink, name.encode()) as encrypting,
        ):
            shutil.copyfileobj(source, encrypting, MIB)


def tink_decrypt_files(primitive: Any, encrypted: Path, output: Path) -> None:
    for path in sorted(encrypted.rglob("*.tink")):
        name = path.relative_to(encrypted).as_posix()[: -len(".tink")]
        destination = output / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        with (
            path.open("rb") as source,
            destination.open("wb") as sink,
            primitive.new_decrypting_stream(source, name.encode()) as decrypting,
        ):
            while chunk := decrypting.read(MIB):
                sink.write(chunk)


def upstream_verify(model: Path, signature: Path, public_key: Path) -> float:
    import model_signing  # noqa: PLC0415 - the upstream library, imported before timing

    config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    config.verify(model, signature)
    return time.perf_counter() - started


def reference_pipeline(
    primitive: Any, encrypted: Path, output: Path, signature: Path, public_key: Path
) -> ReferenceTimes:
    remove(output)()
    output.mkdir(parents=True)
    started = time.perf_counter()
    tink_decrypt_files(primitive, encrypted, output)
    decrypted = time.perf_counter() - started
    verified = upstream_verify(output, signature, public_key)
    return ReferenceTimes(decrypt_seconds=decrypted, verify_seconds=verified)


# --- what bounds samd fetch: its two threads' work, measured alone ----------------------------


@dataclass(frozen=True)
class Components:
    """Seconds for the whole model: the hashing thread's work, and the worker thread's parts."""

    sha256: float
    read_decrypt: float
    write: float

    @property
    def worker(self) -> float:
        return self.read_decrypt + self.write


def measure_components(artifact: Path, keyset: Path, scratch: Path, total: int, repeat: int) -> Components:
    import hashlib  # noqa: PLC0415

    from samd.envelope import EnvelopeReader  # noqa: PLC0415
    from samd.envelope.stream import SegmentBuffers  # noqa: PLC0415
    from samd.keys import LocalKeyProvider  # noqa: PLC0415
    from samd.storage import open_artifact  # noqa: PLC0415

    block = os.urandom(MIB)

    def sha256() -> float:
        digest = hashlib.sha256()
        started = time.perf_counter()
        for _ in range(total // MIB):
            digest.update(block)
        return time.perf_counter() - started

    def read_decrypt() -> float:
        # As samd fetch does it: decrypted into reused buffers, each given back at once.
        keys = LocalKeyProvider.from_path(keyset)
        started = time.perf_counter()
        with open_artifact(str(artifact)) as source:
            reader = EnvelopeReader(source, keys)
            buffers = SegmentBuffers(2, reader.header.segment_size)
            for view in reader.decrypted_views(buffers):
                buffers.give_back(view)
        return time.perf_counter() - started

    def write() -> float:
        target = scratch / "write-test"
        started = time.perf_counter()
        with target.open("wb", buffering=0) as out:
            for _ in range(total // MIB):
                out.write(block)
        elapsed = time.perf_counter() - started
        target.unlink()
        return elapsed

    return Components(
        sha256=min(sha256() for _ in range(repeat)),
        read_decrypt=min(read_decrypt() for _ in range(repeat)),
        write=min(write() for _ in range(repeat)),
    )


# --- the suite -------------------------------------------------------------------------------


def _gbps(count: int, seconds: float) -> float:
    return count / seconds / GB


def run(settings: Settings) -> list[Row]:
    work, scratch = settings.work, settings.scratch
    work.mkdir(parents=True, exist_ok=True)
    remove(scratch)()
    scratch.mkdir(parents=True)
    keyset, signer = work / "keys.json", work / "signer.pem"
    public_key = work / "signer.pub.pem"
    if not keyset.exists():
        run_samd("keygen", f"local:{keyset}")
    if not signer.exists():
        run_samd("keygen", "--signing-key", signer)
    key = f"local:{keyset}"

    big_model = work / f"model-{settings.size_mib}m"
    small_model = work / f"model-{settings.small_mib}m"
    big_bytes = ensure_model(big_model, settings.size_mib)
    small_bytes = ensure_model(small_model, settings.small_mib)
    big_signature, small_signature = work / f"{big_model.name}.sig", work / f"{small_model.name}.sig"
    log("signing the models")
    run_samd("sign", big_model, "--private-key", signer, "--signature", big_signature)
    run_samd("sign", small_model, "--private-key", signer, "--signature", small_signature)

    load_before = os.getloadavg()[0]
    log("openssl speed aes-256-gcm (one core, 3 s)")
    aes_speed = openssl_speed("-evp", "aes-256-gcm")

    big_artifact, small_artifact = scratch / "big.samd", scratch / "small.samd"
    log(f"samd encrypt, {settings.size_mib} MiB, best of {settings.repeat}")
    encrypts = best_of(
        settings.repeat,
        remove(big_artifact),
        lambda: run_samd("encrypt", big_model, "--key", key, "--output", big_artifact),
    )
    run_samd("encrypt", small_model, "--key", key, "--output", small_artifact)

    output = scratch / "out"

    def fetch(artifact: Path, signature: Path) -> Run:
        return run_samd(
            "fetch",
            f"file://{artifact}",
            "--signature",
            signature,
            "--public-key",
            public_key,
            "--key",
            key,
            "--output",
            output,
        )

    log("what bounds fetch: SHA-256, read + decrypt, and tmpfs writes, each alone (in process)")
    components = measure_components(big_artifact, keyset, scratch, big_bytes, settings.repeat)

    log(
        f"samd fetch, {settings.size_mib} MiB, best of {settings.repeat}, each run right after "
        "`openssl speed sha256` (one core, 1 s; the reference is the best of those runs)"
    )
    sha256_speeds: list[float] = []
    fetches = []
    for _ in range(settings.repeat):
        # Interleaved, so that the reference and fetch sample the same moments of a shared machine.
        sha256_speeds.append(openssl_speed("sha256", seconds=1))
        remove(output)()
        fetches.append(fetch(big_artifact, big_signature))
    sha256_speed = max(sha256_speeds)
    small_fetches = best_of(settings.repeat, remove(output), lambda: fetch(small_artifact, small_signature))
    remove(output)()

    log("reference: Tink streaming AEAD decrypt, then model_signing verify")
    primitive = tink_primitive()
    tink_encrypted = scratch / "tink"
    tink_encrypt_files(primitive, big_model, tink_encrypted)
    references = [
        reference_pipeline(primitive, tink_encrypted, scratch / big_model.name, big_signature, public_key)
        for _ in range(min(settings.repeat, 2))
    ]
    remove(scratch / big_model.name)()
    remove(tink_encrypted)()

    log("model_signing verify alone (plaintext model in the page cache)")
    upstream = min(upstream_verify(big_model, big_signature, public_key) for _ in range(settings.repeat))

    if not settings.keep:
        remove(scratch)()
    load = (load_before, os.getloadavg()[0])
    return build_rows(
        size_mib=settings.size_mib,
        small_mib=settings.small_mib,
        big_bytes=big_bytes,
        small_bytes=small_bytes,
        sha256_speed=sha256_speed,
        aes_speed=aes_speed,
        encrypts=encrypts,
        fetches=fetches,
        small_fetches=small_fetches,
        references=references,
        upstream_seconds=upstream,
        components=components,
        load=load,
    )


def build_rows(
    *,
    size_mib: int,
    small_mib: int,
    big_bytes: int,
    small_bytes: int,
    sha256_speed: float,
    aes_speed: float,
    encrypts: Sequence[Run],
    fetches: Sequence[Run],
    small_fetches: Sequence[Run],
    references: Sequence[ReferenceTimes],
    upstream_seconds: float,
    components: Components,
    load: tuple[float, float],
) -> list[Row]:
    fetch_seconds = min(run.document["seconds"] for run in fetches)
    fetch_wall = min(run.wall_seconds for run in fetches)
    encrypt_seconds = min(run.document["seconds"] for run in encrypts)
    fetch_speed = _gbps(big_bytes, fetch_seconds)
    encrypt_speed = _gbps(big_bytes, encrypt_seconds)
    reference = min(references, key=lambda times: times.total)
    big_rss = max(run.peak_rss_mib for run in fetches)
    small_rss = max(run.peak_rss_mib for run in small_fetches)
    size = f"{size_mib} MiB" if size_mib < 1024 else f"{size_mib / 1024:g} GiB"
    sha = f"{sha256_speed / GB:.2f} GB/s (openssl SHA-256)"
    return [
        Row("openssl speed SHA-256, 1 core, 16 KiB blocks", f"{sha256_speed / GB:.2f} GB/s"),
        Row("openssl speed AES-256-GCM, 1 core, 16 KiB blocks", f"{aes_speed / GB:.2f} GB/s"),
        Row(
            f"samd fetch (decrypt + verify), {size}",
            f"{fetch_speed:.2f} GB/s ({fetch_seconds:.2f} s)",
            sha,
            f"{fetch_speed * GB / sha256_speed:.2f}x",
            f">= {TARGET_FETCH_VS_SHA256}x",
            fetch_speed * GB / sha256_speed >= TARGET_FETCH_VS_SHA256,
        ),
        Row(
            f"samd fetch vs Tink decrypt + model_signing verify, {size}",
            f"{fetch_seconds:.2f} s",
            f"{reference.total:.2f} s ({reference.decrypt_seconds:.2f} s Tink + "
            f"{reference.verify_seconds:.2f} s model_signing)",
            f"{reference.total / fetch_seconds:.2f}x",
            f">= {TARGET_FETCH_VS_REFERENCE}x",
            reference.total / fetch_seconds >= TARGET_FETCH_VS_REFERENCE,
        ),
        Row(
            f"samd encrypt, {size}",
            f"{encrypt_speed:.2f} GB/s ({encrypt_seconds:.2f} s)",
            f"{aes_speed / GB:.2f} GB/s (openssl AES-256-GCM)",
            f"{encrypt_speed * GB / aes_speed:.2f}x",
            f">= {TARGET_ENCRYPT_GBPS:g} GB/s",
            encrypt_speed >= TARGET_ENCRYPT_GBPS,
        ),
        Row(
            f"samd fetch peak RSS, {size} model",
            f"{big_rss:.1f} MiB",
            f"{small_rss:.1f} MiB ({small_mib} MiB model)",
            f"{big_rss / small_rss:.2f}x",
            f"< {TARGET_PEAK_RSS_MIB} MiB",
            big_rss < TARGET_PEAK_RSS_MIB,
        ),
        Row(
            f"samd fetch peak RSS, {small_mib} MiB model",
            f"{small_rss:.1f} MiB",
            "",
            "",
            f"< {TARGET_PEAK_RSS_MIB} MiB",
            small_rss < TARGET_PEAK_RSS_MIB,
        ),
        Row(
            f"samd fetch wall time incl. interpreter start-up, {size}",
            f"{fetch_wall:.2f} s",
            f"{fetch_seconds:.2f} s inside the command",
        ),
        Row(
            f"model_signing verify alone (plaintext, page cache), {size}",
            f"{upstream_seconds:.2f} s ({_gbps(big_bytes, upstream_seconds):.2f} GB/s)",
            sha,
            f"{_gbps(big_bytes, upstream_seconds) * GB / sha256_speed:.2f}x",
        ),
        Row(
            f"Tink streaming AEAD decrypt alone (AES256_GCM_HKDF_1MB), {size}",
            f"{_gbps(big_bytes, reference.decrypt_seconds):.2f} GB/s",
            f"{aes_speed / GB:.2f} GB/s (openssl AES-256-GCM)",
            f"{_gbps(big_bytes, reference.decrypt_seconds) * GB / aes_speed:.2f}x",
        ),
        Row(
            f"bound: hashing thread = hashlib SHA-256 alone, {size}",
            f"{components.sha256:.2f} s ({_gbps(big_bytes, components.sha256):.2f} GB/s)",
            sha,
            f"{big_bytes / components.sha256 / sha256_speed:.2f}x",
        ),
        Row(
            f"bound: worker thread = read + decrypt, then write to tmpfs, alone, {size}",
            f"{components.worker:.2f} s ({components.read_decrypt:.2f} s + {components.write:.2f} s)",
            f"{fetch_seconds:.2f} s (samd fetch)",
            f"{fetch_seconds / max(components.worker, components.sha256):.2f}x the slower thread",
        ),
        Row(
            f"samd fetch small model ({small_mib} MiB)",
            f"{_gbps(small_bytes, min(r.document['seconds'] for r in small_fetches)):.2f} GB/s",
        ),
        Row(
            "machine load during the suite (1-minute load average, start and end)",
            f"{load[0]:.1f} and {load[1]:.1f}",
            f"{os.cpu_count()} CPUs",
        ),
    ]


NOTES = """\
How: the model is a directory of five files (two weight shards, embeddings, two small JSON files)
of random bytes. `samd encrypt` packs it as a tar stream and encrypts it to a tmpfs; `samd fetch`
reads it through a `file://` URI, verifies the signature, decrypts, unpacks and hashes in one
pass into a tmpfs, and moves the files into place only once every digest matches. Throughputs
use the time each command measures itself (start-up excluded; the wall-time row shows it);
best of several runs. The `openssl speed` references are wall-clock figures too (`-elapsed`; by
default it divides by CPU time, which a busy machine does not slow down). Each fetch run follows a
one-second `openssl speed sha256`, and the SHA-256 reference is the best of those, so reference
and fetch sample the same moments of a shared machine (the load row says how busy it was). Peak RSS is GNU time's figure for the `samd` process.
The reference pipeline decrypts every file with Tink (in process), then verifies the decrypted
directory with `model_signing` (in process, imports excluded; it hashes files on both cores).

What bounds `samd fetch`: two threads. A worker reads the artifact, decrypts each segment into
one of a few reused buffers, parses the tar stream and writes each file; the main thread hashes
the same buffers with SHA-256 and hands them back. Neither can go faster than its work done
alone, measured in the "bound" rows of the same run; the worker's share is the smaller, so fetch
runs at the speed of one core hashing, less the hand-offs between the threads. Writing fresh
pages into a tmpfs is the largest and most variable part of the worker's share on this machine
(the kernel allocates every page)."""


def section(rows: Sequence[Row], settings: Settings, command: str) -> str:
    from bench.report import markdown_table, run_stamp  # noqa: PLC0415

    return f"{run_stamp(command)}\n\n{markdown_table(rows)}\n\n{NOTES}\n"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([MG])i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"size {text!r}: write e.g. 1G or 256M")
    return int(match.group(1)) * (1024 if match.group(2).upper() == "G" else 1)
