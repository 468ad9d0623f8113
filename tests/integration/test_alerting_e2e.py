"""End to end: a real Prometheus scrapes the real operator, a real `samd serve` with the fraud model
and a real admission webhook; shifted traffic and clients without certificates fire SAMD's alerts
(deploy/prometheus/samd-alerts.yaml, with `for:` shortened by hack/alerting.py, as in `make demo`),
and a real Alertmanager delivers them to an HTTP receiver this test runs."""

from __future__ import annotations

import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hack.alerting import ScrapeJob, alertmanager_config, prometheus_config, write_shortened_rules

from tests.integration.test_serving_drift import signed_model_with_baseline
from tests.support.cluster import REPO, Cluster
from tests.support.operator import OperatorProcess
from tests.support.scenario import eventually
from tests.support.serving import V2Client, client_context, fraud_data, serve_argv, start_server
from tests.support.threaded_server import serving
from tests.support.webhook import free_port

pytestmark = pytest.mark.integration


class Receiver(http.server.ThreadingHTTPServer):
    """Alertmanager's webhook receiver: keeps every notification it is sent."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)

    def firing(self) -> set[str]:
        return {
            alert["labels"]["alertname"]
            for notification in list(self.notifications)
            for alert in notification["alerts"]
            if alert["status"] == "firing"
        }


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.notifications.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _daemon(argv: list[str | Path], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [str(word) for word in argv],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env={**os.environ, **(env or {})},
        )


def _query(prometheus: int, expression: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as answer:
        return list(json.load(answer)["data"]["result"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving(Receiver()) as server:
        yield server


def test_real_prometheus_fires_and_alertmanager_delivers_samd_alerts(
    cluster: Cluster, operator: OperatorProcess, receiver: Receiver, tmp_path: Path
) -> None:
    fetched, signed, tls = signed_model_with_baseline(tmp_path / "model")
    processes: list[subprocess.Popen[bytes]] = []
    server = start_server(
        serve_argv(
            fetched, tls, signed, clients=["payments-api"],
            extra=["--drift-window", "1000", "--rate-limit", "1000", "--burst", "1000"],
        )
    )  # fmt: skip
    try:
        # The webhook as its own process: scraped over its TLS port (not registered for admission).
        webhook_tls = tmp_path / "webhook-tls"
        subprocess.run(
            [sys.executable, "-m", "samd.webhook", "--write-dev-certificates", webhook_tls], check=True
        )
        webhook_port = free_port()
        processes.append(
            _daemon(
                [sys.executable, "-m", "samd.webhook", "--host", "127.0.0.1", "--port", str(webhook_port),
                 "--cert", webhook_tls / "tls.crt", "--key", webhook_tls / "tls.key", "--log-format", "json"],
                tmp_path / "webhook.log", {"KUBECONFIG": str(cluster.kubeconfig)},
            )
        )  # fmt: skip
        alertmanager_port, prometheus_port = free_port(), free_port()
        (tmp_path / "alertmanager.yml").write_text(
            yaml.safe_dump(alertmanager_config(f"http://127.0.0.1:{receiver.server_port}/"))
        )
        processes.append(
            _daemon(
                ["prometheus-alertmanager", "--config.file", tmp_path / "alertmanager.yml",
                 "--storage.path", tmp_path / "alertmanager-data",
                 "--web.listen-address", f"127.0.0.1:{alertmanager_port}", "--cluster.listen-address", ""],
                tmp_path / "alertmanager.log",
            )
        )  # fmt: skip
        write_shortened_rules(tmp_path / "samd-alerts.yaml")
        jobs = [
            ScrapeJob("samd-operator", f"127.0.0.1:{operator.metrics_port()}"),
            ScrapeJob("samd-model", f"127.0.0.1:{server.metrics_port}"),
            ScrapeJob("samd-webhook", f"127.0.0.1:{webhook_port}", webhook_tls / "ca.crt", "localhost"),
        ]
        config = prometheus_config(
            jobs, rule_file="samd-alerts.yaml", alertmanager=f"127.0.0.1:{alertmanager_port}"
        )
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        processes.append(
            _daemon(
                ["prometheus", "--config.file", tmp_path / "prometheus.yml",
                 "--storage.tsdb.path", tmp_path / "prometheus-data",
                 "--web.listen-address", f"127.0.0.1:{prometheus_port}"],
                tmp_path / "prometheus.log",
            )
        )  # fmt: skip

        def all_targets_up() -> bool:
            try:
                results = _query(prometheus_port, "up")
            except OSError:
                return False
            return len(results) == 3 and all(result["value"][1] == "1" for result in results)

        eventually(all_targets_up, 60, "Prometheus to scrape the operator, the model server and the webhook")
        started = time.time()

        # Calm traffic: no drift alert.
        client = V2Client(server.port, client_context(tls.ca, *tls.client("payments-api")))
        try:
            calm, _ = fraud_data(600, seed=31)
            for start in range(0, 600, 50):
                assert client.infer("fraud-detection", calm[start : start + 50]).status == 200
            time.sleep(4)  # a few scrapes and evaluations
            assert "SamdModelDrift" not in {
                alert["metric"]["alertname"] for alert in _query(prometheus_port, "ALERTS")
            }
            # The faults: traffic whose most weighted feature moved, and clients without a certificate.
            shifted, _ = fraud_data(1100, seed=32)
            shifted[:, 3] += 1.0
            for start in range(0, 1100, 50):
                assert client.infer("fraud-detection", shifted[start : start + 50]).status == 200
        finally:
            client.close()
        anonymous = ssl.create_default_context(cafile=str(tls.ca))
        anonymous.check_hostname = False
        for _ in range(25):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
                try:
                    with anonymous.wrap_socket(raw) as wrapped:
                        wrapped.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                        wrapped.recv(1)
                except (ssl.SSLError, OSError):
                    pass  # refused at the handshake: what this fault is

        # The admission path: AdmissionReviews as the API server sends them; the malformed ones are denied.
        webhook_context = ssl.create_default_context(cafile=str(webhook_tls / "ca.crt"))
        reviews = sorted((REPO / "tests" / "unit" / "admission").glob("*.json"))
        for review in reviews * 3:
            request = urllib.request.Request(
                f"https://localhost:{webhook_port}/validate",
                data=review.read_bytes(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10, context=webhook_context) as answer:  # noqa: S310
                    answer.read()
            except urllib.error.HTTPError as refused:  # a malformed review is answered 400
                refused.read()
                refused.close()

        expected = {"SamdModelDrift", "SamdRefusedHandshakesBurst", "SamdAdmissionDenialsBurst"}
        eventually(
            lambda: expected <= receiver.firing(),
            60,
            "Alertmanager to deliver the drift, refused-handshake and admission-denial alerts",
        )
        picture = os.environ.get("SAMD_DASHBOARD_PNG")
        if picture:  # docs/monitoring.md's picture, drawn from this run's data
            from hack.dashboard_png import render  # noqa: PLC0415

            render(f"http://127.0.0.1:{prometheus_port}", Path(picture), start=started)
        drift = [
            alert
            for notification in receiver.notifications
            for alert in notification["alerts"]
            if alert["labels"]["alertname"] == "SamdModelDrift"
        ]
        assert {alert["labels"]["feature"] for alert in drift} >= {"features[3]"}
        assert "features[0]" not in {alert["labels"]["feature"] for alert in drift}
        assert drift[0]["annotations"]["runbook_url"] == "docs/playbook.md#drift-alert"
        # The healthy parts stay quiet: the operator and the webhook are scraped and ready.
        assert not {"SamdOperatorDown", "SamdWebhookDown"} & receiver.firing()
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        server.stop()
