"""Typed models of the SAMD custom resources' specs.

The CRDs in ``crds/`` are the schema the API server enforces; these models
parse an object's spec once (docs/architecture.md, style rule 3) so that the operator and the webhook
work with typed values. Field names follow the CRDs (camelCase aliases).
A spec that the API server accepted but that these models refuse raises
``SpecError`` with the path of the offending field.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from samd.errors import UsageError

GROUP = "samd.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# semver 2.0.0 (https://semver.org), the same expression as the CRD's CEL rule.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SpecError(UsageError):
    """A SecureModel or ModelTrustPolicy spec that cannot be used as written."""


class ModelFormat(StrEnum):
    ONNX = "onnx"
    SAFETENSORS = "safetensors"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"
    SKLEARN = "sklearn"
    XGBOOST = "xgboost"
    GGUF = "gguf"
    OTHER = "other"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class _Camel(_Model):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid", alias_generator=_camel)


def parse_duration(text: str) -> datetime.timedelta:
    """Parse a Go-style duration made of hours, minutes and seconds ("720h", "1h30m")."""
    match = DURATION.match(text)
    if not text or not match:
        raise ValueError(f"{text!r} is not a duration like '720h' or '1h30m'")
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    try:
        return datetime.timedelta(hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:  # so that a parse error stays a SpecError, not a crash
        raise ValueError(f"{text!r} is longer than any duration SAMD can use") from None


def semver_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """A sort key that orders semver versions by precedence (build metadata ignored)."""
    match = SEMVER.match(version)
    if not match:
        raise ValueError(f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    major, minor, patch, pre, _build = match.groups()
    if pre is None:
        return int(major), int(minor), int(patch), 1, ()
    identifiers = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return int(major), int(minor), int(patch), 0, identifiers


# --- SecureModel ------------------------------------------------------------------------------------


class Subject(_Camel):
    """An RBAC subject."""

    kind: Literal["User", "Group", "ServiceAccount"]
    name: Annotated[str, Field(min_length=1)]
    namespace: str | None = None

    @model_validator(mode="after")
    def _service_account_namespace(self) -> Subject:
        if self.kind == "ServiceAccount" and not self.namespace:
            raise ValueError("a ServiceAccount subject needs a namespace")
        return self


class Grant(_Camel):
    """Time-bound access: removed by the operator at `expires`."""

    subject: Subject
    role: Literal["deployer", "reviewer"]
    expires: datetime.datetime

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: datetime.datetime) -> datetime.datetime:
        if value.tzinfo is None:
            raise ValueError("expires must carry a time zone (RFC 3339, e.g. 2026-12-31T00:00:00Z)")
        return value


class Access(_Camel):
    deployers: tuple[Subject, ...] = ()
    reviewers: tuple[Subject, ...] = ()
    grants: tuple[Grant, ...] = ()


class Dependency(_Camel):
    name: Annotated[str, Field(min_length=1)]
    version: str


class Artifact(_Camel):
    uri: str
    digest: str | None = None  # optional pin of the signed manifest digest ("sha256:<hex>")
    endpoint: str | None = None  # S3-compatible endpoint
    region: str | None = None
    credentials_secret: str | None = None  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY

    @field_validator("uri")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("s3://", "https://", "file://")):
            raise ValueError("artifact.uri must start with s3://, https:// or file://")
        return value

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
            raise ValueError("artifact.digest must look like sha256:<64 hex digits>")
        return value


class SignatureRef(_Camel):
    uri: str


class KeyRef(_Camel):
    provider: Literal["local", "aws-kms", "pkcs11"]
    uri: str | None = None  # aws-kms://... or pkcs11:...; the local keyset lives in secretName
    secret_name: str | None = None

    @model_validator(mode="after")
    def _where(self) -> KeyRef:
        if self.provider == "local" and not self.secret_name:
            raise ValueError("a local key needs secretName (the Secret holding the keyset)")
        if self.provider != "local" and not self.uri:
            raise ValueError(f"a {self.provider} key needs uri")
        return self


class Encryption(_Camel):
    key_ref: KeyRef
    rotation_period: str = "720h"

    @field_validator("rotation_period")
    @classmethod
    def _period(cls, value: str) -> str:
        if parse_duration(value) < datetime.timedelta(minutes=1):
            raise ValueError("rotationPeriod must be at least 1m")
        return value

    @property
    def rotation_interval(self) -> datetime.timedelta:
        return parse_duration(self.rotation_period)


class RateLimit(_Camel):
    requests_per_second: Annotated[float, Field(gt=0, le=100000)] = 50
    burst: Annotated[int, Field(ge=1, le=100000)] = 100


class AllowedClient(_Camel):
    """A NetworkPolicy peer allowed to reach the mTLS port."""

    namespace_selector: dict[str, Any] | None = None
    pod_selector: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _some_selector(self) -> AllowedClient:
        # A NetworkPolicy peer with neither selector is refused by the API server.
        if self.namespace_selector is None and self.pod_selector is None:
            raise ValueError("an allowed client needs namespaceSelector, podSelector or both")
        return self


class ClientIdentity(_Camel):
    """A client certificate the operator issues (its CN is `name`)."""

    name: Annotated[str, Field(min_length=1, max_length=63)]

    @field_validator("name")
    @classmethod
    def _dns(cls, value: str) -> str:
        if not DNS_LABEL.match(value):
            raise ValueError("client names must be DNS labels (lower case letters, digits, '-')")
        return value


class Serving(_Camel):
    enabled: bool = True
    image: str | None = None  # default: the operator's configured SAMD inference server image
    replicas: Annotated[int, Field(ge=0, le=100)] = 1
    port: Annotated[int, Field(ge=1024, le=65535)] = 8443
    resources: dict[str, Any] = Field(default_factory=dict)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    clients: tuple[ClientIdentity, ...] = ()
    allowed_clients: tuple[AllowedClient, ...] = ()


class SecureModelSpec(_Camel):
    format: ModelFormat
    version: str
    owner: Annotated[str, Field(min_length=1)]
    description: str | None = None
    dependencies: tuple[Dependency, ...] = ()
    artifact: Artifact
    signature: SignatureRef
    encryption: Encryption | None = None
    access: Access = Field(default_factory=Access)
    serving: Serving = Field(default_factory=Serving)

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        semver_key(value)
        return value


# --- ModelTrustPolicy -------------------------------------------------------------------------------


class KeylessIdentity(_Camel):
    identity: Annotated[str, Field(min_length=1)]
    issuer: Annotated[str, Field(min_length=1)]
    trusted_root: Annotated[str, Field(min_length=2)]  # Sigstore TrustedRoot JSON


class TrustedSigner(_Camel):
    """Exactly one of publicKey, certificateRoots or keyless."""

    name: Annotated[str, Field(min_length=1)]
    public_key: str | None = None  # PEM
    certificate_roots: str | None = None  # PEM bundle
    keyless: KeylessIdentity | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TrustedSigner:
        given = [x for x in (self.public_key, self.certificate_roots, self.keyless) if x is not None]
        if len(given) != 1:
            raise ValueError(
                f"signer {self.name!r} must set exactly one of publicKey, certificateRoots, keyless"
            )
        return self


class VersionPolicy(_Camel):
    allow_downgrade: bool = False
    # The signature must name the SecureModel's name and spec.version (samd sign --model-version).
    require_signed_version: bool = True


BROAD_GROUPS = ("system:authenticated", "system:unauthenticated", "system:serviceaccounts")
"""Groups that stand for everyone (or every service account): never bound to a model's roles unless a
policy lists them in allowedBroadGroups. `system:serviceaccounts:<namespace>` counts too."""


def is_broad_subject(subject: Subject) -> bool:
    """Whether binding `subject` would grant a whole population rather than a named identity."""
    if subject.kind == "Group":
        return subject.name in BROAD_GROUPS or subject.name.startswith("system:serviceaccounts:")
    return subject.kind == "User" and subject.name == "system:anonymous"


class AllowedEndpoint(_Camel):
    """An endpoint allowed although its address is internal, by network or by host name (no confused deputy)."""

    cidr: str | None = None
    host: str | None = None
    allow_http: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> AllowedEndpoint:
        if (self.cidr is None) == (self.host is None):
            raise ValueError("an allowed endpoint sets exactly one of cidr or host")
        if self.cidr is not None:
            ipaddress.ip_network(self.cidr, strict=False)  # ValueError names the bad network
        return self


class Responses(_Camel):
    """Incident responses for the covered models (docs/events.md); nothing happens unless set.

    A threshold crossed sends a security event; with `quarantine`, the operator also quarantines
    the model (scaled to zero, new pods refused) until a person clears it.
    """

    unauthorized_per_minute: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    drift_psi: Annotated[float | None, Field(gt=0, le=100, alias="driftPSI")] = None
    quarantine: bool = False


# The CloudEvent types of samd.events.EventType (a test keeps the two the same).
EventTypeName = Literal[
    "dev.samd.signature.failed",
    "dev.samd.bypass.attempted",
    "dev.samd.access.unauthorized",
    "dev.samd.drift.detected",
    "dev.samd.key.rotation.failed",
    "dev.samd.model.quarantined",
    "dev.samd.model.quarantine.cleared",
]


class SinkSecretRef(_Camel):
    """The Secret, in SAMD's own namespace, holding a sink's HMAC key."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    key: Annotated[str, Field(min_length=1, max_length=253)] = "key"


