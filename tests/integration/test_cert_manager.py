"""cert-manager as SAMD's certificate issuer, with a real cert-manager (v1.11.5, built from its Go
module by hack/build-cert-manager) running against the local control plane.

A policy names a CA ClusterIssuer: cert-manager issues the model's server and client certificates
into the Secrets the pods mount, with the names and organization the model server checks, and a
real `samd serve` accepts the issued client certificate; removing the issuer hands the Secrets back
to the operator's CA. The chart's webhook certificate comes from cert-manager and the real
cainjector fills the webhook configuration's caBundle.
"""

from __future__ import annotations

import base64
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client

from tests.support.certmanager import (
    CLUSTER_RESOURCE_NAMESPACE,
    CertManager,
    ca_cluster_issuer,
    delete_ca_cluster_issuer,
)
from tests.support.chart import CHART, helm_run, one, render, template
from tests.support.cluster import Cluster, scratch_namespace
from tests.support.crds import install_crds
from tests.support.scenario import Scenario, eventually
from tests.support.serving import (
    TlsFiles,
    V2Client,
    as_fetched,
    client_context,
    serve_argv,
    sign_directory,
    start_server,
    train_fraud_model,
    write_secret,
)

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"
CLIENT = "payments-api"


def certificate(data: dict[str, str], entry: str = "tls.crt") -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(data[entry]))


def data_of(secret: client.V1Secret) -> dict[str, str]:
    """A Secret's `data` (base64 strings)."""
    return {key: str(value) for key, value in (secret.data or {}).items()}


