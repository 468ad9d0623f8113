"""Against any cluster (KUBECONFIG, e.g. kind; else the local control plane): SAMD's API installs and works."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.support.cluster import REPO, Cluster, e2e_cluster, scratch_namespace
from tests.support.crds import install_crds

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def any_cluster() -> Iterator[Cluster]:
    with e2e_cluster() as cluster:
        yield cluster


def test_the_api_server_is_ready(any_cluster: Cluster) -> None:
    folder = subprocess.run(
        [str(REPO / "hack" / "build-control-plane")], capture_output=True, text=True, check=True
    ).stdout.strip()
    ready = subprocess.run(
        [f"{folder}/kubectl", f"--kubeconfig={any_cluster.kubeconfig}", "get", "--raw", "/readyz"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert ready.stdout.strip() == "ok"


def test_the_example_secure_model_is_accepted_by_the_crd(any_cluster: Cluster) -> None:
    api = any_cluster.api_client()
    try:
        install_crds(api)
        with scratch_namespace(api, prefix="samd-e2e") as namespace:
            body = yaml.safe_load(
                Path(REPO / "examples" / "fraud-detection" / "securemodel.yaml").read_text()
            )
            body["metadata"]["namespace"] = namespace
            created = client.CustomObjectsApi(api).create_namespaced_custom_object(
                "samd.dev", "v1alpha1", namespace, "securemodels", body, dry_run="All"
            )
            assert created["spec"]["serving"]["replicas"] == 2
            assert created["spec"]["encryption"]["rotationPeriod"] == "720h"
    finally:
        api.close()  # type: ignore[no-untyped-call]
