"""Where the pod template of each workload kind lives, read strictly.

The admission webhook checks what a pod will run, so for a workload it checks the pod template the
controller will stamp pods from, and refuses the workload itself (not later its pods) when the
template is bad. Only the fields the policy reads are type-checked; a wrong type there is a clear
``MalformedWorkloadError`` (the webhook denies), never a crash or a silent skip: a field the policy
cannot read is a field it cannot vouch for.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from samd.errors import UsageError

TEMPLATE_PATHS: Mapping[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
"""Kind -> the path from the object to its pod (template); () is the Pod itself."""

WORKLOAD_KINDS = frozenset(TEMPLATE_PATHS)

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
"""Every list of containers in a pod spec; the checks apply to all of them."""


class MalformedWorkloadError(UsageError):
    """A pod or pod template whose fields do not have the types Kubernetes gives them."""


class PodTemplate(NamedTuple):
    """The metadata and spec of a pod, or of the pod template of a workload."""

    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]


def template_path(kind: str) -> str:
    """The dotted path of the pod template within an object of `kind`, for messages."""
    parts = TEMPLATE_PATHS[kind]
    return ".".join(parts) if parts else "(the Pod)"


def pod_template(kind: str, obj: object) -> PodTemplate:
    """The pod (template) metadata and spec of a Pod or workload object.

    Raises KeyError for a kind that has no pod template here, and MalformedWorkloadError when the object
    does not hold a well-typed pod (template) at the kind's path.
    """
    path = TEMPLATE_PATHS[kind]
    node = _mapping(obj, f"the {kind}", required=True)
    for depth, part in enumerate(path, start=1):
        node = _mapping(node.get(part), f"{kind} {'.'.join(path[:depth])}", required=True)
    prefix = f"{kind} {'.'.join(path)}." if path else f"{kind} "
    metadata = _mapping(node.get("metadata"), prefix + "metadata", required=False)
    spec = _mapping(node.get("spec"), prefix + "spec", required=True)
    _check_metadata(metadata, prefix + "metadata")
    _check_pod_spec(spec, prefix + "spec")
    return PodTemplate(metadata, spec)


# --- typed readers ---------------------------------------------------------------------------------
# Used by the policy after `pod_template` has checked the shapes, so they only normalise absent
# fields to empty values.


def pod_annotations(metadata: Mapping[str, Any]) -> Mapping[str, str]:
    value = metadata.get("annotations")
    return value if isinstance(value, dict) else {}


def containers(spec: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(list name, container) for every container, init and ephemeral ones included, in pod order."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    for list_name in CONTAINER_LISTS:
        for container in spec.get(list_name) or ():
            found.append((list_name, container))
    return found


def items(mapping: Mapping[str, Any], key: str) -> Sequence[Mapping[str, Any]]:
    """A list of objects (checked by `pod_template`), empty when absent."""
    value = mapping.get(key)
    return value if isinstance(value, list) else ()


def sub(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A nested object (checked by `pod_template`), empty when absent."""
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


# --- Secret references: one table ---------------------------------------------------------------------
# Every field of a pod spec that names a Secret, written once. The webhook's decider walks these
# paths (`secret_references`), its matchConditions are generated from them
# (`samd.webhook.configuration`), the shape checks type-check them, and an integration test walks
# the real API server's PodSpec schema and fails on any Secret-naming field missing here.
# A path is dotted field names; ``[]`` after a name means "every item of this list".

POD_SECRET_PATHS: tuple[str, ...] = (
    "imagePullSecrets[].name",
    "volumes[].secret.secretName",
    "volumes[].projected.sources[].secret.name",
    "volumes[].azureFile.secretName",
    "volumes[].cephfs.secretRef.name",
    "volumes[].cinder.secretRef.name",
    "volumes[].csi.nodePublishSecretRef.name",
    "volumes[].flexVolume.secretRef.name",
    "volumes[].iscsi.secretRef.name",
    "volumes[].rbd.secretRef.name",
    "volumes[].scaleIO.secretRef.name",
    "volumes[].storageos.secretRef.name",
)
"""Paths from the pod spec to a Secret's name, outside containers. A volume plugin that receives a
Secret can expose it as surely as a mount does, and the kubelet reads an image pull Secret for the
pod, so all of them count."""