def certificates_in(k8s: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(k8s).list_namespaced_custom_object(
        "cert-manager.io", "v1", namespace, "certificates"
    )
    return list(listed["items"])


def certificates_ready(scenario: Scenario, says: Callable[[str], bool]) -> None:
    """Wait for CertificatesReady=True with a message `says` accepts (not the one written before)."""

    def check() -> bool:
        condition = scenario.condition(MODEL, "CertificatesReady") or {}
        return condition.get("status") == "True" and says(str(condition.get("message")))

    eventually(check, 60, "CertificatesReady=True from the new issuer")


@pytest.fixture
def issuer(cert_manager: CertManager, k8s: client.ApiClient) -> Iterator[tuple[str, x509.Certificate]]:
    """A CA ClusterIssuer of this test's own, and its CA certificate once cert-manager issued it."""
    name = f"samd-test-{uuid.uuid4().hex[:6]}"
    ca_secret = ca_cluster_issuer(k8s, name)
    core = client.CoreV1Api(k8s)
    found: dict[str, x509.Certificate] = {}

    def issued() -> bool:
        try:
            data = data_of(core.read_namespaced_secret(ca_secret, CLUSTER_RESOURCE_NAMESPACE))
        except client.ApiException:
            return False
        if "tls.crt" in data:
            found["ca"] = certificate(data)
        return "ca" in found

    try:
        eventually(issued, 60, f"cert-manager to issue the CA of ClusterIssuer {name}")
        yield name, found["ca"]
    finally:
        delete_ca_cluster_issuer(k8s, name)


def test_a_policys_issuer_issues_the_model_certificates_and_switching_works_both_ways(
    scenario: Scenario, issuer: tuple[str, x509.Certificate], k8s: client.ApiClient, tmp_path: Path
) -> None:
    issuer_name, ca = issuer
    ns = scenario.namespace
    scenario.patch_policy({"certificateIssuer": {"kind": "ClusterIssuer", "name": issuer_name}})
    scenario.apply_model(scenario.example())

    ready = scenario.wait_condition(MODEL, "CertificatesReady", "True", timeout=90)
    assert f"cert-manager ClusterIssuer/{issuer_name}" in ready["message"]
    assert f"ModelTrustPolicy {scenario.policy_name}" in ready["message"]
    scenario.wait_condition(MODEL, "Ready", "True", timeout=90)
    model = scenario.model(MODEL)
    uid = model["metadata"]["uid"]

    # One Certificate per Secret, owned by the SecureModel, from the policy's issuer.
    owned = certificates_in(k8s, ns)
    assert {c["metadata"]["name"] for c in owned} == {f"{MODEL}-tls", f"{MODEL}-client-{CLIENT}"}
    for obj in owned:
        assert [ref["uid"] for ref in obj["metadata"]["ownerReferences"]] == [uid]
        assert obj["spec"]["issuerRef"]["name"] == issuer_name

    server_secret = scenario.core.read_namespaced_secret(f"{MODEL}-tls", ns)
    server = certificate(data_of(server_secret))
    server.verify_directly_issued_by(ca)  # cert-manager's CA signed it, not the operator's
    assert base64.b64decode(data_of(server_secret)["ca.crt"]).strip() == ca.public_bytes(Encoding.PEM).strip()
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {
        MODEL, f"{MODEL}.{ns}", f"{MODEL}.{ns}.svc", f"{MODEL}.{ns}.svc.cluster.local",
    }  # fmt: skip
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    # The Secret cert-manager created is adopted: deleted with the model, found by its labels.
    assert [ref.uid for ref in server_secret.metadata.owner_references] == [uid]
    assert server_secret.metadata.labels["samd.dev/model"] == MODEL

    client_secret = scenario.core.read_namespaced_secret(f"{MODEL}-client-{CLIENT}", ns)
    issued_client = certificate(data_of(client_secret))
    issued_client.verify_directly_issued_by(ca)
    subject = issued_client.subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        f"samd:{ns}:{MODEL}"
    ]
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [CLIENT]
    assert list(issued_client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]

    status = model["status"]["certificates"]
    assert status["issuer"] == f"ClusterIssuer/{issuer_name}"
    assert status["clients"] == [CLIENT]
    assert status["serverNotAfter"] == server.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    # A hand edit that points a Certificate at another issuer is undone by the next reconcile.
    custom = client.CustomObjectsApi(k8s)
    custom.patch_namespaced_custom_object(
        "cert-manager.io", "v1", ns, "certificates", f"{MODEL}-tls",
        {"spec": {"issuerRef": {"name": "someone-elses-issuer"}}},
    )  # fmt: skip
    scenario.custom.patch_namespaced_custom_object(
        "samd.dev", "v1alpha1", ns, "securemodels", MODEL,
        {"metadata": {"annotations": {"samd.dev/reconcile": "after a hand edit"}}},
    )  # fmt: skip

    def restored() -> bool:
        obj = custom.get_namespaced_custom_object("cert-manager.io", "v1", ns, "certificates", f"{MODEL}-tls")
        return bool(obj["spec"]["issuerRef"]["name"] == issuer_name)

    eventually(restored, 30, "the operator to restore the Certificate's issuer")

    # A real model server with the issued Secrets, as the pod mounts them: the issued client
    # certificate is served, a client without one is refused at the handshake.
    work = tmp_path / "serving"  # tmp_path/model is the scenario's
    work.mkdir()
    signed = sign_directory(train_fraud_model(work / "model"), work)
    fetched = as_fetched(signed, work / "fetched")
    tls = TlsFiles(
        directory=write_secret(work / "tls", data_of(server_secret)),
        clients={CLIENT: write_secret(work / "client", data_of(client_secret))},
        organization=f"samd:{ns}:{MODEL}",
        server_name=MODEL,
    )
    server_process = start_server(serve_argv(fetched, tls, signed, clients=[CLIENT]))
    allowed = V2Client(server_process.port, client_context(tls.ca, *tls.client(CLIENT)), server_name=MODEL)
    anonymous = V2Client(server_process.port, client_context(tls.ca), server_name=MODEL)
    try:
        answer = allowed.request("GET", f"/v2/models/{MODEL}")
        assert answer.status == 200, answer.body
        with pytest.raises((ssl.SSLError, ConnectionError)):
            anonymous.request("GET", "/v2/health/live")
    finally:
        allowed.close()
        anonymous.close()
        server_process.stop()

    # Back to the operator's CA: the Certificates go, the operator issues into the same Secrets.
    scenario.patch_policy({"certificateIssuer": None})

    def operator_issued() -> bool:
        data = data_of(scenario.core.read_namespaced_secret(f"{MODEL}-tls", ns))
        issuer_cn = certificate(data).issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return not certificates_in(k8s, ns) and issuer_cn == "samd-operator-ca"

    eventually(operator_issued, 60, "the operator CA to issue the server certificate again")
    certificates_ready(scenario, lambda message: "cert-manager" not in message)
    scenario.wait_condition(MODEL, "Ready", "True", timeout=60)
    assert "issuer" not in scenario.model(MODEL)["status"]["certificates"]

    # And to the issuer again, from Secrets the operator CA filled: cert-manager re-issues into them.
    scenario.patch_policy({"certificateIssuer": {"kind": "ClusterIssuer", "name": issuer_name}})

    def issuer_issued() -> bool:
        data = data_of(scenario.core.read_namespaced_secret(f"{MODEL}-tls", ns))
        return certificate(data).issuer == ca.subject

    eventually(issuer_issued, 60, "cert-manager to issue the server certificate again")
    certificates_ready(scenario, lambda message: f"cert-manager ClusterIssuer/{issuer_name}" in message)


