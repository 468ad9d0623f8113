"""A webhook outage stops pods only where SAMD protects something.

The chart's own ValidatingWebhookConfiguration (rendered by helm) is registered with no webhook
behind its Service, as when every replica is down: the API server cannot call it, and its
failurePolicy Fail refuses what it would have sent. The operator marks the namespaces SAMD protects
(samd.dev/protected=true), and only those lose their pods; the label cannot be removed from below.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from samd.policy import PROTECTED_NAMESPACE_LABEL
from samd.spec import GROUP, VERSION
from tests.support.chart import one, render
from tests.support.cluster import scratch_namespace
from tests.support.scenario import Scenario, eventually

pytestmark = pytest.mark.integration


def refusal(error: ApiException) -> str:
    return str(json.loads(error.body or "{}").get("message", ""))


def protected(core: client.CoreV1Api, namespace: str) -> bool:
    labels = core.read_namespace(namespace).metadata.labels or {}
    return labels.get(PROTECTED_NAMESPACE_LABEL) == "true"


def pod(name: str, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "annotations": spec.pop("annotations", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}], **spec},
    }


def secret_pod(name: str) -> dict[str, Any]:
    """An ordinary workload's pod: it mounts a Secret, which the webhook's match conditions send."""
    return pod(name, volumes=[{"name": "creds", "secret": {"secretName": "db-password"}}])


@pytest.fixture
def webhook_down(k8s: client.ApiClient) -> Iterator[str]:
    """The chart's webhook configuration, registered while no webhook replica runs."""
    release = f"samd-down-{uuid.uuid4().hex[:6]}"
    configuration = one(render(release, release), "ValidatingWebhookConfiguration", release)
    registrations = client.AdmissionregistrationV1Api(k8s)
    registrations.create_validating_webhook_configuration(configuration)  # type: ignore[arg-type]
    try:
        yield release
    finally:
        registrations.delete_validating_webhook_configuration(release)


def test_an_outage_refuses_pods_in_protected_namespaces_only(
    scenario: Scenario, k8s: client.ApiClient, webhook_down: str
) -> None:
    core, apps = scenario.core, client.AppsV1Api(k8s)
    # The scenario's policy selects its namespace: the operator marks it protected.
    eventually(
        lambda: protected(core, scenario.namespace), 30, "the operator to label the namespace protected"
    )
    model_pod = pod("model", annotations={"samd.dev/model": "fraud-detection"})

    def refused_in_the_protected_namespace() -> bool:
        try:
            core.create_namespaced_pod(scenario.namespace, model_pod, dry_run="All")  # type: ignore[arg-type]
        except ApiException as error:
            return "failed calling webhook" in refusal(error)
        return False

    # The API server picks the configuration up asynchronously.
    eventually(refused_in_the_protected_namespace, 30, "the API server to call the (dead) webhook")

    with scratch_namespace(k8s, prefix="samd-unrelated") as unrelated:
        assert not protected(core, unrelated)
        # Elsewhere, ordinary pods and workloads with Secrets are created while the webhook is down.
        created = core.create_namespaced_pod(unrelated, secret_pod("app"))  # type: ignore[arg-type]
        assert created.metadata.uid
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "app"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "app"}},
                "template": {"metadata": {"labels": {"app": "app"}}, "spec": secret_pod("x")["spec"]},
            },
        }
        assert apps.create_namespaced_deployment(unrelated, deployment).metadata.uid  # type: ignore[arg-type]

    # In the protected namespace, a model pod and any pod with a Secret are refused (fail closed) ...
    for refused in (model_pod, secret_pod("app")):
        with pytest.raises(ApiException) as error:
            core.create_namespaced_pod(scenario.namespace, refused)  # type: ignore[arg-type]
        message = refusal(error.value)
        assert 'failed calling webhook "pods.webhook.samd.dev"' in message, message
    # ... while a pod that could neither run nor read a model is not even sent.
    assert core.create_namespaced_pod(scenario.namespace, pod("plain"), dry_run="All")  # type: ignore[arg-type]
    # SecureModels are checked everywhere (they make a namespace protected): refused too.
    with pytest.raises(ApiException) as error:
        scenario.apply_model(scenario.example())
    assert 'failed calling webhook "securemodels.webhook.samd.dev"' in refusal(error.value)


def test_the_protected_label_cannot_be_removed_from_below_and_goes_with_the_policy(
    webhook: None, scenario: Scenario
) -> None:
    core = scenario.core
    eventually(
        lambda: protected(core, scenario.namespace), 30, "the operator to label the namespace protected"
    )

    with pytest.raises(ApiException) as refused:
        core.patch_namespace(scenario.namespace, {"metadata": {"labels": {PROTECTED_NAMESPACE_LABEL: None}}})
    message = refusal(refused.value)
    assert f"namespace {scenario.namespace} is protected by SAMD because ModelTrustPolicy" in message, message
    assert protected(core, scenario.namespace)

    # A cluster admin points the policy elsewhere: nothing protects the namespace, the operator unlabels it.
    scenario.custom.patch_cluster_custom_object(
        GROUP, VERSION, "modeltrustpolicies", scenario.policy_name,
        {"spec": {"namespaceSelector": {"matchLabels": {"samd.dev/trust": "elsewhere"}}}},
    )  # fmt: skip
    eventually(lambda: not protected(core, scenario.namespace), 30, "the operator to remove the label")
