"""The argocd-cm snippet carries exactly the health checks in deploy/argocd/*.lua."""

from __future__ import annotations

import pytest
import yaml

from tests.support.argocd import ARGOCD, SCRIPTS, health

pytestmark = pytest.mark.unit


def test_the_argocd_cm_snippet_holds_the_scripts() -> None:
    data = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())["data"]
    assert data == {
        f"resource.customizations.health.samd.dev_{kind}": path.read_text() for kind, path in SCRIPTS.items()
    }


def test_an_object_without_status_is_progressing() -> None:
    for kind in SCRIPTS:
        assert health({"kind": kind, "metadata": {"generation": 1}})[0] == "Progressing"
