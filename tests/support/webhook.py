"""The admission webhook as its own process on loopback, registered with the real API server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from samd.webhook.configuration import build_webhook_configuration
from tests.support.cluster import Cluster
from tests.support.scenario import eventually

CONFIGURATION = "samd-test-webhook"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def webhook_fixture(cluster: Cluster, k8s: client.ApiClient, folder: Path) -> Iterator[None]:
    """The webhook as its own process on loopback, registered with the API server by URL and CA bundle."""
    python = Path(sys.executable)
    subprocess.run(
        [python, "-m", "samd.webhook", "--write-dev-certificates", folder / "tls"], check=True, cwd="/"
    )
    port = free_port()
    log = (folder / "webhook.log").open("wb")
    process = subprocess.Popen(
        [python, "-m", "samd.webhook", "--host", "127.0.0.1", "--port", str(port),
         "--cert", folder / "tls" / "tls.crt", "--key", folder / "tls" / "tls.key", "--log-format", "json"],
        stdout=log, stderr=subprocess.STDOUT, cwd="/", env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )  # fmt: skip
    registrations = client.AdmissionregistrationV1Api(k8s)
    configuration = build_webhook_configuration(
        name=CONFIGURATION,
        url=f"https://127.0.0.1:{port}/validate",
        ca_bundle=(folder / "tls" / "ca.crt").read_bytes(),
    )
    try:
        ready = f"https://127.0.0.1:{port}/readyz"
        eventually(
            lambda: _ok(ready, folder / "tls" / "ca.crt"), 30, "the webhook to be ready (watches synced)"
        )
        registrations.create_validating_webhook_configuration(configuration)  # type: ignore[arg-type]
        time.sleep(2)  # the API server picks up new webhook configurations asynchronously
        yield
    finally:
        try:
            registrations.delete_validating_webhook_configuration(CONFIGURATION)
        except ApiException as error:
            if error.status != 404:
                raise
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _ok(url: str, ca: Path) -> bool:
    import ssl  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except OSError:
        return False
