"""The audit's pure checks on hand-made cluster state: what is a finding and, as much, what is not."""

from __future__ import annotations

import datetime
import re
from typing import Any

import httpx2
import pytest

from samd.audit.access import Subject, access_findings, expected_subject
from samd.audit.checks import (
    AuditSettings,
    expired_grant_findings,
    exposure_findings,
    key_findings,
    skipped_namespaces,
)
from samd.audit.cluster import AccessQuestion, AuditAccessError, ClusterReader, Identity
from samd.audit.findings import Severity
from samd.audit.snapshot import Snapshot
from tests.support.cluster import REPO

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)
SETTINGS = AuditSettings(now=NOW)


def model(name: str = "fraud", ns: str = "ml", **spec: Any) -> dict[str, Any]:
    return {"kind": "SecureModel", "metadata": {"name": name, "namespace": ns, "generation": 1}, "spec": spec}


def snapshot(**parts: Any) -> Snapshot:
    base: dict[str, Any] = dict(
        models=[model()], policies=[], namespaces={"ml": {"metadata": {"name": "ml", "labels": {}}}},
        services=[], ingresses=[], http_routes=None, network_policies=[], deployments=[], role_bindings=[],
        cluster_role_bindings=[], roles={}, cluster_roles={}, webhook_configurations=[],
    )  # fmt: skip
    base.update(parts)
    return Snapshot(**base)


def service(name: str, kind: str, selector: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": {"type": kind, "selector": selector}}


def test_only_node_ports_and_load_balancers_that_select_model_pods_are_exposures() -> None:
    services = [
        service("public", "LoadBalancer", {"samd.dev/model": "fraud"}),
        service("internal", "ClusterIP", {"samd.dev/model": "fraud"}),
        service("other-app", "NodePort", {"app": "web"}),
        service("no-selector", "NodePort", {}),
    ]
    found = list(exposure_findings(snapshot(services=services), SETTINGS))
    assert [(f.check, f.object.name) for f in found] == [("service-exposed", "public")]


def test_network_policies_with_sources_or_for_egress_only_do_not_allow_all() -> None:
    def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ml"}, "spec": spec}

    policies = [
        policy("listed", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"a": "b"}}}]}]}),
        policy("egress", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
        policy("other-pods", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}),
        policy("open", {"podSelector": {"matchLabels": {"samd.dev/model": "fraud"}}, "ingress": [{"ports": [{"port": 8443}]}]}),
    ]  # fmt: skip
    found = list(exposure_findings(snapshot(network_policies=policies), SETTINGS))
    assert [(f.check, f.object.name) for f in found] == [("network-policy-allows-all", "open")]
    assert "port(s) 8443" in found[0].message


def test_a_grant_is_reported_only_once_past_its_expiry() -> None:
    def binding(name: str, expires: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ml", "annotations": {"samd.dev/expires": expires}}}

    bindings = [binding("past", "2026-12-01T00:00:00Z"), binding("future", "2026-12-31T00:00:00Z")]
    found = list(expired_grant_findings(snapshot(role_bindings=bindings), SETTINGS))
    assert [f.object.name for f in found] == ["past"]


def test_a_group_is_asked_as_a_user_no_binding_names_and_a_service_account_by_its_user_name() -> None:
    assert Subject("Group", "ml-ops").identity == Identity("samd-audit:probe", ("ml-ops",))
    assert Subject("ServiceAccount", "ci", "build").identity == Identity("system:serviceaccount:build:ci")
    assert expected_subject(Subject("Group", "system:masters"), "samd-system")
    assert expected_subject(Subject("ServiceAccount", "samd-operator", "samd-system"), "samd-system")
    assert not expected_subject(Subject("ServiceAccount", "ci", "build"), "samd-system")
    assert not expected_subject(Subject("Group", "system:authenticated"), "samd-system")


def test_the_deployers_may_update_their_model_and_everyone_else_is_reported() -> None:
    deployers = [{"kind": "Group", "name": "ml-ops"}]
    bindings = [
        {"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "ml"}, "roleRef": {"kind": "Role", "name": "r"},
         "subjects": [{"kind": "Group", "name": "ml-ops"}, {"kind": "User", "name": "eve"}]},
    ]  # fmt: skip
    asked: list[tuple[Identity, AccessQuestion]] = []

    def allowed(identity: Identity, question: AccessQuestion) -> bool:
        asked.append((identity, question))
        bound = identity.user == "eve" or identity.groups == ("ml-ops",)
        return (
            bound and question.verb == "update"
        )  # the binding's subjects may update the model, nothing else

    state = snapshot(models=[model(access={"deployers": deployers})], role_bindings=bindings)
    found = list(access_findings(state, allowed, operator_namespace="samd-system"))
    assert [(f.check, f.message.split(" may ")[0]) for f in found] == [("model-updatable", "User eve")]
    assert len(asked) == len(set(asked))  # each question asked once per subject


def test_the_namespaces_a_webhook_skips_are_read_from_its_selector() -> None:
    selector = {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["b", "a"]}
        ]
    }
    assert skipped_namespaces(selector) == ["a", "b"]


