"""No actor gets more through SAMD than they could get without it (issue 9), tried as each actor.

Every test acts as the user who would try the attack (the API server's impersonation), against the
real API server, the real operator and the real webhook, and asserts both the refusal with its
message and that nothing was created, granted or leaked.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.scenario import GROUP, VERSION, Scenario, eventually

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"
KEY_SECRET = "fraud-detection-key"
MALLORY = "mallory@example.com"


def as_user(api: client.ApiClient, user: str) -> client.ApiClient:
    """An API client that acts as `user` (the admin impersonates them: RBAC then decides as for them)."""
    impersonating = client.ApiClient(api.configuration)
    impersonating.set_default_header("Impersonate-User", user)  # type: ignore[no-untyped-call]
    return impersonating


def refusal(error: ApiException) -> str:
    return str(json.loads(error.body or "{}").get("message", ""))


def may(
    api: client.ApiClient, user: str, verb: str, resource: str, namespace: str, **attributes: str
) -> bool:
    """The API server's own answer to whether `user` may do it (a SubjectAccessReview)."""
    body: Any = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:authenticated"],
            "resourceAttributes": {
                "verb": verb,
                "resource": resource,
                "namespace": namespace,
                **attributes,
            },
        },
    }
    review = client.AuthorizationV1Api(api).create_subject_access_review(body)
    return bool(review.status.allowed)


@pytest.fixture
def mallory(scenario: Scenario) -> Iterator[client.ApiClient]:
    """A namespace member who may edit SecureModels and create pods, but not read Secrets or bind Roles."""
    ns = scenario.namespace
    role: Any = {
        "metadata": {"name": "model-editor"},
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": ["securemodels"],
                "verbs": ["get", "list", "watch", "create", "update", "patch"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create", "patch"]},
        ],
    }
    binding: Any = {
        "metadata": {"name": "model-editor"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "model-editor"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": MALLORY}],
    }
    scenario.rbac.create_namespaced_role(ns, role)
    scenario.rbac.create_namespaced_role_binding(ns, binding)
    eventually(lambda: may(scenario.api, MALLORY, "create", "pods", ns), 10, "mallory's Role to apply")
    api = as_user(scenario.api, MALLORY)
    yield api
    api.close()  # type: ignore[no-untyped-call]


def ready_model(scenario: Scenario) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)


def operator_pod(scenario: Scenario, name: str) -> Any:
    """A Pod exactly as the operator's Deployment stamps them."""
    template = scenario.apps.read_namespaced_deployment(MODEL, scenario.namespace).spec.template
    body = client.ApiClient().sanitize_for_serialization(template)  # type: ignore[no-untyped-call]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**body["metadata"], "name": name},
        "spec": body["spec"],
    }


def pod_names(scenario: Scenario) -> set[str]:
    return {str(p.metadata.name) for p in scenario.core.list_namespaced_pod(scenario.namespace).items}


# --- confused deputy: what a SecureModel names ---------------------------------------------------------------


def test_a_model_author_who_may_not_read_the_key_secret_cannot_have_the_operator_use_it(
    webhook: None, scenario: Scenario, mallory: client.ApiClient
) -> None:
    body = scenario.example()
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(mallory).create_namespaced_custom_object(
            GROUP, VERSION, scenario.namespace, "securemodels", body
        )

    message = refusal(refused.value)
    assert refused.value.status == 403
    assert f"spec.encryption.keyRef.secretName names Secret {KEY_SECRET}" in message
    assert f"user {MALLORY} may not get secrets {KEY_SECRET}" in message
    # Nothing was created for it: no model, and so no Role, binding, ConfigMap or pod.
    assert (
        scenario.custom.list_namespaced_custom_object(GROUP, VERSION, scenario.namespace, "securemodels")[
            "items"
        ]
        == []
    )
    assert not scenario.rbac.list_namespaced_role_binding(
        scenario.namespace, label_selector=f"samd.dev/model={MODEL}"
    ).items
    # The same SecureModel from someone who may read the Secret is accepted.
    scenario.apply_model(body)
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)


