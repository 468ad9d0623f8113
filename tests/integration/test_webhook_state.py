"""The webhook's watched state against the real API server: it syncs, follows every change, re-lists.

The state is what the admission path decides from without calling the API server, so a change it
misses is a wrong decision: each kind's creates, updates and deletes must arrive, and a watch that
expires or breaks must be followed by a fresh list that also brings what happened meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import Status
from lightkube.resources.core_v1 import ConfigMap

from samd.operator.builders.context import BuilderSettings, ModelContext
from samd.operator.builders.serving import SIGNATURE_LABEL, build_deployment, build_signature_config_map
from samd.operator.config import OperatorConfig
from samd.signing import VerificationResult
from samd.spec import parse_secure_model
from samd.webhook.cache import VerificationCache
from samd.webhook.decide import PolicyDecider
from samd.webhook.review import AdmissionRequest
from samd.webhook.state import Kind, SecureModelResource, WatchedState
from tests.support.cluster import Cluster
from tests.support.crds import install_crds
from tests.support.models import make_model
from tests.unit.test_webhook_decide import tampered

pytestmark = pytest.mark.integration

GROUP, VERSION = "samd.dev", "v1alpha1"
SYNC_TIMEOUT = 20.0


def public_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def secure_model(name: str, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SecureModel",
        "metadata": {"name": name},
        "spec": {
            "format": "onnx",
            "version": version,
            "owner": "fraud-team",
            "artifact": {"uri": f"s3://models/{name}.samd"},
            "signature": {"uri": f"s3://models/{name}.sig"},
            "encryption": {"keyRef": {"provider": "local", "secretName": f"{name}-keyset"}},
        },
    }


def trust_policy(name: str, team: str, mode: str = "enforce") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelTrustPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"samd.dev/team": team}},
            "mode": mode,
            "signers": [{"name": "ml-ci", "publicKey": public_key_pem()}],
        },
    }


def signature_config_map(model: str, bundle: str, *, labelled: bool = True) -> client.V1ConfigMap:
    labels = {"samd.dev/model": model, **({"samd.dev/signature": "true"} if labelled else {})}
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"{model}-signature", labels=labels), data={"bundle.json": bundle}
    )


async def eventually(check: Callable[[], bool], what: str, timeout: float = SYNC_TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


class ExpiringClient(AsyncClient):
    """A real client whose watch of one kind can be made to end as the API server ends an expired
    one (410 Gone, "too old resource version"), or to break like a dropped connection, once."""

    def __init__(self, config: KubeConfig) -> None:
        super().__init__(config=config)
        self.fail_next: dict[type[Any], Exception] = {}

    def watch(self, res: Any, **kwargs: Any) -> Any:
        inner = super().watch(res, **kwargs)

        async def events() -> AsyncIterator[Any]:
            async for event in inner:
                failure = self.fail_next.pop(res, None)
                if failure is not None:
                    raise failure  # this event is lost, like every event after an expired version
                yield event

        return events()


def review(kind: str, obj: dict[str, Any], namespace: str) -> AdmissionRequest:
    group = "" if kind == "Pod" else "apps"
    return AdmissionRequest.model_validate(
        {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
        }
    )


def gone() -> ApiError:
    return ApiError(status=Status(code=410, reason="Expired", message="too old resource version: 1 (4242)"))


@pytest.fixture(scope="module")
def crds(k8s: client.ApiClient) -> client.ApiClient:
    install_crds(k8s)
    return k8s


@pytest.fixture
def custom(crds: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(crds)


@pytest.fixture
def core(k8s: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s)


@pytest.fixture
def policy_names(custom: client.CustomObjectsApi) -> Iterator[list[str]]:
    """Names for this test's cluster-scoped policies; whatever is left of them is deleted afterwards."""
    names = [f"test-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    yield names
    for name in names:
        try:
            custom.delete_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", name)
        except client.ApiException as error:
            if error.status != 404:
                raise


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[ExpiringClient]:
    lightkube_client = ExpiringClient(KubeConfig.from_file(str(cluster.kubeconfig)))
    yield lightkube_client
    await lightkube_client.close()


@pytest.fixture
async def state(api: ExpiringClient, crds: client.ApiClient) -> AsyncIterator[WatchedState]:
    watched = WatchedState()
    watched.start(api)
    await watched.wait_ready(SYNC_TIMEOUT)
    yield watched
    await watched.stop()


async def test_the_state_lists_every_kind_and_becomes_ready(
    api: ExpiringClient,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    policy_names: list[str],
) -> None:
    for name in ("fraud", "other"):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", secure_model(name))
    custom.create_cluster_custom_object(
        GROUP, VERSION, "modeltrustpolicies", trust_policy(policy_names[0], "ml")
    )
    core.patch_namespace(namespace, {"metadata": {"labels": {"samd.dev/team": "ml"}}})
    core.create_namespaced_config_map(namespace, signature_config_map("fraud", '{"bundle": 1}'))
    core.create_namespaced_config_map(namespace, signature_config_map("other", "{}", labelled=False))
    watched = WatchedState()
    assert watched.ready is False

    watched.start(api)
    try:
        await watched.wait_ready(SYNC_TIMEOUT)

        model = watched.model(namespace, "fraud")
        assert model is not None
        assert model.spec is not None
        assert model.spec.version == "1.0.0"
        assert model.uid  # the API server's uid, which the signature's ownerReference must name
        assert [p.name for p in watched.policies() if p.name == policy_names[0]] == [policy_names[0]]
        # (The session's operator may add samd.dev/protected: the namespace holds SecureModels.)
        labels = dict(watched.namespace_labels(namespace) or {})
        labels.pop("samd.dev/protected", None)
        assert labels == {
            "kubernetes.io/metadata.name": namespace,
            "samd.dev/test": "true",
            "samd.dev/team": "ml",
        }
        signature = watched.signature_of(model)
        assert signature is not None
        assert signature.bundle == b'{"bundle": 1}'
        other = watched.model(namespace, "other")
        assert other is not None
        assert watched.signature_of(other) is None  # its ConfigMap lacks samd.dev/signature=true
        assert sorted(m.name for m in watched.models_in(namespace)) == ["fraud", "other"]
        assert all(watched.reflector(kind).lists == 1 for kind in Kind)
    finally:
        await watched.stop()


async def test_secure_model_creates_updates_and_deletes_arrive(
    state: WatchedState, custom: client.CustomObjectsApi, namespace: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", secure_model("fraud"))
    await eventually(lambda: state.model(namespace, "fraud") is not None, "the created model")

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "securemodels", "fraud", {"spec": {"version": "1.1.0"}}
    )

    def updated() -> bool:
        model = state.model(namespace, "fraud")
        return model is not None and model.spec is not None and model.spec.version == "1.1.0"

    await eventually(updated, "the updated version")

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", "fraud")
    await eventually(lambda: state.model(namespace, "fraud") is None, "the deleted model gone")
    assert list(state.models_in(namespace)) == []


async def test_policy_changes_arrive_with_a_new_generation_and_a_notice(
    state: WatchedState, custom: client.CustomObjectsApi, policy_names: list[str]
) -> None:
    name = policy_names[0]
    notices: list[str] = []
    state.add_policy_listener(notices.append)

    def policy() -> Any:
        return next((p for p in state.policies() if p.name == name), None)

    custom.create_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", trust_policy(name, "ml"))
    await eventually(lambda: policy() is not None, "the created policy")
    first = policy().generation

    custom.patch_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", name, {"spec": {"mode": "warn"}})
    await eventually(lambda: policy() is not None and policy().spec.mode == "warn", "the updated mode")
    second = policy().generation
    custom.patch_cluster_custom_object(
        GROUP, VERSION, "modeltrustpolicies", name, {"metadata": {"labels": {"owner": "security"}}}
    )
    marker = trust_policy(policy_names[1], "other")
    custom.create_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", marker)
    await eventually(lambda: any(p.name == policy_names[1] for p in state.policies()), "the marker policy")

    assert second > first
    assert policy().generation == second  # a label is not a new policy: its verifications stay cached

    custom.delete_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", name)
    await eventually(lambda: policy() is None, "the deleted policy gone")
    assert notices.count(name) == 3  # created, changed, deleted


async def test_namespace_label_changes_arrive(
    state: WatchedState, core: client.CoreV1Api, namespace: str
) -> None:
    await eventually(lambda: state.namespace_labels(namespace) is not None, "the test namespace")

    core.patch_namespace(namespace, {"metadata": {"labels": {"samd.dev/team": "ml"}}})
    await eventually(
        lambda: (state.namespace_labels(namespace) or {}).get("samd.dev/team") == "ml", "the new label"
    )

    core.patch_namespace(namespace, {"metadata": {"labels": {"samd.dev/team": None}}})
    await eventually(
        lambda: "samd.dev/team" not in (state.namespace_labels(namespace) or {"samd.dev/team": "?"}),
        "the removed label",
    )


async def test_signature_config_map_changes_arrive_and_unlabelled_ones_leave(
    state: WatchedState, custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", secure_model("fraud"))
    await eventually(lambda: state.model(namespace, "fraud") is not None, "the model")
    model = state.model(namespace, "fraud")
    assert model is not None

    def bundle() -> bytes | None:
        signature = state.signature_of(model)
        return signature.bundle if signature is not None else None

    core.create_namespaced_config_map(namespace, signature_config_map("fraud", "first"))
    await eventually(lambda: bundle() == b"first", "the stored bundle")

    core.patch_namespaced_config_map("fraud-signature", namespace, {"data": {"bundle.json": "second"}})
    await eventually(lambda: bundle() == b"second", "the replaced bundle")

    core.patch_namespaced_config_map(
        "fraud-signature", namespace, {"metadata": {"labels": {"samd.dev/signature": None}}}
    )
    await eventually(lambda: state.signature_of(model) is None, "the ConfigMap that lost its label gone")


async def test_an_expired_watch_lists_again_and_catches_up(
    state: WatchedState,
    api: ExpiringClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", secure_model("fraud"))
    await eventually(lambda: state.model(namespace, "fraud") is not None, "the model")
    model = state.model(namespace, "fraud")
    assert model is not None
    reflector = state.reflector(Kind.SIGNATURES)
    lists_before = reflector.lists
    api.fail_next[ConfigMap] = gone()

    core.create_namespaced_config_map(namespace, signature_config_map("fraud", "missed by the watch"))

    await eventually(lambda: state.signature_of(model) is not None, "the ConfigMap, from the new list")
    assert reflector.lists == lists_before + 1
    assert reflector.failures == 0  # 410 is routine: listed again at once, no backoff
    signature = state.signature_of(model)
    assert signature is not None
    assert signature.bundle == b"missed by the watch"


async def test_a_broken_watch_lists_again_after_a_backoff(
    state: WatchedState, api: ExpiringClient, custom: client.CustomObjectsApi, namespace: str
) -> None:
    reflector = state.reflector(Kind.MODELS)
    lists_before = reflector.lists
    api.fail_next[SecureModelResource] = httpx2.RemoteProtocolError("peer closed connection")

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", secure_model("fraud"))

    await eventually(lambda: state.model(namespace, "fraud") is not None, "the model, from the new list")
    assert reflector.lists == lists_before + 1


async def test_watches_started_again_list_again_and_drop_what_was_deleted_meanwhile(
    state: WatchedState, api: ExpiringClient, custom: client.CustomObjectsApi, namespace: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", secure_model("fraud"))
    await eventually(lambda: state.model(namespace, "fraud") is not None, "the model")

    await state.stop()
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", "fraud")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", secure_model("churn"))
    await asyncio.sleep(0.5)
    assert state.model(namespace, "fraud") is not None  # stopped: nothing arrives
    assert state.ready is True  # and what it knows keeps serving

    state.start(api)

    await eventually(lambda: state.model(namespace, "churn") is not None, "the model created meanwhile")
    assert state.model(namespace, "fraud") is None
    assert state.reflector(Kind.MODELS).lists == 1


async def test_watches_are_replaced_by_a_fresh_list_every_resync_period(
    api: ExpiringClient, crds: client.ApiClient
) -> None:
    watched = WatchedState(resync_period=0.5)
    watched.start(api)
    try:
        await watched.wait_ready(SYNC_TIMEOUT)
        await eventually(lambda: all(watched.reflector(kind).lists >= 3 for kind in Kind), "two resyncs")
        assert all(watched.reflector(kind).failures == 0 for kind in Kind)
    finally:
        await watched.stop()


async def test_the_operators_workload_as_the_api_server_stores_it_is_admitted_from_watched_state(
    state: WatchedState, k8s: client.ApiClient, namespace: str, policy_names: list[str], tmp_path: Path
) -> None:
    """Defaults the API server adds (pull policy, termination fields, volume modes) change nothing,
    and a bundle tampered with in the cluster is refused as soon as the watch brings it."""
    custom, core, apps = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    artifacts = make_model(
        tmp_path / "fraud", model_name="fraud", version="1.0.0"
    )  # as secure_model("fraud")
    team = f"team-{namespace}"
    policy = trust_policy(policy_names[0], team)
    policy["spec"]["signers"][0]["publicKey"] = artifacts.public_key_pem
    custom.create_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy)
    core.patch_namespace(namespace, {"metadata": {"labels": {"samd.dev/team": team}}})
    model = secure_model("fraud")
    model["spec"]["artifact"]["uri"] = artifacts.artifact_uri
    model["spec"]["signature"]["uri"] = artifacts.signature_uri
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securemodels", model)
    context = ModelContext(
        name="fraud",
        namespace=namespace,
        uid=created["metadata"]["uid"],
        spec=parse_secure_model(model["spec"]),
        manifest_digest=artifacts.manifest_digest(),
        settings=BuilderSettings.of(OperatorConfig()),  # the operator's defaults, as the webhook's
    )
    signature = build_signature_config_map(context, artifacts.signature.read_bytes())
    # Without the operator's own labels: an operator running in this session (it cannot read the
    # model's local files) does not count it among its objects, so it leaves it to this test.
    signature["metadata"]["labels"] = {SIGNATURE_LABEL: "true"}
    core.create_namespaced_config_map(namespace, signature)  # type: ignore[arg-type] # dicts are accepted
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="fraud-model"))
    )
    deployment = build_deployment(context)
    assert deployment is not None
    deployment["metadata"]["labels"] = {}  # left alone by a running operator, as the ConfigMap above
    apps.create_namespaced_deployment(namespace, deployment)  # type: ignore[arg-type] # dicts are accepted
    pods: list[Any] = []

    def pod_created() -> bool:
        pods[:] = core.list_namespaced_pod(namespace).items
        return bool(pods)

    await eventually(pod_created, "the Deployment's pod")
    stored_deployment = apps.read_namespaced_deployment(deployment["metadata"]["name"], namespace)
    # The objects as JSON, as the API server sends them in an AdmissionReview (with its defaults).
    pod = k8s.sanitize_for_serialization(pods[0])  # type: ignore[no-untyped-call]
    stored = k8s.sanitize_for_serialization(stored_deployment)  # type: ignore[no-untyped-call]
    decider = PolicyDecider(state, VerificationCache[VerificationResult]())

    def fraud_model() -> Any:
        return state.model(namespace, "fraud")

    await eventually(
        lambda: fraud_model() is not None and state.signature_of(fraud_model()) is not None, "state"
    )
    await eventually(
        lambda: (state.namespace_labels(namespace) or {}).get("samd.dev/team") == team, "the label"
    )
    await eventually(lambda: any(p.name == policy_names[0] for p in state.policies()), "the policy")

    for kind, obj in (("Pod", pod), ("Deployment", stored)):
        decision = await decider.decide(review(kind, obj, namespace))
        assert decision.allowed is True, decision
        assert decision.reason == "Verified"

    core.patch_namespaced_config_map(
        "fraud-signature",
        namespace,
        {"data": {"bundle.json": tampered(artifacts.signature.read_bytes()).decode()}},
    )
    await eventually(
        lambda: state.signature_of(fraud_model()).bundle != artifacts.signature.read_bytes(),
        "the tampered bundle",
    )

    refused = await decider.decide(review("Pod", pod, namespace))
    assert refused.allowed is False
    assert refused.reason == "SignatureInvalid"
    assert f"does not verify under ModelTrustPolicy {policy_names[0]}" in refused.message
