"""cert-manager as the issuer of model certificates: who chooses the issuer, the Certificates the
operator asks cert-manager for, how their state becomes CertificatesReady, and the clear message when
cert-manager is not installed."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from samd.operator.builders.certmanager import (
    CertificateState,
    ChosenIssuer,
    IssuerConflict,
    certificate_manifests,
    choose_issuer,
    client_certificate,
    go_duration,
    server_certificate,
)
from samd.operator.conditions import ConditionType
from samd.operator.config import OperatorConfig, parse_issuer, variables
from samd.operator.kube import AppliedCache, Kube
from samd.operator.steps.certmanager import CertManagerCertificates
from samd.operator.steps.shared import ModelObject, Outcome, Run
from samd.policy import TrustPolicy
from samd.spec import CertificateIssuerRef, SpecError, parse_trust_policy
from tests.unit.test_builders_example import NOW, UID, fraud_detection

pytestmark = pytest.mark.unit

PLATFORM_CA = CertificateIssuerRef(kind="ClusterIssuer", name="platform-ca")
TEAM_CA = CertificateIssuerRef(kind="Issuer", name="team-ca")


def public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def policy(name: str, issuer: dict[str, str] | None = None) -> TrustPolicy:
    spec: dict[str, Any] = {"signers": [{"name": "ci", "publicKey": public_pem()}]}
    if issuer is not None:
        spec["certificateIssuer"] = issuer
    return TrustPolicy(name=name, generation=1, spec=parse_trust_policy(spec))


# --- who chooses the issuer -----------------------------------------------------------------------


def test_without_an_issuer_anywhere_the_operator_ca_issues() -> None:
    assert choose_issuer(None, [policy("a"), policy("b")]) is None


def test_the_charts_issuer_applies_where_no_policy_names_one() -> None:
    assert choose_issuer(PLATFORM_CA, [policy("a")]) == ChosenIssuer(
        PLATFORM_CA, "the chart (SAMD_CERT_ISSUER)"
    )


def test_a_covering_policys_issuer_overrides_the_charts() -> None:
    chosen = choose_issuer(PLATFORM_CA, [policy("a"), policy("team", {"kind": "Issuer", "name": "team-ca"})])
    assert chosen == ChosenIssuer(TEAM_CA, "ModelTrustPolicy team")


def test_policies_naming_the_same_issuer_agree() -> None:
    same = {"kind": "ClusterIssuer", "name": "platform-ca"}
    chosen = choose_issuer(None, [policy("zeta", same), policy("alpha", same)])
    assert chosen == ChosenIssuer(PLATFORM_CA, "ModelTrustPolicy alpha")


def test_policies_naming_different_issuers_choose_none_and_name_both() -> None:
    chosen = choose_issuer(
        PLATFORM_CA,
        [
            policy("platform", {"kind": "ClusterIssuer", "name": "platform-ca"}),
            policy("team", {"kind": "Issuer", "name": "team-ca"}),
        ],
    )
    assert isinstance(chosen, IssuerConflict)
    assert "ModelTrustPolicy platform names ClusterIssuer/platform-ca" in chosen.message
    assert "ModelTrustPolicy team names Issuer/team-ca" in chosen.message


def test_an_issuer_of_another_group_differs_from_cert_managers_own() -> None:
    chosen = choose_issuer(
        None,
        [
            policy("a", {"kind": "ClusterIssuer", "name": "ca"}),
            policy("b", {"kind": "ClusterIssuer", "name": "ca", "group": "awspca.cert-manager.io"}),
        ],
    )
    assert isinstance(chosen, IssuerConflict)
    assert "ClusterIssuer.awspca.cert-manager.io/ca" in chosen.message


def test_a_policy_names_only_a_cert_manager_issuer_kind() -> None:
    with pytest.raises(SpecError, match=r"certificateIssuer\.kind"):
        policy("a", {"kind": "Secret", "name": "x"})
    with pytest.raises(SpecError, match=r"certificateIssuer\.name"):
        policy("a", {"kind": "Issuer", "name": "Not A Name"})


# --- the chart's setting ----------------------------------------------------------------------------


def test_the_operator_reads_its_issuer_as_kind_slash_name() -> None:
    assert parse_issuer("") is None
    assert parse_issuer("ClusterIssuer/platform-ca") == PLATFORM_CA
    assert parse_issuer("Issuer.awspca.cert-manager.io/pca") == CertificateIssuerRef(
        kind="Issuer", name="pca", group="awspca.cert-manager.io"
    )
    config = OperatorConfig.from_env({"SAMD_CERT_ISSUER": "Issuer/team-ca"})
    assert config.certificate_issuer == TEAM_CA
    assert OperatorConfig.from_env({}).certificate_issuer is None
    assert "SAMD_CERT_ISSUER" in {variable.name for variable in variables()}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("platform-ca", "write KIND/NAME, e.g. ClusterIssuer/samd-ca"),
        ("Secret/platform-ca", "kind: Input should be 'ClusterIssuer' or 'Issuer'"),
        ("ClusterIssuer/Platform CA", "name: String should match pattern"),
    ],
)
def test_a_wrong_issuer_setting_stops_the_operator_with_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="SAMD_CERT_ISSUER") as raised:
        parse_issuer(text)
    assert message in str(raised.value)


# --- the Certificates ----------------------------------------------------------------------------------


def test_the_server_certificate_has_the_names_and_use_the_operator_ca_gives_it() -> None:
    manifest = server_certificate(fraud_detection(), PLATFORM_CA)
    assert manifest["apiVersion"] == "cert-manager.io/v1"
    assert manifest["kind"] == "Certificate"
    assert manifest["metadata"]["name"] == "fraud-detection-tls"
    assert manifest["metadata"]["namespace"] == "fraud"
    assert [
        (ref["kind"], ref["uid"], ref["controller"]) for ref in manifest["metadata"]["ownerReferences"]
    ] == [("SecureModel", UID, True)]
    spec = manifest["spec"]
    assert spec["secretName"] == "fraud-detection-tls"  # the Secret the pod mounts
    assert spec["dnsNames"] == [
        "fraud-detection",
        "fraud-detection.fraud",
        "fraud-detection.fraud.svc",
        "fraud-detection.fraud.svc.cluster.local",
    ]
    assert spec["commonName"] == "fraud-detection"
    assert spec["usages"] == ["digital signature", "server auth"]
    assert "subject" not in spec
    assert spec["privateKey"] == {
        "algorithm": "ECDSA",
        "size": 256,
        "encoding": "PKCS8",
        "rotationPolicy": "Always",
    }
    assert spec["issuerRef"] == {"kind": "ClusterIssuer", "name": "platform-ca", "group": "cert-manager.io"}
    assert spec["duration"] == "2160h0m0s"  # 90 days, the operator CA's validity
    assert spec["renewBefore"] == "720h0m0s"
    assert spec["secretTemplate"]["labels"]["app.kubernetes.io/managed-by"] == "samd-operator"
    assert spec["secretTemplate"]["labels"]["samd.dev/model"] == "fraud-detection"


def test_a_client_certificate_names_the_client_and_the_model_the_server_admits() -> None:
    spec = client_certificate(fraud_detection(), TEAM_CA, "payments-api")["spec"]
    assert spec["secretName"] == "fraud-detection-client-payments-api"
    assert spec["commonName"] == "payments-api"
    assert spec["subject"] == {"organizations": ["samd:fraud:fraud-detection"]}
    assert spec["usages"] == ["digital signature", "client auth"]
    assert "dnsNames" not in spec
    assert spec["issuerRef"] == {"kind": "Issuer", "name": "team-ca", "group": "cert-manager.io"}


def test_one_certificate_per_secret_the_operator_ca_would_fill() -> None:
    names = [m["metadata"]["name"] for m in certificate_manifests(fraud_detection(), PLATFORM_CA)]
    assert names == [
        "fraud-detection-tls",
        "fraud-detection-client-payments-api",
        "fraud-detection-client-risk-dashboard",
    ]


def test_durations_are_written_as_go_reads_them() -> None:
    assert go_duration(datetime.timedelta(days=90)) == "2160h0m0s"
    assert go_duration(datetime.timedelta(hours=1, minutes=30, seconds=5)) == "1h30m5s"


# --- cert-manager's report ------------------------------------------------------------------------------


def certificate_status(generation: int, observed: int, status: str, **fields: str) -> dict[str, Any]:
    condition = {"type": "Ready", "status": status, "observedGeneration": observed, **fields}
    return {"metadata": {"generation": generation}, "status": {"conditions": [condition], **fields}}


def test_ready_only_when_cert_manager_says_so_for_the_current_spec() -> None:
    ready = CertificateState.of(
        {
            "metadata": {"generation": 2},
            "status": {
                "notAfter": "2026-03-01T00:00:00Z",
                "conditions": [
                    {"type": "Ready", "status": "True", "observedGeneration": 2, "reason": "Ready"}
                ],
            },
        }
    )
    assert ready.ready
    assert ready.not_after == datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)

    stale = CertificateState.of(certificate_status(3, 2, "True"))
    assert not stale.ready
    assert "latest spec" in stale.message

    assert not CertificateState.of(None).ready
    assert not CertificateState.of({"metadata": {"generation": 1}, "status": {}}).ready


def test_cert_managers_reason_and_message_are_kept() -> None:
    failing = CertificateState.of(
        certificate_status(1, 1, "False", reason="DoesNotExist", message='Issuer "team-ca" not found')
    )
    assert not failing.ready
    assert (failing.reason, failing.message) == ("DoesNotExist", 'Issuer "team-ca" not found')


# --- when cert-manager is not installed -----------------------------------------------------------------


class NoCertManager:
    """An API server without cert-manager's CRDs: listing Certificates is a 404."""

    def list(self, *_: Any, **__: Any) -> AsyncIterator[Any]:
        raise ApiError(status=Status(code=404, message="the server could not find the requested resource"))