def test_a_deployer_cannot_grant_access_through_the_operator(
    webhook: None, scenario: Scenario, mallory: client.ApiClient
) -> None:
    ready_model(scenario)
    custom = client.CustomObjectsApi(mallory)
    eve = {"kind": "User", "name": "eve@example.com"}
    patch = {"spec": {"access": {"deployers": [{"kind": "Group", "name": "ml-ops"}, eve]}}}

    with pytest.raises(ApiException) as refused:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, scenario.namespace, "securemodels", MODEL, patch
        )

    message = refusal(refused.value)
    assert "spec.access grants deployer to User eve@example.com" in message
    assert f"user {MALLORY} may not create rolebindings" in message
    assert not may(
        scenario.api, "eve@example.com", "update", "securemodels", scenario.namespace, group=GROUP, name=MODEL
    )
    # Even a cluster admin cannot bind everyone to a model unless the policy allows it.
    everyone = {"spec": {"access": {"reviewers": [{"kind": "Group", "name": "system:authenticated"}]}}}
    with pytest.raises(ApiException) as broad:
        scenario.custom.patch_namespaced_custom_object(
            GROUP, VERSION, scenario.namespace, "securemodels", MODEL, everyone
        )
    assert "does not allow granting access to Group system:authenticated" in refusal(broad.value)
    assert not may(
        scenario.api, "anyone@example.com", "get", "securemodels", scenario.namespace, group=GROUP, name=MODEL
    )


# --- the model's identity grants nothing ---------------------------------------------------------------------


def test_the_models_service_account_can_read_nothing(webhook: None, scenario: Scenario) -> None:
    ready_model(scenario)
    account = f"system:serviceaccount:{scenario.namespace}:{MODEL}-model"

    assert not may(scenario.api, account, "get", "secrets", scenario.namespace, name=KEY_SECRET)
    assert not may(scenario.api, account, "get", "secrets", scenario.namespace, name=f"{MODEL}-tls")
    bound = [
        subject.name
        for binding in scenario.rbac.list_namespaced_role_binding(scenario.namespace).items
        for subject in binding.subjects or []
    ]
    assert f"{MODEL}-model" not in bound


# --- pods that would get at a model --------------------------------------------------------------------------


def test_pods_posing_as_the_models_pods_are_refused(
    webhook: None, scenario: Scenario, mallory: client.ApiClient
) -> None:
    ready_model(scenario)
    core = client.CoreV1Api(mallory)
    before = pod_names(scenario)

    decoy: Any = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "decoy", "labels": {"samd.dev/model": MODEL}},
        "spec": {"containers": [{"name": "listen", "image": "busybox"}]},
    }
    impostor = operator_pod(scenario, "impostor")
    impostor["spec"]["containers"][0]["image"] = "attacker/server:latest"
    sidecar = operator_pod(scenario, "sidecar")
    thief = copy.deepcopy(sidecar["spec"]["containers"][0])
    thief.update(
        name="exfiltrate",
        image="busybox",
        command=["sh", "-c", "cat /m/* /t/*"],
        readinessProbe=None,
        ports=None,
    )
    thief["volumeMounts"] = [
        {"name": "model", "mountPath": "/m", "readOnly": True},
        {"name": "tls", "mountPath": "/t", "readOnly": True},
    ]
    sidecar["spec"]["containers"].append({k: v for k, v in thief.items() if v is not None})
    as_model: Any = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "as-model"},
        "spec": {"serviceAccountName": f"{MODEL}-model", "containers": [{"name": "sh", "image": "busybox"}]},
    }
    expected = {
        "decoy": f"carries the label samd.dev/model={MODEL}",
        "impostor": "runs image 'attacker/server:latest'",
        "sidecar": "its containers are ['server', 'exfiltrate']",
        "as-model": f"runs as ServiceAccount {MODEL}-model, the identity of SecureModel {MODEL}",
    }
    for pod in (decoy, impostor, sidecar, as_model):
        name = pod["metadata"]["name"]
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(scenario.namespace, pod)
        assert refused.value.status == 403, name
        assert expected[name] in refusal(refused.value), (name, refusal(refused.value))
    assert pod_names(scenario) == before

    # A pod of her own may run, but relabelling it into the model's Service is refused.
    plain: Any = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"}, "spec": decoy["spec"]}
    core.create_namespaced_pod(scenario.namespace, plain)
    with pytest.raises(ApiException) as relabel:
        core.patch_namespaced_pod(
            "plain", scenario.namespace, {"metadata": {"labels": {"samd.dev/model": MODEL}}}
        )
    assert f"carries the label samd.dev/model={MODEL}" in refusal(relabel.value)
    assert scenario.core.read_namespaced_pod("plain", scenario.namespace).metadata.labels is None
    # The model's Service sends its traffic to the operator's pods only.
    slices = (
        client.DiscoveryV1Api(scenario.api)
        .list_namespaced_endpoint_slice(
            scenario.namespace, label_selector=f"kubernetes.io/service-name={MODEL}"
        )
        .items
    )
    targets = {e.target_ref.name for s in slices for e in s.endpoints or [] if e.target_ref is not None}
    assert targets
    assert all(name.startswith(f"{MODEL}-") for name in targets), targets


