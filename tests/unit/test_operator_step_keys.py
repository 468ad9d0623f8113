"""The keys step: a valid key is checked once per re-verify interval, a due rotation happens once —
also when the next reconcile starts from a status read before the rotation was written — and each
failure maps to its own reason on Encrypted."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import pytest

from samd.errors import KeyProviderError
from samd.operator import artifacts
from samd.operator.conditions import ConditionType
from samd.operator.config import OperatorConfig
from samd.operator.steps.keys import Keys
from samd.operator.steps.shared import Run
from samd.operator.timestamps import iso
from samd.storage.guard import AddressPolicy
from tests.support import steps
from tests.support.memory_kube import MemoryKube
from tests.support.models import ModelArtifacts, make_model

pytestmark = pytest.mark.unit

SECRET = "fraud-key"


@pytest.fixture
def model(tmp_path: Path) -> ModelArtifacts:
    return make_model(tmp_path / "models", size=1024)


def kube_with_keyset(model: ModelArtifacts) -> MemoryKube:
    kube = MemoryKube()
    kube.objects[("Secret", steps.NAMESPACE, SECRET)] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": steps.NAMESPACE},
        "data": {artifacts.KEYSET_KEY: base64.b64encode(model.keyset).decode()},
    }
    return kube


def encrypted_run(
    model: ModelArtifacts, *, status: dict[str, Any] | None = None, now: datetime.datetime = steps.NOW
) -> Run:
    spec = steps.spec(
        artifact={"uri": model.artifact.as_uri()},
        encryption={"keyRef": {"provider": "local", "secretName": SECRET}, "rotationPeriod": "24h"},
    )
    run = steps.run_of(spec, status=status, now=now)
    run.guard = AddressPolicy(allow_local_files=True)
    return run


def reasons(run: Run) -> list[str]:
    return [event.reason for event in run.outcome.events]


async def test_a_due_rotation_happens_once_even_from_a_status_read_before_it_was_written(
    model: ModelArtifacts,
) -> None:
    kube = kube_with_keyset(model)
    keys = Keys(kube, OperatorConfig())
    stale = {"key": {"rotatedAt": iso(steps.NOW - datetime.timedelta(days=2))}}
    run = encrypted_run(model, status=stale)
    status = await keys.check(run)
    assert reasons(run) == ["KeyRotated"]
    assert steps.condition(run, "Encrypted") == (True, "KeyValid")
    assert status["rotatedAt"] == iso(steps.NOW)
    assert kube.calls["apply Secret"] == 1  # the new key version, stored first
    # The next reconcile was queued before that status was written: it reads the old rotatedAt.
    run = encrypted_run(model, status=stale, now=steps.NOW + datetime.timedelta(minutes=1))
    status = await keys.check(run)
    assert reasons(run) == []
    assert status["rotatedAt"] == iso(steps.NOW)
    assert kube.calls["apply Secret"] == 1
    # What guards it is this process's memory of the rotation: forgotten, it would rotate again.
    keys.forget(steps.KEY)
    run = encrypted_run(model, status=stale, now=steps.NOW + datetime.timedelta(minutes=2))
    await keys.check(run)
    assert reasons(run) == ["KeyRotated"]


async def test_the_key_is_inspected_once_per_reverify_interval(
    model: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    inspected: list[str] = []
    real = artifacts.inspect_key

    def counting(*args: Any) -> artifacts.KeyState:
        inspected.append("inspect")
        return real(*args)

    monkeypatch.setattr(artifacts, "inspect_key", counting)
    keys = Keys(kube_with_keyset(model), OperatorConfig())
    fresh = {"key": {"rotatedAt": iso(steps.NOW)}}
    for minutes in (0, 1):
        await keys.check(
            encrypted_run(model, status=fresh, now=steps.NOW + datetime.timedelta(minutes=minutes))
        )
    assert len(inspected) == 1
    later = steps.NOW + OperatorConfig().reverify_interval
    await keys.check(encrypted_run(model, status=fresh, now=later))
    assert len(inspected) == 2


async def test_a_missing_key_secret_says_how_to_create_it_and_retries(model: ModelArtifacts) -> None:
    run = encrypted_run(model)
    await Keys(MemoryKube(), OperatorConfig()).check(run)
    status, reason = steps.condition(run, "Encrypted")
    assert (status, reason) == (False, "KeySecretMissing")
    assert f"kubectl create secret generic {SECRET}" in run.conditions[ConditionType.ENCRYPTED].message
    assert run.temporary


@pytest.mark.parametrize(
    ("transient", "expected"), [(True, (None, "KeyServiceUnreachable")), (False, (False, "KeyInvalid"))]
)
async def test_a_key_service_failure_is_unknown_when_transient_and_false_otherwise(
    model: ModelArtifacts, monkeypatch: pytest.MonkeyPatch, transient: bool, expected: tuple[bool | None, str]
) -> None:
    def failing(*_: Any) -> artifacts.KeyState:
        raise KeyProviderError("the KMS said no", transient=transient)

    monkeypatch.setattr(artifacts, "inspect_key", failing)
    previous = {"key": {"keyId": "kept"}}
    run = encrypted_run(model, status=previous)
    status = await Keys(kube_with_keyset(model), OperatorConfig()).check(run)
    assert steps.condition(run, "Encrypted") == expected
    assert status == previous["key"]  # the last known state is kept
    assert bool(run.temporary) is transient
