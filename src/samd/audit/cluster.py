"""The audit's read-only view of a cluster: lists, gets and SubjectAccessReviews, nothing else.

One place maps API failures onto clear errors: 404 on a list means the API (such as the Gateway API)
is not installed, 403 names the right the audit's identity lacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
from lightkube import ALL_NS, ApiError, Client, KubeConfig
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from samd.errors import SamdError, UsageError
from samd.spec import GROUP, VERSION

log = logging.getLogger(__name__)

FIELD_MANAGER = "samd-audit"
RETRIES_ON_429 = 6
"""Tries of one read while the API server answers 429 (about 7.5 s in all)."""

_T = TypeVar("_T")

_GENERIC: dict[tuple[str, str], Any] = {
    (f"{GROUP}/{VERSION}", "SecureModel"): create_namespaced_resource(
        GROUP, VERSION, "SecureModel", "securemodels"
    ),
    (f"{GROUP}/{VERSION}", "ModelTrustPolicy"): create_global_resource(
        GROUP, VERSION, "ModelTrustPolicy", "modeltrustpolicies"
    ),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): create_namespaced_resource(
        "gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"
    ),
}


class AuditAccessError(SamdError):
    """The audit's identity may not read something it needs, or the API server failed."""

    def __init__(self, message: str, *, hint: str | None = None, status: int = 0) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass(frozen=True)
class AccessQuestion:
    """A SubjectAccessReview's resource attributes: may someone `verb` this resource?"""

    verb: str
    resource: str
    namespace: str
    name: str = ""
    group: str = ""

    def describe(self) -> str:
        what = f"{self.resource}/{self.name}" if self.name else self.resource
        return f"{self.verb} {what} in namespace {self.namespace}"


@dataclass(frozen=True)
class Identity:
    """Who a SubjectAccessReview asks about: a user name and the groups it carries."""

    user: str
    groups: tuple[str, ...] = ()


def _resource(api_version: str, kind: str) -> Any:
    generic = _GENERIC.get((api_version, kind))
    return generic if generic is not None else resource_registry.load(api_version, kind)


def _to_dict(obj: Any, api_version: str, kind: str) -> dict[str, Any]:
    data = dict(obj.to_dict() if hasattr(obj, "to_dict") else obj)
    data.setdefault("apiVersion", api_version)
    data.setdefault("kind", kind)
    return data


class ClusterReader:
    """Read-only access to the cluster named by KUBECONFIG (or the pod's service account)."""

    def __init__(self, client: Client, server: str) -> None:
        self.client = client
        self.server = server
        self.sar_count = 0

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except ApiError as error:
            raise _refused(action, error.status.code or 0, str(error.status.message)) from None
        except httpx2.HTTPStatusError as error:  # an API the server does not serve answers a bare 404
            raise _refused(action, error.response.status_code, error.response.reason_phrase) from None
        except httpx2.TransportError as error:
            raise AuditAccessError(
                f"{action}: cannot reach the API server at {self.server}: {error}",
                hint="check KUBECONFIG and that the cluster runs",
            ) from None

    def _call(self, action: str, call: Callable[[], _T]) -> _T:
        """`call`, tried again while the API server answers 429 (too many requests, or a kind whose
        storage is still initializing, as right after its CRD is created)."""
        for attempt in range(RETRIES_ON_429):
            try:
                with self._errors(action):
                    return call()
            except AuditAccessError as error:
                if error.status != 429 or attempt == RETRIES_ON_429 - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def list(
        self, api_version: str, kind: str, namespace: str | None = None, *, namespaced: bool = True
    ) -> list[dict[str, Any]] | None:
        """Every object of a kind (in `namespace`, or everywhere); None when the API is not served."""
        resource = _resource(api_version, kind)

        def listed() -> list[dict[str, Any]]:
            if namespaced:
                items = self.client.list(resource, namespace=namespace if namespace is not None else ALL_NS)
            else:
                items = self.client.list(resource)
            return [_to_dict(obj, api_version, kind) for obj in items]

        try:
            return self._call(f"listing {kind}", listed)
        except AuditAccessError as error:
            if error.status == 404:
                return None
            raise

    def get(self, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        resource = _resource(api_version, kind)
        try:
            return self._call(
                f"reading {kind} {name}",
                lambda: _to_dict(self.client.get(resource, name, namespace=namespace), api_version, kind),
            )
        except AuditAccessError as error:
            if error.status == 404:
                return None
            raise

    def allowed(self, identity: Identity, question: AccessQuestion) -> bool:
        """Ask the API server's authorizers (a SubjectAccessReview), not a copy of their rules."""
        from lightkube.models.authorization_v1 import (  # noqa: PLC0415
            ResourceAttributes,
            SubjectAccessReviewSpec,
        )
        from lightkube.resources.authorization_v1 import SubjectAccessReview  # noqa: PLC0415

        review = SubjectAccessReview(
            spec=SubjectAccessReviewSpec(
                user=identity.user,
                groups=list(identity.groups),
                resourceAttributes=ResourceAttributes(
                    verb=question.verb,
                    resource=question.resource,
                    group=question.group,
                    namespace=question.namespace,
                    name=question.name or None,
                ),
            )
        )
        answer = self._call(
            f"asking whether {identity.user} may {question.describe()}", lambda: self.client.create(review)
        )
        self.sar_count += 1
        return bool(answer.status is not None and answer.status.allowed)

    def write_config_map(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        """Replace the data of one existing ConfigMap (the report's; the only write the audit makes)."""
        from lightkube.types import PatchType  # noqa: PLC0415

        resource = _resource("v1", "ConfigMap")
        try:
            with self._errors(f"writing ConfigMap {namespace}/{name}"):
                self.client.patch(
                    resource, name, {"data": dict(data)}, namespace=namespace, patch_type=PatchType.MERGE
                )
        except AuditAccessError as error:
            if error.status == 404:
                raise UsageError(
                    f"the ConfigMap {namespace}/{name} does not exist",
                    hint=f"create it first: kubectl create configmap {name} -n {namespace}",
                ) from None
            raise

    def close(self) -> None:
        self.client.close()


def _refused(action: str, code: int, message: str) -> AuditAccessError:
    hint = (
        "the audit needs get/list on this kind and create on subjectaccessreviews "
        "(the chart's samd-audit ClusterRole lists them)"
        if code in (401, 403)
        else None
    )
    return AuditAccessError(f"{action}: {message} (HTTP {code})", hint=hint, status=code)


@contextmanager
def connect(kubeconfig_context: str | None = None) -> Iterator[ClusterReader]:
    """A reader for the cluster named by KUBECONFIG (or the in-cluster service account)."""
    try:
        config = KubeConfig.from_env()
    except Exception as error:  # lightkube raises ConfigError and others
        raise UsageError(
            f"no Kubernetes configuration: {error}",
            hint="set KUBECONFIG to the cluster to audit, or run inside a pod with a service account",
        ) from None
    try:
        single = config.get(context_name=kubeconfig_context)
    except Exception as error:
        raise UsageError(f"cannot use the kubeconfig context {kubeconfig_context!r}: {error}") from None
    if single is None:
        raise UsageError("the kubeconfig names no current context", hint="pass --context NAME")
    client = Client(config=single, field_manager=FIELD_MANAGER)
    reader = ClusterReader(client, single.cluster.server if single.cluster else "")
    try:
        yield reader
    finally:
        reader.close()
