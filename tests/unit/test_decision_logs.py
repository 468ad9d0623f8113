"""SAMD's decision logs share one JSON shape, asserted from each component's own log call.

Each test makes the component log a real decision (the webhook's audit line, the server's refusal,
the loader's refusal, the operator's security event), formats the record with the production
formatter and checks the shared fields: time, level, component, event, decision, reason, user,
model {namespace, name}.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from samd.logs import JsonFormatter, decision_fields
from samd.operator.incidents import record_outcome_events
from samd.operator.steps.shared import Event, EventReason
from samd.serving.metrics import ServingMetrics
from samd.serving.protocol import RefusedError
from samd.serving.server import FrontEnd, Provenance
from samd.webhook.audit import AuditRecord, log_decision
from samd.webhook.review import AdmissionRequest, Decision
from tests.unit.test_cli import Workspace
from tests.unit.test_cli_fetch import (
    fetch,
    reencrypt,
    workspace,  # noqa: F401 - the fixture, used by name
)

pytestmark = pytest.mark.unit

SHARED = ("time", "level", "component", "event", "decision", "reason", "user", "model")
SAVED = Path(__file__).parent / "admission"


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(record)) for record in caplog.records if record.name == logger]


def assert_shape(line: dict[str, Any]) -> None:
    assert all(key in line for key in SHARED), sorted(line)
    assert datetime.datetime.fromisoformat(line["time"]).tzinfo is not None
    assert line["level"] in ("info", "warning", "error")
    assert line["model"] is None or set(line["model"]) == {"namespace", "name"}


def test_the_webhooks_admission_line(caplog: pytest.LogCaptureFixture) -> None:
    body = json.loads((SAVED / "pod-create.json").read_text())
    request = AdmissionRequest.model_validate(body["request"])
    decision = Decision(False, "loader image changed", "LoaderAltered", model="ml-prod/fraud", policy="prod")
    caplog.set_level(logging.INFO, logger="samd.audit")

    log_decision(AuditRecord.of(request, decision, "denied", 0.002))

    [line] = lines(caplog, "samd.audit")
    assert_shape(line)
    assert (line["component"], line["event"], line["decision"], line["reason"]) == (
        "webhook",
        "admission",
        "denied",
        "LoaderAltered",
    )
    assert line["user"] == request.user_info.username
    assert line["model"] == {"namespace": "ml-prod", "name": "fraud"}
    assert line["policy"] == "prod"


def test_the_servers_refusal_line(caplog: pytest.LogCaptureFixture) -> None:
    provenance = Provenance("fraud-detection", "1.4.0", "sha256:" + "0" * 64, "ml-ci")
    front = types.SimpleNamespace(
        metrics=ServingMetrics(frozenset({"scorer"})),
        config=types.SimpleNamespace(provenance=provenance),
    )
    caplog.set_level(logging.INFO, logger="samd.serving.refused")

    FrontEnd._refused(
        front,  # type: ignore[arg-type] # the two attributes _refused reads
        make_mocked_request("POST", "/v2/models/fraud-detection/infer"),
        RefusedError(403, "ClientNotAllowed", "client intruder is not allowed"),
        "intruder",
    )

    [line] = lines(caplog, "samd.serving.refused")
    assert_shape(line)
    assert (line["component"], line["event"], line["decision"], line["reason"]) == (
        "server",
        "request_refused",
        "refused",
        "ClientNotAllowed",
    )
    assert line["user"] == "intruder"
    assert line["model"] == {"namespace": None, "name": "fraud-detection"}
    assert line["status"] == 403


def test_the_loaders_refusal_line(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    workspace: Workspace,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    (workspace.model / "config.json").write_text('{"layers": 4}\n')
    reencrypt(capsys, workspace)
    caplog.set_level(logging.INFO, logger="samd.loader")

    result = fetch(capsys, workspace, tmp_path / "out")

    assert result.code == 3
    [line] = lines(caplog, "samd.loader")
    assert_shape(line)
    assert (line["component"], line["event"], line["decision"], line["reason"]) == (
        "loader",
        "model_load",
        "refused",
        "ManifestMismatch",
    )
    assert "config.json" in line["message"]
    assert line["artifact"] == str(workspace.artifact)


def test_the_operators_security_event_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="samd.events")

    record_outcome_events(
        "ml-prod",
        "fraud",
        [Event(EventReason.SIGNATURE_INVALID, "the signature does not verify", warning=True)],
    )

    [line] = lines(caplog, "samd.events")
    assert_shape(line)
    assert (line["component"], line["event"], line["decision"], line["reason"]) == (
        "operator",
        "dev.samd.signature.failed",
        "refused",
        "SignatureInvalid",
    )
    assert line["model"] == {"namespace": "ml-prod", "name": "fraud"}


def test_an_unknown_component_or_decision_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown component 'webhok'"):
        decision_fields(component="webhok", event="admission", decision="denied", reason="X")
    with pytest.raises(ValueError, match="unknown decision 'maybe'"):
        decision_fields(component="webhook", event="admission", decision="maybe", reason="X")


def test_a_records_library_context_is_left_out_and_exceptions_are_kept() -> None:
    record = logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    record.settings = object()  # kopf attaches its whole settings object to every record
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record.exc_info = sys.exc_info()

    line = json.loads(JsonFormatter("operator").format(record))

    assert line["component"] == "operator"
    assert line["message"] == "failed x"
    assert "settings" not in line
    assert "RuntimeError: boom" in line["exception"]