def run_for(status: dict[str, Any] | None = None) -> Run:
    ctx = fraud_detection()
    model = ModelObject(
        name=ctx.name, namespace=ctx.namespace, uid=UID, generation=1, spec={}, status=status or {}
    )
    return Run(model=model, spec=ctx.spec, now=NOW, outcome=Outcome(status={}))


def test_an_issuer_without_cert_manager_says_to_install_it_and_retries() -> None:
    kube = Kube(NoCertManager(), AppliedCache(datetime.timedelta(hours=1)))  # type: ignore[arg-type]
    manager = CertManagerCertificates(kube, OperatorConfig(certificate_issuer=PLATFORM_CA))
    run = run_for({"certificates": {"serverNotAfter": "2026-03-01T00:00:00Z"}})
    choice = manager.choose([])
    assert choice is not None
    status = asyncio.run(manager.ensure(run, fraud_detection(), [], choice))

    condition = run.conditions[ConditionType.CERTIFICATES_READY]
    assert (condition.status, condition.reason) == (False, "CertManagerMissing")
    assert "install cert-manager" in condition.message
    assert "ClusterIssuer/platform-ca (chosen by the chart (SAMD_CERT_ISSUER))" in condition.message
    assert status == {"serverNotAfter": "2026-03-01T00:00:00Z"}  # what was there stays
    assert run.temporary  # retried, so that installing cert-manager later is noticed


