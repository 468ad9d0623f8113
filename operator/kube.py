"""The one Kubernetes API wrapper the operator uses (DESIGN §5.4).

Server-side apply with a single field manager, reads that return ``None`` on
404, and one mapping of API failures onto kopf's retry semantics: 409 and
429 and 5xx are temporary (retried with a delay, honouring Retry-After), 4xx
caused by our own manifests are permanent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import kopf
from lightkube import ApiError, AsyncClient
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.types import PatchType

from samd.spec import GROUP, VERSION

FIELD_MANAGER = "samd-operator"
log = logging.getLogger(__name__)

SecureModelResource = create_namespaced_resource(GROUP, VERSION, "SecureModel", "securemodels")
ModelTrustPolicyResource = create_global_resource(GROUP, VERSION, "ModelTrustPolicy", "modeltrustpolicies")


def _resource(api_version: str, kind: str) -> Any:
    try:
        return resource_registry.load(api_version, kind)
    except Exception as error:  # lightkube raises a bare LoadResourceError
        raise kopf.PermanentError(f"the operator does not know how to manage {api_version} {kind}") from error


def _retry_after(error: ApiError) -> float:
    header = error.response.headers.get("Retry-After") if error.response is not None else None
    try:
        return max(1.0, float(header)) if header else 5.0
    except ValueError:
        return 5.0


def translate(error: ApiError, action: str) -> Exception:
    """Map an API failure onto kopf's retry semantics with a message a person can act on."""
    code = error.status.code or 0
    message = f"{action}: {error.status.message} (HTTP {code})"
    if code in (409, 429) or code >= 500:
        return kopf.TemporaryError(message, delay=_retry_after(error))
    if code in (401, 403):
        return kopf.TemporaryError(
            message + "; check the operator's RBAC (the Helm chart's ClusterRole)", delay=30
        )
    return kopf.PermanentError(message)


@dataclass
class Kube:
    client: AsyncClient

    async def apply(self, manifest: Mapping[str, Any]) -> None:
        """Create or update an object by server-side apply; conflicting hand edits are overwritten."""
        resource = _resource(manifest["apiVersion"], manifest["kind"])
        metadata = manifest["metadata"]
        try:
            await self.client.patch(
                resource,
                metadata["name"],
                dict(manifest),
                namespace=metadata.get("namespace"),
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
        except ApiError as error:
            raise translate(error, f"applying {manifest['kind']} {metadata['name']}") from error

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create an object unless it exists; False if it already did (someone else won a race)."""
        resource = _resource(manifest["apiVersion"], manifest["kind"])
        metadata = manifest["metadata"]
        try:
            obj: Any = resource.from_dict(dict(manifest))
            await self.client.create(obj)
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise translate(error, f"creating {manifest['kind']} {metadata['name']}") from error
        return True

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        resource = _resource(api_version, kind)
        try:
            obj = await self.client.get(resource, name, namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise translate(error, f"reading {kind} {name}") from error
        return _to_dict(obj)

    async def list(
        self, api_version: str, kind: str, namespace: str | None, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        resource = _resource(api_version, kind)
        try:
            return [
                _to_dict(obj)
                async for obj in self.client.list(resource, namespace=namespace, labels=dict(labels))
            ]
        except ApiError as error:
            raise translate(error, f"listing {kind}") from error

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None) -> bool:
        """Delete an object; False if it was already gone."""
        resource = _resource(api_version, kind)
        try:
            await self.client.delete(resource, name, namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return False
            raise translate(error, f"deleting {kind} {name}") from error
        return True

    async def patch_merge(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: Mapping[str, Any]
    ) -> None:
        resource = _resource(api_version, kind)
        try:
            await self.client.patch(
                resource, name, dict(patch), namespace=namespace, patch_type=PatchType.MERGE
            )
        except ApiError as error:
            if error.status.code == 404:
                return
            raise translate(error, f"patching {kind} {name}") from error


def _to_dict(obj: Any) -> dict[str, Any]:
    result = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return dict(result)


@asynccontextmanager
async def connect() -> AsyncIterator[Kube]:
    """A client from the in-cluster service account or the KUBECONFIG in use."""
    client = AsyncClient(field_manager=FIELD_MANAGER)
    try:
        yield Kube(client)
    finally:
        await client.close()
