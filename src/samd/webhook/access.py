"""No confused deputy: what the author of a SecureModel must be allowed to do themselves.

The operator acts with its own privileges on what a SecureModel names: it mounts the named key
Secret and storage credentials into the model's pods, and it creates RoleBindings for the named
subjects. So a SecureModel write is admitted only if the requester (the AdmissionReview's
userInfo) could do the same without SAMD, asked of the API server with SubjectAccessReviews:

- a Secret named in ``spec.encryption.keyRef.secretName`` or ``spec.artifact.credentialsSecret``:
  the requester may ``get`` it;
- a subject added to ``spec.access`` (deployers, reviewers, grants): the requester may create
  RoleBindings in the namespace and either ``bind`` the model's Role or already hold every
  permission the Role grants (the same escalation check Kubernetes RBAC makes).

Only what a write adds is checked: a deployer who raises ``spec.version`` need not be able to read
the key Secret that a namespace admin named earlier. Answers are cached briefly per user and
question; an answer that cannot be had is a refusal (fail closed).

`required_permissions` is pure; `AccessReviewer` asks the API server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from samd.operator.builders.names import ModelRole, role_name
from samd.operator.builders.rbac import DEPLOYER_VERBS, RBAC_GROUP, READ_VERBS
from samd.spec import GROUP, SecureModelSpec, Subject
from samd.webhook.review import UserInfo

CACHE_TTL_SECONDS = 10.0
CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Attributes:
    """The resource attributes of one SubjectAccessReview question."""

    verb: str
    resource: str
    namespace: str
    group: str = ""
    name: str = ""
    subresource: str = ""

    def as_review(self) -> dict[str, str]:
        attributes = {"verb": self.verb, "resource": self.resource, "namespace": self.namespace}
        for key, value in (("group", self.group), ("name", self.name), ("subresource", self.subresource)):
            if value:
                attributes[key] = value
        return attributes

    def __str__(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        target = f"{resource} {self.name}" if self.name else resource
        return f"{self.verb} {target}"


@dataclass(frozen=True)
class Requirement:
    """One thing a SecureModel asks the operator to do, and the permissions that would let its
    author do it themselves: satisfied when every question of any one option is allowed."""

    field: str
    options: tuple[tuple[Attributes, ...], ...]
    fix: str


def _secret_requirement(field: str, namespace: str, secret: str) -> Requirement:
    return Requirement(
        field=f"{field} names Secret {secret}",
        options=((Attributes("get", "secrets", namespace, name=secret),),),
        fix=f"name a Secret you may read, or ask someone who may read {secret} to make this change",
    )


def _role_rules(model: str, namespace: str, verbs: Sequence[str]) -> tuple[Attributes, ...]:
    """The questions that together mean 'already holds everything the model's Role grants'."""
    on_model = tuple(Attributes(verb, "securemodels", namespace, GROUP, model) for verb in verbs)
    return (*on_model, Attributes("get", "securemodels", namespace, GROUP, model, "status"))


def _binding_requirement(model: str, namespace: str, role: ModelRole, subject: Subject) -> Requirement:
    verbs = DEPLOYER_VERBS if role == "deployer" else READ_VERBS
    create = Attributes("create", "rolebindings", namespace, RBAC_GROUP)
    bind = Attributes("bind", "roles", namespace, RBAC_GROUP, role_name(model, role))
    return Requirement(
        field=f"spec.access grants {role} to {subject.kind} {subject.name}",
        options=((create, bind), (create, *_role_rules(model, namespace, verbs))),
        fix="ask a namespace admin (who may create RoleBindings and bind the model's Roles) to grant access",
    )


def _access_entries(spec: SecureModelSpec | None) -> set[tuple[ModelRole, Subject]]:
    if spec is None:
        return set()
    access = spec.access
    entries: set[tuple[ModelRole, Subject]] = {("deployer", subject) for subject in access.deployers}
    entries |= {("reviewer", subject) for subject in access.reviewers}
    entries |= {(grant.role, grant.subject) for grant in access.grants}
    return entries


def _key_secret(spec: SecureModelSpec) -> str | None:
    if spec.encryption is None or spec.encryption.key_ref.provider != "local":
        return None
    return spec.encryption.key_ref.secret_name


