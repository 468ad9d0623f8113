"""helm install, upgrade, rollback and uninstall of the chart on the local control plane.

The pods run on the KWOK fake node (marked Running, no containers): this tier checks what Helm and
the API server do with the release; the webhook answering in its pods is the real tier's (and
`helm test`'s, whose script tests/unit/test_chart_test_hook.py runs against a real webhook server).
The CRDs already exist here (other tests install them without Helm), so the install takes them
over with --take-ownership, as docs/install.md tells a cluster with CRDs from an older chart to.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from samd.spec import GROUP, VERSION
from tests.support.chart import CHART, helm_run
from tests.support.cluster import REPO, Cluster, scratch_namespace
from tests.support.crds import install_crds
from tests.support.scenario import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def release(cluster: Cluster, k8s: client.ApiClient) -> Iterator[tuple[str, str]]:
    """A release name and its namespace; whatever the test left installed is uninstalled."""
    install_crds(k8s)
    name = f"samd-{uuid.uuid4().hex[:6]}"
    with scratch_namespace(k8s, prefix="samd-release") as namespace:
        try:
            yield name, namespace
        finally:
            helm_run("uninstall", name, "-n", namespace, "--wait", kubeconfig=cluster.kubeconfig)
            # Its CRDs stay (keep); hand them back to the other tests' plain install.
            install_crds(k8s)


def webhook_ca(k8s: client.ApiClient, name: str) -> set[str]:
    configuration = client.AdmissionregistrationV1Api(k8s).read_validating_webhook_configuration(name)
    return {str(w.client_config.ca_bundle) for w in configuration.webhooks}


def replicas(k8s: client.ApiClient, namespace: str, deployment: str) -> int:
    status = client.AppsV1Api(k8s).read_namespaced_deployment(deployment, namespace).status
    return int(status.available_replicas or 0)


def test_install_upgrade_rollback_and_uninstall(
    cluster: Cluster, k8s: client.ApiClient, release: tuple[str, str]
) -> None:
    name, namespace = release
    core, extensions = client.CoreV1Api(k8s), client.ApiextensionsV1Api(k8s)

    def helm(*args: str) -> str:
        done = helm_run(*args, "-n", namespace, kubeconfig=cluster.kubeconfig)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    installed = helm("install", name, str(CHART), "--take-ownership", "--wait", "--timeout", "90s")
    assert "STATUS: deployed" in installed
    assert f"registered as the ValidatingWebhookConfiguration {name}" in installed  # NOTES
    assert f"helm test {name} -n {namespace}" in installed
    assert replicas(k8s, namespace, f"{name}-webhook") == 2
    assert replicas(k8s, namespace, f"{name}-operator") == 2  # a leader and a standby
    secret = core.read_namespaced_secret(f"{name}-webhook-tls", namespace)
    [ca] = webhook_ca(k8s, name)
    assert ca == secret.data["ca.crt"]  # the generated CA is the one the API server trusts
    assert base64.b64decode(ca).startswith(b"-----BEGIN CERTIFICATE-----")
    for crd in ("securemodels.samd.dev", "modeltrustpolicies.samd.dev"):
        assert (
            extensions.read_custom_resource_definition(crd).metadata.annotations["meta.helm.sh/release-name"]
            == name
        )

    # An upgrade changes what it should and keeps the webhook's certificate (no new CA, no drift).
    helm("upgrade", name, str(CHART), "--set", "webhook.replicas=3", "--wait", "--timeout", "90s")
    assert replicas(k8s, namespace, f"{name}-webhook") == 3
    assert webhook_ca(k8s, name) == {ca}
    assert core.read_namespaced_secret(f"{name}-webhook-tls", namespace).data == secret.data

    helm("rollback", name, "1", "--wait", "--timeout", "90s")
    eventually(lambda: replicas(k8s, namespace, f"{name}-webhook") == 2, 30, "the rollback to 2 replicas")
    assert webhook_ca(k8s, name) == {ca}
    history = helm("history", name)
    assert "Rollback to 1" in history

    # A policy (cluster-scoped, not admitted by the webhook) stands for the objects the CRDs hold.
    policy_name = f"kept-{name}"
    custom = client.CustomObjectsApi(k8s)
    custom.create_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", kept_policy(policy_name))
    try:
        uninstalled = helm_run("uninstall", name, "-n", namespace, "--wait", kubeconfig=cluster.kubeconfig)
        assert uninstalled.returncode == 0, uninstalled.stderr
        assert "These resources were kept due to the resource policy" in uninstalled.stdout
        with pytest.raises(ApiException) as gone:
            client.AdmissionregistrationV1Api(k8s).read_validating_webhook_configuration(name)
        assert gone.value.status == 404
        assert not client.AppsV1Api(k8s).list_namespaced_deployment(namespace).items
        # The CRDs and what they hold stay.
        assert custom.get_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy_name)
        assert extensions.read_custom_resource_definition("securemodels.samd.dev")
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy_name)


def kept_policy(name: str) -> dict[str, Any]:
    """The example's policy, renamed, selecting no namespace."""
    policy: dict[str, Any] = yaml.safe_load(
        (REPO / "examples" / "fraud-detection" / "trustpolicy.yaml").read_text()
    )
    policy["metadata"] = {"name": name}
    policy["spec"]["namespaceSelector"] = {"matchLabels": {"samd.dev/test-kept": name}}
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    policy["spec"]["signers"][0]["publicKey"] = pem.decode()
    return policy
