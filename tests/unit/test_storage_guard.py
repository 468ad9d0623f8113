"""No confused deputy: what a SecureModel may point the operator at, tried the way an attacker would."""

from __future__ import annotations

import http.server
import ipaddress
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from samd.errors import StorageError
from samd.operator import artifacts
from samd.operator.config import OperatorConfig
from samd.policy import TrustPolicy
from samd.spec import parse_secure_model, parse_trust_policy
from samd.storage import open_artifact
from samd.storage.guard import (
    AddressPolicy,
    AllowedEndpoint,
    IPAddress,
    URIRefusedError,
    admission_problems,
    check_endpoint,
    check_key_uri,
    check_resolved,
    check_uri,
    literal_address,
    spec_uri_checks,
)
from tests.support.crds import SECURE_MODELS, load_crd
from tests.support.threaded_server import serving

pytestmark = pytest.mark.unit

DEFAULT = AddressPolicy()


def read(uri: str, **options: Any) -> bytes:
    with open_artifact(uri, **options) as reader:
        return reader.read()


def refused(check: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(URIRefusedError) as caught:
        check(*args, **kwargs)
    assert caught.value.transient is False
    return str(caught.value)


# --- addresses, in every spelling ------------------------------------------------------------------------

INTERNAL_HOSTS = {
    # loopback, however it is spelled
    "127.0.0.1": "loopback",
    "127.1": "loopback",
    "2130706433": "loopback",  # decimal
    "0x7f000001": "loopback",  # hex
    "0x7f.1": "loopback",
    "0177.0.0.1": "loopback",  # octal
    "017700000001": "loopback",
    "127.255.255.254": "loopback",
    "\uff11\uff12\uff17.0.0.1": "loopback",  # full-width digits, which IDNA turns into ASCII
    "127\u30020.0.1": "loopback",  # an ideographic full stop
    "[::1]": "loopback",
    "[0:0:0:0:0:0:0:1]": "loopback",
    "[::ffff:127.0.0.1]": "loopback",  # IPv4-mapped IPv6
    "[::ffff:7f00:1]": "loopback",
    "[2002:7f00:1::]": "loopback",  # 6to4 around 127.0.0.1
    # the cloud metadata service and other link-local addresses
    "169.254.169.254": "link-local",
    "0xa9fea9fe": "link-local",
    "2852039166": "link-local",
    "[::ffff:169.254.169.254]": "link-local",
    "[64:ff9b::a9fe:a9fe]": "link-local",  # NAT64 around 169.254.169.254
    "[fe80::1]": "link-local",
    "[fd00:ec2::254]": "unique-local",  # the AWS metadata service over IPv6
    # private networks
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "012.0.0.1": "private",  # octal 10.0.0.1
    "[::ffff:10.1.2.3]": "private",
    "[fc00::1]": "unique-local",
    "100.64.0.1": "shared address space",
    # unspecified, multicast, reserved
    "0.0.0.0": "unspecified",  # noqa: S104 - an address to refuse, not to bind
    "0": "unspecified",
    "[::]": "unspecified",
    "224.0.0.1": "multicast",
    "[ff02::1]": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
}


@pytest.mark.parametrize(("host", "kind"), INTERNAL_HOSTS.items())
def test_internal_addresses_are_refused_in_every_spelling(host: str, kind: str) -> None:
    for uri in (f"https://{host}/model.sig", f"https://{host}:8443/model.sig", f"http://{host}/x"):
        message = refused(check_uri, uri, DEFAULT, field="spec.signature.uri")
        assert "spec.signature.uri" in message
        assert kind in message
    assert kind in refused(check_endpoint, f"https://{host}:9000", DEFAULT, field="spec.artifact.endpoint")


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "[2001:4860:4860::8888]", "s3.example.com", "a.b"])
def test_public_https_addresses_and_names_pass_the_string_check(host: str) -> None:
    check_uri(f"https://{host}/model.sig", DEFAULT, field="f")
    check_endpoint(f"https://{host}", DEFAULT, field="f")


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "::ffff:127.0.0.1"])
def test_literal_spellings_are_read_as_a_resolver_reads_them(spelling: str) -> None:
    assert literal_address(spelling) in {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::ffff:7f00:1"),
    }