SECRET_REFERENCES: tuple[tuple[str, Callable[[SecureModelSpec], str | None]], ...] = (
    ("spec.encryption.keyRef.secretName", _key_secret),
    ("spec.artifact.credentialsSecret", lambda spec: spec.artifact.credentials_secret),
)
"""Every field of a SecureModel that names a Secret the operator or the model's pods will use
(a unit test walks the CRD's schema and fails on a Secret field missing here)."""


def required_permissions(
    namespace: str, model: str, spec: SecureModelSpec, old: SecureModelSpec | None
) -> list[Requirement]:
    """What the write of `spec` (over `old`, None for a create) asks of its author."""
    requirements: list[Requirement] = []
    for path, secret_of in SECRET_REFERENCES:
        secret = secret_of(spec)
        if secret and secret != (secret_of(old) if old is not None else None):
            requirements.append(_secret_requirement(path, namespace, secret))
    added = _access_entries(spec) - _access_entries(old)
    for role, subject in sorted(added, key=lambda entry: (entry[0], entry[1].kind, entry[1].name)):
        requirements.append(_binding_requirement(model, namespace, role, subject))
    return requirements


Ask = Callable[[UserInfo, Attributes], Awaitable[bool]]
"""One SubjectAccessReview: whether the user may do what the attributes say (raises when unknown)."""


class AccessReviewer:
    """Answers `Requirement`s for a user, through a short-lived cache of SubjectAccessReviews."""

    def __init__(
        self,
        ask: Ask,
        *,
        ttl: float = CACHE_TTL_SECONDS,
        max_entries: int = CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ask = ask
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._answers: dict[tuple[object, Attributes], tuple[float, bool]] = {}

    async def allowed(self, user: UserInfo, attributes: Attributes) -> bool:
        key = (_user_key(user), attributes)
        now = self._clock()
        kept = self._answers.get(key)
        if kept is not None and now - kept[0] < self._ttl:
            return kept[1]
        answer = await self._ask(user, attributes)
        if len(self._answers) >= self._max_entries:
            self._answers.clear()
        self._answers[key] = (now, answer)
        return answer

    async def unmet(self, user: UserInfo, requirements: Sequence[Requirement]) -> list[str]:
        """Why each requirement the user does not meet is not met (empty: all met).

        An API error answers nothing, so the requirement counts as unmet (fail closed)."""
        problems: list[str] = []
        for requirement in requirements:
            try:
                met = False
                for option in requirement.options:
                    answers = await asyncio.gather(*(self.allowed(user, q) for q in option))
                    if all(answers):
                        met = True
                        break
            except Exception as error:  # any failure to ask is a refusal
                problems.append(
                    f"{requirement.field}, and SAMD could not check that {_who(user)} may use it "
                    f"({type(error).__name__}: {error}); it refuses until it can: try again"
                )
                continue
            if not met:
                needed = " and ".join(str(q) for q in requirement.options[0])
                problems.append(
                    f"{requirement.field}, but {_who(user)} may not {needed} in this namespace: the operator "
                    f"would do it for you with its own rights; {requirement.fix}"
                )
        return problems


def _user_key(user: UserInfo) -> object:
    return (
        user.username,
        user.uid,
        tuple(user.groups),
        tuple(sorted((k, tuple(v)) for k, v in user.extra.items())),
    )


def _who(user: UserInfo) -> str:
    return f"user {user.username}" if user.username else "the requester"


def subject_access_review(user: UserInfo, attributes: Attributes) -> dict[str, Any]:
    """The SubjectAccessReview object that asks `attributes` for `user`."""
    spec: dict[str, Any] = {"user": user.username, "resourceAttributes": attributes.as_review()}
    if user.uid:
        spec["uid"] = user.uid
    if user.groups:
        spec["groups"] = list(user.groups)
    if user.extra:
        spec["extra"] = {key: list(values) for key, values in user.extra.items()}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def lightkube_ask(client: Any) -> Ask:
    """An `Ask` that creates SubjectAccessReviews through a lightkube AsyncClient."""
    from lightkube.resources.authorization_v1 import SubjectAccessReview  # noqa: PLC0415

    async def ask(user: UserInfo, attributes: Attributes) -> bool:
        review = SubjectAccessReview.from_dict(subject_access_review(user, attributes))
        answer = await client.create(review)
        status = answer.status
        return bool(status is not None and status.allowed and not status.denied)

    return ask