CONTAINER_SECRET_PATHS: tuple[str, ...] = (
    "env[].valueFrom.secretKeyRef.name",
    "envFrom[].secretRef.name",
)
"""Paths from a container (of every list in `CONTAINER_LISTS`) to a Secret's name."""

SECRET_NAME_PATHS: tuple[str, ...] = POD_SECRET_PATHS + tuple(
    f"{list_name}[].{path}" for list_name in CONTAINER_LISTS for path in CONTAINER_SECRET_PATHS
)
"""Every path from the pod spec to a Secret's name: the table the schema test holds to the API."""


class PathNode:
    """The paths of a table merged into a tree: one node per field, `each` for the items of a list."""

    __slots__ = ("each", "fields", "leaf")

    def __init__(self) -> None:
        self.fields: dict[str, PathNode] = {}
        self.each: PathNode | None = None
        self.leaf = False


def path_parts(path: str) -> list[str]:
    """``a[].b`` -> ``['a', '[]', 'b']``."""
    parts: list[str] = []
    for name in path.split("."):
        if name.endswith("[]"):
            parts += [name[:-2], "[]"]
        else:
            parts.append(name)
    return parts


def path_tree(paths: Iterable[str]) -> PathNode:
    """The paths merged into one tree (a path that ends at a list item is a leaf item)."""
    root = PathNode()
    for path in paths:
        node = root
        for part in path_parts(path):
            if part == "[]":
                if node.each is None:
                    node.each = PathNode()
                node = node.each
            else:
                node = node.fields.setdefault(part, PathNode())
        node.leaf = True
    return root


_SECRET_TREE = path_tree(SECRET_NAME_PATHS)

_Trail = tuple[tuple[str, Mapping[str, Any]], ...]
"""The list items passed on the way to a value: (list field, item), outermost first."""


def _collect(
    value: object, node: PathNode, field: str, trail: _Trail, found: list[tuple[str, _Trail]]
) -> None:
    """Append (name, trail) for every non-empty string at a leaf of `node` below `value`."""
    if value is None:
        return
    if node.leaf:
        if isinstance(value, str) and value:
            found.append((value, trail))
        return
    each = node.each
    if each is not None:
        if isinstance(value, list):
            for item in value:
                _collect(item, each, field, (*trail, (field, item)), found)
        return
    if not isinstance(value, dict):
        return
    fields = node.fields
    if len(value) < len(fields):
        for key, item in value.items():
            child = fields.get(key)
            if child is not None:
                _collect(item, child, key, trail, found)
    else:
        for key, child in fields.items():
            _collect(value.get(key), child, key, trail, found)


@dataclass(frozen=True)
class SecretReference:
    """One way a pod gets at a Secret's data."""

    secret: str
    container: str | None
    """The container that sees it; None for a volume that no container mounts, or an image pull Secret."""
    how: str
    """For messages: 'volume keys', 'env AWS_ACCESS_KEY_ID', 'envFrom', 'imagePullSecrets'."""


def secret_names(spec: Mapping[str, Any]) -> list[tuple[str, _Trail]]:
    """Every Secret name at a path of `SECRET_NAME_PATHS`, with the list items passed to reach it."""
    found: list[tuple[str, _Trail]] = []
    _collect(spec, _SECRET_TREE, "", (), found)
    return found


def volume_mounters(spec: Mapping[str, Any]) -> dict[str, list[tuple[str, Mapping[str, Any]]]]:
    """Volume name -> (container name, volumeMount) for every container that mounts it."""
    mounters: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for _, container in containers(spec):
        for mount in items(container, "volumeMounts"):
            mounters.setdefault(mount["name"], []).append((container["name"], mount))
    return mounters


def secret_references(spec: Mapping[str, Any]) -> list[SecretReference]:
    """Every Secret the pod (template) names (see `SECRET_NAME_PATHS`), and who sees it."""
    references: list[SecretReference] = []
    mounters: dict[str, list[tuple[str, Mapping[str, Any]]]] | None = None
    for secret, trail in secret_names(spec):
        top, item = trail[0]
        if top == "volumes":
            if mounters is None:
                mounters = volume_mounters(spec)
            volume = item["name"]
            users: list[str | None] = [name for name, _ in mounters.get(volume, [])] or [None]
            references += [SecretReference(secret, user, f"volume {volume}") for user in users]
        elif top in CONTAINER_LISTS:
            how = trail[1][0] if len(trail) > 1 else top
            if len(trail) > 1 and isinstance(trail[1][1].get("name"), str):
                how = f"{how} {trail[1][1]['name']}"
            references.append(SecretReference(secret, item["name"], how))
        else:
            references.append(SecretReference(secret, None, top))
    return references


