"""The ValidatingWebhookConfiguration builder: structure and refusals.

That the API server accepts it (and that its matchConditions send exactly the requests they
should) is tested against the real control plane in tests/integration/test_webhook_configuration.py.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from samd.webhook.configuration import WebhookService, build_webhook_configuration, may_run_a_model
from samd.webhook.workloads import CONTAINER_LISTS, CONTAINER_SECRET_PATHS, POD_SECRET_PATHS

pytestmark = pytest.mark.unit

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def by_name(configuration: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {webhook["name"]: webhook for webhook in configuration["webhooks"]}


def test_every_webhook_fails_closed_has_no_side_effects_and_speaks_v1() -> None:
    configuration = build_webhook_configuration(
        name="samd-webhook", service=WebhookService("samd-system", "samd-webhook"), ca_bundle=CA
    )

    assert configuration["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert configuration["kind"] == "ValidatingWebhookConfiguration"
    assert configuration["metadata"]["name"] == "samd-webhook"
    assert len(configuration["webhooks"]) == 5
    for webhook in configuration["webhooks"]:
        assert webhook["failurePolicy"] == "Fail"
        assert webhook["sideEffects"] == "None"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["timeoutSeconds"] == 5
        assert webhook["name"].endswith(".webhook.samd.dev")
        for rule in webhook["rules"]:
            if webhook["name"] == "namespaces.webhook.samd.dev":  # relabelling only
                assert (rule["operations"], rule["scope"]) == (["UPDATE"], "Cluster")
            else:
                assert (rule["operations"], rule["scope"]) == (["CREATE", "UPDATE"], "Namespaced")


def test_the_rules_cover_pods_every_workload_kind_and_securemodels() -> None:
    webhooks = by_name(
        build_webhook_configuration(name="w", url="https://127.0.0.1:8443/validate", ca_bundle=CA)
    )

    covered = {
        (group, resource)
        for webhook in webhooks.values()
        for rule in webhook["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert covered == {
        ("", "pods"),
        ("", "pods/ephemeralcontainers"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("samd.dev", "securemodels"),
        ("", "namespaces"),
    }
    assert webhooks["securemodels.webhook.samd.dev"]["rules"][0]["apiVersions"] == ["v1alpha1"]


def test_each_webhook_reads_the_pod_template_where_its_kinds_keep_it() -> None:
    webhooks = by_name(
        build_webhook_configuration(name="w", url="https://127.0.0.1:8443/validate", ca_bundle=CA)
    )

    def condition(webhook: str, name: str) -> str:
        [found] = [str(c["expression"]) for c in webhooks[webhook]["matchConditions"] if c["name"] == name]
        return found

    assert "object.?spec.?initContainers" in condition("pods.webhook.samd.dev", "may-run-a-model")
    assert "object.?spec.?template.?spec.?containers" in condition(
        "workloads.webhook.samd.dev", "may-run-a-model"
    )
    assert "object.?spec.?jobTemplate.?spec.?template.?metadata.?annotations" in condition(
        "cronjobs.webhook.samd.dev", "may-run-a-model"
    )
    names = {c["name"] for c in webhooks["securemodels.webhook.samd.dev"]["matchConditions"]}
    assert names == {"not-being-deleted", "spec-changed"}  # a SecureModel has no pod template
    for webhook in webhooks.values():
        assert "deletionTimestamp" in condition(webhook["name"], "not-being-deleted")
        changed = "labels-changed" if webhook["name"] == "namespaces.webhook.samd.dev" else "spec-changed"
        assert "oldObject" in condition(webhook["name"], changed)
    # A pod relabelled into a model's selector is sent although its spec did not change.
    assert "samd.dev/model" in condition("pods.webhook.samd.dev", "spec-changed")
    assert "samd.dev/model" not in condition("workloads.webhook.samd.dev", "spec-changed")


def test_the_namespace_selector_leaves_out_kube_system_and_samds_namespace() -> None:
    default = build_webhook_configuration(name="w", url="https://127.0.0.1:1/validate", ca_bundle=CA)
    custom = build_webhook_configuration(
        name="w",
        url="https://127.0.0.1:1/validate",
        ca_bundle=CA,
        namespace_exclusions=("samd", "kube-system"),
    )

    for configuration, excluded in (
        (default, ["kube-system", "samd-system"]),
        (custom, ["kube-system", "samd"]),
    ):
        for webhook in configuration["webhooks"]:
            assert webhook["namespaceSelector"]["matchExpressions"][0] == {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": excluded,
            }


PROTECTED = {"key": "samd.dev/protected", "operator": "In", "values": ["true"]}


def test_pods_and_workloads_are_sent_only_from_protected_namespaces() -> None:
    """A webhook outage refuses pods only where SAMD protects something (the operator's label)."""
    webhooks = by_name(
        build_webhook_configuration(name="w", url="https://127.0.0.1:1/validate", ca_bundle=CA)
    )

    for name in ("pods", "workloads", "cronjobs"):
        assert PROTECTED in webhooks[f"{name}.webhook.samd.dev"]["namespaceSelector"]["matchExpressions"], (
            name
        )
    # What decides coverage is checked everywhere: a SecureModel makes its namespace protected, and
    # namespace labels (the protected one among them) must not be removed from below.
    for name in ("securemodels", "namespaces"):
        assert (
            PROTECTED not in webhooks[f"{name}.webhook.samd.dev"]["namespaceSelector"]["matchExpressions"]
        ), name


def test_url_mode_for_the_local_cluster() -> None:
    configuration = build_webhook_configuration(
        name="w", url="https://127.0.0.1:18443/validate", ca_bundle=CA, timeout_seconds=3
    )

    for webhook in configuration["webhooks"]:
        assert webhook["clientConfig"] == {
            "url": "https://127.0.0.1:18443/validate",
            "caBundle": base64.b64encode(CA).decode(),
        }
        assert webhook["timeoutSeconds"] == 3


def test_service_mode_for_the_chart() -> None:
    configuration = build_webhook_configuration(
        name="w", service=WebhookService("samd-system", "samd-webhook", 8443), ca_bundle=CA
    )

    client_config = configuration["webhooks"][0]["clientConfig"]
    assert client_config["service"] == {
        "namespace": "samd-system",
        "name": "samd-webhook",
        "path": "/validate",
        "port": 8443,
    }
    assert base64.b64decode(client_config["caBundle"]) == CA
    assert "url" not in client_config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "exactly one of service"),
        ({"url": "https://a/validate", "service": WebhookService("n", "s")}, "exactly one of service"),
        ({"url": "http://127.0.0.1:8443/validate"}, "must be https"),
        ({"url": "https://127.0.0.1:8443/validate?x=1"}, "may not carry a query"),
        (
            {"url": "https://127.0.0.1/validate", "ca_bundle": b"not a certificate"},
            "ca_bundle must be the PEM",
        ),
        ({"url": "https://127.0.0.1/validate", "timeout_seconds": 31}, "between 1 and 30"),
        ({"url": "https://127.0.0.1/validate", "timeout_seconds": 0}, "between 1 and 30"),
        ({"url": "https://127.0.0.1/validate", "namespace_exclusions": ("",)}, "empty name"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_error(settings: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"name": "w", "ca_bundle": CA, **settings}

    with pytest.raises(ValueError, match=message):
        build_webhook_configuration(**arguments)


def test_no_exclusions_means_every_namespace_or_every_protected_one() -> None:
    configuration = build_webhook_configuration(
        name="w", url="https://127.0.0.1/validate", ca_bundle=CA, namespace_exclusions=()
    )

    selectors = {webhook["name"]: webhook["namespaceSelector"] for webhook in configuration["webhooks"]}
    assert selectors["securemodels.webhook.samd.dev"] == selectors["namespaces.webhook.samd.dev"] == {}
    assert selectors["pods.webhook.samd.dev"] == {"matchExpressions": [PROTECTED]}


def test_may_run_a_model_is_generated_from_the_deciders_table_of_secret_paths() -> None:
    expression = may_run_a_model("object")

    for path in (*POD_SECRET_PATHS, *CONTAINER_SECRET_PATHS, "volumes[].hostPath"):
        # The fields after the last list, read with optional selection, e.g. x0.?csi.?nodePublishSecretRef.?name
        tail = path.rsplit("[].", 1)[-1]
        assert ".?" + tail.replace(".", ".?") + ".hasValue()" in expression, path
    for list_name in CONTAINER_LISTS:
        assert f"object.?spec.?{list_name}.orValue([])" in expression
    assert "object.?spec.?imagePullSecrets.orValue([]).exists(" in expression