@pytest.mark.parametrize("name", ["1.2.3.4.example.com", "0x7f.example", "127.0.0.1.nip.io", "12345.com"])
def test_host_names_that_look_numeric_are_names_not_addresses(name: str) -> None:
    assert literal_address(name) is None


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "api.localhost", "localhost.localdomain"])
def test_localhost_names_are_refused_without_dns(host: str) -> None:
    assert "loopback" in refused(check_uri, f"https://{host}:6443/", DEFAULT, field="f")


def test_plain_http_is_refused_even_to_a_public_host() -> None:
    message = refused(check_uri, "http://models.example.com/m.sig", DEFAULT, field="spec.signature.uri")
    assert "unencrypted" in message
    assert "allowHttp" in message
    assert "https://" in refused(check_endpoint, "ftp://s3.example.com", DEFAULT, field="f")


def test_the_clusters_own_networks_are_refused_even_when_public() -> None:
    policy = AddressPolicy(internal_networks=(ipaddress.ip_network("34.118.224.0/20"),))
    message = refused(check_uri, "https://34.118.224.10/x", policy, field="spec.signature.uri")
    assert "cluster network 34.118.224.0/20" in message
    check_uri("https://34.118.250.1/x", policy, field="f")


# --- allowances --------------------------------------------------------------------------------------------


def test_an_allowed_network_lets_internal_addresses_through_over_https_only() -> None:
    policy = AddressPolicy(allowed=(AllowedEndpoint.parse("10.20.0.0/16", None, allow_http=False),))
    check_endpoint("https://10.20.3.4:9000", policy, field="f")
    assert "private" in refused(check_endpoint, "https://10.21.0.1:9000", policy, field="f")
    assert "unencrypted" in refused(check_endpoint, "http://10.20.3.4:9000", policy, field="f")


def test_allow_http_applies_to_the_endpoint_it_names_only() -> None:
    policy = AddressPolicy(allowed=(AllowedEndpoint.parse("127.0.0.1/32", None, allow_http=True),))
    check_endpoint("http://127.0.0.1:9000", policy, field="f")
    assert "loopback" in refused(check_endpoint, "http://127.0.0.2:9000", policy, field="f")
    assert "unencrypted" in refused(check_uri, "http://8.8.8.8/x", policy, field="f")


def test_an_allowed_host_name_is_allowed_whatever_it_resolves_to_and_nothing_else() -> None:
    policy = AddressPolicy(
        allowed=(AllowedEndpoint.parse(None, "minio.storage.svc", allow_http=False),),
        resolver=lambda host, port: [ipaddress.ip_address("10.96.0.10")],
    )
    assert check_resolved("minio.storage.svc", 443, policy) == [ipaddress.ip_address("10.96.0.10")]
    assert "private" in refused(check_resolved, "other.storage.svc", 443, policy)


def test_allowances_come_from_the_policies_spec() -> None:
    with pytest.raises(ValueError, match="exactly one of cidr or host"):
        AllowedEndpoint.parse(None, None, allow_http=False)
    problem = parse_policy(allowedEndpoints=[{"cidr": "10.0.0.0/33"}])
    assert isinstance(problem, Exception)
    assert "allowedEndpoints" in str(problem)


# --- resolution at connect time -----------------------------------------------------------------------------


def fixed(answers: dict[str, Sequence[str]]) -> Any:
    def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in answers[host]]

    return resolve


def test_a_name_that_resolves_to_loopback_is_refused_when_connecting() -> None:
    message = refused(check_resolved, "localhost", 443, DEFAULT, field="spec.artifact.endpoint")
    assert "localhost" in message
    assert "loopback" in message


def test_one_internal_address_among_public_ones_refuses_the_name() -> None:
    policy = AddressPolicy(resolver=fixed({"evil.example": ["93.184.216.34", "169.254.169.254"]}))
    assert "link-local" in refused(check_resolved, "evil.example", 443, policy)
    policy = AddressPolicy(resolver=fixed({"evil.example": ["::ffff:127.0.0.1"]}))
    assert "loopback" in refused(check_resolved, "evil.example", 443, policy)


def test_a_name_that_does_not_resolve_is_a_transient_failure() -> None:
    def broken(host: str, port: int) -> list[IPAddress]:
        raise OSError("temporary failure in name resolution")

    with pytest.raises(StorageError) as caught:
        check_resolved("models.example", 443, AddressPolicy(resolver=broken))
    assert caught.value.transient
    assert not isinstance(caught.value, URIRefusedError)


# --- local files ----------------------------------------------------------------------------------------


