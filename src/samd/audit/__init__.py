"""`samd audit`: a periodic security audit of SAMD in one cluster (docs/cli.md, "samd audit").

Keys and certificates, who can reach each model's key and SecureModel (SubjectAccessReviews),
exposed endpoints, signatures under the current policies, images, storage posture, the admission
webhook's configuration and whether the operator and the webhook run.
"""

from samd.audit.checks import AuditSettings
from samd.audit.findings import Finding, ObjectRef, Report, Severity, fails_gate
from samd.audit.run import run_audit

CHECK_NAMES = (
    "key-unverified",
    "key-rotation-overdue",
    "data-key-rotation-overdue",
    "certificate-expiring",
    "signing-certificate-expiring",
    "model-not-covered",
    "signature-invalid",
    "model-not-verified",
    "image-not-pinned",
    "storage-insecure",
    "service-exposed",
    "ingress-exposed",
    "gateway-route-exposed",
    "network-policy-allows-all",
    "namespace-pod-security",
    "expired-grant-bound",
    "key-secret-readable",
    "model-updatable",
    "pods-creatable",
    "wildcard-grant",
    "webhook-missing",
    "webhook-fails-open",
    "webhook-ca-bundle",
    "webhook-skips-model-namespace",
    "webhook-down",
    "operator-down",
    "operator-not-reconciling",
)
"""Every finding class, so that the metrics show 0 for a class with no finding."""

__all__ = [
    "CHECK_NAMES",
    "AuditSettings",
    "Finding",
    "ObjectRef",
    "Report",
    "Severity",
    "fails_gate",
    "run_audit",
]