# --- hostPath volumes that reach the kubelet's pod directories ----------------------------------------

KUBELET_ROOT = "/var/lib/kubelet"
"""The kubelet's root directory (its --root-dir): every pod's Secret volumes live below it."""


def _normal_host_path(path: str) -> str:
    """An absolute, normalised form of a hostPath ("//var/./lib/" -> "/var/lib")."""
    normal = posixpath.normpath("/" + path)
    return "/" + normal.lstrip("/")


def reaches_kubelet_root(path: str, root: str = KUBELET_ROOT) -> bool:
    """Whether a hostPath of `path` shows `root` (it is the root, below it, or one of its parents)."""
    normal, root = _normal_host_path(path), _normal_host_path(root)
    if normal == "/":
        return True
    return normal == root or root.startswith(normal + "/") or normal.startswith(root + "/")


def kubelet_host_paths(spec: Mapping[str, Any], root: str = KUBELET_ROOT) -> list[tuple[str, str]]:
    """(volume name, path) of every hostPath volume that would show the kubelet's pod directories,
    where the Secret volumes of every pod on the node are mounted."""
    found: list[tuple[str, str]] = []
    for volume in items(spec, "volumes"):
        host_path = volume.get("hostPath")
        if host_path is None:
            continue
        path = sub(volume, "hostPath").get("path")
        # A hostPath without a path string cannot be vouched for: count it.
        if not isinstance(path, str) or reaches_kubelet_root(path, root):
            found.append((volume["name"], path if isinstance(path, str) else ""))
    return found


def mentioned_strings(container: Mapping[str, Any]) -> list[str]:
    """The command, args and literal env values of a container: where a URI could be passed."""
    texts = [*(container.get("command") or ()), *(container.get("args") or ())]
    for env in items(container, "env"):
        value = env.get("value")
        if isinstance(value, str):
            texts.append(value)
    return texts


# --- shape checks ----------------------------------------------------------------------------------
# A small declarative schema of the fields the policy reads, walked once per request by `valid`,
# which only answers yes or no (no path bookkeeping: every request from the API server is
# well-formed). Only an object it refuses is walked again by `check`, which keeps the path of the
# field being checked and raises the error that names it. `valid` alone decides: should `check`
# ever find nothing to name, the object is still refused (`_refuse`).

_HINT = "the object is malformed; fix it and apply it again"


class _Key(str):
    """A path part that is a map key (spelled ['key'])."""

    __slots__ = ()


def _spell(path: Sequence[str | int]) -> str:
    parts = []
    for part in path:
        if isinstance(part, _Key):
            parts.append(f"[{str(part)!r}]")
        elif isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(part)
    return "".join(parts)


def _type_name(value: object) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), type(value).__name__)


def _fail(path: Sequence[str | int], expected: str, value: object) -> MalformedWorkloadError:
    return MalformedWorkloadError(f"{_spell(path)} must be {expected}, not {_type_name(value)}", hint=_HINT)


class _Shape:
    expected = "a value"
    leaf = False

    def valid(self, value: object) -> bool:
        raise NotImplementedError

    def check(self, value: object, path: list[str | int]) -> None:
        raise NotImplementedError


class _Leaf(_Shape):
    """A string, boolean or number: checked inline by its container (no path bookkeeping)."""

    leaf = True

    def __init__(self, expected: str, kind: type) -> None:
        self.expected = expected
        self.kind = kind
        self.exact = frozenset({kind})
        """The JSON parser's own types, accepted on sight; anything else goes through `accepts`."""

    def accepts(self, value: object) -> bool:
        # bool is an int in Python, never a number in JSON.
        return isinstance(value, self.kind) and (self.kind is bool or not isinstance(value, bool))

    def valid(self, value: object) -> bool:
        return type(value) in self.exact or self.accepts(value)

    def check(self, value: object, path: list[str | int]) -> None:
        if not self.accepts(value):
            raise _fail(path, self.expected, value)


