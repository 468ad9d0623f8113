"""mTLS certificates: issued by the operator CA, with the right names and uses, renewed in time."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samd.operator.builders.certificates import (
    CertificateAuthority,
    certificate_not_after,
    issue_client_certificate,
    issue_server_certificate,
    needs_renewal,
)
from tests.unit.test_builders_example import NOW, SETTINGS, UID, fraud_detection

pytestmark = pytest.mark.unit

DAY = datetime.timedelta(days=1)
SERVER_NAMES = [
    "fraud-detection",
    "fraud-detection.fraud",
    "fraud-detection.fraud.svc",
    "fraud-detection.fraud.svc.cluster.local",
]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(NOW - 10 * DAY)


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.generate(NOW - 10 * DAY)


@pytest.fixture(scope="module")
def server_secret(ca: CertificateAuthority) -> dict[str, Any]:
    return issue_server_certificate(ca, fraud_detection(), NOW)


@pytest.fixture
def live_now() -> datetime.datetime:
    """The real time: OpenSSL checks validity against the system clock during a handshake."""
    return datetime.datetime.now(datetime.UTC)


def _decoded(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def _certificate(secret: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(_decoded(secret, "tls.crt"))


def _extended_key_usage(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _files(tmp_path: Path, secret: dict[str, Any], stem: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key"
    cert.write_bytes(_decoded(secret, "tls.crt"))
    key.write_bytes(_decoded(secret, "tls.key"))
    return cert, key


def _handshake(server_side: ssl.SSLContext, client_side: ssl.SSLContext, hostname: str) -> dict[str, Any]:
    """A TLS handshake over memory buffers; returns the client certificate the server saw."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_side.wrap_bio(to_server, from_server, server_side=True)
    client = client_side.wrap_bio(to_client, from_client, server_hostname=hostname)
    done = [False, False]
    for _ in range(20):
        for index, side in enumerate((client, server)):
            if not done[index]:
                try:
                    side.do_handshake()
                    done[index] = True
                except ssl.SSLWantReadError:
                    pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if all(done):
            break
    assert all(done), "the handshake did not finish"
    peer = server.getpeercert()
    assert peer is not None
    return peer


def _mtls_contexts(
    tmp_path: Path, ca: CertificateAuthority, server: dict[str, Any], client: dict[str, Any]
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca_pem = ca.certificate_pem.decode()
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.minimum_version = ssl.TLSVersion.TLSv1_3
    server_side.load_cert_chain(*_files(tmp_path, server, "server"))
    server_side.load_verify_locations(cadata=ca_pem)
    server_side.verify_mode = ssl.CERT_REQUIRED
    client_side = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_side.load_verify_locations(cadata=ca_pem)
    client_side.load_cert_chain(*_files(tmp_path, client, "client"))
    return server_side, client_side


def test_the_ca_is_a_self_signed_p256_certificate_authority(ca: CertificateAuthority) -> None:
    certificate = ca.certificate
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    certificate.verify_directly_issued_by(certificate)
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"


def test_the_ca_survives_a_round_trip_through_its_secret(ca: CertificateAuthority) -> None:
    loaded = CertificateAuthority.from_secret_data(ca.to_secret_data())
    assert loaded.certificate == ca.certificate
    assert loaded.key.private_numbers() == ca.key.private_numbers()


def test_a_ca_secret_with_someone_elses_key_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    data = {**ca.to_secret_data(), "tls.key": other_ca.to_secret_data()["tls.key"]}
    with pytest.raises(ValueError, match="does not belong"):
        CertificateAuthority.from_secret_data(data)


def test_a_leaf_certificate_is_refused_as_a_ca(server_secret: dict[str, Any]) -> None:
    data = {"tls.crt": server_secret["data"]["tls.crt"], "tls.key": server_secret["data"]["tls.key"]}
    with pytest.raises(ValueError, match="not a CA"):
        CertificateAuthority.from_secret_data(data)


def test_a_ca_secret_without_its_key_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match=r"no 'tls\.key'"):
        CertificateAuthority.from_secret_data({"tls.crt": ca.to_secret_data()["tls.crt"]})


def test_the_server_certificate_names_the_service_and_serves_tls(
    ca: CertificateAuthority, server_secret: dict[str, Any]
) -> None:
    certificate = _certificate(server_secret)
    certificate.verify_directly_issued_by(ca.certificate)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == SERVER_NAMES
    assert _extended_key_usage(certificate) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert certificate.not_valid_after_utc == NOW + 90 * DAY


