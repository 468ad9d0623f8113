"""The cluster state the admission webhook decides from, kept current by watches.

The admission path makes no API call (issue 5 §3): everything it needs is here, in memory, kept
current by a list+watch of four kinds (the informer pattern):

- SecureModels in every namespace (parsed once, when they change, not per request);
- ModelTrustPolicies (parsed, each with a generation counter of the webhook's own for cache keys);
- Namespaces (their labels decide which policies cover them);
- ConfigMaps labelled ``samd.dev/signature=true``: the signature bundles the operator fetched.

Each kind is followed by a `samd.reflector.Reflector` (the same list+watch as the operator's
owned-object index): listed, then watched from the list's resourceVersion. A watch that fails (410
Gone when the version is too old, a dropped connection, an API error) or runs for `resync_period`
is started again from a fresh list, after a backoff for errors other than 410, so that no change
missed meanwhile is kept wrong; the stale state keeps serving in the meantime. `ready` becomes True
once every kind has been listed once, and stays True when a watch fails.

``WatchedState.from_objects`` builds the same state from plain objects without a cluster (unit
tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lightkube import ALL_NS, AsyncClient
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.resources.core_v1 import ConfigMap, Namespace

from samd.errors import SamdError
from samd.operator.builders.names import client_secret_name, signature_config_map_name, tls_secret_name
from samd.operator.builders.serving import SIGNATURE_FILE, SIGNATURE_LABEL
from samd.policy import TrustPolicy
from samd.reflector import Listing, Reflector, exponential_backoff
from samd.spec import GROUP, VERSION, SecureModelSpec, parse_secure_model, parse_trust_policy

log = logging.getLogger(__name__)

SecureModelResource = create_namespaced_resource(GROUP, VERSION, "SecureModel", "securemodels")
ModelTrustPolicyResource = create_global_resource(GROUP, VERSION, "ModelTrustPolicy", "modeltrustpolicies")

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
RESYNC_PERIOD = 300.0
"""Seconds a watch runs before it is replaced by a fresh list and watch. Watches have no read
timeout (they may be quiet for long), so a connection that died without a word would otherwise
leave the state stale for good; this bounds how stale it can get."""


class Kind(StrEnum):
    """The kinds the webhook watches."""

    MODELS = "SecureModel"
    POLICIES = "ModelTrustPolicy"
    NAMESPACES = "Namespace"
    SIGNATURES = "ConfigMap"


# --- what the state holds --------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchedModel:
    """One SecureModel: its parsed spec, or why it could not be parsed."""

    namespace: str
    name: str
    uid: str
    spec: SecureModelSpec | None
    problem: str | None
    """Why the spec could not be parsed (then `spec` is None)."""
    key_secret: str | None
    """The Secret holding the model's local keyset (read from the raw spec, parsed or not)."""
    client_names: tuple[str, ...]
    artifact_uri: str | None
    raw_spec: object = field(default=None, repr=False, compare=False)
    """The spec as the API server returned it: an unchanged spec is not parsed again."""
    quarantine: str | None = None
    """Why the model is quarantined (status.quarantine.active): its pods are refused; None if not."""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def protected_secret_role(self, secret: str) -> str | None:
        """What `secret` is to this model (its key, TLS or a client certificate), or None."""
        if self.key_secret and secret == self.key_secret:
            return "key Secret"
        if secret == tls_secret_name(self.name):
            return "TLS Secret"
        declared = {client_secret_name(self.name, client) for client in self.client_names}
        if secret in declared or secret.startswith(f"{self.name}-client-"):
            return "client certificate Secret"
        return None


URI_CONTINUES = re.compile(r"[A-Za-z0-9._~%/+-]")
"""A character that continues a URI's path: a URI followed by one is a longer URI, not a mention."""
_TEXT_SEPARATOR = "\n"


