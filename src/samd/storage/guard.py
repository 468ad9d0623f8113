"""No confused deputy: which URIs and addresses a privileged reader may be pointed at by a user.

The operator reads what a SecureModel names (its signature, its artifact, the artifact's bucket,
an S3 or KMS endpoint) with more privilege than the user who wrote the SecureModel: it runs on a
node, next to its own kubeconfig and service-account token, inside the cluster network and next to
the cloud's metadata service. An `AddressPolicy` says what such a reader may touch:

- local files (``file://``, plain paths, PKCS#11 module paths and PIN files) only when the
  development switch `AddressPolicy.allow_local_files` is on, and then only under its roots;
- network addresses only when they are globally routable: loopback, link-local (the cloud metadata
  service 169.254.169.254), private (RFC 1918, unique-local fc00::/7), shared (100.64.0.0/10),
  unspecified, multicast and reserved addresses are refused, and so are the cluster's own service
  and pod networks (`AddressPolicy.internal_networks`), unless an `AllowedEndpoint` names them;
- plain ``http://`` only to an endpoint an `AllowedEndpoint` with ``allow_http`` names.

Two levels of check:

- `check_uri` and `admission_problems` look at the string only (no DNS): literal IP addresses in
  every spelling a resolver accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``),
  ``localhost`` names, schemes. The admission webhook uses this for early feedback.
- `check_resolved` resolves a host name and checks every address it resolves to, when the
  connection is made. `pinned_connection` (used by the HTTPS client) then connects to the very
  address that was checked (pinned, so that DNS rebinding cannot swap it between check and connect);
  `guard_boto_client` checks every request a boto3 client sends (its limits are in docs/operator.md).

The CLI and the model's loader run as the user and do not use any of this.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samd.errors import StorageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REASON = "URIRefused"
"""The condition reason the operator reports for a refused URI."""

Resolver = Callable[[str, int], Sequence[IPAddress]]


class URIRefusedError(StorageError):
    """A URI or address a user named that a privileged reader must not touch. Never transient."""

    def __init__(self, message: str, *, hint: str | None = None, field: str = "") -> None:
        super().__init__(message, hint=hint, transient=False)
        self.field = field


@dataclass(frozen=True)
class AllowedEndpoint:
    """An endpoint allowed although its address is internal: a network (CIDR) or a host name."""

    network: IPNetwork | None = None
    host: str | None = None
    allow_http: bool = False
    source: str = ""  # where the allowance comes from (a policy name), for messages

    def __post_init__(self) -> None:
        if (self.network is None) == (self.host is None):
            raise ValueError("an allowed endpoint sets exactly one of cidr or host")

    @classmethod
    def parse(
        cls, cidr: str | None, host: str | None, *, allow_http: bool, source: str = ""
    ) -> AllowedEndpoint:
        network = ipaddress.ip_network(cidr, strict=False) if cidr else None
        return cls(
            network=network, host=_normal_host(host) if host else None, allow_http=allow_http, source=source
        )

    def covers(self, host: str, address: IPAddress | None) -> bool:
        if self.host is not None:
            return _normal_host(host) == self.host
        assert self.network is not None  # noqa: S101 - __post_init__
        return address is not None and address.version == self.network.version and address in self.network

    def __str__(self) -> str:
        what = f"host {self.host}" if self.host else f"cidr {self.network}"
        return what + (" (http allowed)" if self.allow_http else "")


@dataclass(frozen=True)
class AddressPolicy:
    """What a privileged reader may be pointed at. The default refuses every local or internal target."""

    allow_local_files: bool = False
    local_file_roots: tuple[Path, ...] = ()  # with allow_local_files: only under these (empty: anywhere)
    internal_networks: tuple[IPNetwork, ...] = ()  # the cluster's service and pod networks
    allowed: tuple[AllowedEndpoint, ...] = ()
    resolver: Resolver | None = field(default=None, compare=False)  # tests; default: the system's

    def with_allowed(self, extra: Iterable[AllowedEndpoint]) -> AddressPolicy:
        return AddressPolicy(
            allow_local_files=self.allow_local_files,
            local_file_roots=self.local_file_roots,
            internal_networks=self.internal_networks,
            allowed=(*self.allowed, *extra),
            resolver=self.resolver,
        )

    def allowance(self, host: str, address: IPAddress | None) -> AllowedEndpoint | None:
        for entry in self.allowed:
            if entry.covers(host, address):
                return entry
        return None

    def http_allowed(self, host: str, address: IPAddress | None) -> bool:
        return any(entry.allow_http and entry.covers(host, address) for entry in self.allowed)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs ("10.96.0.0/12,10.244.0.0/16"); a bad one raises ValueError naming it."""
    networks = []
    for raw in text.split(","):
        item = raw.strip()
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not a CIDR like 10.96.0.0/12") from None
    return tuple(networks)


