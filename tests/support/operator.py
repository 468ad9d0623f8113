"""Run the real operator (`python -m samd.operator`) against the local control plane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.cluster import Cluster

OPERATOR_NAMESPACE = "samd-system"


class OperatorProcess:
    def __init__(self, cluster: Cluster, log_path: Path, env: dict[str, str]) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "samd.operator", "--liveness", "", "--log-format", "json"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), **self.env},
            cwd="/",
        )
        log.close()
        time.sleep(1)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the operator exited at start-up:\n{self.log_tail()}")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_operator(cluster: Cluster, log_path: Path, **env: str) -> Iterator[OperatorProcess]:
    # Metrics on a free port unless a test names one: operators of parallel sessions must not collide.
    defaults = {"SAMD_NAMESPACE": OPERATOR_NAMESPACE, "SAMD_METRICS_PORT": "0"}
    operator = OperatorProcess(cluster, log_path, {**defaults, **env})
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
