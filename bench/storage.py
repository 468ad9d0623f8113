"""The storage suite: S3 uploads and downloads against the local S3-compatible server (moto).

What it settles: whether SAMD's own S3 code is worth keeping beside boto3's managed transfers
(s3transfer) and botocore's retries. Figures, in one run on one machine:
- upload: `put_artifact` (s3transfer behind SAMD's client, checks and settings) against
  s3transfer's `upload_fileobj` called directly with the same part size and concurrency;
- download: SAMD's resuming reader against botocore's plain `get_object` stream and s3transfer's
  `download_fileobj`;
- a connection cut half-way through the object (by a proxy between client and server): how many
  body bytes each reader needs from the server to deliver the whole object, or whether it fails.

The server is moto in server mode on loopback, so the throughputs are those of moto and Python's
HTTP stack on this machine, not of a real S3 endpoint; what they show is the relative cost.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.report import Row

MIB = 1 << 20


@dataclass(frozen=True)
class Settings:
    size_mib: int = 128
    repeat: int = 3
    part_mib: int = 8
    concurrency: int = 4


NOTES = """How: random bytes held in memory, uploaded to and read back from moto in server mode on
loopback (`tests/support/moto_server.py`), best of several runs taken in turn after a warm-up
round. Every transfer makes its own client, as SAMD's do (about 0.2 s of each figure). The upload
rows use the same part size and concurrency for both. The download rows read the whole object
into a reused 1 MiB buffer. The cut rows put a proxy (`tests/support/s3_proxy.py`) between the
reader and the server that closes the first connection after half the object's body; the figure is
the body bytes the proxy sent in all, against the object's size: 1.00x means the reader resumed
where it stopped, 1.50x that it started again from the first byte. botocore's retries cover
requests, not a body already being read, so a plain `get_object` stream fails there (its error is
shown). The machine is shared: the load row says how busy it was.

