"""The serving workload: ServiceAccount, trust ConfigMap, Deployment, Service, PodDisruptionBudget.

The Deployment is the only place a model is loaded, so it is built only for a verified model: its
init container `samd-fetch` downloads, decrypts and checks the model against the verified manifest
digest into a memory-backed volume, and the serving container reads that volume read-only. Both run
under the Pod Security Standard `restricted`; only the init container sees the key Secret and the
storage credentials.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from samd.operator.builders.context import ModelContext
from samd.operator.builders.metadata import (
    MODEL_ANNOTATION,
    MODEL_DIGEST_ANNOTATION,
    MODEL_VERSION_ANNOTATION,
    Manifest,
    owned_labels,
    owned_metadata,
    pod_selector_labels,
)
from samd.operator.builders.names import (
    serving_name,
    signature_config_map_name,
    tls_secret_name,
    trust_config_map_name,
    workload_service_account_name,
)
from samd.spec import TrustedSigner

WORKLOAD_USER = 65532
"""The unprivileged user (and group) every container runs as (the distroless `nonroot` user)."""

FETCH_CONTAINER = "samd-fetch"
SERVER_CONTAINER = "server"
"""The container on the model port: `samd serve`, or `samd proxy` when the SecureModel names an image."""
MODEL_SERVER_CONTAINER = "model-server"
"""The user's own model server (spec.serving.image), reachable only through `samd proxy` on localhost."""
PORT_NAME = "https"
METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"
UPSTREAM_HOST = "127.0.0.1"
UPSTREAM_PORT = 8080
"""Where the user's model server must listen (loopback only: the pod's network reaches only the proxy)."""
PROXY_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "256Mi"},
}

MODEL_DIR = "/models"
KEYS_DIR = "/var/run/samd/keys"
KEYSET_FILE = "keyset.json"
TRUST_DIR = "/var/run/samd/trust"
TRUST_FILE = "signers.json"
TLS_DIR = "/var/run/samd/tls"

SECRET_FILE_MODE = 0o400
"""Owner-read only; fsGroup adds group read for the workload group (the kubelet does so for fsGroup)."""

AWS_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def serves(ctx: ModelContext) -> bool:
    """Whether the model is to be served: serving is enabled and its signature verified."""
    return ctx.spec.serving.enabled and ctx.manifest_digest is not None


