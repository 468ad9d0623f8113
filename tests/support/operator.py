"""Run the real operator (`python -m samd.operator`) against the local control plane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.cluster import Cluster

OPERATOR_NAMESPACE = "samd-system"
LEASE_NAME = "samd-operator"
SHARD_LABEL = "samd.dev/shard"  # the namespace label the sharding test's operator instances select on
# Short leader-election timings, so that a test that kills the leader waits seconds, not a quarter
# minute; the production defaults are 15 s / 10 s / 2 s (docs/operator.md).
ELECTION_ENV = {
    "SAMD_LEADER_LEASE_DURATION": "4",
    "SAMD_LEADER_RENEW_DEADLINE": "3",
    "SAMD_LEADER_RETRY_PERIOD": "0.5",
}


class OperatorProcess:
    def __init__(self, cluster: Cluster, log_path: Path, env: dict[str, str]) -> None:
        self.cluster = cluster
        self.log_path = log_path
        # Every process here shares one host name: each replica gets a name of its own, as pods do.
        self.env = {"SAMD_LEADER_IDENTITY": f"operator-{uuid.uuid4().hex[:8]}", **env}
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

    @property
    def identity(self) -> str:
        """The name this replica holds the Lease under: its own, kept across restarts like a pod's name."""
        return self.env["SAMD_LEADER_IDENTITY"]

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

    def metrics_port(self) -> int:
        """The port its /metrics endpoint chose (SAMD_METRICS_PORT=0), from its `metrics_listening` log line."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"metrics_listening"' in line:
                return int(json.loads(line)["metrics_port"])
        raise AssertionError("the operator logged no metrics port:\n" + self.log_tail())

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_operator(cluster: Cluster, log_path: Path, **env: str) -> Iterator[OperatorProcess]:
    # Metrics on a free port unless a test names one: operators of parallel sessions must not collide.
    defaults = {"SAMD_NAMESPACE": OPERATOR_NAMESPACE, "SAMD_METRICS_PORT": "0", **ELECTION_ENV}
    operator = OperatorProcess(cluster, log_path, {**defaults, **env})
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
