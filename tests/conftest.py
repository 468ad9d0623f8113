"""Session-wide fixtures: real services started once per test session."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from tests.support.certmanager import CertManager, cert_manager_fixture
from tests.support.cluster import Cluster, local_control_plane, scratch_namespace
from tests.support.moto_server import MotoServer, run_moto_server
from tests.support.operator import OperatorProcess
from tests.support.scenario import Scenario, operator_fixture, scenario_fixture
from tests.support.softhsm import SoftHSMToken, create_token
from tests.support.webhook import webhook_fixture


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A local AWS-compatible server (S3, KMS) shared by the whole session."""
    with run_moto_server() as server:
        yield server


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """Point boto3 at the local server for one test."""
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    return moto_server


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SoftHSMToken:
    """A fresh SoftHSM2 token for one test; SOFTHSM2_CONF points at it."""
    # SoftHSM2 reads SOFTHSM2_CONF once, when the process first initialises it, and is finalised only
    # when the last PyKCS11 library object is collected. An earlier test's failed signer can still be
    # held by an exception's traceback cycle: collect it so this test's token directory is the one read.
    gc.collect()
    token = create_token(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(token.conf))
    return token


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The real local control plane, started once per session (integration tier)."""
    with local_control_plane() as running:
        yield running


@pytest.fixture(scope="session")
def k8s(cluster: Cluster) -> Iterator[ApiClient]:
    """An admin API client for the local control plane."""
    api = cluster.api_client()
    yield api
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def namespace(k8s: ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    with scratch_namespace(k8s) as name:
        yield name


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster, k8s: ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The real operator (`python -m samd.operator`), with the CRDs installed, for the whole session."""
    yield from operator_fixture(cluster, k8s, tmp_path_factory)


@pytest.fixture
def scenario(operator: OperatorProcess, k8s: ApiClient, namespace: str, tmp_path: Path) -> Iterator[Scenario]:
    """A namespace covered by a trust policy of its own, with a signed and encrypted model and its key Secret."""
    yield from scenario_fixture(operator, k8s, namespace, tmp_path)


@pytest.fixture(scope="module")
def webhook(cluster: Cluster, k8s: ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The real admission webhook, registered with the API server, for the tests of one module."""
    yield from webhook_fixture(cluster, k8s, tmp_path_factory.mktemp("webhook"))


@pytest.fixture(scope="session")
def cert_manager(
    cluster: Cluster, k8s: ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CertManager]:
    """A real cert-manager controller and cainjector (hack/build-cert-manager) for this session."""
    yield from cert_manager_fixture(cluster, k8s, tmp_path_factory.mktemp("cert-manager"))
