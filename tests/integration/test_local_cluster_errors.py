"""`hack/local-cluster` and `hack/build-control-plane` fail clearly, and leave nothing running."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import REPO

pytestmark = pytest.mark.integration

FREE_BASE = 26000  # away from the session cluster's ports (16000 + n)


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **env}, check=False, timeout=300
    )


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {"SAMD_LOCAL_DIR": str(tmp_path / "local"), "SAMD_CLUSTER_PORT_BASE": str(FREE_BASE)}
    yield env
    run([str(REPO / "hack" / "local-cluster"), "down"], env)


def fake_binary(folder: Path, name: str, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_port_in_use_is_named(isolated: dict[str, str]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", FREE_BASE + 443))
        blocker.listen()
        result = run([str(REPO / "hack" / "local-cluster"), "up"], isolated)
    assert result.returncode == 1
    assert f"{FREE_BASE + 443} (kube-apiserver)" in result.stderr
    assert "SAMD_CLUSTER_PORT_BASE" in result.stderr


def test_component_that_exits_at_start_shows_its_log(isolated: dict[str, str], tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    fake_binary(assets, "etcd", 'echo "etcd: cannot open data dir: disk on fire" >&2; exit 1')
    result = run(
        [str(REPO / "hack" / "local-cluster"), "up"], {**isolated, "KUBEBUILDER_ASSETS": str(assets)}
    )
    assert result.returncode == 1
    assert "etcd exited during start-up" in result.stderr
    assert "disk on fire" in result.stderr


def test_component_that_never_gets_ready_times_out_and_is_stopped(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    assets = tmp_path / "assets"
    marker = tmp_path / "hung-etcd-ran"
    fake_binary(assets, "etcd", f'echo "waiting forever"; touch {marker}; exec sleep 300')
    result = run(
        [str(REPO / "hack" / "local-cluster"), "up"],
        {**isolated, "KUBEBUILDER_ASSETS": str(assets), "SAMD_CLUSTER_READY_TIMEOUT": "2"},
    )
    assert result.returncode == 1
    assert "etcd did not become ready" in result.stderr
    assert "waiting forever" in result.stderr
    assert marker.exists()
    status = run([str(REPO / "hack" / "local-cluster"), "status"], isolated)
    assert "running" not in status.stdout  # the half-started cluster was stopped


def test_failed_build_shows_the_tail_of_the_build_log(tmp_path: Path) -> None:
    result = run(
        [str(REPO / "hack" / "build-control-plane")],
        {"SAMD_CACHE_DIR": str(tmp_path / "cache"), "SAMD_ETCD_VERSION": "v3.6.999"},
    )
    assert result.returncode == 1
    assert "build step failed" in result.stderr
    assert "last lines of" in result.stderr
    assert "v3.6.999" in result.stderr
