"""The audit's checks that need nothing but the snapshot: pure functions from cluster state to findings.

Keys, certificates, signatures under the current policies, images, storage posture, exposure,
Pod Security labels, the webhook's configuration and whether the operator runs. Access (who can do
what) asks the API server and lives in `samd.audit.access`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from samd.audit.findings import Finding, ObjectRef, Severity
from samd.audit.snapshot import Obj, Snapshot, labels
from samd.errors import SamdError
from samd.operator.builders.metadata import EXPIRES_ANNOTATION, MODEL_LABEL
from samd.operator.builders.names import model_label_value, serving_name
from samd.policy import (
    TrustPolicy,
    applicable_policies,
    check_version_binding,
    requiring_signed_version,
    selector_matches,
    verify_under_policies,
)
from samd.spec import parse_duration, parse_trust_policy

DIGEST_PINNED = re.compile(r"@sha256:[0-9a-f]{64}$")
POD_SECURITY_ENFORCE = "pod-security.kubernetes.io/enforce"
WEBHOOK_SUFFIX = ".webhook.samd.dev"
OPERATOR_APP = "samd-operator"
WEBHOOK_APP = "samd-webhook"


@dataclass(frozen=True)
class AuditSettings:
    now: datetime.datetime
    certificate_warning: datetime.timedelta = datetime.timedelta(days=30)
    reconcile_grace: datetime.timedelta = datetime.timedelta(minutes=5)
    operator_namespace: str = "samd-system"


def _time(text: object) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _model_ref(model: Mapping[str, Any]) -> ObjectRef:
    meta = model["metadata"]
    return ObjectRef("SecureModel", meta["name"], meta["namespace"])


def _ref(obj: Mapping[str, Any], kind: str | None = None) -> ObjectRef:
    meta = obj["metadata"]
    return ObjectRef(kind or obj.get("kind", "?"), meta["name"], meta.get("namespace") or "")


def _condition(model: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (model.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def trust_policies(snapshot: Snapshot) -> list[TrustPolicy]:
    """The policies as the operator reads them; an unparseable one is left out (the API server's schema
    should make that impossible)."""
    parsed = []
    for obj in snapshot.policies:
        try:
            spec = parse_trust_policy(obj.get("spec") or {})
        except SamdError:
            continue
        parsed.append(TrustPolicy(obj["metadata"]["name"], int(obj["metadata"].get("generation") or 0), spec))
    return parsed


# --- keys and certificates ----------------------------------------------------------------------


def key_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    for model in snapshot.models:
        spec, status = model.get("spec") or {}, model.get("status") or {}
        if not spec.get("encryption"):
            continue
        ref = _model_ref(model)
        key = status.get("key") or {}
        next_rotation = _time(key.get("nextRotation"))
        if not key:
            yield Finding(
                "key-unverified",
                Severity.HIGH,
                ref,
                "the operator has not recorded the model's key (status.key is empty)",
                "nobody has proven that the key unwraps the artifact's data key, nor when it was rotated",
                f"read the Encrypted condition: kubectl get sm {ref.name} -n {ref.namespace} "
                "-o jsonpath='{.status.conditions}' and fix what it names",
            )
        elif next_rotation is not None and next_rotation < settings.now:
            overdue = settings.now - next_rotation
            yield Finding(
                "key-rotation-overdue",
                Severity.HIGH,
                ref,
                f"key {key.get('keyId')} version {key.get('keyVersion')} was due for rotation at "
                f"{key.get('nextRotation')} ({_days(overdue)} ago; rotationPeriod "
                f"{(spec.get('encryption') or {}).get('rotationPeriod', '720h')})",
                "a key-encryption key used past its rotation period widens what one leaked key exposes",
                "check that the operator runs and can reach the key (Encrypted condition, operator logs); "
                "see the playbook's key-rotation-overdue runbook",
            )
        data_key = _data_key_finding(ref, spec, key, settings)
        if data_key is not None:
            yield data_key
        server_not_after = _time((status.get("certificates") or {}).get("serverNotAfter"))
        if server_not_after is not None and server_not_after - settings.now < settings.certificate_warning:
            expired = server_not_after <= settings.now
            yield Finding(
                "certificate-expiring",
                Severity.HIGH if expired else Severity.MEDIUM,
                ref,
                f"the model's server certificate {'expired' if expired else 'expires'} at "
                f"{(status.get('certificates') or {}).get('serverNotAfter')}",
                "clients refuse an expired certificate: the model stops answering; the operator renews "
                "30 days ahead, so a certificate this close to expiry means renewal is failing",
                "read the CertificatesReady condition and the operator's log; see the playbook's "
                "certificate-expiring runbook",
            )


def _data_key_finding(
    ref: ObjectRef, spec: Mapping[str, Any], key: Mapping[str, Any], settings: AuditSettings
) -> Finding | None:
    """A data key in use longer than the model's rotation period: the operator's key rotation only
    re-wraps it, so only a person re-encrypting the artifact replaces it.

    The artifact records no creation time: the age counts from when the operator first saw the data
    key (status.key.dataKeyFirstSeen), so the data key is at least this old.
    """
    first_seen = _time(key.get("dataKeyFirstSeen"))
    if first_seen is None:
        return None  # an operator that does not record data keys yet: nothing to tell the age by
    period_text = str((spec.get("encryption") or {}).get("rotationPeriod") or "720h")
    try:
        period = parse_duration(period_text)
    except ValueError:
        return None  # the API server's schema refuses such a period; the operator reports the spec
    due = first_seen + period
    if due >= settings.now:
        return None
    return Finding(
        "data-key-rotation-overdue",
        Severity.MEDIUM,
        ref,
        f"data key {key.get('dataKeyId')} has encrypted the artifact since at least "
        f"{key.get('dataKeyFirstSeen')} ({_days(settings.now - first_seen)}), longer than the "
        f"rotationPeriod {period_text}; key rotations re-wrap it but never replace it",
        "whoever holds a copy of the data key (a loader's memory dump, a decrypted copy on a laptop) "
        "decrypts every stored copy of the artifact for as long as the data key is in use",
        "re-encrypt the artifact under a fresh data key (samd reencrypt ARTIFACT --key KEY), upload it "
        "and restart the model's pods; status.key.dataKeyId changes when the operator next reads the "
        "artifact (at once if spec.artifact changes); see the playbook's leaked-data-key runbook",
    )


def signer_certificate_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    """Signing certificates (certificateRoots of trusted signers) expired or close to it."""
    from cryptography import x509  # noqa: PLC0415

    for obj in snapshot.policies:
        for signer in (obj.get("spec") or {}).get("signers") or []:
            roots = signer.get("certificateRoots")
            if not roots:
                continue
            try:
                certificates = x509.load_pem_x509_certificates(roots.encode())
            except ValueError:
                continue  # the operator reports unusable signers in the policy's status
            for certificate in certificates:
                not_after = certificate.not_valid_after_utc
                if not_after - settings.now >= settings.certificate_warning:
                    continue
                expired = not_after <= settings.now
                yield Finding(
                    "signing-certificate-expiring",
                    Severity.HIGH if expired else Severity.MEDIUM,
                    _ref(obj, "ModelTrustPolicy"),
                    f"signer {signer.get('name')}: certificate {certificate.subject.rfc4514_string()} "
                    f"{'expired' if expired else 'expires'} at {not_after.isoformat()}",
                    "signatures chaining to an expired certificate no longer verify: models signed by it "
                    "stop being served at their next re-verification",
                    "issue a new signing certificate, add its root to the policy's signer, and re-sign the "
                    "models; see the playbook's certificate-expiring runbook",
                )


# --- signatures, images, storage -----------------------------------------------------------------


def trust_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    """Every signature verified again under the policies as they are now, with the operator's functions."""
    del settings
    policies = trust_policies(snapshot)
    for model in snapshot.models:
        ref = _model_ref(model)
        ns_labels = labels(snapshot.namespaces.get(ref.namespace) or {})
        covering = applicable_policies(policies, ns_labels)
        verified = _condition(model, "Verified")
        bundle = snapshot.signatures.get((ref.namespace, ref.name))
        if not covering:
            yield Finding(
                "model-not-covered",
                Severity.HIGH,
                ref,
                f"no ModelTrustPolicy covers namespace {ref.namespace}",
                "without a policy nothing says which signers to trust: the model is not verified or served",
                "label the namespace for a policy, or ask a cluster admin to create one covering it",
            )
            continue
        if bundle is not None:
            try:
                result, _policy = verify_under_policies(bundle.encode(), covering)
                requiring = requiring_signed_version(covering)
                unbound = check_version_binding(
                    result, ref.name, str((model.get("spec") or {}).get("version"))
                )
                if requiring and unbound and any(p.enforcing for p in requiring):
                    raise SamdError("; ".join(unbound))
            except SamdError as error:
                yield Finding(
                    "signature-invalid",
                    Severity.CRITICAL,
                    ref,
                    f"the model's signature does not verify under the current policies: {error.message}",
                    "a model whose signer is no longer trusted (removed from the policy, certificate "
                    "expired) must stop being served",
                    "if the signer was removed on purpose, follow the playbook's compromised-signing-key "
                    "runbook; otherwise re-sign the model with a trusted signer",
                )
                continue
        if verified is None or verified.get("status") != "True":
            reason = (verified or {}).get("reason", "NotYetVerified")
            message = (verified or {}).get("message", "the operator has not verified it")
            yield Finding(
                "model-not-verified",
                Severity.MEDIUM,
                ref,
                f"Verified is not True ({reason}): {message}",
                "an unverified model is not served; if it should be, something is wrong upstream",
                "fix what the Verified condition names; see the playbook's model-not-ready runbook",
            )


