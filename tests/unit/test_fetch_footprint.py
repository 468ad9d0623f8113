"""What `samd fetch` costs the init container: the modules it loads and its peak memory.

The init container's memory limit is small, and every module imported stays resident for the
whole fetch: a fetch from a local file must not load the S3 or HTTPS backends (boto3 and botocore
alone are about 16 MiB), nor the libraries only other commands need.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_cli import Workspace, make_workspace, tree

pytestmark = pytest.mark.unit

NOT_NEEDED_FOR_A_LOCAL_FETCH = (
    "boto3",
    "botocore",
    "s3transfer",
    "urllib3",
    "ssl",
    "http.client",
    "samd.storage.s3",
    "samd.storage.https",
    "pydantic",
    "yaml",
    "model_signing",
    "sigstore",
    "tqdm",
)
MEMORY_BUDGET_MIB = 64


@pytest.fixture
def workspace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Workspace:
    return make_workspace(capsys, tmp_path / "ws")


def run_probe(code: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(sys.executable).parent,  # not the repository: import the installed package
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def test_importing_storage_loads_no_remote_backend() -> None:
    probe = (
        "import json, sys, samd.storage; "
        f"print(json.dumps({{'loaded': [m for m in {NOT_NEEDED_FOR_A_LOCAL_FETCH!r} if m in sys.modules]}}))"
    )
    assert run_probe(probe)["loaded"] == []


def test_a_local_fetch_loads_only_what_it_uses_and_stays_small(workspace: Workspace, tmp_path: Path) -> None:
    output = tmp_path / "out"
    arguments = [*workspace.fetch_argv(output, source=f"file://{workspace.artifact}"), "--json"]
    # VmHWM is the peak resident memory of this process image only; getrusage's maxrss would
    # also count the pytest process it was forked from.
    probe = (
        "import json, sys\n"
        "from samd.cli import main\n"
        f"code = main({arguments!r})\n"
        "peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
        f"loaded = [m for m in {NOT_NEEDED_FOR_A_LOCAL_FETCH!r} if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'loaded': loaded, 'peak_kib': int(peak)}))\n"
    )
    result = run_probe(probe)
    assert result["code"] == 0
    assert tree(output) == tree(workspace.model)
    assert result["loaded"] == []
    peak_mib = int(str(result["peak_kib"])) / 1024
    assert peak_mib < MEMORY_BUDGET_MIB, f"samd fetch peaked at {peak_mib:.1f} MiB"