def test_local_files_are_refused_unless_the_development_switch_is_on(tmp_path: Path) -> None:
    secret = tmp_path / "kubeconfig"
    secret.write_text("token: SECRET\n")
    for uri in (f"file://{secret}", str(secret), f"file://localhost{secret}", "file:///etc/passwd"):
        message = refused(check_uri, uri, DEFAULT, field="spec.signature.uri")
        assert "spec.signature.uri" in message
        assert "SAMD_ALLOW_LOCAL_FILES" in message
    with pytest.raises(URIRefusedError):
        read(f"file://{secret}", address_policy=DEFAULT, field="spec.signature.uri")


def test_with_the_switch_only_files_under_the_roots_are_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "models", tmp_path / "operator"
    root.mkdir()
    outside.mkdir()
    (root / "m.sig").write_text("signature")
    (outside / "kubeconfig").write_text("SECRET")
    (root / "link.sig").symlink_to(outside / "kubeconfig")
    policy = AddressPolicy(allow_local_files=True, local_file_roots=(root,))
    with open_artifact(f"file://{root / 'm.sig'}", address_policy=policy) as reader:
        assert reader.read() == b"signature"
    for uri in (
        f"file://{outside / 'kubeconfig'}",
        f"file://{root}/../operator/kubeconfig",
        f"file://{root / 'link.sig'}",  # a symlink out of the root
        f"file://{root}%2F..%2Foperator%2Fkubeconfig",
    ):
        assert "not under the allowed roots" in refused(check_uri, uri, policy, field="f")


def test_key_uris_may_not_name_local_files_or_internal_kms(tmp_path: Path) -> None:
    field = "spec.encryption.keyRef.uri"
    for uri in (
        "pkcs11:token=t;object=k?module-path=/tmp/evil.so&pin-value=1234",
        "pkcs11:token=t;object=k?pin-source=file:/var/run/secrets/kubernetes.io/serviceaccount/token",
        "local:/etc/samd/keyset.json",
    ):
        assert "local path" in refused(check_key_uri, uri, DEFAULT, field=field)
    check_key_uri("pkcs11:token=t;object=k?pin-value=1234", DEFAULT, field=field)  # module from the operator
    assert "link-local" in refused(
        check_key_uri,
        "aws-kms://alias/k?region=us-east-1&endpoint=http://169.254.169.254",
        DEFAULT,
        field=field,
    )
    check_key_uri("aws-kms://alias/k?region=us-east-1&endpoint=https://kms.example.com", DEFAULT, field=field)


# --- the HTTPS client: redirects and pinning -------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: Any = self.server
        server.hits.append(self.path)
        location = server.redirect
        if location:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"the bundle"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def server(host: str, redirect: str | None = None) -> Iterator[Any]:
    httpd: Any = http.server.ThreadingHTTPServer((host, 0), _Handler)
    httpd.hits, httpd.redirect = [], redirect
    with serving(httpd):
        yield httpd


def allow_http(*cidrs: str, resolver: Any = None) -> AddressPolicy:
    return AddressPolicy(
        allowed=tuple(AllowedEndpoint.parse(c, None, allow_http=True) for c in cidrs), resolver=resolver
    )


def test_a_redirect_from_an_allowed_server_to_an_internal_one_is_refused() -> None:
    with server("127.0.0.2") as internal, server("127.0.0.1") as allowed:
        port = internal.server_address[1]
        for target in (f"http://127.0.0.2:{port}/secret", f"http://2130706434:{port}/secret"):
            allowed.redirect = target
            uri = f"http://127.0.0.1:{allowed.server_address[1]}/model.sig"
            with pytest.raises(URIRefusedError, match="loopback"):
                read(uri, address_policy=allow_http("127.0.0.1/32"))
        allowed.redirect = "http://169.254.169.254/latest/meta-data/"
        with pytest.raises(URIRefusedError, match="link-local"):
            read(uri, address_policy=allow_http("127.0.0.1/32"))
        assert internal.hits == []
        assert len(allowed.hits) == 3
        # Without the policy (the CLI, run by users themselves) the same redirect is followed.
        allowed.redirect = f"http://127.0.0.2:{port}/secret"
        with open_artifact(uri, allow_http=True) as reader:
            assert reader.read() == b"the bundle"
        assert internal.hits == ["/secret"]


