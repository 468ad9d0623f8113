"""AdmissionReview v1 in and out: the typed request, the decision, and the seam to the policy.

The server (``samd.webhook.server``) parses the HTTP body into an ``AdmissionRequest``, hands it to
a ``Decider`` and writes the ``Decision`` back as an AdmissionReview response. Everything here is
pure: no I/O, no globals.

Parsing is strict about what SAMD relies on (types are never coerced: ``"dryRun": "true"`` is an
error, not ``True``) and tolerant of fields a newer API server may add (they are ignored, as
Kubernetes clients do), so that a cluster upgrade never turns every request into a denial.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"

# Status reasons the server itself uses (Decision.reason for the others comes from the decider).
REASON_INVALID_REVIEW = "InvalidAdmissionReview"
REASON_INTERNAL_ERROR = "InternalError"
REASON_TIMEOUT = "Timeout"

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class ReviewError(ValueError):
    """The body is not an AdmissionReview v1 at all: answered with HTTP 400, no review response."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", populate_by_name=True)


class GroupVersionKind(_Strict):
    group: str
    version: str
    kind: str

    def __str__(self) -> str:
        prefix = f"{self.group}/" if self.group else ""
        return f"{prefix}{self.version}/{self.kind}"


class GroupVersionResource(_Strict):
    group: str
    version: str
    resource: str


class UserInfo(_Strict):
    username: str = ""
    uid: str = ""
    # Lists, not tuples: strict mode takes JSON arrays only as lists.
    groups: list[str] = Field(default_factory=list)
    extra: dict[str, list[str]] = Field(default_factory=dict)


class AdmissionRequest(_Strict):
    """The ``request`` of an AdmissionReview v1 (k8s.io/api/admission/v1 AdmissionRequest)."""

    uid: Annotated[str, Field(min_length=1, max_length=256)]
    kind: GroupVersionKind
    resource: GroupVersionResource
    sub_resource: str = Field(default="", alias="subResource")
    request_kind: GroupVersionKind | None = Field(default=None, alias="requestKind")
    request_resource: GroupVersionResource | None = Field(default=None, alias="requestResource")
    request_sub_resource: str = Field(default="", alias="requestSubResource")
    name: str = ""
    namespace: str = ""
    operation: Operation
    user_info: UserInfo = Field(alias="userInfo")
    # The objects stay plain JSON: the decider reads the few fields it needs from them.
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = Field(default=None, alias="oldObject")
    dry_run: bool = Field(default=False, alias="dryRun")
    options: dict[str, Any] | None = None

    @property
    def object_name(self) -> str:
        """The name, or for a CREATE with generateName the prefix followed by '*'."""
        if self.name:
            return self.name
        metadata = (self.object or {}).get("metadata")
        if isinstance(metadata, Mapping):
            generate = metadata.get("generateName")
            if isinstance(generate, str) and generate:
                return generate + "*"
        return ""


@dataclass(frozen=True)
class Decision:
    """What the decider concluded about one request.

    ``reason`` is a CamelCase word (a metav1.Status reason); ``message`` is what the person who
    applied the object reads, so it says what failed and what to do. ``warnings`` are returned to
    the client also when the request is allowed (warn mode). ``model`` and ``policy`` name the
    SecureModel and ModelTrustPolicy the decision was about, for the audit log.
    """

    allowed: bool
    message: str
    reason: str
    warnings: tuple[str, ...] = ()
    model: str | None = None
    policy: str | None = None
    code: int = 403


class Decider(Protocol):
    """The policy behind the server (``samd.webhook.decide.PolicyDecider`` in production)."""

    async def decide(self, request: AdmissionRequest) -> Decision:
        """Decide one request; may raise, and the server then denies (fail closed)."""
        ...

    @property
    def ready(self) -> bool:
        """True once the watched state is synced; until then /readyz answers 503."""
        ...


@dataclass(frozen=True)
class ParsedReview:
    """A body that is an AdmissionReview v1 with a uid.

    Exactly one of ``request`` and ``problem`` is set: ``problem`` says why the request part is
    malformed, and the server answers it with a denial (it has a uid to echo).
    """

    uid: str
    request: AdmissionRequest | None
    problem: str | None = None
    kind: str = ""  # request.kind.kind as sent, for the metrics of malformed reviews


def _describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False)[:5]:
        path = ".".join(str(part) for part in item["loc"]) or "(request)"
        problems.append(f"request.{path}: {item['msg']}")
    more = error.error_count() - len(problems)
    if more > 0:
        problems.append(f"and {more} more")
    return "; ".join(problems)


def load_json(body: bytes) -> Any:
    """Parse JSON, turning every failure (syntax, bad UTF-8, nesting too deep) into ReviewError.

    orjson: on the request path it parses a pod's review in less than half the time of `json`.
    It refuses nesting deeper than 1024 levels, far deeper than any Kubernetes object.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if str(error).startswith("depth limit exceeded"):
            raise ReviewError("the body is JSON nested too deeply to be an AdmissionReview") from None
        raise ReviewError(f"the body is not valid JSON: {error}") from None


def parse_review(document: Any) -> ParsedReview:
    """Check the AdmissionReview envelope and parse its request.

    Raises ReviewError when there is no review to answer (not an object, wrong apiVersion or kind,
    no request, no uid). A request that has a uid but is otherwise malformed comes back with
    ``problem`` set, so that the caller can deny it by uid.
    """
    if not isinstance(document, dict):
        raise ReviewError(f"the body must be a JSON object (an AdmissionReview), not {_json_type(document)}")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if api_version != API_VERSION or kind != KIND:
        raise ReviewError(
            f"expected apiVersion {API_VERSION!r} and kind {KIND!r}, got {_short(api_version)} and "
            f"{_short(kind)}; set admissionReviewVersions: [v1] in the webhook configuration"
        )
    request = document.get("request")
    if not isinstance(request, dict):
        raise ReviewError("the AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("the AdmissionReview request has no uid (a non-empty string)")
    if len(uid) > 256:
        raise ReviewError("the AdmissionReview request uid is longer than 256 characters")
    kind_field = request.get("kind")
    sent_kind = kind_field.get("kind") if isinstance(kind_field, dict) else None
    sent_kind = sent_kind if isinstance(sent_kind, str) else ""
    try:
        parsed = AdmissionRequest.model_validate(request)
    except ValidationError as error:
        return ParsedReview(uid=uid, request=None, problem=_describe_validation_error(error), kind=sent_kind)
    return ParsedReview(uid=uid, request=parsed, kind=sent_kind)


def review_response(uid: str, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview v1 answer to the request `uid`."""
    code = 200 if decision.allowed else decision.code
    response: dict[str, Any] = {
        "uid": uid,
        "allowed": decision.allowed,
        "status": {"code": code, "message": decision.message, "reason": decision.reason},
    }
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value) if value is not None else "nothing"
    return text if len(text) <= 64 else text[:61] + "..."
