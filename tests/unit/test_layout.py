"""The layout keeps `operator` importable as the standard library, and ours as samd.operator."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.cluster import REPO

pytestmark = pytest.mark.unit


def test_operator_at_the_repo_root_is_still_the_standard_library() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import operator, samd.operator; print(operator.__file__); print(samd.operator.__name__)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    stdlib_path, ours = result.stdout.split()
    assert not stdlib_path.startswith(str(REPO))
    assert ours == "samd.operator"
