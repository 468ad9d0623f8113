"""One audit run: read the cluster, run every check, probe the webhook, return the report."""

from __future__ import annotations

import base64
import datetime
import ssl
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from samd.audit.access import access_findings, candidate_subjects
from samd.audit.checks import WEBHOOK_SUFFIX, AuditSettings, skipped_namespaces, snapshot_findings
from samd.audit.cluster import ClusterReader
from samd.audit.findings import Finding, ObjectRef, Report, Severity, sort_findings
from samd.audit.snapshot import Snapshot, read_snapshot


def run_audit(reader: ClusterReader, settings: AuditSettings, *, namespace: str | None = None) -> Report:
    snapshot = read_snapshot(reader, namespace)
    findings = snapshot_findings(snapshot, settings)
    findings += access_findings(snapshot, reader.allowed, operator_namespace=settings.operator_namespace)
    findings += webhook_answer_findings(snapshot)
    skipped = sorted(
        {
            ns
            for configuration in snapshot.webhook_configurations
            for hook in configuration.get("webhooks") or []
            if str(hook.get("name", "")).endswith(WEBHOOK_SUFFIX)
            for ns in skipped_namespaces(hook.get("namespaceSelector") or {})
        }
    )
    return Report(
        generated_at=settings.now,
        cluster=reader.server,
        findings=sort_findings(findings),
        checked={
            "secureModels": len(snapshot.models),
            "trustPolicies": len(snapshot.policies),
            "namespaces": len(snapshot.model_namespaces()),
            "subjects": len(candidate_subjects(snapshot)),
            "accessReviews": reader.sar_count,
            "services": len(snapshot.services),
            "networkPolicies": len(snapshot.network_policies),
            "webhookConfigurations": len(snapshot.webhook_configurations),
        },
        notes=[f"the webhook skips namespaces: {', '.join(skipped)}"] if skipped else [],
    )


def webhook_answer_findings(snapshot: Snapshot) -> Iterator[Finding]:
    """A webhook registered by URL (outside the cluster) must answer its /readyz over the caBundle's TLS.

    In-cluster webhooks (a Service) are judged by their Deployment's readiness instead.
    """
    seen: set[str] = set()
    for configuration in snapshot.webhook_configurations:
        for hook in configuration.get("webhooks") or []:
            config = hook.get("clientConfig") or {}
            url = config.get("url")
            if not str(hook.get("name", "")).endswith(WEBHOOK_SUFFIX) or not url or url in seen:
                continue
            seen.add(url)
            problem = probe_ready(str(url), str(config.get("caBundle") or ""))
            if problem:
                yield Finding(
                    "webhook-down",
                    Severity.CRITICAL,
                    ObjectRef("ValidatingWebhookConfiguration", configuration["metadata"]["name"]),
                    f"the webhook at {url} does not answer: {problem}",
                    "with failurePolicy Fail no pod it covers can be created; with Ignore every pod is "
                    "admitted unchecked",
                    "start the webhook again; see the playbook's webhook-outage runbook",
                )


def probe_ready(url: str, ca_bundle: str, timeout: float = 3.0) -> str | None:
    parts = urllib.parse.urlsplit(url)
    ready = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/readyz", "", ""))
    try:
        with tempfile.TemporaryDirectory(prefix="samd-audit-") as scratch:
            ca = Path(scratch) / "ca.crt"
            ca.write_bytes(base64.b64decode(ca_bundle) if ca_bundle else b"")
            context = (
                ssl.create_default_context(cafile=str(ca)) if ca_bundle else ssl.create_default_context()
            )
            with urllib.request.urlopen(ready, timeout=timeout, context=context) as response:  # noqa: S310
                return None if response.status == 200 else f"/readyz answered {response.status}"
    except (OSError, ssl.SSLError, ValueError) as error:
        return str(getattr(error, "reason", None) or error)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