class PolicyEventSink(_Camel):
    """Where the operator sends the security events of the covered models (docs/events.md)."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    url: Annotated[str, Field(min_length=8, max_length=2048, pattern=r"^https?://")]
    secret_ref: SinkSecretRef
    types: tuple[EventTypeName, ...] = ()  # empty: every type


CERT_MANAGER_GROUP = "cert-manager.io"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class CertificateIssuerRef(_Camel):
    """A cert-manager issuer that signs the model certificates instead of the operator's own CA.

    Chosen by a cluster admin only (the chart, or a ModelTrustPolicy), never by a SecureModel: a
    model's author naming the issuer would get certificates from any issuer the operator may use.
    A namespaced `Issuer` is looked up in the model's namespace.
    """

    kind: Literal["ClusterIssuer", "Issuer"]
    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    group: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)] = CERT_MANAGER_GROUP

    def __str__(self) -> str:
        group = "" if self.group == CERT_MANAGER_GROUP else f".{self.group}"
        return f"{self.kind}{group}/{self.name}"


class ModelTrustPolicySpec(_Camel):
    namespace_selector: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["enforce", "warn"] = "enforce"
    signers: Annotated[tuple[TrustedSigner, ...], Field(min_length=1)]
    allowed_formats: tuple[ModelFormat, ...] = ()  # empty: every format
    allowed_images: tuple[Annotated[str, Field(min_length=1)], ...] = ()  # repositories for serving.image
    allowed_broad_groups: tuple[str, ...] = ()  # BROAD_GROUPS (or system:anonymous) that may be bound
    require_encryption: bool = True
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    # Where the operator may be pointed at (no confused deputy): see samd.storage.guard.
    allowed_endpoints: tuple[AllowedEndpoint, ...] = ()
    allow_local_files: bool | None = None  # unset: false; development only (see SAMD_ALLOW_LOCAL_FILES)
    responses: Responses = Field(default_factory=Responses)
    event_sinks: Annotated[tuple[PolicyEventSink, ...], Field(max_length=8)] = ()
    # Overrides the chart's issuer (SAMD_CERT_ISSUER) for the covered namespaces.
    certificate_issuer: CertificateIssuerRef | None = None


def _describe(error: ValidationError, kind: str) -> str:
    problems = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(spec)"
        problems.append(f"spec.{path}: {item['msg']}")
    return f"invalid {kind}: " + "; ".join(problems)


def parse_secure_model(spec: Mapping[str, Any]) -> SecureModelSpec:
    try:
        return SecureModelSpec.model_validate(dict(spec))
    except ValidationError as error:
        raise SpecError(_describe(error, "SecureModel"), hint="fix the spec and apply it again") from None


def parse_trust_policy(spec: Mapping[str, Any]) -> ModelTrustPolicySpec:
    try:
        return ModelTrustPolicySpec.model_validate(dict(spec))
    except ValidationError as error:
        raise SpecError(
            _describe(error, "ModelTrustPolicy"), hint="fix the spec and apply it again"
        ) from None