class _List(_Shape):
    def __init__(self, item: _Shape) -> None:
        self.item = item
        self.expected = "a list of strings" if item.leaf else "a list"

    def valid(self, value: object) -> bool:
        if not isinstance(value, list):
            return False
        item_shape = self.item
        return all(item is not None and item_shape.valid(item) for item in value)

    def check(self, value: object, path: list[str | int]) -> None:
        if not isinstance(value, list):
            raise _fail(path, self.expected, value)
        item_shape = self.item
        if isinstance(item_shape, _Leaf):
            exact = item_shape.exact
            for index, item in enumerate(value):
                if type(item) not in exact and not item_shape.accepts(item):
                    raise _fail([*path, index], item_shape.expected, item)
            return
        for index, item in enumerate(value):
            path.append(index)
            if item is None:
                raise _fail(path, item_shape.expected, item)
            item_shape.check(item, path)
            path.pop()


class _Obj(_Shape):
    """An object: known `fields`, `required` ones among them, and `values` for every other key."""

    expected = "an object"

    def __init__(
        self,
        fields: Mapping[str, _Shape] | None = None,
        *,
        required: Iterable[str] = (),
        values: _Shape | None = None,
        values_are_fields: bool = False,
    ) -> None:
        self.fields = dict(fields or {})
        self.labels = {name: "." + name for name in self.fields}
        self.required = tuple(required)
        self.values = values
        self.values_are_fields = values_are_fields
        # Split once so that the walk does one dict lookup per key and no method call per leaf.
        self.leaves = {name: shape for name, shape in self.fields.items() if isinstance(shape, _Leaf)}
        self.nested = {name: shape for name, shape in self.fields.items() if not isinstance(shape, _Leaf)}
        self.opaque = not self.fields and values is None
        """Only its type is checked (an object whose content the policy does not read)."""

    def valid(self, value: object) -> bool:
        if not isinstance(value, dict):
            return False
        if self.opaque:
            return True
        for name in self.required:
            if value.get(name) is None:
                return False
        fields, values = self.fields, self.values
        for name, item in value.items():
            if item is None:
                continue
            shape = fields.get(name, values)
            if shape is None:
                continue
            if type(shape) is _Leaf:
                if type(item) not in shape.exact and not shape.accepts(item):
                    return False
            elif not shape.valid(item):
                return False
        return True

    def check(self, value: object, path: list[str | int]) -> None:
        if not isinstance(value, dict):
            raise _fail(path, self.expected, value)
        if self.opaque:
            return
        for name in self.required:
            if value.get(name) is None:
                raise _fail([*path, self.labels[name]], self.fields[name].expected, None)
        leaves, nested, values = self.leaves, self.nested, self.values
        for name, item in value.items():
            if item is None:
                continue
            leaf = leaves.get(name)
            if leaf is not None:
                if type(item) not in leaf.exact and not leaf.accepts(item):
                    raise _fail([*path, self.labels[name]], leaf.expected, item)
                continue
            shape = nested.get(name)
            label: str
            if shape is not None:
                label = self.labels[name]
            elif values is not None:
                shape = values
                if isinstance(shape, _Leaf) and (type(item) in shape.exact or shape.accepts(item)):
                    continue
                label = "." + name if self.values_are_fields else _Key(name)
                if isinstance(shape, _Leaf):
                    raise _fail([*path, label], shape.expected, item)
            else:
                continue
            path.append(label)
            shape.check(item, path)
            path.pop()