def build_service_account(ctx: ModelContext) -> Manifest:
    """The workload's identity; its token is never mounted (the pods do not call the API server)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": owned_metadata(ctx, workload_service_account_name(ctx.name)),
        "automountServiceAccountToken": False,
    }


def build_trust_config_map(ctx: ModelContext, signers: Iterable[TrustedSigner]) -> Manifest:
    """The signers the init container trusts, from the trust policies that cover the namespace.

    Written in a stable order without duplicates, so the same policies always give the same object.
    """
    names_by_document = {
        json.dumps(
            signer.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True
        ): signer.name
        for signer in signers
    }
    documents = sorted(names_by_document, key=lambda document: (names_by_document[document], document))
    ordered = [json.loads(document) for document in documents]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owned_metadata(ctx, trust_config_map_name(ctx.name)),
        "data": {TRUST_FILE: json.dumps(ordered, indent=2, sort_keys=True) + "\n"},
    }


SIGNATURE_FILE = "bundle.json"
SIGNATURE_LABEL = "samd.dev/signature"


def build_signature_config_map(ctx: ModelContext, bundle: bytes) -> Manifest:
    """The signature bundle as fetched from spec.signature.uri, for the admission webhook's watch.

    The webhook verifies it itself (it trusts no status written by anyone); storing it in the
    cluster keeps storage reads off the admission path.
    """
    metadata = owned_metadata(ctx, signature_config_map_name(ctx.name))
    metadata["labels"] = {**metadata["labels"], SIGNATURE_LABEL: "true"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {SIGNATURE_FILE: bundle.decode("utf-8", errors="replace")},
    }


def fetch_command(ctx: ModelContext) -> list[str]:
    """The command of the init container: fetch, decrypt and verify the model into MODEL_DIR.

    The one place the operator spells `samd fetch` flags.
    """
    if ctx.manifest_digest is None:
        raise ValueError(f"model {ctx.namespace}/{ctx.name} has no verified manifest digest to pin")
    command = ["samd", "fetch", ctx.spec.artifact.uri, "--signature", ctx.spec.signature.uri]
    encryption = ctx.spec.encryption
    if encryption is not None:
        key_ref = encryption.key_ref
        if key_ref.provider == "local":
            command += ["--key", f"local:{KEYS_DIR}/{KEYSET_FILE}"]
        elif key_ref.uri:
            command += ["--key", key_ref.uri]
        else:  # the spec refuses this; without a key the fetch could not decrypt
            raise ValueError(f"model {ctx.namespace}/{ctx.name}: a {key_ref.provider} key needs a uri")
    command += ["--trust-config", f"{TRUST_DIR}/{TRUST_FILE}", "--expect-digest", ctx.manifest_digest]
    # The server checks the model again at load with the kept signature (see `samd serve`).
    command += ["--output", MODEL_DIR, "--keep-signature"]
    # JSON lines, like every other container of the pod (the loader's decision line included).
    command += ["--log-format", "json"]
    return command


def _front_end_flags(ctx: ModelContext) -> list[str]:
    """The flags `samd serve` and `samd proxy` share: the verified model, mTLS, identity, limits."""
    if ctx.manifest_digest is None:
        raise ValueError(f"model {ctx.namespace}/{ctx.name} has no verified manifest digest to pin")
    serving = ctx.spec.serving
    flags = [
        "--model-dir",
        MODEL_DIR,
        "--model-name",
        ctx.name,
        "--model-version",
        ctx.spec.version,
        "--expect-digest",
        ctx.manifest_digest,
        "--trust-config",
        f"{TRUST_DIR}/{TRUST_FILE}",
        "--port",
        str(serving.port),
        "--tls-cert",
        f"{TLS_DIR}/tls.crt",
        "--tls-key",
        f"{TLS_DIR}/tls.key",
        "--client-ca",
        f"{TLS_DIR}/ca.crt",
        "--client-organization",
        client_organization(ctx),
    ]
    for client in serving.clients:
        flags += ["--allowed-client", client.name]
    flags += [
        "--rate-limit",
        f"{serving.rate_limit.requests_per_second:g}",
        "--burst",
        str(serving.rate_limit.burst),
        "--metrics-port",
        str(METRICS_PORT),
        "--log-format",
        "json",
    ]
    return flags


def serve_command(ctx: ModelContext) -> list[str]:
    """The command of the serving container: mTLS on the model port, with the model's rate limit.

    The operator CA signs the client certificates of every model, so the server also requires the
    organization this model's client certificates carry (a client of another model is refused) and
    a common name among spec.serving.clients. It verifies the model again at load against the
    pinned digest and the trusted signers, and puts the model's provenance on every response.
    """
    return ["samd", "serve", *_front_end_flags(ctx), "--format", ctx.spec.format.value]


def proxy_command(ctx: ModelContext) -> list[str]:
    """The command of the front end before a user's model server: `samd serve`'s flags, an upstream."""
    return ["samd", "proxy", *_front_end_flags(ctx), "--upstream", f"http://{UPSTREAM_HOST}:{UPSTREAM_PORT}"]


def model_server_env(ctx: ModelContext) -> list[dict[str, str]]:
    """How the user's model server learns to listen on localhost only and where its model is.

    `SAMD_*` is the convention for any image (its entrypoint must honour them); MLServer reads its
    own `MLSERVER_*` settings directly. The pod's network reaches only the proxy's port anyway (the
    NetworkPolicy), but a server on loopback cannot be reached around the proxy even from inside.
    """
    return [
        {"name": "SAMD_UPSTREAM_HOST", "value": UPSTREAM_HOST},
        {"name": "SAMD_UPSTREAM_PORT", "value": str(UPSTREAM_PORT)},
        {"name": "SAMD_MODEL_DIR", "value": MODEL_DIR},
        {"name": "SAMD_MODEL_NAME", "value": ctx.name},
        {"name": "MLSERVER_HOST", "value": UPSTREAM_HOST},
        {"name": "MLSERVER_HTTP_PORT", "value": str(UPSTREAM_PORT)},
        {"name": "MLSERVER_GRPC_PORT", "value": str(UPSTREAM_PORT + 1)},
        {"name": "MLSERVER_METRICS_PORT", "value": str(UPSTREAM_PORT + 2)},
        {"name": "MLSERVER_MODELS_DIR", "value": MODEL_DIR},
    ]


def client_organization(ctx: ModelContext) -> str:
    """The subject organization (O) of the model's client certificates."""
    return f"samd:{ctx.namespace}:{ctx.name}"