@dataclass(frozen=True)
class NamespaceIndex:
    """What the bypass rule looks for in a namespace, precomputed once per change of its models
    rather than per admission request: the Secret names a model protects, and one pattern that
    finds every model's artifact URI in a text in a single pass."""

    models: tuple[WatchedModel, ...]
    """In the order the state lists them (the first model a Secret belongs to is the one named)."""
    protected_secrets: frozenset[str]
    """Every key, TLS and declared client certificate Secret of the namespace's models."""
    client_secret_prefixes: tuple[str, ...]
    """`<model>-client-`: any Secret so named is a client certificate Secret of that model."""
    uri_pattern: re.Pattern[str] | None
    """Matches (zero-width, capturing) where the longest artifact URI starting there begins."""
    uri_prefixes: Mapping[str, tuple[str, ...]]
    """URI -> the namespace's URIs that are prefixes of it (itself included), longest first."""
    separator_in_uri: bool = False

    @classmethod
    def build(cls, models: Iterable[WatchedModel]) -> NamespaceIndex:
        models = tuple(models)
        secrets: set[str] = set()
        for model in models:
            if model.key_secret:
                secrets.add(model.key_secret)
            secrets.add(tls_secret_name(model.name))
            secrets.update(client_secret_name(model.name, client) for client in model.client_names)
        uris = sorted({m.artifact_uri for m in models if m.artifact_uri}, key=lambda u: (-len(u), u))
        pattern = re.compile("(?=(" + "|".join(map(re.escape, uris)) + "))") if uris else None
        return cls(
            models=models,
            protected_secrets=frozenset(secrets),
            client_secret_prefixes=tuple(f"{model.name}-client-" for model in models),
            uri_pattern=pattern,
            uri_prefixes={uri: tuple(other for other in uris if uri.startswith(other)) for uri in uris},
            separator_in_uri=any(_TEXT_SEPARATOR in uri for uri in uris),
        )

    def may_protect(self, secret: str) -> bool:
        """Whether `secret` could be some model's (False: no model's `protected_secret_role` is set)."""
        return secret in self.protected_secrets or secret.startswith(self.client_secret_prefixes)

    def mentioned_uris(self, texts: Iterable[str]) -> set[str]:
        """The artifact URIs that `texts` mention as a whole (not as the start of a longer path)."""
        found: set[str] = set()
        if self.uri_pattern is None:
            return found
        # One search over the texts joined by a character that does not continue a URI: a URI
        # ends at a text's end exactly when it ends at a separator. A URI that holds the separator
        # itself could match across two texts, so such a namespace searches them one by one.
        for text in texts if self.separator_in_uri else (_TEXT_SEPARATOR.join(texts),):
            for match in self.uri_pattern.finditer(text):
                start = match.start()
                # Every URI that starts here is a prefix of the longest one that does.
                for uri in self.uri_prefixes[match.group(1)]:
                    end = start + len(uri)
                    if end == len(text) or not URI_CONTINUES.match(text, end):
                        found.add(uri)
        return found


@dataclass(frozen=True)
class SignatureBundle:
    """The signature bundle the operator stored for a model (ConfigMap `<model>-signature`)."""

    namespace: str
    config_map: str
    owner_uids: frozenset[str]
    """The uids of the SecureModels in the ConfigMap's ownerReferences."""
    bundle: bytes | None
    sha256: str
    problem: str | None
    """Why the ConfigMap holds no usable bundle (then `bundle` is None)."""


@dataclass(frozen=True)
class InvalidPolicy:
    """A ModelTrustPolicy the API server accepted but SAMD cannot use: it fails closed."""

    name: str
    namespace_selector: Mapping[str, Any]
    problem: str


@dataclass
class _Stores:
    models: dict[tuple[str, str], WatchedModel] = field(default_factory=dict)
    models_by_namespace: dict[str, dict[str, WatchedModel]] = field(default_factory=dict)
    policies: dict[str, TrustPolicy] = field(default_factory=dict)
    invalid_policies: dict[str, InvalidPolicy] = field(default_factory=dict)
    policy_fingerprints: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)
    signatures: dict[tuple[str, str], SignatureBundle] = field(default_factory=dict)


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_metadata(obj).get("name") or "")


def _namespace(obj: Mapping[str, Any]) -> str:
    return str(_metadata(obj).get("namespace") or "")


def _dig(obj: object, *path: str) -> object:
    for part in path:
        obj = obj.get(part) if isinstance(obj, Mapping) else None
    return obj