_STRING, _BOOLEAN, _NUMBER = _Leaf("a string", str), _Leaf("a boolean", bool), _Leaf("a number", int)
_NAMED = _Obj({"name": _STRING})
_SECURITY_CONTEXT = _Obj(
    {
        "privileged": _BOOLEAN,
        "allowPrivilegeEscalation": _BOOLEAN,
        "readOnlyRootFilesystem": _BOOLEAN,
        "runAsNonRoot": _BOOLEAN,
        "runAsUser": _NUMBER,
        "capabilities": _Obj({"add": _List(_STRING), "drop": _List(_STRING)}),
        "seccompProfile": _Obj({"type": _STRING}),
        "procMount": _STRING,
    }
)
_CONTAINER = _Obj(
    {
        "name": _STRING,
        "image": _STRING,
        "command": _List(_STRING),
        "args": _List(_STRING),
        "env": _List(
            _Obj(
                {
                    "name": _STRING,
                    "value": _STRING,
                    "valueFrom": _Obj({"configMapKeyRef": _NAMED}),
                },
                required=("name",),
            )
        ),
        "envFrom": _List(_Obj({"configMapRef": _NAMED})),
        "volumeMounts": _List(
            _Obj(
                {"name": _STRING, "mountPath": _STRING, "readOnly": _BOOLEAN}, required=("name", "mountPath")
            )
        ),
        "volumeDevices": _List(_Obj()),
        "securityContext": _SECURITY_CONTEXT,
    },
    required=("name",),
)


def _shape_of(node: PathNode) -> _Shape:
    """The shape of the fields on a table's paths: a string at each end, objects and lists on the way."""
    if node.leaf:
        return _STRING
    if node.each is not None:
        return _List(_shape_of(node.each))
    return _Obj({name: _shape_of(child) for name, child in node.fields.items()})


def _merge(first: _Shape, second: _Shape) -> _Shape:
    """One shape that checks both: the fields of objects merged, list items merged."""
    if isinstance(first, _Obj) and isinstance(second, _Obj):
        fields = dict(first.fields)
        for name, shape in second.fields.items():
            fields[name] = _merge(fields[name], shape) if name in fields else shape
        return _Obj(
            fields,
            required=(*first.required, *(r for r in second.required if r not in first.required)),
            values=first.values if first.values is not None else second.values,
            values_are_fields=first.values_are_fields or second.values_are_fields,
        )
    if isinstance(first, _List) and isinstance(second, _List):
        return _List(_merge(first.item, second.item))
    if first is second:
        return first
    raise TypeError(f"cannot merge the shapes {first.expected} and {second.expected}")


_VOLUME = _Obj(
    {
        "name": _STRING,
        "configMap": _NAMED,
        "projected": _Obj({"sources": _List(_Obj({"configMap": _NAMED}))}),
        "hostPath": _Obj({"path": _STRING}),
    },
    required=("name",),
    values=_Obj(),  # every other volume source (emptyDir, ...) is an object
    values_are_fields=True,
)


def _with_secret_paths(shape: _Obj) -> _Obj:
    """`shape` that also checks every field on a path to a Secret's name (the walker reads them)."""
    merged = _merge(shape, _shape_of(_SECRET_TREE))
    if not isinstance(merged, _Obj):
        raise TypeError("a pod spec shape must be an object")
    return merged


_POD_SPEC = _with_secret_paths(
    _Obj(
        {
            "initContainers": _List(_CONTAINER),
            "containers": _List(_CONTAINER),
            "ephemeralContainers": _List(_CONTAINER),
            "volumes": _List(_VOLUME),
            "hostNetwork": _BOOLEAN,
            "hostPID": _BOOLEAN,
            "hostIPC": _BOOLEAN,
            "securityContext": _SECURITY_CONTEXT,
        }
    )
)
_METADATA = _Obj({"annotations": _Obj(values=_STRING), "labels": _Obj(values=_STRING)})


def _mapping(value: object, where: str, *, required: bool) -> Mapping[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise _fail([where], "an object", value)
    return value


def _refuse(shape: _Obj, value: Mapping[str, Any], where: str) -> None:
    """Raise the error naming the field of `value` that `shape` refuses."""
    shape.check(value, [where])
    raise MalformedWorkloadError(f"{where} has a field of the wrong type", hint=_HINT)


def _check_metadata(metadata: Mapping[str, Any], where: str) -> None:
    if not _METADATA.valid(metadata):
        _refuse(_METADATA, metadata, where)


def _check_pod_spec(spec: Mapping[str, Any], where: str) -> None:
    if not _POD_SPEC.valid(spec):
        _refuse(_POD_SPEC, spec, where)
    if not spec.get("containers"):
        raise MalformedWorkloadError(f"{where}.containers must list at least one container", hint=_HINT)