def test_back_to_the_operator_ca_without_cert_manager_is_not_an_error() -> None:
    kube = Kube(NoCertManager(), AppliedCache(datetime.timedelta(hours=1)))  # type: ignore[arg-type]
    manager = CertManagerCertificates(kube, OperatorConfig())
    run = run_for({"certificates": {"issuer": "ClusterIssuer/platform-ca"}})
    assert asyncio.run(manager.release(run, fraud_detection()))
    assert not run.temporary
    assert not run.outcome.events


class ForbiddenCertificates:
    """An API server where the operator may not list Certificates (its RBAC lacks them)."""

    def list(self, *_: Any, **__: Any) -> AsyncIterator[Any]:
        raise ApiError(status=Status(code=403, message='cannot list resource "certificates"'))


def test_the_operator_ca_waits_while_an_issuers_certificates_cannot_be_removed() -> None:
    """Both would write the same Secrets: the operator CA issues only once cert-manager's are gone."""
    kube = Kube(ForbiddenCertificates(), AppliedCache(datetime.timedelta(hours=1)))  # type: ignore[arg-type]
    manager = CertManagerCertificates(kube, OperatorConfig())
    run = run_for({"certificates": {"issuer": "ClusterIssuer/platform-ca"}})
    assert not asyncio.run(manager.release(run, fraud_detection()))
    condition = run.conditions[ConditionType.CERTIFICATES_READY]
    assert (condition.status, condition.reason) == (None, "CertManagerUnreachable")
    assert "cannot list" in condition.message
    assert run.temporary