def read_model(obj: Mapping[str, Any]) -> WatchedModel:
    """A SecureModel object as the webhook keeps it; never raises for a bad spec."""
    metadata = _metadata(obj)
    raw = obj.get("spec")
    spec: SecureModelSpec | None = None
    problem: str | None = None
    if not isinstance(raw, Mapping):
        problem = "the SecureModel has no spec"
    else:
        try:
            spec = parse_secure_model(raw)
        except SamdError as error:
            problem = error.message
    key_secret = _dig(raw, "encryption", "keyRef", "secretName")
    clients = _dig(raw, "serving", "clients")
    client_names = tuple(
        str(client["name"])
        for client in (clients if isinstance(clients, list) else ())
        if isinstance(client, Mapping) and isinstance(client.get("name"), str)
    )
    artifact_uri = _dig(raw, "artifact", "uri")
    return WatchedModel(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        spec=spec,
        problem=problem,
        key_secret=key_secret if isinstance(key_secret, str) and key_secret else None,
        client_names=client_names,
        artifact_uri=artifact_uri if isinstance(artifact_uri, str) and artifact_uri else None,
        raw_spec=raw,
        quarantine=read_quarantine(obj),
    )


def read_quarantine(obj: Mapping[str, Any]) -> str | None:
    """Why the SecureModel is quarantined (its status.quarantine), or None when it is not."""
    written = _dig(obj, "status", "quarantine")
    if not isinstance(written, Mapping) or written.get("active") is not True:
        return None
    reason, message = written.get("reason") or "Manual", written.get("message") or ""
    return f"{reason}: {message}" if message else str(reason)


def read_signature(obj: Mapping[str, Any]) -> SignatureBundle:
    """A signature ConfigMap as the webhook keeps it (the bundle's SHA-256 computed once, here)."""
    metadata = _metadata(obj)
    owners = metadata.get("ownerReferences")
    owner_uids = frozenset(
        str(owner["uid"])
        for owner in (owners if isinstance(owners, list) else ())
        if isinstance(owner, Mapping) and owner.get("kind") == "SecureModel" and owner.get("uid")
    )
    text = _dig(obj, "data", SIGNATURE_FILE)
    bundle: bytes | None = None
    problem: str | None = None
    if isinstance(text, str) and text:
        bundle = text.encode("utf-8")
    else:
        problem = f"it has no {SIGNATURE_FILE} entry"
    return SignatureBundle(
        namespace=str(metadata.get("namespace") or ""),
        config_map=str(metadata.get("name") or ""),
        owner_uids=owner_uids,
        bundle=bundle,
        sha256=hashlib.sha256(bundle).hexdigest() if bundle is not None else "",
        problem=problem,
    )


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = _metadata(obj).get("labels")
    if not isinstance(labels, Mapping):
        return {}
    return {str(key): str(value) for key, value in labels.items()}


# --- the state -------------------------------------------------------------------------------------

PolicyListener = Callable[[str], None]
"""Called with a policy's name when it changes or is deleted (to invalidate cached verifications)."""


