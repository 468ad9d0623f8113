"""Key URIs: one string names a key and how to reach it.

    local:PATH                                   a keyset file (local:/etc/samd/keyset.json)
    aws-kms://KEY?region=R&endpoint=URL          KEY: key id, key ARN or alias/NAME
    pkcs11:token=T;object=L?module-path=M&pin-value=P      (RFC 7512)
    pkcs11:token=T;object=L?module-path=M&pin-source=FILE

For PKCS#11 the PIN may instead come from the SAMD_PKCS11_PIN environment variable and the module
from SAMD_PKCS11_MODULE, so that no secret has to appear in a URI.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote

from samd.errors import UsageError
from samd.keys.base import KeyProvider
from samd.keys.local import LocalKeyProvider

PIN_ENV = "SAMD_PKCS11_PIN"
MODULE_ENV = "SAMD_PKCS11_MODULE"
SCHEMES = ("local:", "aws-kms://", "pkcs11:")


@dataclass(frozen=True)
class AwsKmsUri:
    key: str
    region: str | None
    endpoint_url: str | None


@dataclass(frozen=True)
class Pkcs11Uri:
    token_label: str
    key_label: str
    module: str | None
    pin: str | None


def provider_from_uri(
    uri: str,
    *,
    pin: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> KeyProvider:
    """Open the key provider a URI names. Keyword options override what the URI says."""
    if uri.startswith("local:"):
        return LocalKeyProvider.from_path(parse_local_uri(uri))
    if uri.startswith("aws-kms:"):
        # Imported on use: boto3 takes a noticeable time to import.
        from samd.keys.aws_kms import AwsKmsKeyProvider  # noqa: PLC0415

        parsed = parse_aws_kms_uri(uri)
        return AwsKmsKeyProvider(
            parsed.key,
            region=region or parsed.region,
            endpoint_url=endpoint_url or parsed.endpoint_url,
        )
    if uri.startswith("pkcs11:"):
        from samd.keys.hsm import Pkcs11KeyProvider  # noqa: PLC0415 - loads the PKCS#11 binding on use

        p11 = parse_pkcs11_uri(uri)
        module = p11.module or os.environ.get(MODULE_ENV)
        if not module:
            raise UsageError(
                f"the PKCS#11 URI {redact_uri(uri)!r} names no module",
                hint=f"add ?module-path=/path/to/module.so or set {MODULE_ENV}",
            )
        chosen_pin = pin or p11.pin or os.environ.get(PIN_ENV)
        if not chosen_pin:
            raise UsageError(
                f"no PIN for PKCS#11 token {p11.token_label!r}",
                hint=f"set {PIN_ENV}, or add pin-source=FILE (or pin-value=PIN) to the URI",
            )
        return Pkcs11KeyProvider(
            module=module, token_label=p11.token_label, key_label=p11.key_label, pin=chosen_pin
        )
    raise UsageError(
        f"unknown key URI {redact_uri(uri)!r}",
        hint="use local:PATH, aws-kms://KEY?region=..., or pkcs11:token=...;object=...?module-path=...",
    )


def parse_local_uri(uri: str) -> Path:
    rest = uri.removeprefix("local:")
    if rest.startswith("//"):
        # local:///abs/path, the file-URL spelling; a host part is meaningless here.
        host, _, path = rest[2:].partition("/")
        if host:
            raise UsageError(
                f"local key URI {uri!r} names a host; use local:/absolute/path or local:relative/path"
            )
        rest = "/" + path
    if not rest:
        raise UsageError("the local key URI names no keyset file", hint="local:/path/to/keyset.json")
    return Path(unquote(rest))


def parse_aws_kms_uri(uri: str) -> AwsKmsUri:
    if not uri.startswith("aws-kms://"):
        raise UsageError(f"AWS KMS key URIs start with aws-kms://, got {uri!r}")
    key, _, query = uri.removeprefix("aws-kms://").partition("?")
    key = unquote(key)
    if not key:
        raise UsageError(f"the AWS KMS URI {uri!r} names no key", hint="aws-kms://alias/NAME?region=REGION")
    try:
        raw_params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise UsageError(
            f"malformed query in AWS KMS URI {uri!r}", hint="aws-kms://KEY?region=R&endpoint=URL"
        ) from None
    params = _single_valued(raw_params, uri)
    unknown = set(params) - {"region", "endpoint"}
    if unknown:
        raise UsageError(
            f"unknown parameter(s) {sorted(unknown)} in AWS KMS URI {uri!r}", hint="use region and endpoint"
        )
    return AwsKmsUri(
        key=key, region=params.get("region") or None, endpoint_url=params.get("endpoint") or None
    )


_PKCS11_ATTRIBUTE = re.compile(r"[a-z][a-z0-9-]*")


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """Parse the subset of RFC 7512 SAMD needs: token, object, module-path, pin-value, pin-source."""
    if not uri.startswith("pkcs11:"):
        raise UsageError(f"PKCS#11 URIs start with pkcs11:, got {redact_uri(uri)!r}")
    path, _, query = uri.removeprefix("pkcs11:").partition("?")
    attributes: dict[str, str] = {}
    for part in filter(None, path.split(";")):
        name, equals, value = part.partition("=")
        if not equals or not _PKCS11_ATTRIBUTE.fullmatch(name) or name in attributes:
            raise UsageError(f"malformed or repeated attribute {name!r} in PKCS#11 URI {redact_uri(uri)!r}")
        attributes[name] = unquote(value)
    kind = attributes.pop("type", "secret-key")
    if kind != "secret-key":
        raise UsageError(f"a key-encryption key is a secret key, but the PKCS#11 URI says type={kind}")
    token, key = attributes.pop("token", ""), attributes.pop("object", "")
    if attributes:
        raise UsageError(
            f"unsupported PKCS#11 URI attribute(s) {sorted(attributes)}",
            hint="SAMD selects keys by token= and object= (the labels)",
        )
    if not token or not key:
        raise UsageError(
            f"the PKCS#11 URI {redact_uri(uri)!r} must name token= and object=",
            hint="pkcs11:token=TOKEN;object=KEY-LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so",
        )
    query_params: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        name, equals, value = part.partition("=")
        if not equals or name in query_params:
            raise UsageError(
                f"malformed or repeated query attribute {name!r} in PKCS#11 URI {redact_uri(uri)!r}"
            )
        query_params[name] = unquote(value)
    unknown = set(query_params) - {"module-path", "pin-value", "pin-source"}
    if unknown:
        raise UsageError(f"unsupported PKCS#11 URI query attribute(s) {sorted(unknown)}")
    if "pin-value" in query_params and "pin-source" in query_params:
        raise UsageError("the PKCS#11 URI gives both pin-value and pin-source; keep one")
    pin = query_params.get("pin-value")
    if "pin-source" in query_params:
        pin = _read_pin_source(query_params["pin-source"])
    return Pkcs11Uri(token_label=token, key_label=key, module=query_params.get("module-path"), pin=pin)


def redact_uri(uri: str) -> str:
    """The URI with any PIN removed, for messages and logs."""
    return re.sub(r"(pin-value=)[^&;]*", r"\1***", uri)


def _read_pin_source(source: str) -> str:
    path = Path(source.removeprefix("file:"))
    try:
        return path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise UsageError(f"cannot read the PKCS#11 PIN from {path}: {exc.strerror}") from None


def _single_valued(params: dict[str, list[str]], uri: str) -> dict[str, str]:
    repeated = [name for name, values in params.items() if len(values) > 1]
    if repeated:
        raise UsageError(f"repeated parameter(s) {repeated} in key URI {uri!r}")
    return {name: values[0] for name, values in params.items()}
