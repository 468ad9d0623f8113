"""A real local AWS-compatible server (moto in server mode) on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.support.processes import stop


@dataclass(frozen=True)
class MotoServer:
    endpoint: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment for boto3 clients that talk to this server."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def run_moto_server(timeout: float = 30.0, host: str = "127.0.0.1") -> Iterator[MotoServer]:
    """Start `moto_server` in a subprocess on ``host`` (loopback unless pods must reach it); stop it on exit."""
    port = _free_port(host)
    # moto logs every request: send that to a file (a pipe nobody reads would fill up and stall it).
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally block below
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "--host", host, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    endpoint = f"http://{host}:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(
                    f"moto server exited at start-up: {log.read().decode(errors='replace')[-2000:]}"
                )
            try:
                with direct.open(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server did not answer on {endpoint} within {timeout} s"
                    ) from None
                time.sleep(0.1)
        yield MotoServer(endpoint=endpoint)
    finally:
        stop(proc, timeout=10)
        log.close()