class WatchedState:
    """What the webhook knows of the cluster; read by the decider, written by the watches."""

    def __init__(self, *, resync_period: float = RESYNC_PERIOD) -> None:
        self.resync_period = resync_period
        self._stores = _Stores()
        self.revision = 0
        """Bumped on every change the watches bring: what was decided at one revision holds until the next."""
        self._generations = itertools.count(1)
        self._listeners: list[PolicyListener] = []
        self._synced: set[Kind] = set()
        self._reflectors: dict[Kind, Reflector] = {}
        self._indexes: dict[str, NamespaceIndex] = {}
        """Per namespace, built on first use and dropped when one of its models changes."""

    @classmethod
    def from_objects(
        cls,
        *,
        models: Iterable[Mapping[str, Any]] = (),
        policies: Iterable[Mapping[str, Any]] = (),
        namespaces: Iterable[Mapping[str, Any]] = (),
        config_maps: Iterable[Mapping[str, Any]] = (),
    ) -> WatchedState:
        """A ready state built from plain Kubernetes objects (dicts as the API returns them)."""
        state = cls()
        state.replace(Kind.MODELS, models)
        state.replace(Kind.POLICIES, policies)
        state.replace(Kind.NAMESPACES, namespaces)
        state.replace(Kind.SIGNATURES, config_maps)
        return state

    # --- reads (the admission path) ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once every kind has been listed at least once."""
        return self._synced >= set(Kind)

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        """The namespace's labels, or None when the namespace is not (yet) known."""
        return self._stores.namespaces.get(namespace)

    def policies(self) -> list[TrustPolicy]:
        return list(self._stores.policies.values())

    def invalid_policies(self) -> list[InvalidPolicy]:
        return list(self._stores.invalid_policies.values())

    def policy_count(self) -> int:
        return len(self._stores.policies) + len(self._stores.invalid_policies)

    def model(self, namespace: str, name: str) -> WatchedModel | None:
        return self._stores.models.get((namespace, name))

    def models_in(self, namespace: str) -> Iterable[WatchedModel]:
        return self._stores.models_by_namespace.get(namespace, {}).values()

    def namespace_index(self, namespace: str) -> NamespaceIndex:
        """The bypass rule's index of `namespace`'s models, current with the state."""
        index = self._indexes.get(namespace)
        if index is None:
            index = NamespaceIndex.build(self.models_in(namespace))
            self._indexes[namespace] = index
        return index

    def signature_of(self, model: WatchedModel) -> SignatureBundle | None:
        """The signature ConfigMap the operator keeps for `model`, if any (ownership not checked)."""
        return self._stores.signatures.get((model.namespace, signature_config_map_name(model.name)))

    def add_policy_listener(self, listener: PolicyListener) -> None:
        self._listeners.append(listener)

    # --- writes (the watches, and tests) -----------------------------------------------------------

    def replace(self, kind: Kind, objects: Iterable[Mapping[str, Any]]) -> None:
        """Replace everything known of `kind` by a full list (after a list or a re-list)."""
        self.revision += 1
        objects = list(objects)
        if kind is Kind.MODELS:
            listed_models = {(_namespace(obj), _name(obj)) for obj in objects}
            for namespace, name in set(self._stores.models) - listed_models:
                self._apply_model({"metadata": {"namespace": namespace, "name": name}}, deleted=True)
        elif kind is Kind.NAMESPACES:
            self._stores.namespaces.clear()
        elif kind is Kind.SIGNATURES:
            self._stores.signatures.clear()
        elif kind is Kind.POLICIES:
            listed = {_name(obj) for obj in objects}
            for gone in set(self._stores.policy_fingerprints) - listed:
                self._delete_policy(gone)
        for obj in objects:
            self.apply(kind, "ADDED", obj)
        self._synced.add(kind)

    def apply(self, kind: Kind, event: str, obj: Mapping[str, Any]) -> None:
        """Apply one watch event (ADDED, MODIFIED or DELETED) of `kind`."""
        self.revision += 1
        deleted = event == "DELETED"
        if kind is Kind.MODELS:
            self._apply_model(obj, deleted)
        elif kind is Kind.POLICIES:
            if deleted:
                self._delete_policy(_name(obj))
            else:
                self._put_policy(obj)
        elif kind is Kind.NAMESPACES:
            if deleted:
                self._stores.namespaces.pop(_name(obj), None)
            else:
                self._stores.namespaces[_name(obj)] = _labels(obj)
        elif kind is Kind.SIGNATURES:
            key = (_namespace(obj), _name(obj))
            if deleted:
                self._stores.signatures.pop(key, None)
            else:
                self._stores.signatures[key] = read_signature(obj)

    def _apply_model(self, obj: Mapping[str, Any], deleted: bool) -> None:
        key = (_namespace(obj), _name(obj))
        in_namespace = self._stores.models_by_namespace.setdefault(key[0], {})
        if deleted:
            self._indexes.pop(key[0], None)
            self._stores.models.pop(key, None)
            in_namespace.pop(key[1], None)
            if not in_namespace:
                del self._stores.models_by_namespace[key[0]]
            return
        known = self._stores.models.get(key)
        uid = str(_metadata(obj).get("uid") or "")
        if known is not None and known.uid == uid and known.raw_spec == obj.get("spec"):
            # A status or metadata change (the operator writes status often): nothing to parse, but a
            # quarantine set or cleared counts.
            quarantine = read_quarantine(obj)
            if quarantine == known.quarantine:
                return
            model = dataclasses.replace(known, quarantine=quarantine)
        else:
            model = read_model(obj)
        self._stores.models[key] = model
        in_namespace[key[1]] = model
        self._indexes.pop(key[0], None)

    def _put_policy(self, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        raw = obj.get("spec")
        fingerprint = json.dumps([_metadata(obj).get("uid"), raw], sort_keys=True, default=str)
        if self._stores.policy_fingerprints.get(name) == fingerprint:
            return  # a re-list or a metadata-only change: same policy, same generation, cache kept
        self._stores.policy_fingerprints[name] = fingerprint
        self._stores.policies.pop(name, None)
        self._stores.invalid_policies.pop(name, None)
        try:
            spec = parse_trust_policy(raw if isinstance(raw, Mapping) else {})
        except SamdError as error:
            selector = _dig(raw, "namespaceSelector")
            self._stores.invalid_policies[name] = InvalidPolicy(
                name, selector if isinstance(selector, Mapping) else {}, error.message
            )
            log.warning("ModelTrustPolicy %s cannot be used, it fails closed: %s", name, error.message)
        else:
            # The webhook's own counter, not metadata.generation: a policy deleted and created again
            # starts at generation 1 once more and must not meet the old one's cached verifications.
            self._stores.policies[name] = TrustPolicy(
                name=name, generation=next(self._generations), spec=spec
            )
        self._notify(name)

    def _delete_policy(self, name: str) -> None:
        known = self._stores.policy_fingerprints.pop(name, None)
        self._stores.policies.pop(name, None)
        self._stores.invalid_policies.pop(name, None)
        if known is not None:
            self._notify(name)

    def _notify(self, name: str) -> None:
        for listener in self._listeners:
            listener(name)

    # --- the watches -------------------------------------------------------------------------------

    def start(self, client: AsyncClient) -> None:
        """Start listing and watching every kind with `client` (in the running event loop)."""
        if self._reflectors:
            raise RuntimeError("the watches are already running")
        self._reflectors = {kind: _reflector(self, kind, client) for kind in Kind}
        for reflector in self._reflectors.values():
            reflector.start()

    async def stop(self) -> None:
        """Stop every watch; the state keeps what it knows (and stays ready if it was)."""
        reflectors, self._reflectors = list(self._reflectors.values()), {}
        await asyncio.gather(*(reflector.stop() for reflector in reflectors))

    def reflector(self, kind: Kind) -> Reflector:
        """The running list+watch of `kind` (for status and tests)."""
        return self._reflectors[kind]

    async def wait_ready(self, timeout: float) -> None:
        """Wait until every kind has been listed; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not self.ready:
                await asyncio.sleep(0.05)


_RESOURCES: Mapping[Kind, Any] = {
    Kind.MODELS: SecureModelResource,
    Kind.POLICIES: ModelTrustPolicyResource,
    Kind.NAMESPACES: Namespace,
    Kind.SIGNATURES: ConfigMap,
}
_NAMESPACED = frozenset({Kind.MODELS, Kind.SIGNATURES})
_LABELS: Mapping[Kind, dict[str, str]] = {Kind.SIGNATURES: {SIGNATURE_LABEL: "true"}}


def _as_dict(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = obj.to_dict()
    return result


def _scope(kind: Kind) -> dict[str, Any]:
    scope: dict[str, Any] = {}
    if kind in _NAMESPACED:
        scope["namespace"] = ALL_NS
    if kind in _LABELS:
        scope["labels"] = _LABELS[kind]
    return scope


def _reflector(state: WatchedState, kind: Kind, client: AsyncClient) -> Reflector:
    """The list+watch of `kind` with `client`, into `state`."""

    async def list_objects() -> Listing:
        listing = client.list(_RESOURCES[kind], **_scope(kind))
        objects = [_as_dict(obj) async for obj in listing]
        return objects, listing.resourceVersion

    async def watch_from(version: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        async for event, obj in client.watch(_RESOURCES[kind], resource_version=version, **_scope(kind)):
            yield event, _as_dict(obj)

    return Reflector(
        kind.value,
        list_objects=list_objects,
        watch_from=watch_from,
        on_listed=lambda objects: state.replace(kind, objects),
        on_event=lambda event, obj: state.apply(kind, event, obj),
        resync_period=state.resync_period,
        backoff=exponential_backoff(INITIAL_BACKOFF, MAX_BACKOFF),
    )