def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    # "models.invalid" resolves only through the policy's resolver: the connection uses the checked
    # address instead of asking DNS again (which would fail here, or answer differently if rebound).
    with server("127.0.0.1") as httpd:
        port = httpd.server_address[1]
        policy = allow_http("127.0.0.1/32", resolver=fixed({"models.invalid": ["127.0.0.1"]}))
        with open_artifact(f"http://models.invalid:{port}/m.sig", address_policy=policy) as reader:
            assert reader.read() == b"the bundle"
        rebound = allow_http("127.0.0.1/32", resolver=fixed({"models.invalid": ["127.0.0.1", "10.0.0.1"]}))
        with pytest.raises(URIRefusedError, match="private"):
            read(f"http://models.invalid:{port}/m.sig", address_policy=rebound)
    assert httpd.hits == ["/m.sig"]


def test_proxies_are_not_used_for_guarded_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    with server("127.0.0.1") as httpd:
        monkeypatch.setenv("http_proxy", "http://192.0.2.1:3128")
        monkeypatch.setenv("no_proxy", "")
        with open_artifact(
            f"http://127.0.0.1:{httpd.server_address[1]}/m.sig", address_policy=allow_http("127.0.0.1/32")
        ) as reader:
            assert reader.read() == b"the bundle"


# --- S3 (boto3) ----------------------------------------------------------------------------------------------


def test_an_s3_endpoint_is_checked_as_a_string_and_on_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(URIRefusedError, match="loopback"):
        read("s3://models/m.sig", endpoint_url="http://127.0.0.1:9", address_policy=DEFAULT)
    # A name that passes the string check but resolves to the metadata service, when boto3 sends.
    rebinding = AddressPolicy(resolver=fixed({"s3.evil.example": ["169.254.169.254"]}))
    with pytest.raises(URIRefusedError, match="link-local"):
        read("s3://models/m.sig", endpoint_url="https://s3.evil.example", address_policy=rebinding)


# --- the operator ----------------------------------------------------------------------------------------------


def secure_model(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "format": "onnx",
        "version": "1.0.0",
        "owner": "ml",
        "artifact": {"uri": "s3://models/m.samd"},
        "signature": {"uri": "s3://models/m.sig"},
    }
    spec.update(overrides)
    return spec