def container_security_context() -> dict[str, Any]:
    """Pod Security Standard `restricted`, on every container."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": WORKLOAD_USER,
        "runAsGroup": WORKLOAD_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKLOAD_USER,
        "runAsGroup": WORKLOAD_USER,
        # Secret files are owned by root; fsGroup lets the workload group read them.
        "fsGroup": WORKLOAD_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _memory_volume(name: str, size: str) -> dict[str, Any]:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def _uses_local_keyset(ctx: ModelContext) -> bool:
    encryption = ctx.spec.encryption
    return encryption is not None and encryption.key_ref.provider == "local"


def _volumes(ctx: ModelContext) -> list[dict[str, Any]]:
    settings = ctx.settings
    volumes = [
        _memory_volume("model", settings.model_volume_size),
        _memory_volume("fetch-tmp", settings.scratch_volume_size),
        _memory_volume("server-tmp", settings.scratch_volume_size),
        *(
            [_memory_volume("model-server-tmp", settings.scratch_volume_size)]
            if ctx.spec.serving.image
            else []
        ),
        {"name": "trust", "configMap": {"name": trust_config_map_name(ctx.name)}},
        {"name": "tls", "secret": {"secretName": tls_secret_name(ctx.name), "defaultMode": SECRET_FILE_MODE}},
    ]
    encryption = ctx.spec.encryption
    if encryption is not None and _uses_local_keyset(ctx):
        volumes.append(
            {
                "name": "keys",
                "secret": {
                    "secretName": encryption.key_ref.secret_name,
                    "defaultMode": SECRET_FILE_MODE,
                    # Only the keyset, under the name fetch_command uses; a Secret without it fails the pod.
                    "items": [{"key": settings.keyset_data_key, "path": KEYSET_FILE}],
                },
            }
        )
    return volumes


def _fetch_container(ctx: ModelContext) -> dict[str, Any]:
    mounts = [
        {"name": "model", "mountPath": MODEL_DIR},
        {"name": "fetch-tmp", "mountPath": "/tmp"},  # noqa: S108 - a private memory-backed volume
        {"name": "trust", "mountPath": TRUST_DIR, "readOnly": True},
    ]
    if _uses_local_keyset(ctx):
        mounts.append({"name": "keys", "mountPath": KEYS_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": ctx.settings.fetch_image,
        "command": fetch_command(ctx),
        # The decrypted model is written to a memory volume, charged to the pod like the server's memory.
        "resources": copy.deepcopy(ctx.spec.serving.resources),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    artifact = ctx.spec.artifact
    env: list[dict[str, Any]] = []
    # The storage client reads its endpoint and region from the standard AWS variables.
    if artifact.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": artifact.endpoint})
    if artifact.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": artifact.region})
    if artifact.credentials_secret:
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": artifact.credentials_secret, "key": key}}}
            for key in AWS_CREDENTIAL_KEYS
        ]
    if env:
        container["env"] = env
    return container


def _front_end_container(ctx: ModelContext, command: list[str], resources: dict[str, Any]) -> dict[str, Any]:
    serving = ctx.spec.serving
    return {
        "name": SERVER_CONTAINER,
        "image": ctx.settings.default_image,
        "command": command,
        "ports": [
            {"name": PORT_NAME, "containerPort": serving.port, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"tcpSocket": {"port": PORT_NAME}},
        "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
            {"name": "server-tmp", "mountPath": "/tmp"},  # noqa: S108 - a private memory-backed volume
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "trust", "mountPath": TRUST_DIR, "readOnly": True},
        ],
    }


def _model_server_container(ctx: ModelContext, image: str) -> dict[str, Any]:
    """The user's image with its own command; it sees the model read-only and no Secret at all."""
    return {
        "name": MODEL_SERVER_CONTAINER,
        "image": image,
        "env": model_server_env(ctx),
        "resources": copy.deepcopy(ctx.spec.serving.resources),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
            {"name": "model-server-tmp", "mountPath": "/tmp"},  # noqa: S108 - a private memory-backed volume
        ],
    }


def _serving_containers(ctx: ModelContext) -> list[dict[str, Any]]:
    """`samd serve` alone, or `samd proxy` in front of the user's own model server (spec.serving.image)."""
    image = ctx.spec.serving.image
    if image is None:
        return [_front_end_container(ctx, serve_command(ctx), copy.deepcopy(ctx.spec.serving.resources))]
    return [
        _front_end_container(ctx, proxy_command(ctx), copy.deepcopy(PROXY_RESOURCES)),
        _model_server_container(ctx, image),
    ]


def build_deployment(ctx: ModelContext) -> Manifest | None:
    """The hardened serving Deployment, or None when serving is off or the model is not verified."""
    digest = ctx.manifest_digest
    if not ctx.spec.serving.enabled or digest is None:
        return None
    annotations = {
        MODEL_ANNOTATION: ctx.name,
        MODEL_DIGEST_ANNOTATION: digest,
        MODEL_VERSION_ANNOTATION: ctx.spec.version,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(ctx, serving_name(ctx.name)),
        "spec": {
            "replicas": ctx.spec.serving.replicas,
            "selector": {"matchLabels": pod_selector_labels(ctx)},
            "template": {
                "metadata": {"labels": owned_labels(ctx), "annotations": annotations},
                "spec": {
                    "serviceAccountName": workload_service_account_name(ctx.name),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "initContainers": [_fetch_container(ctx)],
                    "containers": _serving_containers(ctx),
                    "volumes": _volumes(ctx),
                },
            },
        },
    }


def build_service(ctx: ModelContext) -> Manifest | None:
    """A ClusterIP Service on the mTLS port, or None when serving is off."""
    if not ctx.spec.serving.enabled:
        return None
    port = ctx.spec.serving.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(ctx, serving_name(ctx.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": pod_selector_labels(ctx),
            "ports": [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def build_pdb(ctx: ModelContext) -> Manifest | None:
    """A PodDisruptionBudget keeping all but one replica up, only for a served model with replicas > 1."""
    if not serves(ctx) or ctx.spec.serving.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owned_metadata(ctx, serving_name(ctx.name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": pod_selector_labels(ctx)}},
    }
