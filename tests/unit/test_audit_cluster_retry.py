"""The audit's reads are asked again while the API server is busy, and give up clearly."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from samd.audit import cluster
from samd.audit.cluster import AuditAccessError, ClusterReader

pytestmark = pytest.mark.unit


class BusyClient:
    """Answers `failures` times with `code`, then with one Namespace."""

    def __init__(self, failures: int, code: int) -> None:
        self.failures, self.code, self.calls = failures, code, 0

    def list(self, resource: Any, **_: Any) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ApiError(status=Status(code=self.code, message="storage is (re)initializing"))
        return [{"metadata": {"name": "fraud"}}]


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "RETRY_DELAYS", (0.0, 0.0, 0.0, 0.0))
    monkeypatch.setattr("samd.audit.cluster.time.sleep", lambda _seconds: None)


@pytest.mark.parametrize("code", [429, 503])
def test_a_busy_api_server_is_asked_again(code: int) -> None:
    client = BusyClient(failures=2, code=code)
    reader = ClusterReader(client, "https://127.0.0.1:6443")  # type: ignore[arg-type]
    assert reader.list("v1", "Namespace", namespaced=False) == [
        {"metadata": {"name": "fraud"}, "apiVersion": "v1", "kind": "Namespace"}
    ]
    assert client.calls == 3


def test_it_gives_up_after_the_last_pause_with_the_servers_answer() -> None:
    client = BusyClient(failures=99, code=429)
    reader = ClusterReader(client, "https://127.0.0.1:6443")  # type: ignore[arg-type]
    with pytest.raises(
        AuditAccessError, match=r"listing Namespace: storage is \(re\)initializing \(HTTP 429\)"
    ):
        reader.list("v1", "Namespace", namespaced=False)
    assert client.calls == len(cluster.RETRY_DELAYS) + 1


def test_a_refusal_is_not_asked_again() -> None:
    client = BusyClient(failures=99, code=403)
    reader = ClusterReader(client, "https://127.0.0.1:6443")  # type: ignore[arg-type]
    with pytest.raises(AuditAccessError, match="HTTP 403"):
        reader.list("v1", "Namespace", namespaced=False)
    assert client.calls == 1
