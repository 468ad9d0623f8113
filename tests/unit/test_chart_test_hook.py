"""The chart's `helm test` script, run against a real webhook server over TLS on loopback.

In the cluster the test pod runs it against the webhook's Service; here the same file checks a
server with a certificate for the Service's DNS name: ready, not ready, a CA that did not sign the
certificate, and a certificate for another name.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from samd.webhook.server import AdmissionServer, DevelopmentCertificates, write_development_certificates
from tests.support.cluster import REPO
from tests.unit.test_webhook_server import FakeDecider, config_for

pytestmark = pytest.mark.unit

SCRIPT = REPO / "charts" / "samd" / "files" / "webhook-check.py"
SERVICE_NAME = "samd-webhook.samd-system.svc"


@dataclass
class Served:
    server: AdmissionServer
    decider: FakeDecider
    certs: DevelopmentCertificates


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    certs = write_development_certificates(tmp_path / "certs", hosts=(SERVICE_NAME,))
    decider = FakeDecider()
    server = AdmissionServer(config_for(certs), decider)
    await server.start()
    try:
        yield Served(server, decider, certs)
    finally:
        await server.stop()


async def check(**env: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT),
        env={"PATH": os.environ.get("PATH", ""), "SAMD_WEBHOOK_ATTEMPTS": "1", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    return int(process.returncode or 0), output.decode()


async def test_a_ready_webhook_with_the_right_certificate_passes(served: Served) -> None:
    by_file = await check(
        SAMD_WEBHOOK_ADDRESS=f"127.0.0.1:{served.server.port}",
        SAMD_WEBHOOK_SERVER_NAME=SERVICE_NAME,
        SAMD_WEBHOOK_CA=str(served.certs.ca_file),
    )
    # As in the pod: the address from the kubelet's service variables, the CA given inline.
    by_service = await check(
        SAMD_WEBHOOK_SERVICE="samd-webhook",
        SAMD_WEBHOOK_SERVICE_HOST="127.0.0.1",
        SAMD_WEBHOOK_SERVICE_PORT=str(served.server.port),
        SAMD_WEBHOOK_SERVER_NAME=SERVICE_NAME,
        SAMD_WEBHOOK_CA_PEM=served.certs.ca_file.read_text(),
    )

    for code, output in (by_file, by_service):
        assert code == 0, output
        assert f"answers as {SERVICE_NAME}: ready" in output


async def test_a_webhook_that_is_not_ready_fails(served: Served) -> None:
    served.decider.ready = False

    code, output = await check(
        SAMD_WEBHOOK_ADDRESS=f"127.0.0.1:{served.server.port}",
        SAMD_WEBHOOK_SERVER_NAME=SERVICE_NAME,
        SAMD_WEBHOOK_CA=str(served.certs.ca_file),
    )

    assert code == 1
    assert "is not ready: /readyz answered HTTP 503" in output


async def test_a_certificate_the_trusted_ca_did_not_sign_or_for_another_name_fails(
    served: Served, tmp_path: Path
) -> None:
    other = write_development_certificates(tmp_path / "other", hosts=(SERVICE_NAME,))

    wrong_ca = await check(
        SAMD_WEBHOOK_ADDRESS=f"127.0.0.1:{served.server.port}",
        SAMD_WEBHOOK_SERVER_NAME=SERVICE_NAME,
        SAMD_WEBHOOK_CA=str(other.ca_file),
    )
    wrong_name = await check(
        SAMD_WEBHOOK_ADDRESS=f"127.0.0.1:{served.server.port}",
        SAMD_WEBHOOK_SERVER_NAME="samd-webhook.elsewhere.svc",
        SAMD_WEBHOOK_CA=str(served.certs.ca_file),
    )

    for code, output in (wrong_ca, wrong_name):
        assert code == 1
        assert "certificate verify failed" in output, output
    assert "Hostname mismatch" in wrong_name[1]
