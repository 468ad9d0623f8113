"""The operator's own no-downgrade rule, with no admission webhook in the way (as when it is down or
bypassed): a failed verification does not reset the version it compares with."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_version_binding import MODEL, older_release, point_at, wait_verified_message
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


def test_a_failed_verification_does_not_reset_the_no_downgrade_reference(
    scenario: Scenario, tmp_path: Path
) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)
    old = older_release(scenario, tmp_path)

    point_at(scenario, old, "1.4.0")  # fails: the signature binds 1.3.0
    wait_verified_message(scenario, "False", "not fraud-detection version 1.4.0")
    point_at(scenario, old, "1.3.0")  # now signature and version agree, but the version went down

    verified = wait_verified_message(scenario, "False", "forbids downgrades")
    assert verified["reason"] == "PolicyViolation"
    assert "version 1.3.0 is older than 1.4.0" in verified["message"]
    assert scenario.model(MODEL)["status"]["verification"] == {"version": "1.4.0"}