def image_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    del settings
    for deployment in _model_deployments(snapshot):
        pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
            image = str(container.get("image") or "")
            if DIGEST_PINNED.search(image):
                continue
            yield Finding(
                "image-not-pinned",
                Severity.LOW,
                _ref(deployment, "Deployment"),
                f"container {container.get('name')} runs {image}, a tag and not a digest",
                "whoever can move the tag in the registry changes the code that decrypts and serves the "
                "model, without any change in the cluster",
                "pin the image by digest: the chart's image.digest (operator and loader) or "
                "spec.serving.image NAME@sha256:...",
            )


def storage_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    """The operator's own bucket posture checks (status.storage, condition StorageSecure)."""
    del settings
    for model in snapshot.models:
        ref = _model_ref(model)
        storage = (model.get("status") or {}).get("storage") or {}
        condition = _condition(model, "StorageSecure")
        problems = []
        if storage.get("encrypted") is False:
            problems.append("default bucket encryption is off")
        if storage.get("publicAccessBlocked") is False:
            problems.append("public access to the bucket is not blocked")
        if condition is not None and condition.get("status") == "False" and not problems:
            problems.append(str(condition.get("message")))
        if problems:
            yield Finding(
                "storage-insecure",
                Severity.HIGH,
                ref,
                f"the artifact's bucket: {'; '.join(problems)}",
                "the encrypted artifact is one leaked key away from public; encryption at rest is the "
                "second layer if a data key leaks",
                "turn on default encryption and the four public-access blocks of the bucket",
            )


