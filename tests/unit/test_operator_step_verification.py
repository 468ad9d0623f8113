"""The verification step: a signature is read and verified once per re-verify interval or when the
policies or the artifact change, and each failure maps to its own reason on Verified (keeping the
verified version, the no-downgrade rule's reference)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from samd.errors import StorageError
from samd.operator import artifacts
from samd.operator.config import OperatorConfig
from samd.operator.steps.shared import Run
from samd.operator.steps.verification import Verification
from samd.policy import TrustPolicy
from samd.spec import parse_trust_policy
from samd.storage.guard import AddressPolicy
from tests.support import steps
from tests.support.models import MODEL_VERSION, ModelArtifacts, make_model
from tests.support.signing import write_key_pair

pytestmark = pytest.mark.unit


@pytest.fixture
def model(tmp_path: Path) -> ModelArtifacts:
    return make_model(tmp_path / "models", size=1024)


class Reads:
    """Counts the signature reads (the real read runs)."""

    def __init__(self) -> None:
        self.count = 0
        self.failure: Exception | None = None
        self._real = artifacts.read_signature

    def __call__(self, *args: Any) -> bytes:
        self.count += 1
        if self.failure is not None:
            raise self.failure
        return self._real(*args)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    reads = Reads()
    monkeypatch.setattr(artifacts, "read_signature", reads)
    return reads


def policy(public_key_pem: str, generation: int = 1) -> TrustPolicy:
    spec = {"signers": [{"name": "ci", "publicKey": public_key_pem}], "allowLocalFiles": True}
    return TrustPolicy(name="team", generation=generation, spec=parse_trust_policy(spec))


def run_for(
    model: ModelArtifacts,
    *,
    now: datetime.datetime = steps.NOW,
    status: dict[str, Any] | None = None,
    **artifact: Any,
) -> Run:
    spec = steps.spec(
        version=MODEL_VERSION,
        artifact={"uri": model.artifact.as_uri(), **artifact},
        signature={"uri": model.signature.as_uri()},
        encryption={"keyRef": {"provider": "local", "secretName": "key"}},  # the policy requires it
    )
    run = steps.run_of(spec, now=now, status=status)
    run.guard = AddressPolicy(allow_local_files=True)
    return run


async def test_without_a_covering_policy_nothing_is_verified(model: ModelArtifacts, reads: Reads) -> None:
    run = run_for(model, status={"verification": {"version": "0.9.0"}})
    status = await Verification(OperatorConfig()).check(run, [])
    assert steps.condition(run, "Verified") == (False, "NoTrustPolicy")
    assert status["version"] == "0.9.0"  # the no-downgrade reference survives
    assert reads.count == 0


async def test_a_verification_is_reused_until_its_inputs_change_or_the_interval_passes(
    model: ModelArtifacts, reads: Reads
) -> None:
    verification = Verification(OperatorConfig())
    trusted = [policy(model.public_key_pem)]
    run = run_for(model)
    status = await verification.check(run, trusted)
    assert steps.condition(run, "Verified") == (True, "SignatureVerified")
    assert (status["policy"], status["version"], status["verifiedAt"]) == (
        "team",
        MODEL_VERSION,
        "2026-12-01T12:00:00Z",
    )
    assert status["manifestDigest"].startswith("sha256:")
    assert [event.reason for event in run.outcome.events] == ["Verified"]
    assert run.signature == model.signature.read_bytes()

    run = run_for(model, now=steps.NOW + datetime.timedelta(minutes=1))
    assert await verification.check(run, trusted) == status  # verifiedAt: when it was verified
    assert run.signature == model.signature.read_bytes()
    assert reads.count == 1
    await verification.check(run_for(model), [policy(model.public_key_pem, generation=2)])
    assert reads.count == 2
    await verification.check(run_for(model, now=steps.NOW + OperatorConfig().reverify_interval), trusted)
    assert reads.count == 3
    verification.forget(steps.KEY)
    await verification.check(run_for(model, now=steps.NOW + OperatorConfig().reverify_interval), trusted)
    assert reads.count == 4


async def test_a_signature_by_an_untrusted_key_is_invalid_and_not_remembered(
    model: ModelArtifacts, reads: Reads, tmp_path: Path
) -> None:
    stranger = write_key_pair(tmp_path / "stranger")
    verification = Verification(OperatorConfig())
    run = run_for(model, status={"verification": {"version": MODEL_VERSION, "signer": "ci"}})
    status = await verification.check(run, [policy(stranger.public_pem.read_text())])
    assert steps.condition(run, "Verified") == (False, "SignatureInvalid")
    assert any(event.reason == "SignatureInvalid" and event.warning for event in run.outcome.events)
    assert status["version"] == MODEL_VERSION
    assert status["signer"] is None  # removed from the status by the merge patch
    assert not run.temporary  # not retried: the same input gives the same answer


async def test_a_pinned_digest_the_signature_does_not_cover_is_a_mismatch(
    model: ModelArtifacts, reads: Reads
) -> None:
    run = run_for(model, digest="sha256:" + "0" * 64)
    await Verification(OperatorConfig()).check(run, [policy(model.public_key_pem)])
    assert steps.condition(run, "Verified") == (False, "DigestMismatch")


async def test_an_unreachable_store_keeps_the_last_verification_and_retries(
    model: ModelArtifacts, reads: Reads
) -> None:
    reads.failure = StorageError("the endpoint did not answer", transient=True)
    previous = {"verification": {"version": MODEL_VERSION, "signer": "ci", "manifestDigest": "sha256:ab"}}
    # The read fails before anything is verified; the status keeps what the last verification found.
    run = run_for(model, status=previous)
    assert (
        await Verification(OperatorConfig()).check(run, [policy(model.public_key_pem)])
        == previous["verification"]
    )
    assert steps.condition(run, "Verified") == (None, "SignatureUnreachable")
    assert run.temporary
