"""The chart's copies of the CRDs and webhook rules are generated from their one source, and current."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.cluster import REPO

pytestmark = pytest.mark.unit


def test_chart_copies_match_their_sources() -> None:
    result = subprocess.run(
        [str(REPO / "hack" / "generate-chart"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