# --- exposure -------------------------------------------------------------------------------------


def _model_deployments(snapshot: Snapshot) -> list[Obj]:
    wanted = {(m["metadata"]["namespace"], serving_name(m["metadata"]["name"])) for m in snapshot.models}
    return [d for d in snapshot.deployments if (d["metadata"]["namespace"], d["metadata"]["name"]) in wanted]


def _model_pod_labels(snapshot: Snapshot) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Per namespace: (model, labels of its pods)."""
    deployments = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in snapshot.deployments}
    result: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for model in snapshot.models:
        ns, name = model["metadata"]["namespace"], model["metadata"]["name"]
        deployment = deployments.get((ns, serving_name(name)))
        pod_labels = (
            dict(
                (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels")
                or {}
            )
            if deployment
            else {}
        )
        pod_labels.setdefault(MODEL_LABEL, model_label_value(name))
        result.setdefault(ns, []).append((name, pod_labels))
    return result


def _selects(selector: Mapping[str, str] | None, pod_labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(pod_labels.get(k) == v for k, v in (selector or {}).items())


def exposure_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    del settings
    pods = _model_pod_labels(snapshot)
    model_services: dict[tuple[str, str], str] = {}  # (ns, service) -> model
    for service in snapshot.services:
        ns = service["metadata"]["namespace"]
        selector = (service.get("spec") or {}).get("selector")
        for model, pod_labels in pods.get(ns, []):
            if not _selects(selector, pod_labels):
                continue
            model_services[(ns, service["metadata"]["name"])] = model
            kind = (service.get("spec") or {}).get("type") or "ClusterIP"
            if kind in ("LoadBalancer", "NodePort"):
                yield Finding(
                    "service-exposed",
                    Severity.HIGH,
                    _ref(service, "Service"),
                    f"a Service of type {kind} selects the pods of model {model}",
                    "it opens the model to every network that reaches the nodes or the load balancer, past "
                    "the NetworkPolicy's list of allowed clients",
                    f"delete it (kubectl delete service {service['metadata']['name']} -n {ns}); clients "
                    "reach the model through its ClusterIP Service over mTLS",
                )
    for ingress in snapshot.ingresses:
        ns = ingress["metadata"]["namespace"]
        for backend in _ingress_backends(ingress.get("spec") or {}):
            routed = model_services.get((ns, backend))
            if routed is not None:
                yield Finding(
                    "ingress-exposed",
                    Severity.HIGH,
                    _ref(ingress, "Ingress"),
                    f"the Ingress routes to Service {backend} of model {routed}",
                    "an ingress controller forwards outside traffic to the model, usually terminating the "
                    "client's TLS itself, so the model's mTLS client check no longer sees the client",
                    f"remove the rule for {backend}; put an authenticated API in front of the model instead",
                )
    for route in snapshot.http_routes or []:
        ns = route["metadata"]["namespace"]
        for rule in (route.get("spec") or {}).get("rules") or []:
            for backend in rule.get("backendRefs") or []:
                target_ns = backend.get("namespace") or ns
                target = model_services.get((target_ns, str(backend.get("name"))))
                if target is not None and (backend.get("kind") or "Service") == "Service":
                    yield Finding(
                        "gateway-route-exposed",
                        Severity.HIGH,
                        _ref(route, "HTTPRoute"),
                        f"the HTTPRoute sends traffic to Service {backend.get('name')} of model {target}",
                        "a Gateway forwards outside traffic to the model past its list of allowed clients",
                        "remove the backendRef; expose an authenticated API in front of the model instead",
                    )
    for policy in snapshot.network_policies:
        ns = policy["metadata"]["namespace"]
        spec = policy.get("spec") or {}
        if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
            continue
        open_rules = [rule for rule in spec.get("ingress") or [] if not rule.get("from")]
        if not open_rules:
            continue
        selector = spec.get("podSelector") or {}
        for model, pod_labels in pods.get(ns, []):
            if selector_matches(selector, pod_labels):
                ports = [p.get("port") for r in open_rules for p in r.get("ports") or []]
                where = f"port(s) {', '.join(map(str, ports))}" if ports else "every port"
                yield Finding(
                    "network-policy-allows-all",
                    Severity.HIGH,
                    _ref(policy, "NetworkPolicy"),
                    f"an ingress rule without 'from' admits every source to {where} of model {model}'s pods",
                    "NetworkPolicies add up: one rule that allows all undoes the model's isolation",
                    f"delete it or list sources in 'from' (kubectl delete networkpolicy "
                    f"{policy['metadata']['name']} -n {ns})",
                )


def _ingress_backends(spec: Mapping[str, Any]) -> Iterator[str]:
    default = ((spec.get("defaultBackend") or {}).get("service") or {}).get("name")
    if default:
        yield str(default)
    for rule in spec.get("rules") or []:
        for path in ((rule.get("http") or {}).get("paths")) or []:
            name = ((path.get("backend") or {}).get("service") or {}).get("name")
            if name:
                yield str(name)


def pod_security_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    del settings
    for ns in snapshot.model_namespaces():
        namespace = snapshot.namespaces.get(ns)
        if namespace is None:
            continue
        level = labels(namespace).get(POD_SECURITY_ENFORCE)
        if level == "restricted":
            continue
        yield Finding(
            "namespace-pod-security",
            Severity.MEDIUM if level is None else Severity.LOW,
            ObjectRef("Namespace", ns),
            f"the namespace holds models but Pod Security admission enforces {level or 'nothing'}",
            "the admission webhook checks model pods; Pod Security admission is the cluster's own second "
            "line against privileged pods next to them",
            f"kubectl label namespace {ns} {POD_SECURITY_ENFORCE}=restricted",
        )


# --- RBAC: time-bound grants ------------------------------------------------------------------


def expired_grant_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    for binding in snapshot.role_bindings:
        expires_text = ((binding["metadata"].get("annotations")) or {}).get(EXPIRES_ANNOTATION)
        expires = _time(expires_text)
        if expires is None or expires > settings.now:
            continue
        subjects = ", ".join(f"{s.get('kind')} {s.get('name')}" for s in binding.get("subjects") or [])
        yield Finding(
            "expired-grant-bound",
            Severity.HIGH,
            _ref(binding, "RoleBinding"),
            f"a time-bound grant that expired at {expires_text} is still bound ({subjects})",
            "the operator removes a grant's binding at its expiry; one still bound means the operator is "
            "not running or the binding was recreated by hand",
            f"kubectl delete rolebinding {binding['metadata']['name']} -n {binding['metadata']['namespace']}; "
            "then check that the operator runs",
        )


# --- the webhook and the operator ---------------------------------------------------------------


def _samd_webhooks(snapshot: Snapshot) -> list[tuple[Obj, dict[str, Any]]]:
    return [
        (configuration, webhook)
        for configuration in snapshot.webhook_configurations
        for webhook in configuration.get("webhooks") or []
        if str(webhook.get("name", "")).endswith(WEBHOOK_SUFFIX)
    ]


def skipped_namespaces(selector: Mapping[str, Any]) -> list[str]:
    """The namespaces a webhook's namespaceSelector names as excluded (NotIn on the name label)."""
    skipped: list[str] = []
    for expression in selector.get("matchExpressions") or []:
        if expression.get("key") == "kubernetes.io/metadata.name" and expression.get("operator") == "NotIn":
            skipped += list(expression.get("values") or [])
    return sorted(set(skipped))