# --- addresses ----------------------------------------------------------------------------------------


def _normal_host(host: str) -> str:
    # As IDNA does before a name is resolved: NFKC (full-width digits become ASCII ones) and the
    # ideographic and full-width full stops become dots.
    text = unicodedata.normalize("NFKC", host).translate(_IDNA_DOTS)
    return text.strip().strip("[]").rstrip(".").lower()


_IDNA_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def literal_address(host: str) -> IPAddress | None:
    """The IP address a host string denotes without DNS, in any spelling a resolver would accept.

    IPv4 accepts the inet_aton forms (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``) that
    curl, browsers and glibc's getaddrinfo all turn into an address.
    """
    text = _normal_host(host)
    if "%" in text:  # an IPv6 zone: fe80::1%eth0
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(part and _is_number(part) for part in text.split(".")) and text.count(".") <= 3:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _is_number(part: str) -> bool:
    if part.lower().startswith("0x"):
        return all(c in "0123456789abcdefABCDEF" for c in part[2:])
    return all(c in "0123456789" for c in part)


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address behind an IPv4-mapped, IPv4-compatible, 6to4 or NAT64 IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        packed = address.packed
        if packed[:12] == bytes(12) and int(address) > 1:  # ::a.b.c.d (deprecated IPv4-compatible)
            return ipaddress.IPv4Address(packed[12:])
        if address in _NAT64:
            return ipaddress.IPv4Address(packed[12:])
    return address


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


def address_class(address: IPAddress, internal: Sequence[IPNetwork] = ()) -> str | None:
    """Why a privileged reader must not connect to `address` by default, or None when it may."""
    inner = _unwrap(address)
    for candidate in dict.fromkeys((inner, address)):
        for network in internal:
            if candidate.version == network.version and candidate in network:
                return f"inside the cluster network {network}"
        if candidate.is_unspecified:
            return "unspecified (it reaches this host)"
        if candidate.is_loopback:
            return "loopback (this host)"
        if candidate.is_link_local:
            return "link-local (e.g. the cloud metadata service)"
        if candidate.is_multicast:
            return "multicast"
        if isinstance(candidate, ipaddress.IPv4Address) and candidate in _SHARED:
            return "shared address space (100.64.0.0/10)"
        if isinstance(candidate, ipaddress.IPv6Address) and candidate in ipaddress.IPv6Network("fc00::/7"):
            return "unique-local (private IPv6)"
        if candidate.is_reserved:
            return "reserved, not globally routable"
        if candidate.is_private:
            return "private (RFC 1918 or another private range)"
        if not candidate.is_global:
            return "reserved, not globally routable"
    return None


def check_address(
    host: str, address: IPAddress, scheme: str, policy: AddressPolicy, *, what: str, field: str
) -> None:
    """Raise `URIRefusedError` unless `address` (which `host` denotes) may be reached over `scheme`."""
    allowance = policy.allowance(host, address)
    if allowance is None:
        problem = address_class(address, policy.internal_networks)
        if problem is not None:
            shown = host if _normal_host(host) == str(address) else f"{host} ({address})"
            raise URIRefusedError(
                f"{field}: refusing {what}: {shown} is {problem}",
                hint="point it at a public endpoint, or have a cluster admin list this endpoint "
                "in spec.allowedEndpoints of a ModelTrustPolicy covering the namespace",
                field=field,
            )
    if scheme == "http" and not policy.http_allowed(host, address):
        raise URIRefusedError(
            f"{field}: refusing {what}: plain http:// to {host} would travel unencrypted",
            hint="use https://, or have a cluster admin list this endpoint with allowHttp: true in "
            "spec.allowedEndpoints of a ModelTrustPolicy covering the namespace",
            field=field,
        )


