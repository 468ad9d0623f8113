"""`samd quarantine`: what a person is told when the API server refuses, and what a bad call gets."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import pytest
from lightkube.core.exceptions import ApiError

from samd.cli.quarantine import ClusterError, _api_error
from samd.errors import UsageError
from tests.unit.test_cli import run

pytestmark = pytest.mark.unit


def api_error(code: int, message: str) -> ApiError:
    request = httpx.Request(
        "PATCH", "https://127.0.0.1/apis/samd.dev/v1alpha1/namespaces/ml/securemodels/m/status"
    )
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
    return ApiError(request=request, response=httpx.Response(code, json=body, request=request))


def test_a_refused_write_names_the_right_needed_and_the_role_that_grants_it() -> None:
    error = _api_error(api_error(403, "forbidden"), "fraud-detection", "ml-prod", "clear")

    assert isinstance(error, ClusterError)
    assert error.exit_code == 5
    assert "may not clear the quarantine of SecureModel fraud-detection in namespace ml-prod" in str(error)
    assert "patch securemodels/status" in str(error)
    assert error.hint is not None
    assert "--clusterrole=samd-incident-responder" in error.hint


def test_a_missing_model_is_a_usage_error() -> None:
    error = _api_error(api_error(404, "not found"), "fraud", "ml-prod", "set")

    assert isinstance(error, UsageError)
    assert str(error) == "SecureModel fraud does not exist in namespace ml-prod"


def test_set_needs_a_message_and_a_one_word_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = run(capsys, "quarantine", "set", "fraud", "-n", "ml-prod")
    assert missing.code == 2
    assert "--message" in missing.err

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    bad = run(
        capsys, "quarantine", "set", "fraud", "-n", "ml-prod", "--kubeconfig", kubeconfig,
        "--reason", "two words", "--message", "INC-1",
    )  # fmt: skip
    assert bad.code == 2
    assert "--reason 'two words' must be one CamelCase word" in bad.err
