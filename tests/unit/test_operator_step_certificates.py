"""The certificates step: issues the server and client certificates once, does not read back what
it issued, reads the Secret again once someone else changed it, and renews only what is due."""

from __future__ import annotations

import datetime

import pytest

from samd.operator.config import OperatorConfig
from samd.operator.steps.certificates import Certificates
from samd.operator.steps.shared import OwnedRef
from tests.support import steps
from tests.support.memory_kube import MemoryKube

pytestmark = pytest.mark.unit

SERVER = f"{steps.NAME}-tls"


def secrets(kube: MemoryKube) -> list[OwnedRef]:
    """The certificate Secrets as the owned-object index would hold them."""
    return [
        OwnedRef.of({**obj, "metadata": {**obj["metadata"], "ownerReferences": [{"uid": steps.UID}]}})
        for (kind, _, name), obj in kube.objects.items()
        if kind == "Secret" and name.startswith(steps.NAME)
    ]


def with_client() -> dict[str, object]:
    return steps.spec(serving={"clients": [{"name": "gateway"}]})


async def test_server_and_client_certificates_are_issued_once_and_not_read_back() -> None:
    kube = MemoryKube()
    certificates = Certificates(kube, OperatorConfig())
    run = steps.run_of(with_client())
    status = await certificates.ensure(run, steps.context_of(run), [])
    assert status["clients"] == ["gateway"]
    assert status["serverNotAfter"] is not None
    assert steps.condition(run, "CertificatesReady") == (True, "Issued")
    assert kube.calls["apply Secret"] == 1  # the CA
    assert kube.calls["create Secret"] == 2  # the server's, the client's: one POST each, nothing read
    assert kube.calls["get Secret"] == 2  # the CA only: read, created, read back as stored
    run = steps.run_of(with_client())
    assert await certificates.ensure(run, steps.context_of(run), secrets(kube)) == status
    assert (kube.calls["apply Secret"], kube.calls["create Secret"], kube.calls["get Secret"]) == (1, 2, 2)
    assert not run.outcome.events


async def test_a_secret_changed_by_someone_else_is_read_again_and_kept_while_valid() -> None:
    kube = MemoryKube()
    certificates = Certificates(kube, OperatorConfig())
    run = steps.run_of()
    await certificates.ensure(run, steps.context_of(run), [])
    kube.forget("Secret", steps.NAMESPACE, SERVER)  # what the watch does on a hand edit
    reads, applies = kube.calls["get Secret"], kube.calls["apply Secret"]
    run = steps.run_of()
    await certificates.ensure(run, steps.context_of(run), secrets(kube))
    assert kube.calls["get Secret"] == reads + 1
    assert kube.calls["apply Secret"] == applies  # still valid and signed by our CA: kept


async def test_a_certificate_due_for_renewal_is_renewed_with_an_event() -> None:
    kube = MemoryKube()
    certificates = Certificates(kube, OperatorConfig())
    run = steps.run_of()
    first = await certificates.ensure(run, steps.context_of(run), [])
    later = steps.NOW + datetime.timedelta(days=365)
    run = steps.run_of(now=later)
    renewed = await certificates.ensure(run, steps.context_of(run), secrets(kube))
    assert renewed["serverNotAfter"] > first["serverNotAfter"]
    assert [event.reason for event in run.outcome.events] == ["CertificateRenewed"]


async def test_after_forget_the_stored_secret_is_read_again() -> None:
    kube = MemoryKube()
    certificates = Certificates(kube, OperatorConfig())
    run = steps.run_of()
    await certificates.ensure(run, steps.context_of(run), [])
    certificates.forget(steps.KEY)
    reads = kube.calls["get Secret"]
    run = steps.run_of()
    await certificates.ensure(run, steps.context_of(run), secrets(kube))
    assert kube.calls["get Secret"] == reads + 1


async def test_a_secret_of_that_name_that_belongs_to_another_is_not_overwritten() -> None:
    kube = MemoryKube()
    theirs = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SERVER, "namespace": steps.NAMESPACE},
    }
    kube.objects[("Secret", steps.NAMESPACE, SERVER)] = theirs
    run = steps.run_of()
    await Certificates(kube, OperatorConfig()).ensure(run, steps.context_of(run), [])
    assert kube.objects[("Secret", steps.NAMESPACE, SERVER)] is theirs
    run.report_apply_failures()
    assert steps.condition(run, "CertificatesReady") == (False, "ApplyFailed")
    assert run.taken == [f"Secret {SERVER}"]