def _system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def check_resolved(
    host: str, port: int, policy: AddressPolicy, *, scheme: str = "https", field: str = "", what: str = ""
) -> list[IPAddress]:
    """Resolve `host` and check every address; returns them (to connect to exactly these).

    Refused when any address is refused: an answer that mixes a public and an internal address is an
    attack, not a fallback. A resolution failure is a transient `StorageError`.
    """
    what = what or f"{scheme}://{host}:{port}"
    literal = literal_address(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        resolver = policy.resolver or _system_resolver
        try:
            addresses = list(resolver(_normal_host(host), port))
        except (OSError, UnicodeError) as error:
            raise StorageError(
                f"{what}: the host name {host} does not resolve ({error})", transient=True
            ) from error
        if not addresses:
            raise StorageError(f"{what}: the host name {host} resolves to no address", transient=True)
    for address in addresses:
        check_address(host, address, scheme, policy, what=what, field=field)
    return addresses


# --- URIs (string only: no DNS) ------------------------------------------------------------------------


def _is_localhost_name(host: str) -> bool:
    name = _normal_host(host)
    return (
        name == "localhost"
        or name.endswith(".localhost")
        or name in {"localhost.localdomain", "ip6-localhost"}
    )


def check_host_string(host: str, scheme: str, policy: AddressPolicy, *, what: str, field: str) -> None:
    """The string-level part of the address rules: literal addresses, localhost names, http."""
    address = literal_address(host)
    if address is not None:
        check_address(host, address, scheme, policy, what=what, field=field)
        return
    if _is_localhost_name(host) and policy.allowance(host, None) is None:
        raise URIRefusedError(
            f"{field}: refusing {what}: {host} names this host (loopback)",
            hint="point it at a public endpoint",
            field=field,
        )
    # Whether a CIDR allowance covers a host name is only known once it resolves: an allowance
    # that could cover it lets the string through; the connection is checked again.
    if scheme == "http" and not any(
        entry.allow_http and (entry.network is not None or entry.covers(host, None))
        for entry in policy.allowed
    ):
        raise URIRefusedError(
            f"{field}: refusing {what}: plain http:// to {host} would travel unencrypted",
            hint="use https://, or have a cluster admin list this endpoint with allowHttp: true in "
            "spec.allowedEndpoints of a ModelTrustPolicy covering the namespace",
            field=field,
        )


def check_local_path(path: str, policy: AddressPolicy, *, field: str) -> Path:
    """A local path may be read only under the development switch, and then only under its roots.

    Returns the path with every symlink resolved: open that one, not the name that was checked.
    """
    if not policy.allow_local_files:
        raise URIRefusedError(
            f"{field}: refusing to read the local path {path}: the operator never reads files on its own "
            "host that a SecureModel names",
            hint="upload it to s3:// or https:// storage and point the SecureModel there; local files "
            "are for development only, see SAMD_ALLOW_LOCAL_FILES in docs/operator.md",
            field=field,
        )
    real = Path(os.path.realpath(path))
    if policy.local_file_roots and not any(
        real == root or root in real.parents
        for root in (Path(os.path.realpath(r)) for r in policy.local_file_roots)
    ):
        roots = ", ".join(str(r) for r in policy.local_file_roots)
        raise URIRefusedError(
            f"{field}: refusing to read the local path {path}: it is not under the allowed roots ({roots})",
            hint="move the file under SAMD_LOCAL_FILE_ROOTS",
            field=field,
        )
    return real


def check_uri(uri: str, policy: AddressPolicy, *, field: str) -> None:
    """Refuse, by the string alone, an artifact or signature URI a privileged reader must not open.

    ``file://`` and plain paths need the development switch; ``https://`` and ``http://`` hosts are
    checked as `check_host_string` says; ``s3://`` names a bucket, whose endpoint is checked apart.
    Anything else is left to the URI parser, which refuses unknown schemes.
    """
    scheme, sep, _rest = uri.partition("://")
    scheme = scheme.lower() if sep else ""
    if not sep or scheme == "file":
        path = uri
        if scheme == "file":
            parts = urllib.parse.urlsplit(uri)
            path = urllib.parse.unquote(parts.path)
        check_local_path(path, policy, field=field)
        return
    if scheme in ("http", "https"):
        parts = urllib.parse.urlsplit(uri)
        check_host_string(parts.hostname or "", scheme, policy, what=_redact(uri), field=field)


def check_endpoint(endpoint: str, policy: AddressPolicy, *, field: str) -> None:
    """An S3 or KMS endpoint a user names: http(s) only, checked like `check_uri`."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise URIRefusedError(
            f"{field}: {endpoint!r} is not an https:// endpoint",
            hint="write https://host[:port]",
            field=field,
        )
    check_host_string(parts.hostname, parts.scheme, policy, what=_redact(endpoint), field=field)


def _redact(uri: str) -> str:
    from samd.storage.uri import redact_url  # noqa: PLC0415 - uri imports nothing of this module

    return redact_url(uri)


# --- pinned connections ----------------------------------------------------------------------------------


def pinned_connection(
    address: tuple[str, int], policy: AddressPolicy, *, scheme: str, timeout: float | None, source: Any
) -> socket.socket:
    """Connect to `address` (host, port) at an address `check_resolved` allowed, the one it checked."""
    host, port = address
    addresses = check_resolved(host, port, policy, scheme=scheme, what=f"{scheme}://{host}:{port}")
    last: OSError | None = None
    for checked in addresses:
        try:
            return socket.create_connection((str(checked), port), timeout, source)
        except OSError as error:
            last = error
    assert last is not None  # noqa: S101 - check_resolved returns at least one address
    raise last


def guard_boto_client(client: Any, policy: AddressPolicy, *, field: str) -> None:
    """Check the host of every request a boto3 client sends (redirects and retries included).

    botocore resolves the name again when it connects, so unlike the HTTPS client this does not pin
    the address: a DNS answer that changes between the check and the connection (rebinding with a
    zero TTL) is not caught. docs/operator.md says how to close that gap.
    """

    def before_send(request: Any, **_: Any) -> None:
        parts = urllib.parse.urlsplit(str(request.url))
        scheme = parts.scheme or "https"
        port = parts.port or (443 if scheme == "https" else 80)
        check_resolved(
            parts.hostname or "", port, policy, scheme=scheme, field=field, what=_redact(str(request.url))
        )

    client.meta.events.register("before-send", before_send)


# --- admission (string only) -------------------------------------------------------------------------------


def policy_allowances(policies: Iterable[Any]) -> tuple[list[AllowedEndpoint], bool]:
    """What ModelTrustPolicies (`samd.policy.TrustPolicy`) allow: their endpoints, and local files
    when one of them says so (development only)."""
    allowed = []
    local_files = False
    for policy in policies:
        spec = policy.spec
        local_files = local_files or bool(getattr(spec, "allow_local_files", False))
        for entry in getattr(spec, "allowed_endpoints", ()):
            allowed.append(
                AllowedEndpoint.parse(entry.cidr, entry.host, allow_http=entry.allow_http, source=policy.name)
            )
    return allowed, local_files


def admission_problems(spec: Mapping[str, Any], policies: Iterable[Any]) -> list[str]:
    """Why a SecureModel spec names a URI the operator would refuse, by the strings alone (no DNS).

    `policies` are the ModelTrustPolicies covering the namespace: their spec.allowedEndpoints and
    spec.allowLocalFiles are the only allowances. Every URI the spec holds is checked:
    spec.signature.uri, spec.artifact.uri, spec.artifact.endpoint and spec.encryption.keyRef.uri.
    """
    allowed, local_files = policy_allowances(policies)
    policy = AddressPolicy(allow_local_files=local_files, allowed=tuple(allowed))
    problems = []
    for _field, check in spec_uri_checks(spec):
        try:
            check(policy)
        except URIRefusedError as error:
            problems.append(str(error))
    return problems


def spec_uri_checks(spec: Mapping[str, Any]) -> list[tuple[str, Callable[[AddressPolicy], None]]]:
    """One string-level check per URI a SecureModel spec names, with the field it sits in."""
    checks: list[tuple[str, Callable[[AddressPolicy], None]]] = []

    def section(value: object) -> Mapping[str, Any]:
        return value if isinstance(value, Mapping) else {}

    signature = section(spec.get("signature")).get("uri")
    artifact = section(spec.get("artifact"))
    key_ref = section(section(spec.get("encryption")).get("keyRef"))
    if isinstance(signature, str):
        checks.append(("spec.signature.uri", lambda p: check_uri(signature, p, field="spec.signature.uri")))
    if isinstance(artifact.get("uri"), str):
        uri = str(artifact["uri"])
        checks.append(("spec.artifact.uri", lambda p: check_uri(uri, p, field="spec.artifact.uri")))
    if isinstance(artifact.get("endpoint"), str):
        endpoint = str(artifact["endpoint"])
        checks.append(
            ("spec.artifact.endpoint", lambda p: check_endpoint(endpoint, p, field="spec.artifact.endpoint"))
        )
    if isinstance(key_ref.get("uri"), str):
        key_uri = str(key_ref["uri"])
        checks.append(
            (
                "spec.encryption.keyRef.uri",
                lambda p: check_key_uri(key_uri, p, field="spec.encryption.keyRef.uri"),
            )
        )
    return checks


def check_key_uri(uri: str, policy: AddressPolicy, *, field: str) -> None:
    """A key URI from a spec: no local files (keyset paths, PKCS#11 modules, PIN files), no internal KMS."""
    if uri.startswith("local:"):
        check_local_path(uri.removeprefix("local:"), policy, field=field)
        return
    if uri.startswith("pkcs11:"):
        _, _, query = uri.partition("?")
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        for name in ("module-path", "pin-source"):
            for value in params.get(name, []):
                # A module path loads a shared library into the operator: code it runs as itself.
                check_local_path(value.removeprefix("file:"), policy, field=f"{field} ({name})")
        return
    if uri.startswith("aws-kms:"):
        _, _, query = uri.partition("?")
        for endpoint in urllib.parse.parse_qs(query, keep_blank_values=True).get("endpoint", []):
            check_endpoint(endpoint, policy, field=f"{field} (endpoint)")
