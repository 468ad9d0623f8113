"""The ValidatingWebhookConfiguration the webhook needs: a pure builder (docs/architecture.md, style rule 2).

Four webhooks, all answered at ``/validate``, one per place a pod spec lives so that each
matchCondition reads a fixed path (CEL here is untyped: a path that is wrong for one kind would be
an evaluation error, and with failurePolicy Fail an error rejects the request):

- ``pods.webhook.samd.dev``: Pods, and the ``pods/ephemeralcontainers`` subresource (a debug
  container added to a running model pod is a container like any other);
- ``workloads.webhook.samd.dev``: Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs
  (``spec.template``), so that a bad template is refused at the workload, not later at its pods;
- ``cronjobs.webhook.samd.dev``: CronJobs (``spec.jobTemplate.spec.template``);
- ``securemodels.webhook.samd.dev``: SecureModels (format, encryption, no downgrade, and that the
  requester may themselves use what the model names: its Secrets, the Roles it binds);
- ``namespaces.webhook.samd.dev``: label changes of Namespaces (one holding SecureModels may not be
  relabelled out of a policy that covers it).

Every webhook: CREATE and UPDATE only, failurePolicy Fail (fail closed), sideEffects None (so
dry-run requests are sent and evaluated like any other), admissionReviewVersions [v1], a short
timeout, and a namespaceSelector that leaves out kube-system and SAMD's own namespace (the webhook
must be able to restart its own pods when it is down).

The blast radius of an outage (failurePolicy Fail refuses what cannot be sent):

- the pod, workload and CronJob webhooks select only namespaces labelled
  ``samd.dev/protected=true``, which the operator sets on every namespace holding SecureModels or
  selected by a ModelTrustPolicy, before it creates anything there. While the webhook is down, pods
  are refused in those namespaces only; every other namespace runs on. Removing the label from a
  namespace that is still protected is refused by the namespace webhook;
- the SecureModel webhook stays cluster-wide: a SecureModel is what makes a namespace protected, so
  it must be checked wherever it is created (only SAMD's users write SecureModels);
- the namespace webhook stays cluster-wide: it guards the labels that decide coverage (the protected
  label and those a policy selects on); while it is down, label changes of namespaces are refused
  (a cluster admin's operation; deleting and creating namespaces is not matched).

matchConditions, so that irrelevant requests never reach the webhook (all must be true):

- ``not-being-deleted``: an UPDATE of an object that has a deletionTimestamp is a controller
  removing finalizers; refusing it would leave the object stuck and admits nothing new to run;
- ``spec-changed``: an UPDATE that leaves ``spec`` as it was (labels, annotations, finalizers,
  owner references) cannot change what runs; what a pod runs is all in its spec (for a workload,
  the template's annotations are inside ``spec`` too). For a SecureModel, the policy checks only
  its spec;
- ``may-run-a-model`` (pods and workloads only): the pod (template) is sent when it could run or
  read a model, which is when at least one of these holds:
  * it carries the ``samd.dev/model`` annotation or label (it claims a model: full verification;
    a pod with the label alone would be selected by the model's Service);
  * it runs as a ServiceAccount whose name ends in ``-model``, as every model's workload identity does;
  * it names a Secret anywhere the pod spec can (every path of the decider's own table,
    ``samd.webhook.workloads.SECRET_NAME_PATHS``, from which this condition is generated: Secret
    and projected volumes, volume plugins given a Secret (csi, azureFile, cephfs, cinder, rbd,
    iscsi, flexVolume, scaleIO, storageos), ``imagePullSecrets``, ``env[].valueFrom.secretKeyRef``
    and ``envFrom[].secretRef`` of every container): a pod that uses a model's key Secret without
    claiming the model is a bypass attempt;
  * it has a ``hostPath`` volume: one that shows the kubelet's pod directories (where every pod's
    Secret volumes are mounted) is refused in any pod; CEL cannot normalise paths, so all are sent;
  * a container's command, args or env values contain ``://``: a pod that names a model's
    artifact URI (``s3://``, ``https://``, ``file://``) without claiming the model is a bypass
    attempt too. This over-matches (many pods name some URL) so that none of those is missed.
  Every other pod has nothing of a model's to reach and is not sent. The service-account token
  volume that Kubernetes adds to pods is a ``projected`` volume without a ``secret`` source, so it
  does not make every pod match.

The CEL is valid for every matched kind: optional field selection (``.?field.orValue(...)``)
reads fields that may be absent, and ``object`` (null only for DELETE and CONNECT, which are not
matched) is still guarded so that an unexpected null is sent to the webhook, never skipped.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from samd.operator.builders.names import WORKLOAD_ACCOUNT_SUFFIX
from samd.policy import PROTECTED_NAMESPACE_LABEL, PROTECTED_NAMESPACE_VALUE
from samd.webhook.workloads import (
    CONTAINER_LISTS,
    CONTAINER_SECRET_PATHS,
    POD_SECRET_PATHS,
    PathNode,
    path_tree,
)

DEFAULT_SAMD_NAMESPACE = "samd-system"
VALIDATE_PATH = "/validate"
MODEL_KEY = "samd.dev/model"

WORKLOAD_RESOURCES = {
    "apps": ("deployments", "statefulsets", "daemonsets", "replicasets"),
    "batch": ("jobs",),
}


@dataclass(frozen=True)
class WebhookService:
    """The in-cluster Service in front of the webhook pods (the chart's mode)."""

    namespace: str
    name: str
    port: int = 443


# --- matchConditions ----------------------------------------------------------------------------------

NOT_BEING_DELETED = "object == null || !has(object.metadata.deletionTimestamp)"
SPEC_CHANGED = (
    "request.operation != 'UPDATE' || object == null || oldObject == null || "
    "object.?spec.orValue(null) != oldObject.?spec.orValue(null)"
)


HOST_PATH_VOLUMES = "volumes[].hostPath"
"""Sent too: a hostPath that shows the kubelet's pod directories is refused in any pod (the decider
normalises the path; CEL does not, so every hostPath volume is sent)."""


def _present(value: str, node: PathNode, depth: int) -> list[str]:
    """CEL terms, one of which is true when a leaf of `node` is present in the optional `value`."""
    if node.leaf:
        return [f"{value}.hasValue()"]
    terms: list[str] = []
    if node.each is not None:
        item = f"x{depth}"
        inner = " || ".join(_present_in(item, node.each, depth + 1))
        terms.append(f"{value}.orValue([]).exists({item}, {inner})")
    for name, child in node.fields.items():
        terms += _present(f"{value}.?{name}", child, depth)
    return terms


def _present_in(item: str, node: PathNode, depth: int) -> list[str]:
    """Like `_present` for a value (a list item) rather than an optional."""
    if node.leaf or node.each is not None:
        raise ValueError("a list of lists or of names has no field to select")
    terms: list[str] = []
    for name, child in node.fields.items():
        terms += _present(f"{item}.?{name}", child, depth)
    return terms


def may_run_a_model(pod: str) -> str:
    """CEL: true when the pod (template) at `pod` could run or read a model.

    `pod` is a CEL expression for the pod or pod template: a value (``object``) or an optional
    (``object.?spec.?template``); its fields are read with optional selection either way. The
    Secret references are generated from the decider's own table (`POD_SECRET_PATHS`,
    `CONTAINER_SECRET_PATHS`), so that the two cannot disagree.
    """
    metadata = f"{pod}.?metadata"
    spec = f"{pod}.?spec"
    containers = " + ".join(f"{spec}.?{field}.orValue([])" for field in CONTAINER_LISTS)
    claims_model = (
        f"'{MODEL_KEY}' in {metadata}.?annotations.orValue({{}}) || "
        f"'{MODEL_KEY}' in {metadata}.?labels.orValue({{}})"
    )
    pod_terms = _present(spec, path_tree((*POD_SECRET_PATHS, HOST_PATH_VOLUMES)), 0)
    container_terms = _present_in("c", path_tree(CONTAINER_SECRET_PATHS), 0)
    names_uri = [
        "c.?env.orValue([]).exists(e, e.?value.orValue('').contains('://'))",
        "c.?command.orValue([]).exists(a, a.contains('://'))",
        "c.?args.orValue([]).exists(a, a.contains('://'))",
    ]
    container_reads_secret_or_uri = f"({containers}).exists(c, {' || '.join(container_terms + names_uri)})"
    runs_as_a_model = f"{spec}.?serviceAccountName.orValue('').endsWith('{WORKLOAD_ACCOUNT_SUFFIX}')"
    return " || ".join(
        ["object == null", claims_model, runs_as_a_model, *pod_terms, container_reads_secret_or_uri]
    )


def _model_label(obj: str) -> str:
    return f"{obj}.?metadata.?labels.orValue({{}})[?'{MODEL_KEY}'].orValue('')"


SPEC_OR_MODEL_LABEL_CHANGED = f"{SPEC_CHANGED} || {_model_label('object')} != {_model_label('oldObject')}"
"""For Pods: the model label sits outside the spec, and a pod relabelled into a model's selector
would receive its traffic, so a change of that label is sent too."""

LABELS_CHANGED = (
    "request.operation != 'UPDATE' || object == null || oldObject == null || "
    "object.?metadata.?labels.orValue({}) != oldObject.?metadata.?labels.orValue({})"
)


def _conditions(pod: str | None) -> list[dict[str, str]]:
    conditions = [
        {"name": "not-being-deleted", "expression": NOT_BEING_DELETED},
        {
            "name": "spec-changed",
            "expression": SPEC_OR_MODEL_LABEL_CHANGED if pod == "object" else SPEC_CHANGED,
        },
    ]
    if pod is not None:
        conditions.append({"name": "may-run-a-model", "expression": may_run_a_model(pod)})
    return conditions


# --- the configuration -----------------------------------------------------------------------------


def _client_config(service: WebhookService | None, url: str | None, ca_bundle: bytes) -> dict[str, Any]:
    if (service is None) == (url is None):
        raise ValueError("give exactly one of service (in-cluster) and url (a webhook outside the cluster)")
    if not ca_bundle.strip().startswith(b"-----BEGIN CERTIFICATE-----"):
        raise ValueError(
            "ca_bundle must be the PEM certificate(s) of the CA that signed the webhook's certificate"
        )
    config: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()}
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"the webhook url {url!r} must be https://HOST[:PORT]/PATH")
        if parts.query or parts.fragment or parts.username:
            raise ValueError(f"the webhook url {url!r} may not carry a query, fragment or user")
        config["url"] = url
    else:
        assert service is not None  # noqa: S101 - checked above
        config["service"] = {
            "namespace": service.namespace,
            "name": service.name,
            "path": VALIDATE_PATH,
            "port": service.port,
        }
    return config


