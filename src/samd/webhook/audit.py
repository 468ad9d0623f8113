"""One structured audit line per admission decision (logger ``samd.audit``).

With JSON logging (``samd.logs.configure_logging``) each line has SAMD's decision shape
(`samd.logs.decision_fields`: component, event "admission", decision, reason, user, model
{namespace, name}) and the admission's own fields, so an auditor can answer "who tried to run which
model where, and what did SAMD say": groups, operation, kind, namespace, object, policy, dry_run,
duration_ms, uid.
Only names and decisions are logged; never object contents, key material or model bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from samd.events import EventType, SecurityEvent
from samd.logs import decision_fields
from samd.webhook.review import AdmissionRequest, Decision

logger = logging.getLogger("samd.audit")


@dataclass(frozen=True)
class AuditRecord:
    uid: str
    user: str
    groups: tuple[str, ...]
    operation: str
    kind: str
    namespace: str
    object_name: str
    model: str | None
    policy: str | None
    decision: str  # allowed, denied, warned, error
    reason: str
    dry_run: bool
    duration_ms: float
    message: str

    @classmethod
    def of(
        cls, request: AdmissionRequest, decision: Decision, result: str, duration_seconds: float
    ) -> AuditRecord:
        return cls(
            uid=request.uid,
            user=request.user_info.username,
            groups=tuple(request.user_info.groups),
            operation=request.operation,
            kind=request.kind.kind,
            namespace=request.namespace,
            object_name=request.object_name,
            model=decision.model,
            policy=decision.policy,
            decision=result,
            reason=decision.reason,
            dry_run=request.dry_run,
            duration_ms=round(duration_seconds * 1000, 3),
            message=decision.message,
        )

    def fields(self) -> dict[str, object]:
        """The `extra=` of the log record (``message`` is the record's own message)."""
        model_namespace, _, model_name = (self.model or "").rpartition("/")
        return decision_fields(
            component="webhook",
            event="admission",
            decision=self.decision,
            reason=self.reason,
            user=self.user or None,
            model=(model_namespace or self.namespace, model_name) if model_name else None,
            uid=self.uid,
            groups=list(self.groups),
            operation=self.operation,
            kind=self.kind,
            namespace=self.namespace,
            object=self.object_name,
            policy=self.policy,
            dry_run=self.dry_run,
            duration_ms=self.duration_ms,
        )


def log_decision(record: AuditRecord) -> None:
    where = f"{record.namespace}/{record.object_name}" if record.namespace else record.object_name
    dry = " (dry run)" if record.dry_run else ""
    logger.info(
        "%s %s %s %s by %s%s: %s: %s",
        record.decision,
        record.operation,
        record.kind,
        where,
        record.user or "(unknown user)",
        dry,
        record.reason,
        record.message,
        extra=record.fields(),
    )


def log_unparsed(uid: str, kind: str, problem: str) -> None:
    """A review with a uid whose request could not be parsed: denied, and logged as such."""
    logger.info(
        "denied a malformed AdmissionReview (uid %s): %s",
        uid,
        problem,
        extra=decision_fields(
            component="webhook",
            event="admission",
            decision="denied",
            reason="InvalidAdmissionReview",
            uid=uid,
            kind=kind,
        ),
    )


# Refusals that are attempts to get around SAMD, and refusals of a signature: security events.
ATTEMPTS = frozenset(
    {
        "BypassAttempt",  # a pod given a model's Secret, artifact or identity
        "KeyExposed",
        "NotPermitted",  # a Secret or subject a user may not use themselves
        "CoverageRemoved",  # a namespace label change that would switch protection off
        "PodAltered",
        "LoaderAltered",
        "LoaderMissing",
        "DigestMismatch",
        "Quarantined",  # a pod for a quarantined model
    }
)
SIGNATURE_FAILURES = frozenset({"SignatureInvalid", "SignatureMissing"})


def security_event(record: AuditRecord) -> SecurityEvent | None:
    """The security event a denial stands for (None for an admission, a dry run, or a plain mistake)."""
    if record.decision != "denied" or record.dry_run:
        return None
    if record.reason in ATTEMPTS:
        kind = EventType.BYPASS_ATTEMPTED
    elif record.reason in SIGNATURE_FAILURES:
        kind = EventType.SIGNATURE_FAILED
    else:
        return None
    model_namespace, _, model_name = (record.model or "").rpartition("/")
    return SecurityEvent(
        kind,
        "webhook",
        record.reason,
        record.message,
        namespace=model_namespace or record.namespace,
        name=model_name,
        user=record.user or None,
        details={
            "operation": record.operation,
            "kind": record.kind,
            "namespace": record.namespace,
            "object": record.object_name,
            "policy": record.policy,
        },
    )
