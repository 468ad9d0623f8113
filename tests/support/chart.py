"""The Helm chart in tests: render it with the control plane's helm, and run helm against a cluster."""

from __future__ import annotations

import copy
import datetime
import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from samd.operator.builders.certificates import CertificateAuthority
from tests.support.cluster import REPO
from tests.support.node import control_plane_tool

CHART = REPO / "charts" / "samd"
KUBE_VERSION = "1.35.4"


@functools.cache
def tool(name: str) -> str:
    """helm or kubectl from the control plane's build cache (located once per session)."""
    return control_plane_tool(name)


def helm_run(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """helm with `args` (against `kubeconfig` when given); the caller checks the outcome."""
    config = [f"--kubeconfig={kubeconfig}"] if kubeconfig else []
    return subprocess.run([tool("helm"), *config, *args], capture_output=True, text=True, check=False)


def template(release: str, namespace: str, *values: str) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart; `values` are helm flags (--set, --set-json, -f)."""
    return helm_run(
        "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, *values
    )


def render(release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
    """The rendered objects (a copy: the same render is made once per session)."""
    return copy.deepcopy(_rendered(release, namespace, *values))


@functools.cache
def _rendered(release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
    rendered = template(release, namespace, *values)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def ca_pem(name: str = "samd test CA") -> str:
    """A CA certificate (PEM) of the test's own, as an existing-Secret install would name it."""
    now = datetime.datetime.now(datetime.UTC)
    return CertificateAuthority.generate(
        now, datetime.timedelta(days=1), common_name=name
    ).certificate_pem.decode()