def _webhook(
    *,
    name: str,
    rules: list[dict[str, Any]],
    pod: str | None,
    client_config: dict[str, Any],
    namespace_selector: dict[str, Any],
    timeout_seconds: int,
) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": client_config,
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": timeout_seconds,
        "namespaceSelector": namespace_selector,
        "rules": rules,
        "matchConditions": _conditions(pod),
    }


def _rule(
    group: str,
    version: str,
    resources: Sequence[str],
    *,
    operations: Sequence[str] = ("CREATE", "UPDATE"),
    scope: str = "Namespaced",
) -> dict[str, Any]:
    return {
        "apiGroups": [group],
        "apiVersions": [version],
        "operations": list(operations),
        "resources": list(resources),
        "scope": scope,
    }


def protected_namespace_selector(selector: dict[str, Any]) -> dict[str, Any]:
    """`selector` narrowed to the namespaces the operator labelled as protected."""
    expressions = [dict(e) for e in selector.get("matchExpressions", [])]
    expressions.append(
        {"key": PROTECTED_NAMESPACE_LABEL, "operator": "In", "values": [PROTECTED_NAMESPACE_VALUE]}
    )
    return {**selector, "matchExpressions": expressions}


def build_webhook_configuration(
    *,
    name: str,
    service: WebhookService | None = None,
    url: str | None = None,
    ca_bundle: bytes,
    namespace_exclusions: Sequence[str] = ("kube-system", DEFAULT_SAMD_NAMESPACE),
    timeout_seconds: int = 5,
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration (admissionregistration.k8s.io/v1) as a dict.

    `service` for the chart (the API server calls the Service), `url` for a webhook outside the
    cluster, such as the local test cluster's (``https://127.0.0.1:PORT/validate``). `ca_bundle`
    is the PEM of the CA that issued the webhook's serving certificate.
    """
    if not 1 <= timeout_seconds <= 30:
        raise ValueError("timeout_seconds must be between 1 and 30 (the API server's limits)")
    excluded = sorted(set(namespace_exclusions))
    if not all(excluded):
        raise ValueError("namespace_exclusions may not contain an empty name")
    client_config = _client_config(service, url, ca_bundle)
    selector: dict[str, Any] = (
        {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded}
            ]
        }
        if excluded
        else {}
    )
    protected_only = protected_namespace_selector(selector)
    workload_rules = [_rule(group, "v1", resources) for group, resources in WORKLOAD_RESOURCES.items()]

    def webhook(prefix: str, rules: list[dict[str, Any]], pod: str | None) -> dict[str, Any]:
        return _webhook(
            name=f"{prefix}.webhook.samd.dev",
            rules=rules,
            pod=pod,
            client_config=client_config,
            # What runs (pods, templates) only where SAMD protects something; the objects that decide
            # what is protected (SecureModels, namespace labels) everywhere.
            namespace_selector=protected_only if pod is not None else selector,
            timeout_seconds=timeout_seconds,
        )

    # A namespace holding SecureModels may not be relabelled out of the policies that cover it.
    namespaces = webhook(
        "namespaces", [_rule("", "v1", ("namespaces",), operations=("UPDATE",), scope="Cluster")], None
    )
    namespaces["matchConditions"] = [
        {"name": "not-being-deleted", "expression": NOT_BEING_DELETED},
        {"name": "labels-changed", "expression": LABELS_CHANGED},
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "samd-webhook", "app.kubernetes.io/part-of": "samd"},
        },
        "webhooks": [
            webhook("pods", [_rule("", "v1", ("pods", "pods/ephemeralcontainers"))], "object"),
            webhook("workloads", workload_rules, "object.?spec.?template"),
            webhook(
                "cronjobs", [_rule("batch", "v1", ("cronjobs",))], "object.?spec.?jobTemplate.?spec.?template"
            ),
            webhook("securemodels", [_rule("samd.dev", "v1alpha1", ("securemodels",))], None),
            namespaces,
        ],
    }
