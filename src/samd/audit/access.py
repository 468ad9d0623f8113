"""Who can read a model's key, change its SecureModel or create pods next to it: asked of the API server.

Candidate subjects are every subject of every RoleBinding and ClusterRoleBinding, plus the groups that
stand for everyone; each is asked with a SubjectAccessReview, so aggregated ClusterRoles, wildcards and
any authorizer the cluster runs count as they do for a real request. The bindings are read only to
say which one grants the access and whether it is a wildcard rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from samd.audit.cluster import AccessQuestion, Identity
from samd.audit.findings import Finding, ObjectRef, Severity
from samd.audit.snapshot import Obj, Snapshot
from samd.spec import GROUP

BROAD_GROUPS = (
    "system:authenticated",
    "system:unauthenticated",
    "system:serviceaccounts",
)
"""Groups every user, every anonymous request or every service account is in."""
PROBE_USER = "samd-audit:probe"
"""The user a group is asked about: a name no binding names, so that only the group's rights count."""


@dataclass(frozen=True)
class Subject:
    kind: str  # User, Group, ServiceAccount
    name: str
    namespace: str = ""

    @property
    def identity(self) -> Identity:
        if self.kind == "ServiceAccount":
            return Identity(f"system:serviceaccount:{self.namespace}:{self.name}")
        if self.kind == "Group":
            return Identity(PROBE_USER, (self.name,))
        return Identity(self.name)

    def __str__(self) -> str:
        if self.kind == "ServiceAccount":
            return f"ServiceAccount {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"

    @property
    def broad(self) -> bool:
        return self.kind == "Group" and (
            self.name in BROAD_GROUPS or self.name.startswith("system:serviceaccounts:")
        )


def candidate_subjects(snapshot: Snapshot) -> list[Subject]:
    found: dict[Subject, None] = {Subject("Group", group): None for group in BROAD_GROUPS}
    for binding in [*snapshot.role_bindings, *snapshot.cluster_role_bindings]:
        for subject in binding.get("subjects") or []:
            kind = str(subject.get("kind"))
            namespace = str(subject.get("namespace") or "") if kind == "ServiceAccount" else ""
            found[Subject(kind, str(subject.get("name")), namespace)] = None
    return list(found)


def expected_subject(subject: Subject, operator_namespace: str) -> bool:
    """Identities whose access is the cluster's own: admins, control-plane components, SAMD itself."""
    if subject.kind == "Group":
        return subject.name in ("system:masters", "system:nodes")
    if subject.kind == "User":
        return subject.name.startswith("system:") and not subject.name.startswith("system:serviceaccount:")
    return subject.namespace in ("kube-system", operator_namespace)


@dataclass(frozen=True)
class Grant:
    """One binding that gives a subject a role, and whether that role holds a wildcard rule."""

    binding: str
    role: str
    wildcard: bool


def _bindings_of(subject: Subject, namespace: str, snapshot: Snapshot) -> list[Grant]:
    grants = []
    for binding in [*snapshot.role_bindings, *snapshot.cluster_role_bindings]:
        meta = binding["metadata"]
        if meta.get("namespace") not in (None, "", namespace):
            continue
        names = {
            Subject(
                str(s.get("kind")),
                str(s.get("name")),
                str(s.get("namespace") or "") if s.get("kind") == "ServiceAccount" else "",
            )
            for s in binding.get("subjects") or []
        }
        if subject not in names:
            continue
        ref = binding.get("roleRef") or {}
        role = (
            snapshot.cluster_roles.get(ref.get("name", ""))
            if ref.get("kind") == "ClusterRole"
            else snapshot.roles.get((namespace, ref.get("name", "")))
        )
        where = f"{binding.get('kind', 'RoleBinding')} {meta.get('namespace') + '/' if meta.get('namespace') else ''}{meta['name']}"
        grants.append(Grant(where, f"{ref.get('kind')} {ref.get('name')}", _has_wildcard(role)))
    return grants


def _has_wildcard(role: Mapping[str, Any] | None) -> bool:
    return any(
        "*" in (rule.get("verbs") or []) or "*" in (rule.get("resources") or [])
        for rule in (role or {}).get("rules") or []
    )


