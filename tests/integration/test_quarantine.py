"""Quarantine, end to end on the real control plane: a policy's attack threshold crossed at a model's
servers quarantines the model (scaled to zero, Quarantined condition, Event, its pods refused by the
webhook) until a person allowed to write securemodels/status clears it; a model's deployer cannot.

The model's pods run on the fake node, so their servers' metrics are served by this test on each
pod's own address (added to the loopback interface: the operator reads the pod IP the API server
reports, as in production), from the server's own metric definitions (`ServingMetrics`).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_wsgi_server

from samd.events import SIGNATURE_HEADER, verify
from samd.serving.metrics import ServingMetrics
from samd.spec import GROUP, VERSION
from tests.support.cluster import Cluster
from tests.support.operator import OPERATOR_NAMESPACE
from tests.support.scenario import Scenario, eventually
from tests.support.serving import SAMD
from tests.unit.test_events import (
    KEY,
    Receiver,
    receiver,  # noqa: F401 - the fixture, used by name
)

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"
DEPLOYER = "model-deployer@example.com"


@contextmanager
def metrics_at(address: str, metrics: ServingMetrics) -> Iterator[None]:
    """The server's metrics page at <pod IP>:9090, as the operator reads it."""
    subprocess.run(["ip", "address", "add", f"{address}/32", "dev", "lo"], check=True)
    try:
        server, thread = start_wsgi_server(9090, addr=address, registry=metrics.registry)
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    finally:
        subprocess.run(["ip", "address", "del", f"{address}/32", "dev", "lo"], check=False)


def as_user(api: client.ApiClient, user: str) -> client.ApiClient:
    impersonating = client.ApiClient(api.configuration)
    impersonating.set_default_header("Impersonate-User", user)  # type: ignore[no-untyped-call]
    return impersonating


def events_of(scenario: Scenario, reason: str) -> list[Any]:
    found = scenario.core.list_namespaced_event(
        scenario.namespace, field_selector=f"involvedObject.name={MODEL},reason={reason}"
    ).items
    return list(found)


def replicas(scenario: Scenario) -> int:
    return int(scenario.apps.read_namespaced_deployment(MODEL, scenario.namespace).spec.replicas or 0)


def until(check: Callable[[], bool], what: str, timeout: float = 45.0) -> None:
    eventually(check, timeout, what)


@pytest.fixture
def sink_key(scenario: Scenario) -> Iterator[str]:
    """An HMAC key for the policy's event sink, in a Secret in SAMD's namespace."""
    name = f"sink-key-{uuid.uuid4().hex[:6]}"
    body: Any = {"metadata": {"name": name}, "stringData": {"key": KEY.decode()}}
    scenario.core.create_namespaced_secret(OPERATOR_NAMESPACE, body)
    yield name
    scenario.core.delete_namespaced_secret(name, OPERATOR_NAMESPACE)


