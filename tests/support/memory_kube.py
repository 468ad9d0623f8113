"""The operator's API wrapper over objects kept in a dict, for unit tests of the reconcile steps.

`apply` is the wrapper's own (so that it remembers what it applied, as against a real API server);
the client under it stores each applied or POSTed object with a new resourceVersion (a POST of a
name that exists is refused with 409). Reads, deletes, creates and status patches go to the same
dict and are counted.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Mapping
from typing import Any, cast

from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from samd.operator.kube import AppliedCache, Kube

ObjectKey = tuple[str, str | None, str]  # (kind, namespace, name)


class Stored:
    """What lightkube returns: an object with to_dict()."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = dict(body)

    def to_dict(self) -> dict[str, Any]:
        return self.body


class _Client:
    def __init__(self, kube: MemoryKube) -> None:
        self.kube = kube

    async def patch(self, resource: Any, name: str, body: dict[str, Any], **_: Any) -> Stored:
        return Stored(self.kube.store(body))

    async def create(self, obj: Any) -> Stored:
        """A POST: refused with 409 AlreadyExists, as by the API server, when the name is taken."""
        body = obj.to_dict()
        meta = body["metadata"]
        self.kube.calls[f"create {body['kind']}"] += 1
        if (str(body["kind"]), meta.get("namespace"), str(meta["name"])) in self.kube.objects:
            message = f"{body['kind']} {meta['name']} already exists"
            raise ApiError(status=Status(code=409, reason="AlreadyExists", message=message))
        return Stored(self.kube.store(body, counted=False))


class MemoryKube(Kube):
    def __init__(self) -> None:
        super().__init__(client=cast(Any, None), applied=AppliedCache(datetime.timedelta(hours=1)))
        self.client = cast(Any, _Client(self))
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()  # "apply Secret", "get Secret", "delete Role", ...
        self._versions = 0

    def store(self, manifest: Mapping[str, Any], *, counted: bool = True) -> dict[str, Any]:
        """Store an object as the API server would (someone else's write, or an apply)."""
        if counted:
            self.calls[f"apply {manifest['kind']}"] += 1
        self._versions += 1
        meta = manifest["metadata"]
        key = (str(manifest["kind"]), meta.get("namespace"), str(meta["name"]))
        generation = int((self.objects.get(key, {}).get("metadata") or {}).get("generation") or 0) + 1
        stored = {
            **manifest,
            "metadata": {**meta, "resourceVersion": str(self._versions), "generation": generation},
        }
        self.objects[key] = stored
        return stored

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        meta = manifest["metadata"]
        if (manifest["kind"], meta.get("namespace"), meta["name"]) in self.objects:
            return False
        self.store(manifest)
        return True

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        self.calls[f"get {kind}"] += 1
        return self.objects.get((kind, namespace, name))

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None) -> bool:
        self.calls[f"delete {kind}"] += 1
        self.forget(kind, namespace, name)
        return self.objects.pop((kind, namespace, name), None) is not None

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
        self.statuses.append(dict(patch))
        return True
