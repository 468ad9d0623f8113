"""A namespace, trust policy, signed and encrypted model and the running operator, for integration tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import REPO, Cluster
from tests.support.crds import install_crds
from tests.support.models import ModelArtifacts, make_model
from tests.support.operator import (
    LEASE_NAME,
    OPERATOR_NAMESPACE,
    SHARD_LABEL,
    OperatorProcess,
    running_operator,
)

GROUP, VERSION = "samd.dev", "v1alpha1"
EXAMPLE = REPO / "examples" / "fraud-detection"


def eventually(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)


def operator_fixture(
    cluster: Cluster, k8s: client.ApiClient, tmp_path_factory: pytest.TempPathFactory, **env: str
) -> Iterator[OperatorProcess]:
    install_crds(k8s)
    core = client.CoreV1Api(k8s)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE)))
    except ApiException as error:
        if error.status != 409:
            raise
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(
        cluster,
        log,
        SAMD_RESYNC_INTERVAL="1s",
        # Read the served models' metrics for the incident thresholds every second (only models
        # that a policy's spec.responses covers are read).
        SAMD_INCIDENT_CHECK_INTERVAL="1s",
        # The session's operator leaves the namespaces that the sharding test hands to its own two
        # operator instances (tests/integration/test_operator_shards.py) alone; it keeps its Lease.
        SAMD_NAMESPACE_SELECTOR=f"!{SHARD_LABEL}",
        SAMD_LEADER_LEASE=LEASE_NAME,
        # The test models are local files: the development switch, and only under pytest's own
        # temporary directories (a SecureModel naming any other file is refused, as in production).
        SAMD_ALLOW_LOCAL_FILES="true",
        SAMD_LOCAL_FILE_ROOTS=str(tmp_path_factory.getbasetemp()),
        # Credentials for an S3 endpoint that does not answer (the transient-failure test).
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        **env,
    ) as process:
        yield process


class Scenario:
    """One test's trust policy, namespace, model artifacts and API helpers."""

    def __init__(self, api: client.ApiClient, namespace: str, artifacts: ModelArtifacts) -> None:
        self.api = api
        self.namespace = namespace
        self.artifacts = artifacts
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.policy_name = f"test-{namespace}"

    def model(self, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "securemodels", name)
        assert isinstance(obj, dict)
        return obj

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        for condition in (self.model(name).get("status") or {}).get("conditions") or []:
            if condition["type"] == kind:
                return dict(condition)
        return None

    def wait_condition(self, name: str, kind: str, status: str, timeout: float = 60.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def check() -> bool:
            condition = self.condition(name, kind)
            found.clear()
            found.update(condition or {})
            return condition is not None and condition["status"] == status

        try:
            eventually(check, timeout, f"{name} {kind}={status}")
        except AssertionError as error:
            raise AssertionError(f"{error}; last {kind}: {found}") from None
        return found

    def example(self, **overrides: Any) -> dict[str, Any]:
        body = yaml.safe_load((EXAMPLE / "securemodel.yaml").read_text())
        body["metadata"]["namespace"] = self.namespace
        body["spec"]["artifact"] = {"uri": self.artifacts.artifact_uri}
        body["spec"]["signature"] = {"uri": self.artifacts.signature_uri}
        for key, value in overrides.items():
            body["spec"][key] = value
        return dict(body)

    def patch_policy(self, spec: dict[str, Any]) -> None:
        """Change the scenario's trust policy, and wait until the operator has handled the change."""
        patched = self.custom.patch_cluster_custom_object(
            GROUP, VERSION, "modeltrustpolicies", self.policy_name, {"spec": spec}
        )
        assert isinstance(patched, dict)
        generation = patched["metadata"]["generation"]

        def handled() -> bool:
            policy = self.custom.get_cluster_custom_object(
                GROUP, VERSION, "modeltrustpolicies", self.policy_name
            )
            assert isinstance(policy, dict)
            return bool((policy.get("status") or {}).get("observedGeneration") == generation)

        eventually(handled, 30, f"the operator to handle generation {generation} of {self.policy_name}")

    def apply_model(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "securemodels", body)


def scenario_fixture(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[Scenario]:
    """A namespace covered by a trust policy of its own, holding the model's key Secret."""
    artifacts = make_model(tmp_path / "model")
    core = client.CoreV1Api(k8s)
    label = uuid.uuid4().hex[:12]
    core.patch_namespace(namespace, {"metadata": {"labels": {"samd.dev/trust": label}}})
    policy = yaml.safe_load((EXAMPLE / "trustpolicy.yaml").read_text())
    policy["metadata"]["name"] = f"test-{namespace}"
    policy["spec"]["namespaceSelector"] = {"matchLabels": {"samd.dev/trust": label}}
    policy["spec"]["signers"][0]["publicKey"] = artifacts.public_key_pem
    policy["spec"]["allowLocalFiles"] = True  # the models are local files (development only)
    custom = client.CustomObjectsApi(k8s)
    custom.create_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy)
    core.create_namespaced_secret(namespace, artifacts.keyset_secret("fraud-detection-key"))
    try:
        yield Scenario(k8s, namespace, artifacts)
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy["metadata"]["name"])