def test_an_attack_threshold_quarantines_the_model_until_an_authorised_person_clears_it(
    scenario: Scenario,
    webhook: None,
    cluster: Cluster,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
    sink_key: str,
) -> None:
    scenario.apply_model(scenario.example())
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)
    pods = scenario.core.list_namespaced_pod(
        scenario.namespace, label_selector=f"samd.dev/model={MODEL}"
    ).items
    assert len(pods) == 2
    attacked = ServingMetrics(frozenset({"payments-api"}))

    with ExitStack() as stack:
        for pod in pods:
            served = attacked if pod is pods[0] else ServingMetrics(frozenset({"payments-api"}))
            stack.enter_context(metrics_at(str(pod.status.pod_ip), served))
        scenario.patch_policy(
            {
                "responses": {"unauthorizedPerMinute": 60, "quarantine": True},
                # The policy's own sink: on loopback, so the policy must allow that address.
                "eventSinks": [{"name": "soar", "url": receiver.url, "secretRef": {"name": sink_key}}],
                "allowedEndpoints": [{"cidr": "127.0.0.1/32", "allowHttp": True}],
            }
        )

        # 403s at one pod's server: 10 every half second, about 1,200 a minute.
        deadline = time.monotonic() + 45
        while (scenario.condition(MODEL, "Quarantined") or {}).get("status") != "True":
            assert time.monotonic() < deadline, "the model was not quarantined"
            attacked.forbidden.labels("ClientNotAllowed").inc(10)
            time.sleep(0.5)

    quarantined = scenario.condition(MODEL, "Quarantined")
    assert quarantined is not None
    assert quarantined["reason"] == "UnauthorizedAccess"
    assert "per minute; the policy's threshold is 60" in quarantined["message"]
    quarantine = scenario.model(MODEL)["status"]["quarantine"]
    assert quarantine["active"] is True
    assert quarantine["by"] == "samd-operator"
    ready = scenario.condition(MODEL, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "Quarantined")
    until(lambda: replicas(scenario) == 0, "the Deployment to be scaled to zero")
    until(lambda: bool(events_of(scenario, "Quarantined")), "a Quarantined Event on the model")
    assert events_of(scenario, "Quarantined")[0].type == "Warning"

    # The policy's sink got both events, signed with the key from the Secret.
    receiver.wait_for(2, timeout=30)
    kinds = []
    for headers, body in receiver.received:
        verify(KEY, headers[SIGNATURE_HEADER], body)
        event = json.loads(body)
        assert event["subject"] == f"{scenario.namespace}/{MODEL}"
        kinds.append(event["type"])
    assert kinds[:2] == ["dev.samd.access.unauthorized", "dev.samd.model.quarantined"]

    # New pods of the model are refused, even a faithful copy of the operator's own.
    template = scenario.apps.read_namespaced_deployment(MODEL, scenario.namespace).spec.template
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=f"{MODEL}-copy-{uuid.uuid4().hex[:5]}",
            labels=template.metadata.labels,
            annotations=template.metadata.annotations,
        ),
        spec=template.spec,
    )
    with pytest.raises(ApiException) as refused:
        scenario.core.create_namespaced_pod(scenario.namespace, pod)
    assert refused.value.status == 403
    message = json.loads(refused.value.body or "{}")["message"]
    assert f"SecureModel {MODEL} is quarantined (UnauthorizedAccess" in message
    assert f"samd quarantine clear {MODEL} --namespace {scenario.namespace}" in message
    # The webhook records the refused attempt on the model, beside the operator's own Event.
    until(
        lambda: any(e.source.component == "samd-webhook" for e in events_of(scenario, "Quarantined")),
        "the webhook's Quarantined Event on the model",
        15,
    )

    # The model's deployer (who may update the SecureModel) cannot clear it, and nothing changes.
    rbac = client.RbacAuthorizationV1Api(scenario.api)
    name = f"deployer-{uuid.uuid4().hex[:5]}"
    role: Any = {
        "metadata": {"name": name},
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": ["securemodels"],
                "verbs": ["get", "list", "update", "patch"],
            },
            {"apiGroups": [GROUP], "resources": ["securemodels/status"], "verbs": ["get"]},
        ],
    }
    rbac.create_namespaced_role(scenario.namespace, role)
    binding: Any = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "User", "name": DEPLOYER, "apiGroup": "rbac.authorization.k8s.io"}],
    }
    rbac.create_namespaced_role_binding(scenario.namespace, binding)
    deployer = client.CustomObjectsApi(as_user(scenario.api, DEPLOYER))
    until(
        lambda: bool(
            deployer.get_namespaced_custom_object(GROUP, VERSION, scenario.namespace, "securemodels", MODEL)
        ),
        "the deployer's binding to take effect",
        10,
    )
    with pytest.raises(ApiException) as forbidden:
        deployer.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            scenario.namespace,
            "securemodels",
            MODEL,
            {"status": {"quarantine": {"active": False}}},
        )
    assert forbidden.value.status == 403
    # Nor through the main resource: the API server ignores status in writes to it.
    deployer.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        scenario.namespace,
        "securemodels",
        MODEL,
        {"status": {"quarantine": {"active": False}}},
    )
    time.sleep(2)
    assert scenario.model(MODEL)["status"]["quarantine"]["active"] is True
    assert replicas(scenario) == 0

    # A person allowed to write securemodels/status (here the cluster admin) clears it with the CLI.
    cleared = subprocess.run(
        [str(SAMD), "quarantine", "clear", MODEL, "--namespace", scenario.namespace,
         "--kubeconfig", str(cluster.kubeconfig), "--message", "INC-1 closed", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(cleared.stdout)["active"] is False
    until(lambda: replicas(scenario) == 2, "the Deployment to be scaled back")
    scenario.wait_condition(MODEL, "Quarantined", "False", timeout=30)
    scenario.wait_condition(MODEL, "Ready", "True", timeout=60)
    until(lambda: bool(events_of(scenario, "QuarantineCleared")), "a QuarantineCleared Event on the model")
    by = scenario.model(MODEL)["status"]["quarantine"]["by"]
    assert by not in ("", "unknown", "samd-operator")  # the API server's name for the admin
    assert f"cleared (by {by})" in events_of(scenario, "QuarantineCleared")[0].message

    # The incident playbook's own switch: a person quarantines the model by hand.
    quarantined_by_hand = subprocess.run(
        [str(SAMD), "quarantine", "set", MODEL, "--namespace", scenario.namespace,
         "--kubeconfig", str(cluster.kubeconfig), "--reason", "SuspectedTheft", "--message", "INC-2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert quarantined_by_hand.returncode == 0, quarantined_by_hand.stderr
    assert f"SecureModel {scenario.namespace}/{MODEL} quarantined by {by}" in quarantined_by_hand.stdout
    manual = scenario.wait_condition(MODEL, "Quarantined", "True", timeout=30)
    assert manual["reason"] == "SuspectedTheft"
    until(lambda: replicas(scenario) == 0, "the Deployment to be scaled to zero again")