def webhook_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    from cryptography import x509  # noqa: PLC0415

    hooks = _samd_webhooks(snapshot)
    if not hooks:
        yield Finding(
            "webhook-missing",
            Severity.CRITICAL,
            ObjectRef("ValidatingWebhookConfiguration", "*.webhook.samd.dev"),
            "no ValidatingWebhookConfiguration registers SAMD's admission webhook",
            "without it any pod may mount a model's key or run an unverified model",
            "install the chart (helm upgrade --install samd charts/samd); see the playbook's "
            "webhook-outage runbook",
        )
        return
    for configuration, hook in hooks:
        ref = ObjectRef(
            "ValidatingWebhookConfiguration", f"{configuration['metadata']['name']} ({hook['name']})"
        )
        if hook.get("failurePolicy", "Fail") != "Fail":
            yield Finding(
                "webhook-fails-open",
                Severity.HIGH,
                ref,
                f"failurePolicy is {hook.get('failurePolicy')}",
                "when the webhook is down or slow the API server admits everything unchecked",
                "set failurePolicy: Fail (the chart does) and run two webhook replicas",
            )
        bundle = (hook.get("clientConfig") or {}).get("caBundle") or ""
        problem = _ca_bundle_problem(bundle, settings.now, x509)
        if problem:
            yield Finding(
                "webhook-ca-bundle",
                Severity.HIGH,
                ref,
                problem,
                "the API server cannot verify the webhook's certificate: every admission it covers fails "
                "(failurePolicy Fail) or is skipped (Ignore)",
                "reinstall the chart to issue a new certificate and caBundle (helm upgrade samd charts/samd)",
            )
        selector = hook.get("namespaceSelector") or {}
        for ns in snapshot.model_namespaces():
            namespace = snapshot.namespaces.get(ns)
            if namespace is not None and not selector_matches(selector, labels(namespace)):
                yield Finding(
                    "webhook-skips-model-namespace",
                    Severity.CRITICAL,
                    ref,
                    f"the webhook's namespaceSelector leaves out namespace {ns}, which holds models",
                    "pods in it are admitted without the webhook: anyone who may create pods there can mount "
                    "the model's key or serve another model under its name",
                    f"remove {ns} from the webhook's excluded namespaces (the chart's webhook.excludedNamespaces)",
                )


