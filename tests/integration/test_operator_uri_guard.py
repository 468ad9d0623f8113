"""No confused deputy, against the real operator: a SecureModel cannot make it read its own files or
reach internal addresses, and nothing it refused ends up in a ConfigMap that namespace viewers read."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.cluster import Cluster
from tests.support.moto_server import MotoServer
from tests.support.scenario import Scenario, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def secret_file() -> Iterator[tuple[Path, str]]:
    """A file the operator's process can read, outside the directories the test setup allows."""
    directory = Path(tempfile.mkdtemp(prefix="samd-operator-own-"))
    marker = f"SAMD-MARKER-{uuid.uuid4().hex}"
    path = directory / "credentials"
    path.write_text(f"apiVersion: v1\nkind: Config\n# {marker}\ntoken: {marker}\n")
    try:
        yield path, marker
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def config_map_text(scenario: Scenario, *, including_cluster_ca: bool = False) -> str:
    """Everything the namespace's ConfigMaps hold (kube-root-ca.crt, which every namespace has, on request)."""
    maps = scenario.core.list_namespaced_config_map(scenario.namespace).items
    return "\n".join(
        str(value)
        for m in maps
        if including_cluster_ca or m.metadata.name != "kube-root-ca.crt"
        for value in [*(m.data or {}).values(), *(m.binary_data or {}).values()]
    )


def events(scenario: Scenario, reason: str) -> list[str]:
    found = scenario.core.list_namespaced_event(scenario.namespace).items
    return [str(e.message) for e in found if e.reason == reason]


def allow_endpoints(scenario: Scenario, *entries: dict[str, Any]) -> None:
    scenario.patch_policy({"allowedEndpoints": list(entries)})


def test_a_signature_uri_naming_the_operators_own_files_is_refused_and_nothing_is_published(
    scenario: Scenario, cluster: Cluster, secret_file: tuple[Path, str]
) -> None:
    path, marker = secret_file
    link = scenario.artifacts.signature.parent / "innocent.sig"  # under the allowed directory...
    link.symlink_to(path)  # ...but a link to the secret
    attempts = {  # name: (URI, the path the refusal names)
        "own-file": (f"file://{path}", path),
        "own-kubeconfig": (f"file://{cluster.kubeconfig}", cluster.kubeconfig),
        "symlink-out": (f"file://{link}", link),
        "localhost-form": (f"file://localhost{path}", path),  # (a plain path never gets past the CRD)
    }
    for name, (uri, _) in attempts.items():
        body = scenario.example(signature={"uri": uri})
        body["metadata"]["name"] = name
        scenario.apply_model(body)
    for name, (_, shown) in attempts.items():
        verified = scenario.wait_condition(name, "Verified", "False", timeout=90)
        assert verified["reason"] == "URIRefused", verified
        assert verified["message"].startswith(f"spec.signature.uri: refusing to read the local path {shown}:")
        assert marker not in verified["message"]
        assert scenario.wait_condition(name, "Ready", "False", timeout=10)["reason"]
        assert not scenario.model(name)["status"].get("verification")
    eventually(lambda: len(events(scenario, "URIRefused")) >= len(attempts), 30, "URIRefused events")
    time.sleep(2)  # a few more reconciles (the resync interval is 1 s)
    assert marker not in config_map_text(scenario, including_cluster_ca=True)
    published = config_map_text(scenario)
    kubeconfig = cluster.kubeconfig.read_text()
    assert not [line for line in kubeconfig.splitlines() if len(line) > 30 and line.strip() in published]
    assert not scenario.apps.list_namespaced_deployment(scenario.namespace).items


def test_an_endpoint_on_loopback_is_refused_unless_a_policy_allows_it(scenario: Scenario) -> None:
    body = scenario.example()
    body["spec"]["signature"] = {"uri": "s3://models/fraud-detection/model.sig"}
    body["spec"]["artifact"] = {
        "uri": "s3://models/fraud-detection/model.samd",
        "endpoint": "http://2130706433:9",
    }
    scenario.apply_model(body)
    verified = scenario.wait_condition("fraud-detection", "Verified", "False", timeout=90)
    assert verified["reason"] == "URIRefused"
    assert "spec.artifact.endpoint" in verified["message"]
    assert "127.0.0.1" in verified["message"]
    assert "loopback" in verified["message"]
    assert "allowedEndpoints" in verified["message"]
    for condition in ("Encrypted", "StorageSecure"):
        refused = scenario.wait_condition("fraud-detection", condition, "False", timeout=30)
        assert refused["reason"] == "URIRefused"

    # The cluster admin allows it: the operator now tries, and finds nothing listening there.
    allow_endpoints(scenario, {"cidr": "127.0.0.1/32", "allowHttp": True})
    verified = scenario.wait_condition("fraud-detection", "Verified", "Unknown", timeout=90)
    assert verified["reason"] == "SignatureUnreachable"


def test_the_allowed_test_setup_reads_from_a_local_s3_server(scenario: Scenario, aws_env: MotoServer) -> None:
    s3 = boto3.client("s3")
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="fraud.sig", Body=scenario.artifacts.signature.read_bytes())
    s3.put_object(Bucket=bucket, Key="fraud.samd", Body=scenario.artifacts.artifact.read_bytes())
    body = scenario.example()
    body["spec"]["signature"] = {"uri": f"s3://{bucket}/fraud.sig"}
    body["spec"]["artifact"] = {"uri": f"s3://{bucket}/fraud.samd", "endpoint": aws_env.endpoint}

    # Plain http to loopback: refused until the policy lists the server's address.
    scenario.apply_model(body)
    assert (
        scenario.wait_condition("fraud-detection", "Verified", "False", timeout=90)["reason"] == "URIRefused"
    )
    allow_endpoints(scenario, {"cidr": "127.0.0.1/32", "allowHttp": True})
    scenario.wait_condition("fraud-detection", "Verified", "True", timeout=90)
    scenario.wait_condition("fraud-detection", "Encrypted", "True", timeout=60)
    eventually(
        lambda: scenario.artifacts.signature.read_text()[:200] in config_map_text(scenario),
        30,
        "the signature ConfigMap",
    )

    # The allowance is withdrawn: the next verification refuses again and the bundle is unpublished.
    allow_endpoints(scenario)
    assert (
        scenario.wait_condition("fraud-detection", "Verified", "False", timeout=90)["reason"] == "URIRefused"
    )
    eventually(
        lambda: scenario.artifacts.signature.read_text()[:200] not in config_map_text(scenario),
        30,
        "the signature ConfigMap to be removed",
    )
    names = [m.metadata.name for m in scenario.core.list_namespaced_config_map(scenario.namespace).items]
    assert "fraud-detection-signature" not in names