# --- coverage cannot be switched off from below --------------------------------------------------------------


def test_a_namespace_with_models_cannot_be_relabelled_out_of_its_policy(
    webhook: None, scenario: Scenario
) -> None:
    ready_model(scenario)
    labels = scenario.core.read_namespace(scenario.namespace).metadata.labels

    with pytest.raises(ApiException) as refused:
        scenario.core.patch_namespace(scenario.namespace, {"metadata": {"labels": {"samd.dev/trust": None}}})

    message = refusal(refused.value)
    assert f"holds SecureModels ({MODEL})" in message
    assert f"ModelTrustPolicy {scenario.policy_name}" in message
    assert scenario.core.read_namespace(scenario.namespace).metadata.labels == labels
    # Other labels still change freely.
    scenario.core.patch_namespace(scenario.namespace, {"metadata": {"labels": {"team": "fraud"}}})


def test_a_model_no_policy_covers_any_more_stops_and_its_pods_are_refused(
    webhook: None, scenario: Scenario
) -> None:
    ready_model(scenario)
    pod = operator_pod(scenario, "late")
    # A cluster admin narrows the policy so that it no longer selects the namespace.
    scenario.custom.patch_cluster_custom_object(
        GROUP, VERSION, "modeltrustpolicies", scenario.policy_name,
        {"spec": {"namespaceSelector": {"matchLabels": {"samd.dev/trust": "elsewhere"}}}},
    )  # fmt: skip

    verified = scenario.wait_condition(MODEL, "Verified", "False", timeout=60)
    assert verified["reason"] == "NoTrustPolicy"
    assert scenario.wait_condition(MODEL, "Ready", "False", timeout=30)
    time.sleep(1)  # the webhook's watch sees the policy change
    with pytest.raises(ApiException) as refused:
        scenario.core.create_namespaced_pod(scenario.namespace, pod)
    assert f"no ModelTrustPolicy covers namespace {scenario.namespace}" in refusal(refused.value)
    assert "late" not in pod_names(scenario)


# --- names: the operator never takes over what it did not create ----------------------------------------------


def test_a_model_named_after_existing_objects_does_not_take_them_over(
    webhook: None, scenario: Scenario, mallory: client.ApiClient
) -> None:
    # Another team's Service and TLS Secret happen to have the names the operator would give the model's.
    service: Any = {
        "metadata": {"name": MODEL, "labels": {"team": "payments"}},
        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 443, "targetPort": 8443}]},
    }
    secret: Any = {"metadata": {"name": f"{MODEL}-tls"}, "stringData": {"tls.crt": "payments certificate"}}
    scenario.core.create_namespaced_service(scenario.namespace, service)
    scenario.core.create_namespaced_secret(scenario.namespace, secret)

    # Mallory may create SecureModels but not Services or Secrets; she names one after them.
    body = scenario.example()
    # No key and no access grants: she could not name those (the point here is the names).
    del body["spec"]["encryption"]
    del body["spec"]["access"]
    scenario.custom.patch_cluster_custom_object(
        GROUP, VERSION, "modeltrustpolicies", scenario.policy_name, {"spec": {"requireEncryption": False}}
    )
    time.sleep(1)  # the webhook's watch sees the policy change
    client.CustomObjectsApi(mallory).create_namespaced_custom_object(
        GROUP, VERSION, scenario.namespace, "securemodels", body
    )

    serving = scenario.wait_condition(MODEL, "Serving", "False", timeout=60)
    assert f"Service {MODEL} already exists in namespace {scenario.namespace}" in serving["message"]
    certificates = scenario.wait_condition(MODEL, "CertificatesReady", "False", timeout=30)
    assert f"Secret {MODEL}-tls already exists" in certificates["message"]
    kept = scenario.core.read_namespaced_service(MODEL, scenario.namespace)
    assert kept.spec.selector == {"app": "payments"}
    assert not kept.metadata.owner_references
    stored = scenario.core.read_namespaced_secret(f"{MODEL}-tls", scenario.namespace)
    assert stored.data == {"tls.crt": "cGF5bWVudHMgY2VydGlmaWNhdGU="}  # base64 of "payments certificate"