def test_the_operator_refuses_its_own_files_by_default(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("MARKER-credentials\n")
    config = OperatorConfig.from_env({})
    assert config.allow_local_files is False
    spec = parse_secure_model(secure_model(signature={"uri": f"file://{kubeconfig}"}))
    with pytest.raises(URIRefusedError) as caught:
        artifacts.read_signature(spec, 1024, config.address_policy())
    assert caught.value.field == "spec.signature.uri"
    assert str(kubeconfig) in str(caught.value)
    assert "MARKER" not in str(caught.value)


def test_operator_settings_from_the_environment() -> None:
    config = OperatorConfig.from_env(
        {
            "SAMD_ALLOW_LOCAL_FILES": "true",
            "SAMD_LOCAL_FILE_ROOTS": os.pathsep.join(["/srv/models", "/tmp/m"]),
            "SAMD_CLUSTER_CIDRS": "10.96.0.0/12, fd00:10:96::/108",
        }
    )
    policy = config.address_policy()
    assert policy.allow_local_files
    assert policy.local_file_roots == (Path("/srv/models"), Path("/tmp/m"))
    assert [str(n) for n in policy.internal_networks] == ["10.96.0.0/12", "fd00:10:96::/108"]
    with pytest.raises(ValueError, match="SAMD_ALLOW_LOCAL_FILES"):
        OperatorConfig.from_env({"SAMD_ALLOW_LOCAL_FILES": "maybe"})
    with pytest.raises(ValueError, match="not a CIDR"):
        OperatorConfig.from_env({"SAMD_CLUSTER_CIDRS": "10.96.0.0/40"})


def test_the_chart_never_turns_on_local_files() -> None:
    chart = Path(__file__).resolve().parents[2] / "charts" / "samd"
    for path in [chart / "values.yaml", *(chart / "templates").rglob("*")]:
        # The CRDs (copies of crds/) describe the setting in allowLocalFiles' documentation.
        if path.is_file() and path.parent.name != "crds":
            assert "SAMD_ALLOW_LOCAL_FILES" not in path.read_text(errors="replace"), path


# --- admission (string only) ----------------------------------------------------------------------------------


def parse_policy(**extra: Any) -> TrustPolicy | Exception:
    spec = {"signers": [{"name": "ci", "publicKey": "-----BEGIN PUBLIC KEY-----"}], **extra}
    try:
        return TrustPolicy(name="team", generation=1, spec=parse_trust_policy(spec))
    except Exception as error:
        return error


def policy(**extra: Any) -> TrustPolicy:
    parsed = parse_policy(**extra)
    assert isinstance(parsed, TrustPolicy)
    return parsed


def test_admission_names_every_refused_uri_of_a_secure_model() -> None:
    spec = secure_model(
        signature={"uri": "file:///root/.kube/config"},
        artifact={"uri": "https://0x7f.1/m.samd", "endpoint": "http://169.254.169.254"},
        encryption={"keyRef": {"provider": "pkcs11", "uri": "pkcs11:token=t;object=k?module-path=/x.so"}},
    )
    problems = admission_problems(spec, [policy()])
    assert len(problems) == 4
    assert any(
        p.startswith("spec.signature.uri: refusing to read the local path /root/.kube/config")
        for p in problems
    )
    assert any(p.startswith("spec.artifact.uri:") and "loopback" in p for p in problems)
    assert any(p.startswith("spec.artifact.endpoint:") and "link-local" in p for p in problems)
    assert any(p.startswith("spec.encryption.keyRef.uri (module-path):") for p in problems)


def test_admission_accepts_what_a_covering_policy_allows() -> None:
    spec = secure_model(artifact={"uri": "s3://models/m.samd", "endpoint": "http://127.0.0.1:9000"})
    assert admission_problems(spec, [policy()])
    allowing = policy(allowedEndpoints=[{"cidr": "127.0.0.1/32", "allowHttp": True}])
    assert admission_problems(spec, [allowing]) == []
    local = secure_model(signature={"uri": "file:///models/m.sig"})
    assert admission_problems(local, [policy(allowLocalFiles=True)]) == []
    assert admission_problems(secure_model(), []) == []


def test_admission_does_not_resolve_names() -> None:
    spec = secure_model(
        artifact={"uri": "s3://models/m.samd", "endpoint": "https://minio.does-not-resolve.invalid"}
    )
    assert admission_problems(spec, [policy()]) == []


# --- every URI the API holds (walked from the CRD's own schema) -----------------------------------------------

URI_NAME = re.compile(r"(uri|url|endpoint)s?$", re.IGNORECASE)


def string_fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get("type") == "string":
        yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from string_fields(child, f"{path}.{name}")
    if "items" in node:
        yield from string_fields(node["items"], f"{path}[]")


def test_every_uri_a_secure_model_names_is_checked() -> None:
    """A new URI field in the CRD fails here until the guard checks it (and the operator's reads use it)."""
    schema = load_crd(SECURE_MODELS)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    named = {
        path
        for path, node in string_fields(schema["properties"]["spec"], "spec")
        if URI_NAME.search(path.rsplit(".", 1)[-1])
        or re.search(r"\bURI\b|\bURL\b", node.get("description", ""))
    }
    every = secure_model(
        artifact={"uri": "s3://b/k", "endpoint": "https://s3.example.com"},
        encryption={"keyRef": {"provider": "aws-kms", "uri": "aws-kms://alias/k"}},
    )
    checked = {field for field, _ in spec_uri_checks(every)}
    assert (
        named
        == checked
        == {
            "spec.signature.uri",
            "spec.artifact.uri",
            "spec.artifact.endpoint",
            "spec.encryption.keyRef.uri",
        }
    )


def test_the_webhook_refuses_a_local_file_uri_where_no_policy_covers_too() -> None:
    """The operator refuses it in any namespace (no policy, no allowance): say so at admission."""
    problems = admission_problems(secure_model(signature={"uri": "file:///var/run/secrets/token"}), [])
    assert problems
    assert problems[0].startswith(
        "spec.signature.uri: refusing to read the local path /var/run/secrets/token"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "https://models.example.com@127.0.0.1/m.sig",  # user info in front of the real host
        "https://127.0.0.1#@models.example.com/m.sig",  # the fragment hides the real host
        "https://127.0.0.1?@models.example.com/m.sig",
        "https://models.example.com\\@169.254.169.254/m.sig",
        "HTTPS://[::ffff:a9fe:a9fe]:443/latest/meta-data/",
        "https://169.254.169.254./latest/",  # a trailing dot
    ],
)
def test_urls_that_disguise_their_host_are_judged_by_the_host_they_reach(uri: str) -> None:
    refused(check_uri, uri, DEFAULT, field="spec.signature.uri")