What it decided (docs/storage.md): uploads are s3transfer's. SAMD's former multipart upload
measured 0.94x and 1.16x of `upload_fileobj` in two runs here (2026-12-03), inside the spread that
`put_artifact`, now the same library code, shows against it from run to run on this shared machine
(0.80x-1.18x in four runs), so speed does not argue for it. Downloads stay SAMD's resuming reader,
for the cut rows."""


def _best(repeat: int, *actions: Callable[[], None]) -> list[float]:
    """The best time of each action; one warm-up round, then rounds that run each action in turn,
    so that all of them sample the same moments of a shared machine."""
    times: list[list[float]] = [[] for _ in actions]
    for round_number in range(repeat + 1):
        for action, samples in zip(actions, times, strict=True):
            started = time.perf_counter()
            action()
            if round_number:
                samples.append(time.perf_counter() - started)
    return [min(samples) for samples in times]


def _mbps(count: int, seconds: float) -> str:
    return f"{count / seconds / 1e6:,.0f} MB/s ({seconds:.2f} s)"


def run(settings: Settings) -> list[Row]:
    import boto3  # noqa: PLC0415 - only this suite needs them
    from boto3.s3.transfer import TransferConfig  # noqa: PLC0415
    from tests.support.moto_server import run_moto_server  # noqa: PLC0415 - test support, as elsewhere
    from tests.support.s3_proxy import Fault, running_proxy  # noqa: PLC0415

    from samd.storage import RetryPolicy, open_artifact, put_artifact  # noqa: PLC0415

    load_before = os.getloadavg()[0]
    size = settings.size_mib * MIB
    part = settings.part_mib * MIB
    data = os.urandom(size)
    rows: list[Row] = []
    with run_moto_server() as server:
        for name, value in server.env().items():
            os.environ[name] = value
        s3: Any = boto3.client("s3", endpoint_url=server.endpoint)
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        uri = f"s3://{bucket}/model.samd"

        def fresh() -> Any:
            """A new client, as SAMD makes one for each transfer (about 0.2 s of the figures)."""
            return boto3.session.Session().client("s3", endpoint_url=server.endpoint)

        def samd_put() -> None:
            put_artifact(uri, io.BytesIO(data), part_size=part, concurrency=settings.concurrency)

        transfer = TransferConfig(
            multipart_threshold=part, multipart_chunksize=part, max_concurrency=settings.concurrency
        )

        def library_put() -> None:
            fresh().upload_fileobj(io.BytesIO(data), bucket, "reference.samd", Config=transfer)

        samd_put_time, library_put_time = _best(settings.repeat, samd_put, library_put)
        rows.append(
            Row(
                f"upload (put_artifact), {settings.size_mib} MiB, {settings.part_mib} MiB parts, "
                f"{settings.concurrency} at once",
                _mbps(size, samd_put_time),
                f"{_mbps(size, library_put_time)} (s3transfer upload_fileobj)",
                f"{library_put_time / samd_put_time:.2f}x",
            )
        )

        buffer = bytearray(MIB)

        def samd_get() -> None:
            with open_artifact(uri) as reader:
                while reader.readinto(buffer):
                    pass

        def plain_get() -> None:
            body = fresh().get_object(Bucket=bucket, Key="model.samd")["Body"]
            while body.readinto(buffer):
                pass

        def library_get() -> None:
            fresh().download_fileobj(bucket, "model.samd", _Discard(), Config=transfer)

        samd, plain, library = _best(settings.repeat, samd_get, plain_get, library_get)
        rows.append(
            Row(
                f"download, {settings.size_mib} MiB, SAMD's resuming reader",
                _mbps(size, samd),
                f"{_mbps(size, plain)} (botocore get_object stream)",
                f"{plain / samd:.2f}x",
            )
        )
        rows.append(
            Row(
                f"download, {settings.size_mib} MiB, s3transfer download_fileobj "
                f"({settings.part_mib} MiB ranges, {settings.concurrency} at once)",
                _mbps(size, library),
                f"{_mbps(size, plain)} (botocore get_object stream)",
                f"{plain / library:.2f}x",
            )
        )

        fast = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)

        def cut(read: Callable[[str], None]) -> str:
            with running_proxy(server.endpoint) as proxy:
                proxy.faults.append(Fault("GET", truncate_after=size // 2))
                try:
                    read(proxy.endpoint)
                except Exception as error:
                    return f"fails: {type(error).__name__}: {str(error)[:90]}"
                return f"{proxy.sent_bytes / size:.2f}x the object ({proxy.count('GET')} GETs)"

        def samd_cut(endpoint: str) -> None:
            with open_artifact(uri, endpoint_url=endpoint, retry=fast) as reader:
                while reader.readinto(buffer):
                    pass

        def client(endpoint: str) -> Any:
            from botocore.config import Config  # noqa: PLC0415

            config = Config(retries={"mode": "standard", "max_attempts": 3})
            return boto3.client("s3", endpoint_url=endpoint, config=config)

        def plain_cut(endpoint: str) -> None:
            body = client(endpoint).get_object(Bucket=bucket, Key="model.samd")["Body"]
            while body.readinto(buffer):
                pass

        def library_cut(endpoint: str) -> None:
            single = TransferConfig(multipart_threshold=2 * size)  # one GET, as a stream is read
            client(endpoint).download_fileobj(bucket, "model.samd", _Discard(), Config=single)

        for label, reader in (
            ("SAMD's resuming reader", samd_cut),
            ("botocore get_object, standard retry mode (3 attempts)", plain_cut),
            ("s3transfer download_fileobj, one GET", library_cut),
        ):
            rows.append(Row(f"connection cut at 50%, {settings.size_mib} MiB: {label}", cut(reader)))
    rows.append(
        Row(
            "machine load during the suite (1-minute load average, start and end)",
            f"{load_before:.1f} and {os.getloadavg()[0]:.1f}",
            f"{os.cpu_count()} CPUs",
        )
    )
    return rows


class _Discard(io.RawIOBase):
    """A writable, seekable sink that keeps nothing (s3transfer writes ranges at their offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self._position = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        count = len(memoryview(data))
        self._position += count
        return count

    def seek(self, offset: int, whence: int = 0) -> int:
        self._position = offset if whence == 0 else self._position + offset
        return self._position

    def tell(self) -> int:
        return self._position


def section(rows: Sequence[Row], settings: Settings, command: str) -> str:
    from bench.report import markdown_table, run_stamp  # noqa: PLC0415

    del settings
    return f"{run_stamp(command)}\n\n{markdown_table(rows)}\n\n{NOTES}\n"