def test_the_server_secret_is_a_tls_secret_owned_by_the_model(
    ca: CertificateAuthority, server_secret: dict[str, Any]
) -> None:
    assert server_secret["type"] == "kubernetes.io/tls"
    assert server_secret["metadata"]["name"] == "fraud-detection-tls"
    assert server_secret["metadata"]["namespace"] == "fraud"
    assert server_secret["metadata"]["ownerReferences"][0]["uid"] == UID
    assert sorted(server_secret["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    assert _decoded(server_secret, "ca.crt") == ca.certificate_pem


def test_the_server_names_follow_the_cluster_domain(ca: CertificateAuthority) -> None:
    ctx = fraud_detection(settings=dataclasses.replace(SETTINGS, cluster_domain="corp.internal"))
    certificate = _certificate(issue_server_certificate(ca, ctx, NOW))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName)[-1] == "fraud-detection.fraud.svc.corp.internal"


def test_a_client_certificate_names_the_client_and_the_model(ca: CertificateAuthority) -> None:
    secret = issue_client_certificate(ca, fraud_detection(), "payments-api", NOW)
    assert secret["metadata"]["name"] == "fraud-detection-client-payments-api"
    assert secret["type"] == "kubernetes.io/tls"
    certificate = _certificate(secret)
    certificate.verify_directly_issued_by(ca.certificate)
    subject = certificate.subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["payments-api"]
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "samd:fraud:fraud-detection"
    ]
    assert _extended_key_usage(certificate) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.mark.parametrize("hostname", SERVER_NAMES)
def test_a_client_completes_mutual_tls_with_the_server(
    tmp_path: Path, ca: CertificateAuthority, live_now: datetime.datetime, hostname: str
) -> None:
    server = issue_server_certificate(ca, fraud_detection(), live_now)
    client = issue_client_certificate(ca, fraud_detection(), "risk-dashboard", live_now)
    server_side, client_side = _mtls_contexts(tmp_path, ca, server, client)
    peer = _handshake(server_side, client_side, hostname)
    assert peer["subject"] == (
        (("organizationName", "samd:fraud:fraud-detection"),),
        (("commonName", "risk-dashboard"),),
    )


def test_a_client_refuses_the_server_under_another_name(
    tmp_path: Path, ca: CertificateAuthority, live_now: datetime.datetime
) -> None:
    server = issue_server_certificate(ca, fraud_detection(), live_now)
    client = issue_client_certificate(ca, fraud_detection(), "risk-dashboard", live_now)
    server_side, client_side = _mtls_contexts(tmp_path, ca, server, client)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(server_side, client_side, "other-model.fraud.svc")


def test_a_client_certificate_cannot_pose_as_a_server(
    tmp_path: Path, ca: CertificateAuthority, live_now: datetime.datetime
) -> None:
    client = issue_client_certificate(ca, fraud_detection(), "risk-dashboard", live_now)
    server_side, client_side = _mtls_contexts(tmp_path, ca, client, client)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate purpose"):
        _handshake(server_side, client_side, "fraud-detection.fraud.svc")


def test_a_fresh_certificate_needs_no_renewal(
    ca: CertificateAuthority, server_secret: dict[str, Any]
) -> None:
    assert needs_renewal(server_secret["data"], ca, NOW) is False
    assert needs_renewal(server_secret["data"], ca, NOW + 59 * DAY) is False


def test_renewal_is_due_thirty_days_before_expiry(
    ca: CertificateAuthority, server_secret: dict[str, Any]
) -> None:
    assert needs_renewal(server_secret["data"], ca, NOW + 60 * DAY) is True
    assert needs_renewal(server_secret["data"], ca, NOW + 91 * DAY) is True
    assert needs_renewal(server_secret["data"], ca, NOW + 80 * DAY, renew_before=5 * DAY) is False


def test_a_missing_or_empty_secret_needs_a_certificate(ca: CertificateAuthority) -> None:
    assert needs_renewal(None, ca, NOW) is True
    assert needs_renewal({}, ca, NOW) is True


def test_an_unparsable_secret_needs_a_new_certificate(
    ca: CertificateAuthority, server_secret: dict[str, Any]
) -> None:
    data = server_secret["data"]
    assert needs_renewal({**data, "tls.crt": "not base64!"}, ca, NOW) is True
    assert (
        needs_renewal({**data, "tls.crt": base64.b64encode(b"not a certificate").decode()}, ca, NOW) is True
    )
    assert needs_renewal({**data, "tls.key": base64.b64encode(b"not a key").decode()}, ca, NOW) is True
    assert needs_renewal({key: value for key, value in data.items() if key != "ca.crt"}, ca, NOW) is True


def test_a_certificate_from_another_ca_needs_renewal(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    foreign = issue_server_certificate(other_ca, fraud_detection(), NOW)
    assert needs_renewal(foreign["data"], ca, NOW) is True


def test_an_outdated_ca_bundle_needs_renewal(
    ca: CertificateAuthority, other_ca: CertificateAuthority, server_secret: dict[str, Any]
) -> None:
    data = {**server_secret["data"], "ca.crt": base64.b64encode(other_ca.certificate_pem).decode()}
    assert needs_renewal(data, ca, NOW) is True


def test_a_key_that_does_not_match_the_certificate_needs_renewal(ca: CertificateAuthority) -> None:
    first = issue_server_certificate(ca, fraud_detection(), NOW)
    second = issue_server_certificate(ca, fraud_detection(), NOW)
    mixed = {**first["data"], "tls.key": second["data"]["tls.key"]}
    assert needs_renewal(mixed, ca, NOW) is True


def test_certificate_not_after_reads_the_expiry(server_secret: dict[str, Any]) -> None:
    assert certificate_not_after(server_secret["data"]) == NOW + 90 * DAY
    assert certificate_not_after(None) is None
    assert certificate_not_after({"tls.crt": "bm90IGEgY2VydA=="}) is None