def test_two_policies_naming_different_issuers_stop_certificates_and_say_which(
    scenario: Scenario, cert_manager: CertManager, k8s: client.ApiClient
) -> None:
    """Fail closed: neither issuer is used, and the condition names both policies."""
    scenario.patch_policy({"certificateIssuer": {"kind": "ClusterIssuer", "name": "platform-a"}})
    custom = client.CustomObjectsApi(k8s)
    first = custom.get_cluster_custom_object(
        "samd.dev", "v1alpha1", "modeltrustpolicies", scenario.policy_name
    )
    second = {
        "apiVersion": "samd.dev/v1alpha1",
        "kind": "ModelTrustPolicy",
        "metadata": {"name": f"{scenario.policy_name}-b"},
        "spec": {**first["spec"], "certificateIssuer": {"kind": "Issuer", "name": "team-b"}},
    }
    custom.create_cluster_custom_object("samd.dev", "v1alpha1", "modeltrustpolicies", second)
    try:
        scenario.apply_model(scenario.example())
        condition = scenario.wait_condition(MODEL, "CertificatesReady", "False", timeout=60)
        assert condition["reason"] == "IssuerConflict"
        assert (
            f"ModelTrustPolicy {scenario.policy_name} names ClusterIssuer/platform-a" in condition["message"]
        )
        assert f"ModelTrustPolicy {scenario.policy_name}-b names Issuer/team-b" in condition["message"]
        assert (scenario.condition(MODEL, "Ready") or {}).get("status") == "False"
        assert not certificates_in(k8s, scenario.namespace)
    finally:
        custom.delete_cluster_custom_object(
            "samd.dev", "v1alpha1", "modeltrustpolicies", second["metadata"]["name"]
        )


def test_the_chart_webhook_ca_bundle_is_injected_by_the_cainjector(
    cluster: Cluster, k8s: client.ApiClient, cert_manager: CertManager
) -> None:
    install_crds(k8s)
    name = f"samd-{uuid.uuid4().hex[:6]}"
    with scratch_namespace(k8s, prefix="samd-cm") as namespace:
        try:
            installed = helm_run(
                "install", name, str(CHART), "-n", namespace, "--take-ownership",
                "--set", "webhook.certificate.source=cert-manager", "--wait", "--timeout", "90s",
                kubeconfig=cluster.kubeconfig,
            )  # fmt: skip
            assert installed.returncode == 0, installed.stdout + installed.stderr
            admission = client.AdmissionregistrationV1Api(k8s)
            core = client.CoreV1Api(k8s)
            bundles: dict[str, set[str]] = {}

            def injected() -> bool:
                webhooks = admission.read_validating_webhook_configuration(name).webhooks
                bundles["seen"] = {str(w.client_config.ca_bundle) for w in webhooks}
                return None not in {w.client_config.ca_bundle for w in webhooks}

            eventually(injected, 60, "the cainjector to fill the webhook configuration's caBundle")
            secret = core.read_namespaced_secret(f"{name}-webhook-tls", namespace)
            assert bundles["seen"] == {secret.data["ca.crt"]}
            certificate(data_of(secret)).verify_directly_issued_by(certificate(data_of(secret), "ca.crt"))
        finally:
            helm_run("uninstall", name, "-n", namespace, "--wait", kubeconfig=cluster.kubeconfig)
            install_crds(k8s)  # hand the CRDs back to the other tests' plain install


# --- the chart's setting --------------------------------------------------------------------------------


def operator_env(*values: str) -> dict[str, str]:
    documents = render("samd", "samd-system", *values)
    [container] = one(documents, "Deployment", "samd-operator")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_the_charts_issuer_reaches_the_operator_and_its_rbac_allows_certificates() -> None:
    assert operator_env()["SAMD_CERT_ISSUER"] == ""  # the operator's own CA by default
    named = ("--set", "certificates.issuerRef.name=platform-ca")
    assert operator_env(*named)["SAMD_CERT_ISSUER"] == "ClusterIssuer/platform-ca"
    external = (
        "--set", "certificates.issuerRef.name=pca", "--set", "certificates.issuerRef.kind=Issuer",
        "--set", "certificates.issuerRef.group=awspca.cert-manager.io",
    )  # fmt: skip
    assert operator_env(*external)["SAMD_CERT_ISSUER"] == "Issuer.awspca.cert-manager.io/pca"
    rules = one(render("samd", "samd-system"), "ClusterRole", "samd-operator")["rules"]
    [rule] = [r for r in rules if r["apiGroups"] == ["cert-manager.io"]]
    assert rule["resources"] == ["certificates"]
    assert {"create", "patch", "delete", "list"} <= set(rule["verbs"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ("--set", "certificates.issuerRef.kind=Secret"),
            "at '/certificates/issuerRef/kind': value must be one of",
        ),
        (("--set", "certificates.issuerRef.name=Platform CA"), "at '/certificates/issuerRef/name'"),
    ],
)
def test_a_wrong_issuer_value_fails_the_install_naming_it(values: tuple[str, ...], message: str) -> None:
    rendered = template("samd", "samd-system", *values)
    assert rendered.returncode != 0
    assert message in rendered.stderr