def _ca_bundle_problem(bundle: str, now: datetime.datetime, x509: Any) -> str | None:
    import base64  # noqa: PLC0415

    if not bundle:
        return "clientConfig.caBundle is empty"
    try:
        certificates = x509.load_pem_x509_certificates(base64.b64decode(bundle))
    except ValueError:
        return "clientConfig.caBundle holds no readable PEM certificate"
    if all(c.not_valid_after_utc <= now for c in certificates):
        return "every certificate in clientConfig.caBundle has expired"
    return None


def deployment_ready(deployment: Mapping[str, Any]) -> bool:
    status = deployment.get("status") or {}
    return int(status.get("readyReplicas") or 0) > 0


def operator_findings(snapshot: Snapshot, settings: AuditSettings) -> Iterator[Finding]:
    """The operator and webhook Deployments (the chart's), else signs of life in the models' status."""
    for app, what in ((OPERATOR_APP, "operator"), (WEBHOOK_APP, "admission webhook")):
        for deployment in snapshot.deployments:
            if labels(deployment).get("app.kubernetes.io/name") != app and (
                (((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}).get(
                    "app.kubernetes.io/name"
                )
                != app
            ):
                continue
            if not deployment_ready(deployment):
                yield Finding(
                    "operator-down" if app == OPERATOR_APP else "webhook-down",
                    Severity.CRITICAL,
                    _ref(deployment, "Deployment"),
                    f"the SAMD {what} Deployment has no ready replica",
                    "the operator verifies, rotates and isolates; the webhook refuses unverified pods: "
                    "without them nothing is re-checked and (failurePolicy Fail) model pods cannot start",
                    f"kubectl -n {deployment['metadata']['namespace']} describe deployment "
                    f"{deployment['metadata']['name']}; see the playbook's "
                    f"{'operator-down' if app == OPERATOR_APP else 'webhook-outage'} runbook",
                )
    for obj in [*snapshot.models, *snapshot.policies]:
        meta = obj["metadata"]
        generation = int(meta.get("generation") or 0)
        observed = int((obj.get("status") or {}).get("observedGeneration") or 0)
        if observed >= generation:
            continue
        changed = max(
            (
                _time(entry.get("time"))
                for entry in meta.get("managedFields") or []
                if entry.get("subresource") != "status"
            ),
            default=None,
            key=lambda moment: moment or datetime.datetime.min.replace(tzinfo=datetime.UTC),
        )
        if changed is not None and settings.now - changed < settings.reconcile_grace:
            continue
        kind = obj.get("kind", "SecureModel")
        yield Finding(
            "operator-not-reconciling",
            Severity.HIGH,
            _ref(obj, kind),
            f"generation {generation} has not been handled (status describes generation {observed}) "
            f"since {changed.isoformat() if changed else 'an unknown time'}",
            "the operator is not running or cannot write status: changes to models and policies (a "
            "removed signer, a revoked grant) are not acted on",
            "see the playbook's operator-down runbook",
        )


CHECKS = (
    key_findings,
    signer_certificate_findings,
    trust_findings,
    image_findings,
    storage_findings,
    exposure_findings,
    pod_security_findings,
    expired_grant_findings,
    webhook_findings,
    operator_findings,
)


def snapshot_findings(snapshot: Snapshot, settings: AuditSettings) -> list[Finding]:
    found: list[Finding] = []
    for check in CHECKS:
        found += check(snapshot, settings)
    return found


def _days(delta: datetime.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"
