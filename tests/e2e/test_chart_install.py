"""Against any cluster (KUBECONFIG): the chart installs SAMD from the image the cluster holds.

The image is `SAMD_E2E_IMAGE` (for example your registry's copy) or, unset, the chart's default
(`samd:0.1.0`, what `make image` builds; with kind: `kind load image-archive
.local/image/samd-0.1.0.oci.tar`). On kind the operator and webhook pods really run; on the local
control plane (no KUBECONFIG) they land on KWOK's fake node, which marks them ready without running
a container, so there this test proves that the chart installs, and schedules that image; the
`real` tier proves that the image runs (tests/real/test_chart_release.py).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import yaml
from kubernetes import client

from tests.support.cluster import REPO, Cluster, e2e_cluster, scratch_namespace

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "samd"
DEPLOYMENTS = ("operator", "webhook")


def chart_default_image() -> str:
    image = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    return f"{image['repository']}:{image['tag']}"


def e2e_image() -> tuple[str, str]:
    """(repository, tag) of the image to install: SAMD_E2E_IMAGE, else the chart's default."""
    image = os.environ.get("SAMD_E2E_IMAGE") or chart_default_image()
    repository, colon, tag = image.rpartition(":")
    if not colon or "/" in tag or not repository:
        raise pytest.UsageError(
            f"SAMD_E2E_IMAGE={image!r}: give a repository and a tag (registry/samd:0.1.0)"
        )
    return repository, tag


def helm_argv(cluster: Cluster) -> list[str]:
    folder = subprocess.run(
        [str(REPO / "hack" / "build-control-plane")], capture_output=True, text=True, check=True
    ).stdout.strip()
    return [f"{folder}/helm", f"--kubeconfig={cluster.kubeconfig}"]


def helm(cluster: Cluster, *args: str) -> str:
    result = subprocess.run([*helm_argv(cluster), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def any_cluster() -> Iterator[Cluster]:
    with e2e_cluster() as cluster:
        yield cluster


@pytest.fixture
def release(any_cluster: Cluster) -> Iterator[tuple[str, str]]:
    """The chart installed with the e2e image in a namespace of its own (waited for); uninstalled after."""
    repository, tag = e2e_image()
    api = any_cluster.api_client()
    name = f"samd-e2e-{uuid.uuid4().hex[:6]}"
    try:
        with scratch_namespace(api, prefix="samd-e2e") as namespace:
            try:
                helm(
                    any_cluster, "install", name, str(CHART), "-n", namespace,
                    "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                    "--wait", "--timeout", "180s",
                )  # fmt: skip
                yield name, namespace
            finally:  # the webhook configuration and cluster roles go with the release
                subprocess.run(
                    [*helm_argv(any_cluster), "uninstall", name, "-n", namespace, "--wait"],
                    capture_output=True,
                    check=False,
                )
    finally:
        api.close()  # type: ignore[no-untyped-call]


def test_the_chart_installs_the_operator_and_webhook_from_the_e2e_image(
    any_cluster: Cluster, release: tuple[str, str]
) -> None:
    name, namespace = release
    repository, tag = e2e_image()
    api = any_cluster.api_client()
    try:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        for part in DEPLOYMENTS:
            deployment = apps.read_namespaced_deployment(f"{name}-{part}", namespace)
            assert (deployment.status.available_replicas or 0) == deployment.spec.replicas
            containers = deployment.spec.template.spec.containers
            assert {c.image for c in containers} == {f"{repository}:{tag}"}
            # The operator builds model pods, and the webhook checks them, with the same image.
            env = {e.name: e.value for c in containers for e in c.env or []}
            assert env["SAMD_IMAGE"] == f"{repository}:{tag}"
            selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
            pods = core.list_namespaced_pod(namespace, label_selector=selector).items
            assert pods
            assert all(c.image == f"{repository}:{tag}" for p in pods for c in p.spec.containers)
    finally:
        api.close()  # type: ignore[no-untyped-call]
