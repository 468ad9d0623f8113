"""docs/playbook.md#webhook-outage, performed: with its own webhook process, stopped and started again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from samd.webhook.configuration import build_webhook_configuration
from tests.integration.test_webhook import model_pod, refusal
from tests.support.audit import run_audit
from tests.support.cluster import Cluster
from tests.support.scenario import Scenario, eventually
from tests.support.webhook import _ok, free_port

pytestmark = pytest.mark.integration

CONFIGURATION = "samd-outage-webhook"


class WebhookProcess:
    def __init__(self, cluster: Cluster, folder: Path) -> None:
        self.cluster, self.folder, self.port = cluster, folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [sys.executable, "-m", "samd.webhook", "--write-dev-certificates", folder / "tls"],
            check=True,
            cwd="/",
        )

    def start(self) -> None:
        tls = self.folder / "tls"
        with (self.folder / "webhook.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "samd.webhook", "--host", "127.0.0.1", "--port", str(self.port),
                 "--cert", tls / "tls.crt", "--key", tls / "tls.key", "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT, cwd="/",
                env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)},
            )  # fmt: skip
        eventually(
            lambda: _ok(f"https://127.0.0.1:{self.port}/readyz", tls / "ca.crt"), 30, "the webhook ready"
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


@pytest.fixture
def own_webhook(cluster: Cluster, k8s: client.ApiClient, tmp_path: Path) -> Iterator[WebhookProcess]:
    process = WebhookProcess(cluster, tmp_path)
    process.start()
    registrations = client.AdmissionregistrationV1Api(k8s)
    configuration: Any = build_webhook_configuration(
        name=CONFIGURATION,
        url=f"https://127.0.0.1:{process.port}/validate",
        ca_bundle=(tmp_path / "tls" / "ca.crt").read_bytes(),
    )
    registrations.create_validating_webhook_configuration(configuration)
    time.sleep(2)  # the API server picks up new webhook configurations asynchronously
    try:
        yield process
    finally:
        registrations.delete_validating_webhook_configuration(CONFIGURATION)
        process.stop()


def test_webhook_outage(
    own_webhook: WebhookProcess,
    scenario: Scenario,
    cluster: Cluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition("fraud-detection", "Ready", "True", timeout=90)
    ns = scenario.namespace
    own_webhook.stop()
    # What you see: the model's pods cannot be created; other pods still can; running ones keep running.
    with pytest.raises(ApiException) as refused:
        scenario.core.create_namespaced_pod(ns, model_pod(scenario, "during-outage"))
    assert 'failed calling webhook "pods.webhook.samd.dev"' in refusal(refused.value)
    plain: Any = {
        "metadata": {"name": "unrelated"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]},
    }
    scenario.core.create_namespaced_pod(ns, plain)
    running = scenario.core.list_namespaced_pod(ns, label_selector="samd.dev/model=fraud-detection").items
    assert len(running) == 2
    # 1. Confirm: the audit reports the webhook down.
    down = run_audit(cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns)
    assert down.one("webhook-down", name=CONFIGURATION)["severity"] == "critical"
    assert down.exit_code == 8
    # 2. Bring it back; 3. check.
    own_webhook.start()
    scenario.core.create_namespaced_pod(ns, model_pod(scenario, "after-outage"))
    back = run_audit(cluster.kubeconfig, capsys, monkeypatch, "--namespace", ns)
    assert not back.findings("webhook-down")