def test_the_playbook_has_every_runbook_the_alerts_and_the_audit_link_to() -> None:
    playbook = (REPO / "docs" / "playbook.md").read_text()
    anchors = set(re.findall(r'<a id="([a-z-]+)"></a>', playbook))
    assert anchors == {
        "compromised-signing-key", "leaked-data-key", "suspected-model-exfiltration", "drift-alert",
        "repeated-unauthorized-access", "webhook-outage", "model-not-ready", "key-rotation-overdue",
        "certificate-expiring", "operator-down",
    }  # fmt: skip
    linked = set(
        re.findall(
            r"playbook's ([a-z-]+) runbook", (REPO / "src" / "samd" / "audit" / "checks.py").read_text()
        )
    )
    assert linked <= anchors


def test_a_data_key_is_overdue_once_in_use_longer_than_the_rotation_period() -> None:
    def encrypted(name: str, first_seen: str | None, period: str = "720h") -> dict[str, Any]:
        obj = model(
            name, encryption={"keyRef": {"provider": "local", "secretName": "k"}, "rotationPeriod": period}
        )
        key = {
            "keyId": "kek",
            "keyVersion": "2",
            "nextRotation": "2026-12-20T00:00:00Z",
            "dataKeyId": f"id-{name}",
        }
        obj["status"] = {"key": {**key, **({"dataKeyFirstSeen": first_seen} if first_seen else {})}}
        return obj

    models = [
        encrypted("old", "2026-10-01T12:00:00Z"),  # 63 days, period 30 days
        encrypted("young", "2026-11-10T12:00:00Z"),  # 23 days
        encrypted("long-period", "2026-10-01T12:00:00Z", period="2160h"),  # 63 of 90 days
        encrypted("unrecorded", None),  # an operator that records no data key: age unknown, no finding
    ]  # fmt: skip
    found = [
        f for f in key_findings(snapshot(models=models), SETTINGS) if f.check == "data-key-rotation-overdue"
    ]
    assert [(f.object.name, f.severity) for f in found] == [("old", Severity.MEDIUM)]
    assert "data key id-old has encrypted the artifact since at least 2026-10-01T12:00:00Z (63.0 days)" in (
        found[0].message
    )
    assert "samd reencrypt" in found[0].fix


class _BusyClient:
    """Answers 429 (a kind whose storage is still initializing) `busy` times, then lists nothing."""

    def __init__(self, busy: int) -> None:
        self.busy, self.calls = busy, 0

    def list(self, resource: Any, **_: Any) -> list[Any]:
        self.calls += 1
        if self.calls <= self.busy:
            request = httpx2.Request("GET", "https://127.0.0.1:6443/apis/samd.dev/v1alpha1/securemodels")
            response = httpx2.Response(429, request=request)
            raise httpx2.HTTPStatusError("too many requests", request=request, response=response)
        return []


def test_the_audit_reads_again_while_the_api_server_answers_429(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("samd.audit.cluster.time.sleep", lambda _seconds: None)
    client = _BusyClient(busy=2)
    reader = ClusterReader(client, "https://127.0.0.1:6443")  # type: ignore[arg-type]
    assert reader.list("samd.dev/v1alpha1", "SecureModel") == []
    assert client.calls == 3
    always_busy = ClusterReader(_BusyClient(busy=100), "https://127.0.0.1:6443")  # type: ignore[arg-type]
    with pytest.raises(AuditAccessError, match=r"listing SecureModel: .*\(HTTP 429\)"):
        always_busy.list("samd.dev/v1alpha1", "SecureModel")
