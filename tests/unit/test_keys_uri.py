"""Key URIs: parsing, defaults from the environment, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from samd.errors import UsageError
from samd.keys import LocalKeyProvider, keygen_local, provider_from_uri, redact_uri
from samd.keys.uri import parse_aws_kms_uri, parse_local_uri, parse_pkcs11_uri

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("local:/etc/samd/keyset.json", "/etc/samd/keyset.json"),
        ("local:keys/keyset.json", "keys/keyset.json"),
        ("local:///etc/samd/keyset.json", "/etc/samd/keyset.json"),
        ("local:/path%20with%20space.json", "/path with space.json"),
    ],
)
def test_local_uris(uri: str, path: str) -> None:
    assert parse_local_uri(uri) == Path(path)


@pytest.mark.parametrize("uri", ["local:", "local://host/keyset.json"])
def test_bad_local_uris(uri: str) -> None:
    with pytest.raises(UsageError):
        parse_local_uri(uri)


def test_provider_from_a_local_uri(tmp_path: Path) -> None:
    created = keygen_local(tmp_path / "k.json", key_id="uri-key")
    opened = provider_from_uri(f"local:{tmp_path / 'k.json'}")
    assert isinstance(opened, LocalKeyProvider)
    assert opened.key_id == created.key_id


@pytest.mark.parametrize(
    ("uri", "key", "region", "endpoint"),
    [
        ("aws-kms://alias/models", "alias/models", None, None),
        (
            "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab?region=eu-west-1",
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "eu-west-1",
            None,
        ),
        (
            "aws-kms://1234abcd?region=us-east-1&endpoint=http://127.0.0.1:5000",
            "1234abcd",
            "us-east-1",
            "http://127.0.0.1:5000",
        ),
    ],
)
def test_aws_kms_uris(uri: str, key: str, region: str | None, endpoint: str | None) -> None:
    parsed = parse_aws_kms_uri(uri)
    assert (parsed.key, parsed.region, parsed.endpoint_url) == (key, region, endpoint)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("aws-kms://", "names no key"),
        ("aws-kms://alias/x?colour=blue", "unknown parameter"),
        ("aws-kms://alias/x?region=a&region=b", "repeated parameter"),
        ("aws-kms:alias/x", "start with aws-kms://"),
    ],
)
def test_bad_aws_kms_uris(uri: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_aws_kms_uri(uri)


def test_pkcs11_uri_with_pin_value() -> None:
    parsed = parse_pkcs11_uri(
        "pkcs11:token=samd;object=model%20kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234"
    )
    assert (parsed.token_label, parsed.key_label) == ("samd", "model kek")
    assert parsed.module == "/usr/lib/softhsm/libsofthsm2.so"
    assert parsed.pin == "1234"


def test_pkcs11_uri_with_pin_source(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("98765\n")
    parsed = parse_pkcs11_uri(f"pkcs11:token=t;object=k;type=secret-key?pin-source=file:{pin_file}")
    assert parsed.pin == "98765"
    assert parsed.module is None


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs11:object=k?module-path=/m.so", "must name token= and object="),
        ("pkcs11:token=t;object=k;type=private", "is a secret key"),
        ("pkcs11:token=t;object=k;serial=42", "unsupported PKCS#11 URI attribute"),
        ("pkcs11:token=t;token=u;object=k", "malformed or repeated attribute"),
        ("pkcs11:token=t;object=k?module-name=softhsm2", "unsupported PKCS#11 URI query"),
        ("pkcs11:token=t;object=k?pin-value=1&pin-source=/p", "both pin-value and pin-source"),
        ("pkcs11:token=t;object=k?pin-source=/nonexistent/pin", "cannot read the PKCS#11 PIN"),
    ],
)
def test_bad_pkcs11_uris(uri: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_pkcs11_uri(uri)


def test_a_pkcs11_uri_without_module_or_pin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAMD_PKCS11_MODULE", raising=False)
    monkeypatch.delenv("SAMD_PKCS11_PIN", raising=False)
    with pytest.raises(UsageError, match="names no module"):
        provider_from_uri("pkcs11:token=t;object=k?pin-value=1")
    with pytest.raises(UsageError, match="no PIN for PKCS#11 token 't'") as caught:
        provider_from_uri("pkcs11:token=t;object=k?module-path=/m.so")
    assert caught.value.hint is not None
    assert "SAMD_PKCS11_PIN" in caught.value.hint


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(UsageError, match="unknown key URI 'vault://x'"):
        provider_from_uri("vault://x")


def test_redaction_hides_the_pin_only() -> None:
    uri = "pkcs11:token=t;object=k?module-path=/m.so&pin-value=1234"
    assert redact_uri(uri) == "pkcs11:token=t;object=k?module-path=/m.so&pin-value=***"
    assert redact_uri("local:/a/b") == "local:/a/b"
