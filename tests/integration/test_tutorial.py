"""docs/tutorial.md cannot go stale: its shell blocks are run, in order, against the test's control plane.

The blocks run in one bash (`set -euo pipefail`) from a folder laid out like the repository after
`make demo` (its `.local/kubeconfig`, `.venv/bin`, `hack/` and the demo's ONNX model), under the
test's temporary directory, which is where the test operator may read local model files.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import REPO, Cluster
from tests.support.operator import OperatorProcess
from tests.support.scenario import GROUP, VERSION, eventually

pytestmark = pytest.mark.integration

TUTORIAL = REPO / "docs" / "tutorial.md"
NAMESPACE, POLICY = "fraud-tutorial", "tutorial-models"


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def demo_layout(root: Path, cluster: Cluster) -> None:
    """What `make demo` leaves in the repository root, as far as the tutorial uses it."""
    (root / ".local").mkdir(parents=True)
    (root / ".local" / "kubeconfig").symlink_to(cluster.kubeconfig)
    (root / ".venv").mkdir()
    (root / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    (root / "hack").symlink_to(REPO / "hack")
    build_model = runpy.run_path(str(REPO / "hack" / "demo.py"))["build_model"]
    build_model(root / ".local" / "demo" / "model" / "fraud-detection")


def _gone(k8s: client.ApiClient) -> bool:
    try:
        client.CoreV1Api(k8s).read_namespace(NAMESPACE)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def test_every_command_of_the_tutorial_runs_in_order(
    webhook: None, operator: OperatorProcess, cluster: Cluster, k8s: client.ApiClient, tmp_path: Path
) -> None:
    blocks = shell_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 10  # the extraction found the tutorial's commands
    eventually(lambda: _gone(k8s), 90, f"namespace {NAMESPACE} left by an earlier run to be deleted")
    root = tmp_path / "repo"
    demo_layout(root, cluster)
    script = "set -euo pipefail\n" + "\n".join(blocks)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        # What the tutorial says the reader sees.
        assert result.stdout.startswith("ok")  # kubectl get --raw /readyz
        assert "verified: 3 file(s) match the signature" in output
        assert "model: fraud-detection version 1.4.0" in output
        assert "signature-invalid" in output
        assert "re-encrypted fraud-detection.samd under a new data key" in output
        assert "image-not-pinned" in output
        page = root / ".local" / "demo" / "tutorial" / "audit.html"
        assert "<svg" in page.read_text()
    finally:
        try:
            client.CustomObjectsApi(k8s).delete_cluster_custom_object(
                GROUP, VERSION, "modeltrustpolicies", POLICY
            )
        except ApiException as error:
            if error.status != 404:
                raise
        try:
            client.CoreV1Api(k8s).delete_namespace(NAMESPACE)
        except ApiException as error:
            if error.status != 404:
                raise