@dataclass(frozen=True)
class Question:
    check: str
    question: AccessQuestion
    severity: Severity
    broad_severity: Severity
    why: str


def model_questions(model: Obj) -> list[tuple[Question, set[Subject]]]:
    """What is asked for one model, and who is allowed it by design (its deployers may update it)."""
    meta, spec = model["metadata"], model.get("spec") or {}
    ns, name = meta["namespace"], meta["name"]
    questions: list[tuple[Question, set[Subject]]] = []
    key_secret = ((spec.get("encryption") or {}).get("keyRef") or {}).get("secretName")
    if key_secret:
        questions.append(
            (
                Question(
                    "key-secret-readable",
                    AccessQuestion("get", "secrets", ns, key_secret),
                    Severity.HIGH,
                    Severity.CRITICAL,
                    "whoever reads the keyset Secret can decrypt the model artifact outside SAMD",
                ),
                set(),
            )
        )
    access = spec.get("access") or {}
    deployers = {
        Subject(str(s["kind"]), str(s["name"]), str(s.get("namespace") or ""))
        for s in access.get("deployers") or []
    }
    deployers |= {
        Subject(
            str(g["subject"]["kind"]), str(g["subject"]["name"]), str(g["subject"].get("namespace") or "")
        )
        for g in access.get("grants") or []
        if g.get("role") == "deployer"
    }
    questions.append(
        (
            Question(
                "model-updatable",
                AccessQuestion("update", "securemodels", ns, name, GROUP),
                Severity.MEDIUM,
                Severity.CRITICAL,
                "whoever updates the SecureModel chooses which artifact, signature and clients it has",
            ),
            deployers,
        )
    )
    questions.append(
        (
            Question(
                "pods-creatable",
                AccessQuestion("create", "pods", ns),
                Severity.LOW,
                Severity.HIGH,
                "pods in the model's namespace are the webhook's to refuse; every identity that may create "
                "them is one more that tries",
            ),
            set(),
        )
    )
    return questions


def access_findings(
    snapshot: Snapshot,
    allowed: Callable[[Identity, AccessQuestion], bool],
    *,
    operator_namespace: str,
) -> Iterator[Finding]:
    subjects = [s for s in candidate_subjects(snapshot) if not expected_subject(s, operator_namespace)]
    answers: dict[tuple[Identity, AccessQuestion], bool] = {}

    def remembered(identity: Identity, question: AccessQuestion) -> bool:
        # Models in one namespace ask the same pod question: one review per subject and namespace.
        key = (identity, question)
        if key not in answers:
            answers[key] = allowed(identity, question)
        return answers[key]

    for model in snapshot.models:
        meta = model["metadata"]
        ref = ObjectRef("SecureModel", meta["name"], meta["namespace"])
        for question, by_design in model_questions(model):
            for subject in _allowed_subjects(subjects, question.question, remembered):
                grants = _bindings_of(subject, meta["namespace"], snapshot)
                wildcard = [g for g in grants if g.wildcard]
                if subject in by_design and not wildcard:
                    continue
                severity = question.broad_severity if subject.broad else question.severity
                if wildcard and severity < Severity.HIGH:
                    severity = Severity.HIGH
                through = "; ".join(
                    f"{g.binding} -> {g.role}{' (wildcard rule)' if g.wildcard else ''}" for g in grants
                )
                yield Finding(
                    "wildcard-grant" if wildcard else question.check,
                    severity,
                    ref,
                    f"{subject} may {question.question.describe()}"
                    + (f" (through {through})" if through else " (through a binding of a group it is in)"),
                    question.why
                    + (
                        " (a wildcard rule grants it, and whatever resources are added later)"
                        if wildcard
                        else ""
                    )
                    + (f"; {subject.name} stands for every user or service account" if subject.broad else ""),
                    "remove the binding or narrow its role to named resources and verbs"
                    + (f" ({grants[0].binding})" if grants else ""),
                )


def _allowed_subjects(
    subjects: Sequence[Subject], question: AccessQuestion, allowed: Callable[[Identity, AccessQuestion], bool]
) -> Iterator[Subject]:
    for subject in subjects:
        if allowed(subject.identity, question):
            yield subject
