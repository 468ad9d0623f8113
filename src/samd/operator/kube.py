"""The one Kubernetes API wrapper the operator uses (docs/architecture.md, style rule 4).

Server-side apply with a single field manager, reads that return ``None`` on
404, and one mapping of API failures onto kopf's retry semantics: 409 and
429 and 5xx are temporary (retried with a delay, honouring Retry-After), 4xx
caused by our own manifests are permanent (a 404 as the `NotFound` subclass, so
that callers tell "not there" by type, not by parsing a message), and an API
server that does not answer in time is temporary too.

Applies are remembered: a manifest equal to the one last applied to the same
object is not sent again. The operator's watch handlers tell the wrapper when
someone else changed or deleted an object (`forget`), so that the next
reconcile applies it again and a hand edit is still overwritten.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import kopf
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.core.exceptions import NotReadyError
from lightkube.core.resource import NamespacedResource
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import (
    GenericGlobalResource,
    GenericNamespacedResource,
    create_global_resource,
    create_namespaced_resource,
)
from lightkube.types import PatchType

from samd.operator.transport import AiohttpTransport
from samd.spec import GROUP, VERSION

FIELD_MANAGER = "samd-operator"
log = logging.getLogger(__name__)

SecureModelResource = create_namespaced_resource(GROUP, VERSION, "SecureModel", "securemodels")
ModelTrustPolicyResource = create_global_resource(GROUP, VERSION, "ModelTrustPolicy", "modeltrustpolicies")

ObjectKey = tuple[str, str | None, str]
"""(kind, namespace, name): one object the operator applies."""

TRANSPORT_RETRY_DELAY = 2.0

LIST_PAGE = 100
"""Objects per LIST request. A list is read and decoded a page at a time: the incident check's list
of a thousand pods, read whole, held 59 MB at once (the operator's high-water mark at 1,000 models),
a page of 250 of them still 15 MB."""


@functools.cache
def _resource(api_version: str, kind: str) -> Any:
    """The kind's REST resource, its objects kept as plain dicts.

    lightkube's typed models (Deployment, Secret, ...) decode every answer and every watched change
    into structs that the wrapper turned straight back into dicts: 12% of the operator's CPU in a
    burst of new models. The API paths and verbs are the typed model's; only the decoding differs.
    """
    try:
        model = resource_registry.load(api_version, kind)
    except Exception as error:  # lightkube raises a bare LoadResourceError
        raise kopf.PermanentError(f"the operator does not know how to manage {api_version} {kind}") from error
    if issubclass(model, (GenericNamespacedResource, GenericGlobalResource)):
        return model
    untyped = GenericNamespacedResource if issubclass(model, NamespacedResource) else GenericGlobalResource
    # Not registered: lightkube's registry keeps the typed model for everyone else.
    return type(kind, (untyped,), {"_api_info": model._api_info, "Status": getattr(model, "Status", None)})


def _retry_after(error: ApiError) -> float:
    header = error.response.headers.get("Retry-After") if error.response is not None else None
    try:
        return max(1.0, float(header)) if header else 5.0
    except ValueError:
        return 5.0


class NotFound(kopf.PermanentError):
    """The API server answered 404: the object, or its whole API (a CRD that is not installed), is
    not there. A PermanentError, so every caller that catches those handles it as before."""

    code = 404


def translate(error: ApiError, action: str) -> Exception:
    """Map an API failure onto kopf's retry semantics with a message a person can act on."""
    code = error.status.code or 0
    message = f"{action}: {error.status.message} (HTTP {code})"
    if code == 404:
        return NotFound(message)
    if code in (409, 429) or code >= 500:
        return kopf.TemporaryError(message, delay=_retry_after(error))
    if code in (401, 403):
        # RBAC says "... cannot <verb> resource ..."; an admission refusal (also 403) says why itself.
        hint = (
            "; check the operator's RBAC (the Helm chart's ClusterRole)"
            if " cannot " in message or code == 401
            else ""
        )
        return kopf.TemporaryError(message + hint, delay=30)
    return kopf.PermanentError(message)


@contextmanager
def _transport_errors(action: str) -> Iterator[None]:
    """A request that timed out or lost its connection is retried soon (kopf's default is a minute)."""
    try:
        yield
    except httpx2.TransportError as error:
        raise kopf.TemporaryError(
            f"{action}: the API server did not answer ({type(error).__name__}); retrying",
            delay=TRANSPORT_RETRY_DELAY,
        ) from error


def object_key(manifest: Mapping[str, Any]) -> ObjectKey:
    metadata = manifest["metadata"]
    return (str(manifest["kind"]), metadata.get("namespace"), str(metadata["name"]))


def _digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Applied:
    """What the operator last applied to one object, and the object's state right after."""

    digest: str
    resource_version: str | None
    generation: int | None
    at: datetime.datetime


@dataclass
class AppliedCache:
    """Remembers the last apply per object; entries older than `max_age` are not trusted."""

    max_age: datetime.timedelta
    entries: dict[ObjectKey, Applied] = field(default_factory=dict)
    # Objects with an apply in flight; `forget` marks them so the apply's answer is not remembered.
    _pending: dict[ObjectKey, bool] = field(default_factory=dict)

    def unchanged(self, key: ObjectKey, digest: str, now: datetime.datetime) -> bool:
        entry = self.entries.get(key)
        return entry is not None and entry.digest == digest and now - entry.at < self.max_age

    def begin(self, key: ObjectKey) -> None:
        self._pending[key] = True

    def finish(self, key: ObjectKey, entry: Applied | None) -> None:
        still_valid = self._pending.pop(key, False)
        if entry is not None and still_valid:
            self.entries[key] = entry
        else:
            self.entries.pop(key, None)

    def forget(self, key: ObjectKey) -> None:
        self.entries.pop(key, None)
        if key in self._pending:
            self._pending[key] = False

    def get(self, key: ObjectKey) -> Applied | None:
        entry = self.entries.get(key)
        return entry if entry is not None and _now() - entry.at < self.max_age else None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Kube:
    client: AsyncClient
    applied: AppliedCache = field(default_factory=lambda: AppliedCache(datetime.timedelta(minutes=30)))

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create or update an object by server-side apply; conflicting hand edits are overwritten.

        Returns the object as stored, or None when the same manifest was applied before and nobody
        has changed the object since (nothing was sent).
        """
        key = object_key(manifest)
        digest = _digest(manifest)
        if self.applied.unchanged(key, digest, _now()):
            return None
        resource = _resource(manifest["apiVersion"], manifest["kind"])
        metadata = manifest["metadata"]
        action = f"applying {manifest['kind']} {metadata['name']}"
        self.applied.begin(key)
        stored: dict[str, Any] | None = None
        try:
            with _transport_errors(action):
                stored = await self._server_side_apply(resource, manifest)
                created_entry = _created_entry(stored)
                if created_entry is not None:
                    # Created by our POST (`create_owned`): its fields are held by an Update entry that
                    # an apply never releases, so a field this apply dropped is still there. Make that
                    # entry our Apply entry, then apply again so that the dropped fields go.
                    stored = None  # not remembered unless both steps succeed
                    await self._adopt_created_fields(action, resource, manifest, created_entry)
                    stored = await self._server_side_apply(resource, manifest)
        except ApiError as error:
            raise translate(error, action) from error
        finally:
            self.applied.finish(key, _applied_entry(digest, stored))
        return stored

    async def _server_side_apply(self, resource: Any, manifest: Mapping[str, Any]) -> dict[str, Any]:
        metadata = manifest["metadata"]
        obj = await self.client.patch(
            resource,
            metadata["name"],
            dict(manifest),
            namespace=metadata.get("namespace"),
            patch_type=PatchType.APPLY,
            field_manager=FIELD_MANAGER,
            force=True,
        )
        return _to_dict(obj)

    async def _adopt_created_fields(
        self, action: str, resource: Any, manifest: Mapping[str, Any], entry: int
    ) -> None:
        """Turn the operator's Update entry in managedFields into its Apply entry: a JSON patch that
        tests the entry first (a request that changes managedFields alone is not recorded as another
        Update). If another manager's entry moved it meanwhile, the apply is retried."""
        metadata = manifest["metadata"]
        path = f"/metadata/managedFields/{entry}"
        patch = [
            {"op": "test", "path": f"{path}/manager", "value": FIELD_MANAGER},
            {"op": "test", "path": f"{path}/operation", "value": "Update"},
            {"op": "replace", "path": f"{path}/operation", "value": "Apply"},
        ]
        try:
            await self.client.patch(
                resource,
                metadata["name"],
                patch,
                namespace=metadata.get("namespace"),
                patch_type=PatchType.JSON,
            )
        except ApiError as error:
            if error.status.code == 422:  # the test failed: another manager's entry moved it meanwhile
                raise kopf.TemporaryError(
                    f"{action}: the object changed while the operator took over the fields it created; retrying",
                    delay=TRANSPORT_RETRY_DELAY,
                ) from error
            raise

    def forget(self, kind: str, namespace: str | None, name: str) -> None:
        """Someone else changed or deleted this object: apply it again on the next reconcile."""
        self.applied.forget((kind, namespace, name))

    def last_applied(self, kind: str, namespace: str | None, name: str) -> Applied | None:
        return self.applied.get((kind, namespace, name))

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create an object unless it exists; False if it already did (someone else won a race)."""
        resource = _resource(manifest["apiVersion"], manifest["kind"])
        metadata = manifest["metadata"]
        action = f"creating {manifest['kind']} {metadata['name']}"
        try:
            obj: Any = resource.from_dict(dict(manifest))
            with _transport_errors(action):
                await self.client.create(obj)
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise translate(error, action) from error
        return True

    async def create_owned(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create an object the operator will go on applying: one POST instead of a read and an apply.

        Returns the object as stored, remembered like an apply, or None when an object of that name
        already exists (409: the caller reads it and decides whether it is ours).
        """
        key = object_key(manifest)
        resource = _resource(manifest["apiVersion"], manifest["kind"])
        # Reported as an apply: to the user it is the same step, whichever request carries it.
        action = f"applying {manifest['kind']} {manifest['metadata']['name']}"
        self.applied.begin(key)
        stored: dict[str, Any] | None = None
        try:
            obj: Any = resource.from_dict(dict(manifest))
            with _transport_errors(action):
                stored = _to_dict(await self.client.create(obj))
        except ApiError as error:
            if error.status.code == 409:
                return None
            raise translate(error, action) from error
        finally:
            self.applied.finish(key, _applied_entry(_digest(manifest), stored))
        return stored

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        resource = _resource(api_version, kind)
        try:
            with _transport_errors(f"reading {kind} {name}"):
                obj = await self.client.get(resource, name, namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise translate(error, f"reading {kind} {name}") from error
        return _to_dict(obj)

    async def list_in(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        labels: Mapping[str, str | None],
        keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """The objects of a kind with these labels in one namespace (a label whose value is None:
        any value), listed a page at a time, without managedFields, and cut down to what `keep`
        returns of each as it arrives."""
        resource = _resource(api_version, kind)
        cut = keep or _whole
        try:
            with _transport_errors(f"listing {kind}"):
                listing = self.client.list(
                    resource, namespace=namespace, labels=dict(labels), chunk_size=LIST_PAGE
                )
                return [cut(_listed(obj, api_version, kind)) async for obj in listing]
        except ApiError as error:
            raise translate(error, f"listing {kind}") from error

    async def list_everywhere(
        self, api_version: str, kind: str, labels: Mapping[str, str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Every object of a kind with these labels, in all namespaces (a page at a time, without
        managedFields), and the list's resourceVersion."""
        resource = _resource(api_version, kind)
        try:
            with _transport_errors(f"listing {kind}"):
                listing = self.client.list(
                    resource, namespace=ALL_NS, labels=dict(labels), chunk_size=LIST_PAGE
                )
                items = [_listed(obj, api_version, kind) async for obj in listing]
        except ApiError as error:
            raise translate(error, f"listing {kind}") from error
        try:
            return items, listing.resourceVersion
        except NotReadyError:
            return items, None

    async def watch_everywhere(
        self, api_version: str, kind: str, labels: Mapping[str, str], resource_version: str | None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Changes to the objects of a kind with these labels, in all namespaces, after a list.

        Reconnects by itself when the server ends the watch; an expired resourceVersion (410) or a
        lost connection ends it with an error, after which the caller lists again.
        """
        resource = _resource(api_version, kind)
        try:
            async for change, obj in self.client.watch(
                resource, namespace=ALL_NS, labels=dict(labels), resource_version=resource_version
            ):
                yield change, _typed(_to_dict(obj), api_version, kind)
        except ApiError as error:
            raise translate(error, f"watching {kind}") from error
        except httpx2.TransportError as error:
            raise kopf.TemporaryError(f"watching {kind}: {error!r}", delay=TRANSPORT_RETRY_DELAY) from error

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None) -> bool:
        """Delete an object; False if it was already gone."""
        resource = _resource(api_version, kind)
        self.forget(kind, namespace, name)
        try:
            with _transport_errors(f"deleting {kind} {name}"):
                await self.client.delete(resource, name, namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return False
            raise translate(error, f"deleting {kind} {name}") from error
        return True

    async def patch_merge(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        patch: Mapping[str, Any],
        *,
        status: bool = False,
    ) -> bool:
        """A JSON merge patch, of the status subresource if `status`; False if the object is gone."""
        resource = _resource(api_version, kind)
        target = resource.Status if status else resource
        what = f"the status of {kind} {name}" if status else f"{kind} {name}"
        try:
            with _transport_errors(f"patching {what}"):
                await self.client.patch(
                    target, name, dict(patch), namespace=namespace, patch_type=PatchType.MERGE
                )
        except ApiError as error:
            if error.status.code == 404:
                return False
            raise translate(error, f"patching {what}") from error
        return True


def _applied_entry(digest: str, stored: Mapping[str, Any] | None) -> Applied | None:
    """What the apply cache remembers of a write that stored `stored` (None: nothing was stored)."""
    if stored is None:
        return None
    meta = stored.get("metadata") or {}
    return Applied(digest, meta.get("resourceVersion"), meta.get("generation"), _now())


def _created_entry(stored: Mapping[str, Any]) -> int | None:
    """The position of the operator's Update entry in the object's managedFields (left by the POST of
    `Kube.create_owned`), if it has one."""
    entries = (stored.get("metadata") or {}).get("managedFields") or []
    for position, entry in enumerate(entries):
        if (
            entry.get("manager") == FIELD_MANAGER
            and entry.get("operation") == "Update"
            and not entry.get("subresource")  # a status write is not the create's entry
        ):
            return position
    return None


def _listed(obj: Any, api_version: str, kind: str) -> dict[str, Any]:
    """A listed object as the callers keep it: no caller of a list reads managedFields, often half
    of an object."""
    item = _typed(_to_dict(obj), api_version, kind)
    (item.get("metadata") or {}).pop("managedFields", None)
    return item


def _whole(item: dict[str, Any]) -> dict[str, Any]:
    return item


def _typed(obj: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """List items come without apiVersion and kind; the callers match on them."""
    obj.setdefault("apiVersion", api_version)
    obj.setdefault("kind", kind)
    return obj


def _to_dict(obj: Any) -> dict[str, Any]:
    result = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return dict(result)


@asynccontextmanager
async def connect(
    *, connections: int = 32, remember_for: datetime.timedelta | None = None
) -> AsyncIterator[Kube]:
    """A client from the in-cluster service account or the KUBECONFIG in use, sending through
    aiohttp (samd.operator.transport: a quarter of httpx's CPU per request).

    Up to `connections` connections are kept open: with fewer, under load every further request
    paid for a new TLS handshake, on both sides.
    """
    config = KubeConfig.from_env().get()
    if config is None or config.user is None:
        raise RuntimeError("no Kubernetes configuration: run in a cluster or set KUBECONFIG")
    transport = AiohttpTransport(
        verify_cluster(config.cluster, config.user, config.abs_file), connections=connections
    )
    client = AsyncClient(config=config, field_manager=FIELD_MANAGER, transport=transport)
    kube = Kube(client) if remember_for is None else Kube(client, AppliedCache(remember_for))
    try:
        yield kube
    finally:
        await client.close()
