"""The layout: every Python package lives under src/samd, with no symbolic links, and running Python
from the repository root still imports the standard library's `operator`."""

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
            "import operator, samd.operator; print(operator.__file__); print(samd.operator.__file__)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    stdlib_path, ours = result.stdout.split()
    assert not stdlib_path.startswith(str(REPO))
    assert ours == str(REPO / "src" / "samd" / "operator" / "__init__.py")


def test_the_sources_hold_no_symbolic_links() -> None:
    """Checkouts without symlink support (Windows without core.symlinks) must get a working tree."""
    tracked = subprocess.run(
        ["git", "ls-files", "-s", "src", "hack", "tests", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    links = [line.split("\t", 1)[1] for line in tracked if line.startswith("120000 ")]
    assert links == []
