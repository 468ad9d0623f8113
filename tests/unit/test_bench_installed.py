"""The benchmarks run SAMD's processes as its image does: without the test-only packages."""

from __future__ import annotations

import subprocess

import pytest
from bench.installed import argv_as_installed, not_in_image

pytestmark = pytest.mark.unit


def test_only_modules_outside_the_runtime_dependencies_are_hidden() -> None:
    hidden = set(not_in_image())
    assert {"kubernetes", "pytest", "moto"} <= hidden  # test dependencies
    assert not {"kopf", "lightkube", "aiohttp", "boto3", "google", "samd"} & hidden  # runtime ones


@pytest.mark.parametrize("module", ["samd.operator", "samd.webhook"])
def test_the_operator_and_webhook_start_without_the_test_dependencies(module: str) -> None:
    """Also what the image needs: neither imports, unguarded, anything SAMD does not declare at runtime
    (a hidden module raises ImportError)."""
    done = subprocess.run(
        argv_as_installed(module, "--help"), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
