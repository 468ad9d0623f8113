"""The admission policy over hand-written objects and real signatures (issue 5 §2).

The admitted pod is the one the operator builds (`build_deployment`) for a model signed with
`samd.signing.sign_model`; every other case changes one thing in it, or in the signature bundle,
and must be refused with a message that names that one thing.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from samd.errors import SamdError
from samd.operator.builders import serving as serving_builder
from samd.operator.builders.context import ModelContext
from samd.operator.builders.serving import build_deployment, build_signature_config_map
from samd.signing import VerificationResult
from samd.spec import parse_secure_model
from samd.webhook.access import AccessReviewer, Attributes
from samd.webhook.cache import VerificationCache, VerificationKey
from samd.webhook.decide import (
    Coverage,
    DecisionConfig,
    ExpectedLoader,
    PolicyDecider,
    Subject,
    Violation,
    check_pod_security,
    compare_argv,
    conclude,
    expected_for,
    mentions_uri,
)
from samd.webhook.review import AdmissionRequest, Decision, UserInfo
from samd.webhook.state import Kind, WatchedState, read_model
from tests.support.models import ModelArtifacts, make_model
from tests.support.secret_references import SECRET, Example, examples

pytestmark = pytest.mark.unit

NAMESPACE = "ml"
PROTECTED = {"samd.dev/protected": "true"}
LOADER_IMAGE = "samd:0.1.0"
SETTINGS = DecisionConfig().builder_settings
"""The operator's default settings, which the webhook's default DecisionConfig compares pods with."""
KEY_SECRET = "fraud-keyset"
OTHER_KEY_SECRET = "churn-keyset"
WORKLOAD_GROUPS = {
    "Deployment": ("apps", "deployments"),
    "StatefulSet": ("apps", "statefulsets"),
    "DaemonSet": ("apps", "daemonsets"),
    "ReplicaSet": ("apps", "replicasets"),
    "Job": ("batch", "jobs"),
    "CronJob": ("batch", "cronjobs"),
}


# --- the objects ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fraud(tmp_path_factory: pytest.TempPathFactory) -> ModelArtifacts:
    """The model the pods run, signed by the key the policy trusts."""
    return make_model(tmp_path_factory.mktemp("fraud"), model_name="fraud", version="1.2.0")


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> ModelArtifacts:
    """Another model in the same namespace, signed by a key no policy trusts."""
    return make_model(tmp_path_factory.mktemp("churn"), model_name="churn", version="1.2.0")


def secure_model(
    name: str, artifacts: ModelArtifacts, *, key_secret: str = KEY_SECRET, **spec_changes: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "format": "onnx",
        "version": "1.2.0",
        "owner": "fraud-team",
        "artifact": {"uri": artifacts.artifact_uri},
        "signature": {"uri": artifacts.signature_uri},
        "encryption": {"keyRef": {"provider": "local", "secretName": key_secret}},
        "serving": {"clients": [{"name": "checkout"}]},
    }
    spec.update(spec_changes)
    return {
        "apiVersion": "samd.dev/v1alpha1",
        "kind": "SecureModel",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}"},
        "spec": {k: v for k, v in spec.items() if v is not None},
    }


def trust_policy(
    name: str,
    public_key_pem: str,
    *,
    mode: str = "enforce",
    formats: tuple[str, ...] = ("onnx",),
    allow_downgrade: bool = False,
    selector: dict[str, Any] | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "samd.dev/v1alpha1",
        "kind": "ModelTrustPolicy",
        "metadata": {"name": name, "uid": uid or f"uid-{name}", "generation": 1},
        "spec": {
            "namespaceSelector": {"matchLabels": PROTECTED} if selector is None else selector,
            "mode": mode,
            "signers": [{"name": "ml-ci", "publicKey": public_key_pem}],
            "allowedFormats": list(formats),
            "requireEncryption": True,
            "versionPolicy": {"allowDowngrade": allow_downgrade},
            # The models here are local files; the URI rules have tests of their own (test_storage_guard).
            "allowLocalFiles": True,
        },
    }


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def model_context(model: dict[str, Any], digest: str) -> ModelContext:
    meta = model["metadata"]
    return ModelContext(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        spec=parse_secure_model(model["spec"]),
        manifest_digest=digest,
        settings=SETTINGS,
    )


def signature_config_map(
    model: dict[str, Any], bundle: bytes, digest: str = "sha256:" + "0" * 64
) -> dict[str, Any]:
    """The ConfigMap the operator stores the fetched bundle in (its own builder)."""
    return build_signature_config_map(model_context(model, digest), bundle)


def operator_pod(model: dict[str, Any], digest: str) -> dict[str, Any]:
    """A Pod stamped from the operator's Deployment for `model` and the verified `digest`."""
    deployment = build_deployment(model_context(model, digest))
    assert deployment is not None
    template = deployment["spec"]["template"]
    metadata = {**template["metadata"], "name": "fraud-7d9f", "namespace": NAMESPACE}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def workload(kind: str, pod: dict[str, Any]) -> dict[str, Any]:
    """A workload of `kind` whose pod template is `pod`'s metadata and spec."""
    template = {"metadata": pod["metadata"], "spec": pod["spec"]}
    group, _ = WORKLOAD_GROUPS[kind]
    body: dict[str, Any] = {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": "fraud"}}
    if kind == "CronJob":
        body["spec"] = {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}
    else:
        body["spec"] = {"selector": {"matchLabels": {"app": "fraud"}}, "template": template}
    return body


def review(
    obj: dict[str, Any] | None,
    *,
    kind: str | None = None,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    namespace_name: str = NAMESPACE,
    sub_resource: str = "",
) -> AdmissionRequest:
    kind = kind or (obj or {})["kind"]
    group, resource = WORKLOAD_GROUPS.get(kind, ("", "pods"))
    if kind == "SecureModel":
        group, resource = "samd.dev", "securemodels"
    version = "v1alpha1" if kind == "SecureModel" else "v1"
    request: dict[str, Any] = {
        "uid": "7c2c6d7e-1f0b-4a55-9d0c-1b2a3c4d5e6f",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "subResource": sub_resource,
        "name": "fraud",
        "namespace": namespace_name,
        "operation": operation,
        "userInfo": {"username": "alice", "groups": ["ml-engineers"]},
        "object": obj,
        "oldObject": old,
    }
    return AdmissionRequest.model_validate(request)


def tampered(bundle: bytes) -> bytes:
    """The bundle with one file digest of its signed statement changed (signature kept)."""
    document = json.loads(bundle)
    statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
    digest = statement["subject"][0]["digest"]["sha256"]
    statement["subject"][0]["digest"]["sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    document["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(document).encode()


@dataclass
class World:
    """Everything in the cluster for one test: change a field, then build the state and decide."""

    fraud: ModelArtifacts
    churn: ModelArtifacts
    models: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    namespaces: list[dict[str, Any]] = field(default_factory=list)
    config_maps: list[dict[str, Any]] = field(default_factory=list)
    config: DecisionConfig = field(default_factory=DecisionConfig)
    cache: VerificationCache[VerificationResult] = field(default_factory=VerificationCache)
    denied: set[str] | None = None
    """What the requester may not do, as `Attributes` print it ("get secrets fraud-keyset"); None: anything."""
    access_error: Exception | None = None
    questions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return self.fraud.manifest_digest()

    @property
    def model(self) -> dict[str, Any]:
        return self.models[0]

    def pod(self) -> dict[str, Any]:
        return operator_pod(self.model, self.digest)

    def decider(self) -> PolicyDecider:
        state = WatchedState.from_objects(
            models=self.models,
            policies=self.policies,
            namespaces=self.namespaces,
            config_maps=self.config_maps,
        )
        return PolicyDecider(state, self.cache, self.config, access=AccessReviewer(self._ask))

    async def _ask(self, user: UserInfo, attributes: Attributes) -> bool:
        """The API server's SubjectAccessReview, as far as this world's RBAC goes."""
        self.questions.append((user.username, str(attributes)))
        if self.access_error is not None:
            raise self.access_error
        return self.denied is None or str(attributes) not in self.denied

    async def decide(self, request: AdmissionRequest) -> Decision:
        return await self.decider().decide(request)


@pytest.fixture
def world(fraud: ModelArtifacts, churn: ModelArtifacts) -> World:
    """A protected namespace with two signed models, their stored signatures and one enforcing policy."""
    fraud_model = secure_model("fraud", fraud)
    churn_model = secure_model("churn", churn, key_secret=OTHER_KEY_SECRET)
    return World(
        fraud=fraud,
        churn=churn,
        models=[fraud_model, churn_model],
        policies=[trust_policy("production", fraud.public_key_pem)],
        namespaces=[namespace(NAMESPACE, PROTECTED), namespace("sandbox", {})],
        config_maps=[
            signature_config_map(fraud_model, fraud.signature.read_bytes()),
            signature_config_map(churn_model, churn.signature.read_bytes()),
        ],
    )


def assert_denied(decision: Decision, reason: str, *fragments: str) -> None:
    assert decision.allowed is False, decision
    assert decision.reason == reason, decision
    for fragment in fragments:
        assert fragment in decision.message, (fragment, decision.message)


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    for candidate in [
        *spec.get("initContainers", []),
        *spec["containers"],
        *spec.get("ephemeralContainers", []),
    ]:
        if candidate["name"] == name:
            found: dict[str, Any] = candidate
            return found
    raise KeyError(name)


# --- admitted ----------------------------------------------------------------------------------------------


async def test_the_operators_pod_for_a_signed_model_is_admitted(world: World) -> None:
    decision = await world.decide(review(world.pod()))

    assert decision.allowed is True
    assert decision.reason == "Verified"
    assert decision.model == f"{NAMESPACE}/fraud"
    assert decision.policy == "production"
    assert decision.warnings == ()


@pytest.mark.parametrize("kind", sorted(WORKLOAD_GROUPS))
async def test_each_workload_kind_with_the_operators_template_is_admitted(world: World, kind: str) -> None:
    decision = await world.decide(review(workload(kind, world.pod())))

    assert decision.allowed is True, decision
    assert decision.reason == "Verified"


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("Deployment", "spec.template"),
        ("StatefulSet", "spec.template"),
        ("DaemonSet", "spec.template"),
        ("ReplicaSet", "spec.template"),
        ("Job", "spec.template"),
        ("CronJob", "spec.jobTemplate.spec.template"),
    ],
)
async def test_each_workload_kind_is_refused_for_a_bad_template_at_its_path(
    world: World, kind: str, path: str
) -> None:
    pod = world.pod()
    container(pod, "server")["securityContext"]["privileged"] = True

    decision = await world.decide(review(workload(kind, pod)))

    assert_denied(decision, "InsecurePod", f"the pod template ({path}) of this {kind}", "privileged")


async def test_a_pod_without_a_model_or_model_secrets_is_admitted(world: World) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {
            "containers": [
                {"name": "web", "image": "nginx", "envFrom": [{"secretRef": {"name": "web-config"}}]}
            ],
            "volumes": [{"name": "certs", "secret": {"secretName": "web-tls"}}],
        },
    }

    decision = await world.decide(review(pod))

    assert decision.allowed is True
    assert decision.reason == "NoModelReferenced"


async def test_a_namespace_no_policy_covers_is_not_checked(world: World) -> None:
    pod = world.pod()
    pod["metadata"]["annotations"]["samd.dev/model"] = "ghost"
    container(pod, "server")["securityContext"]["privileged"] = True

    decision = await world.decide(review(pod, namespace_name="sandbox"))

    assert decision.allowed is True
    assert decision.reason == "NotCovered"
    assert "sandbox" in decision.message


async def test_a_namespace_not_yet_seen_gets_every_policy(world: World) -> None:
    pod = world.pod()
    pod["metadata"]["annotations"]["samd.dev/model"] = "ghost"

    decision = await world.decide(review(pod, namespace_name="created-a-moment-ago"))

    assert_denied(decision, "ModelNotFound", "ghost", "created-a-moment-ago")


@pytest.mark.parametrize(
    ("operation", "sub_resource"),
    [("DELETE", ""), ("CONNECT", ""), ("UPDATE", "status"), ("CREATE", "binding")],
)
async def test_requests_that_do_not_change_what_a_pod_runs_are_not_checked(
    world: World, operation: str, sub_resource: str
) -> None:
    pod = world.pod()
    pod["metadata"]["annotations"]["samd.dev/model"] = "ghost"

    decision = await world.decide(review(pod, operation=operation, sub_resource=sub_resource, old=pod))

    assert decision.allowed is True
    assert decision.reason == "NotApplicable"


async def test_an_update_that_leaves_the_pod_spec_alone_is_admitted(world: World) -> None:
    """A model whose policy tightened after its pods started: labels and finalizers still change."""
    old = world.pod()
    container(old, "server")["securityContext"]["privileged"] = True
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["release"] = "blue"

    decision = await world.decide(review(new, operation="UPDATE", old=old))

    assert decision.allowed is True
    assert decision.reason == "Unchanged"


async def test_an_update_that_changes_the_template_is_checked(world: World) -> None:
    old = world.pod()
    new = copy.deepcopy(old)
    container(new, "server")["securityContext"]["privileged"] = True

    decision = await world.decide(
        review(workload("Deployment", new), operation="UPDATE", old=workload("Deployment", old))
    )

    assert_denied(decision, "InsecurePod", "privileged")


# --- the model and its signature -------------------------------------------------------------------------


async def test_a_missing_model_is_refused(world: World) -> None:
    pod = world.pod()
    pod["metadata"]["annotations"]["samd.dev/model"] = "ghost"

    decision = await world.decide(review(pod))

    assert_denied(
        decision, "ModelNotFound", "references SecureModel 'ghost' which does not exist in namespace ml"
    )
    assert decision.model == "ml/ghost"


async def test_a_tampered_bundle_is_refused(world: World) -> None:
    world.config_maps[0] = signature_config_map(world.model, tampered(world.fraud.signature.read_bytes()))

    decision = await world.decide(review(world.pod()))

    assert_denied(decision, "SignatureInvalid", "does not verify under ModelTrustPolicy production", "ml-ci")


async def test_a_bundle_signed_by_an_untrusted_key_is_refused(world: World) -> None:
    world.config_maps[0] = signature_config_map(world.model, world.churn.signature.read_bytes())

    decision = await world.decide(review(world.pod()))

    assert_denied(decision, "SignatureInvalid", "SecureModel fraud", "production")


async def test_a_model_whose_signature_the_operator_has_not_stored_is_refused(world: World) -> None:
    del world.config_maps[0]

    decision = await world.decide(review(world.pod()))

    assert_denied(
        decision, "SignatureMissing", "has no verified signature yet", "kubectl get securemodel fraud -n ml"
    )


async def test_a_signature_config_map_the_model_does_not_own_is_refused(world: World) -> None:
    world.config_maps[0]["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-model-deleted-long-ago"

    decision = await world.decide(review(world.pod()))

    assert_denied(decision, "SignatureMissing", "not owned by it")


async def test_a_pod_pinning_another_digest_is_refused(world: World) -> None:
    pod = world.pod()
    other = "sha256:" + "ab" * 32
    pod["metadata"]["annotations"]["samd.dev/model-digest"] = other

    decision = await world.decide(review(pod))

    assert_denied(decision, "DigestMismatch", f"pins model digest {other}", f"covers {world.digest}")


async def test_a_pod_pinning_no_digest_is_refused(world: World) -> None:
    pod = world.pod()
    del pod["metadata"]["annotations"]["samd.dev/model-digest"]

    decision = await world.decide(review(pod))

    assert_denied(decision, "DigestMismatch", f"add the annotation samd.dev/model-digest: {world.digest}")


async def test_a_model_pinning_a_digest_its_signature_does_not_cover_is_refused(world: World) -> None:
    pin = "sha256:" + "cd" * 32
    world.models[0] = secure_model(
        "fraud", world.fraud, artifact={"uri": world.fraud.artifact_uri, "digest": pin}
    )

    decision = await world.decide(review(world.pod()))

    assert_denied(decision, "DigestMismatch", f"pins spec.artifact.digest {pin}")


async def test_a_model_in_a_format_the_policy_does_not_allow_is_refused_at_the_pod(world: World) -> None:
    world.models[0] = secure_model("fraud", world.fraud, format="pytorch")

    decision = await world.decide(review(world.pod()))

    assert_denied(decision, "PolicyViolation", "policy production allows formats onnx, not pytorch")


async def test_a_model_whose_spec_cannot_be_parsed_is_refused_at_the_pod(world: World) -> None:
    pod = world.pod()
    world.models[0] = secure_model("fraud", world.fraud, version="latest")

    decision = await world.decide(review(pod))

    assert_denied(decision, "InvalidModel", "SecureModel fraud cannot be used", "spec.version")


# --- the verifying loader ------------------------------------------------------------------------------------


async def test_a_pod_without_the_loader_is_refused(world: World) -> None:
    pod = world.pod()
    del pod["spec"]["initContainers"]

    decision = await world.decide(review(pod))

    assert_denied(decision, "LoaderMissing", "the verifying loader samd-fetch is missing")


async def test_a_loader_that_is_not_the_first_init_container_is_refused(world: World) -> None:
    pod = world.pod()
    early = {
        "name": "prepare",
        "image": "busybox",
        "securityContext": copy.deepcopy(container(pod, "server")["securityContext"]),
    }
    pod["spec"]["initContainers"].insert(0, early)

    decision = await world.decide(review(pod))

    assert_denied(decision, "LoaderMissing", "samd-fetch is not the first init container")


async def test_a_loader_from_another_image_is_refused(world: World) -> None:
    pod = world.pod()
    container(pod, "samd-fetch")["image"] = "attacker/samd:0.1.0"

    decision = await world.decide(review(pod))

    assert_denied(
        decision, "LoaderAltered", "'attacker/samd:0.1.0' is not an allowed loader image (samd:0.1.0)"
    )


async def test_the_allowed_loader_images_are_configurable(world: World) -> None:
    pinned = "registry.example/samd@sha256:" + "12" * 32
    world.config = DecisionConfig.from_env({"SAMD_WEBHOOK_LOADER_IMAGES": f"{pinned}, other:1"})
    pod = world.pod()
    container(pod, "samd-fetch")["image"] = pinned

    admitted = await world.decide(review(pod))
    container(pod, "samd-fetch")["image"] = LOADER_IMAGE
    refused = await world.decide(review(pod))

    assert admitted.allowed is True
    assert_denied(refused, "LoaderAltered", "'samd:0.1.0' is not an allowed loader image")


def _first_flag(argv: list[str]) -> int:
    return next(index for index, word in enumerate(argv) if word.startswith("--"))


def _replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    index = argv.index(flag)
    return [*argv[: index + 1], value, *argv[index + 2 :]]


def _drop_flag(argv: list[str], flag: str) -> list[str]:
    index = argv.index(flag)
    return [*argv[:index], *argv[index + 2 :]]


def _replace_artifact(argv: list[str], uri: str) -> list[str]:
    """The positional artifact URI (`samd fetch URI --flag ...`) replaced."""
    first = _first_flag(argv)
    return [*argv[: first - 1], uri, *argv[first:]]


@pytest.mark.parametrize(
    ("alter", "fragment"),
    [
        (
            lambda argv, d: _replace_flag(argv, "--expect-digest", "sha256:" + "ef" * 32),
            "--expect-digest is 'sha256:efef",
        ),
        (
            lambda argv, d: _replace_artifact(argv, "s3://elsewhere/model.samd"),
            "its command runs 'samd fetch s3://elsewhere/model.samd' instead of 'samd fetch file://",
        ),
        (
            lambda argv, d: _replace_flag(argv, "--signature", "file:///tmp/mine.sig"),
            "--signature is 'file:///tmp/mine.sig'",
        ),
        (lambda argv, d: _replace_flag(argv, "--output", "/tmp/models"), "--output is '/tmp/models'"),
        (
            lambda argv, d: _drop_flag(argv, "--trust-config"),
            "--trust-config is missing",
        ),
        (lambda argv, d: [*argv, "--skip-verify"], "--skip-verify is not a flag the operator sets"),
        (lambda argv, d: [*argv, "--expect-digest", d], "--expect-digest is given 2 times"),
        (lambda argv, d: ["sh", "-c", " ".join(argv)], "runs 'sh"),
    ],
    ids=[
        "digest",
        "artifact",
        "signature",
        "output",
        "trust-dropped",
        "flag-added",
        "flag-repeated",
        "shell",
    ],
)
async def test_a_loader_whose_command_is_altered_is_refused(
    world: World, alter: Callable[[list[str], str], list[str]], fragment: str
) -> None:
    pod = world.pod()
    loader = container(pod, "samd-fetch")
    loader["command"] = alter(loader["command"], world.digest)

    decision = await world.decide(review(pod))

    assert_denied(decision, "LoaderAltered", "samd-fetch of this Pod is altered", fragment)


async def test_a_loader_command_split_into_command_and_args_or_reordered_is_the_same_command(
    world: World,
) -> None:
    pod = world.pod()
    loader = container(pod, "samd-fetch")
    argv = loader["command"]
    first = _first_flag(argv)
    flags: list[list[str]] = []
    for word in argv[first:]:  # `--flag value` pairs, and boolean flags alone
        if word.startswith("--"):
            flags.append([word])
        else:
            flags[-1].append(word)
    valued = [pair for pair in flags if len(pair) == 2]
    reordered = [word for pair in reversed(flags) if pair is not valued[-1] for word in pair]
    loader["command"] = argv[:2]
    loader["args"] = [f"{valued[-1][0]}={valued[-1][1]}", *reordered, *argv[2:first]]

    decision = await world.decide(review(pod))

    assert decision.allowed is True, decision


async def test_a_loader_reaching_another_storage_endpoint_is_refused(world: World) -> None:
    artifact = {
        "uri": "s3://models/fraud.samd",
        "endpoint": "https://objects.internal:9000",
        "region": "eu-west-1",
        "credentialsSecret": "storage-credentials",
    }
    world.models[0] = secure_model("fraud", world.fraud, artifact=artifact)
    pod = world.pod()
    admitted = await world.decide(review(pod))
    endpoint = next(e for e in container(pod, "samd-fetch")["env"] if e["name"] == "AWS_ENDPOINT_URL_S3")
    endpoint["value"] = "https://attacker.example"

    refused = await world.decide(review(pod))

    assert admitted.allowed is True, admitted
    assert_denied(
        refused, "LoaderAltered", "its environment differs from the operator's", "AWS_ENDPOINT_URL_S3"
    )


async def test_a_loader_with_an_added_environment_variable_is_refused(world: World) -> None:
    pod = world.pod()
    container(pod, "samd-fetch")["env"] = [{"name": "LD_PRELOAD", "value": "/tmp/hook.so"}]

    decision = await world.decide(review(pod))

    assert_denied(decision, "LoaderAltered", "its environment differs from the operator's")


async def test_a_loader_with_a_volume_mounted_over_its_code_is_refused(world: World) -> None:
    pod = world.pod()
    pod["spec"]["volumes"].append({"name": "patch", "configMap": {"name": "patched-samd"}})
    container(pod, "samd-fetch")["volumeMounts"].append({"name": "patch", "mountPath": "/app/samd"})

    decision = await world.decide(review(pod))

    assert_denied(
        decision, "LoaderAltered", "it mounts a volume at /app/samd, where the operator mounts none"
    )


async def test_a_loader_trusting_another_config_map_is_refused(world: World) -> None:
    pod = world.pod()
    trust = next(v for v in pod["spec"]["volumes"] if v["name"] == "trust")
    trust["configMap"]["name"] = "my-own-signers"

    decision = await world.decide(review(pod))

    assert_denied(
        decision,
        "LoaderAltered",
        "its volume at /var/run/samd/trust is configMap my-own-signers, the operator mounts configMap fraud-trust",
    )


async def test_a_container_that_can_overwrite_the_verified_model_is_refused(world: World) -> None:
    pod = world.pod()
    model_mount = next(m for m in container(pod, "server")["volumeMounts"] if m["name"] == "model")
    model_mount["readOnly"] = False

    decision = await world.decide(review(pod))

    assert_denied(decision, "LoaderAltered", "container server mounts the model volume model writable")


# --- hardening ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "change", "fragment"),
    [
        ("server", lambda sc: sc.update(privileged=True), "privileged: true"),
        ("server", lambda sc: sc.update(capabilities={"drop": ["NET_RAW"]}), "set capabilities.drop: [ALL]"),
        (
            "server",
            lambda sc: sc.update(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
            "capabilities.add ['SYS_ADMIN']",
        ),
        ("server", lambda sc: sc.pop("allowPrivilegeEscalation"), "set allowPrivilegeEscalation: false"),
        ("server", lambda sc: sc.update(readOnlyRootFilesystem=False), "set readOnlyRootFilesystem: true"),
        (
            "server",
            lambda sc: sc.update(seccompProfile={"type": "Unconfined"}),
            "set seccompProfile.type: RuntimeDefault",
        ),
        ("server", lambda sc: sc.update(runAsUser=0), "runAsUser is 0"),
        ("samd-fetch", lambda sc: sc.update(runAsNonRoot=False), "set runAsNonRoot: true"),
        ("samd-fetch", lambda sc: sc.update(procMount="Unmasked"), "procMount must be Default"),
    ],
    ids=[
        "privileged",
        "no-drop-all",
        "cap-add",
        "escalation",
        "writable-root",
        "unconfined",
        "root-user",
        "loader-root",
        "proc-mount",
    ],
)
async def test_an_unhardened_container_is_refused(
    world: World, target: str, change: Callable[[dict[str, Any]], object], fragment: str
) -> None:
    pod = world.pod()
    change(container(pod, target)["securityContext"])

    decision = await world.decide(review(pod))

    assert_denied(decision, "InsecurePod", f"container {target} of this Pod is not hardened", fragment)


async def test_pod_level_settings_count_when_the_container_sets_none(world: World) -> None:
    pod = world.pod()
    for name in ("samd-fetch", "server"):
        del container(pod, name)["securityContext"]["runAsNonRoot"]
        del container(pod, name)["securityContext"]["seccompProfile"]

    # Hardened through the pod's settings (such a pod is still refused as not the operator's pod).
    assert check_pod_security(pod["spec"], Subject("Pod")) == []
    del pod["spec"]["securityContext"]["seccompProfile"]
    refused = await world.decide(review(pod))

    assert_denied(refused, "InsecurePod", "container server", "set seccompProfile.type")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda spec: spec.update(hostNetwork=True), "hostNetwork: true"),
        (lambda spec: spec.update(hostPID=True), "hostPID: true"),
        (lambda spec: spec.update(hostIPC=True), "hostIPC: true"),
        (
            lambda spec: spec["volumes"].append({"name": "node", "hostPath": {"path": "/etc/ssl"}}),
            "volume node is a hostPath",
        ),
    ],
    ids=["host-network", "host-pid", "host-ipc", "host-path"],
)
async def test_a_pod_sharing_the_nodes_namespaces_or_files_is_refused(
    world: World, change: Callable[[dict[str, Any]], object], fragment: str
) -> None:
    pod = world.pod()
    change(pod["spec"])

    decision = await world.decide(review(pod))

    assert_denied(decision, "InsecurePod", "this Pod is not isolated from the node", fragment)


KUBELET_PATHS = ["/var/lib/kubelet", "/var/lib/kubelet/pods", "/var/lib/kubelet/", "/", "/var", "/var/lib"]


async def test_a_model_pod_mounting_the_kubelets_pod_directories_is_told_why(world: World) -> None:
    pod = world.pod()
    pod["spec"]["volumes"].append({"name": "node", "hostPath": {"path": "/var/lib/kubelet/pods"}})

    decision = await world.decide(review(pod))

    assert_denied(
        decision,
        "InsecurePod",
        "this Pod mounts hostPath /var/lib/kubelet/pods as volume node, which shows the kubelet's pod "
        "directories (/var/lib/kubelet) where the Secret volumes of every pod on the node are mounted",
    )
    assert "volume node is a hostPath" not in decision.message  # said once


@pytest.mark.parametrize("path", KUBELET_PATHS)
@pytest.mark.parametrize("kind", ["Pod", "Deployment", "CronJob"])
async def test_a_pod_without_a_model_may_not_mount_the_kubelets_pod_directories(
    world: World, kind: str, path: str
) -> None:
    pod = plain_pod(volumes=[{"name": "node", "hostPath": {"path": path}}])

    decision = await world.decide(review(pod if kind == "Pod" else workload(kind, pod)))

    assert_denied(decision, "InsecurePod", f"mounts hostPath {path} as volume node", "remove the volume")


async def test_a_pod_without_a_model_may_mount_other_host_paths(world: World) -> None:
    pod = plain_pod(volumes=[{"name": "logs", "hostPath": {"path": "/var/log"}}])

    decision = await world.decide(review(pod))

    assert decision.allowed is True, decision
    assert decision.reason == "NoModelReferenced"


async def test_the_kubelets_pod_directories_are_left_alone_where_no_policy_covers(world: World) -> None:
    pod = plain_pod(volumes=[{"name": "node", "hostPath": {"path": "/"}}])

    decision = await world.decide(review(pod, namespace_name="sandbox"))

    assert decision.allowed is True
    assert decision.reason == "NotCovered"


async def test_an_ephemeral_container_added_to_a_model_pod_must_be_hardened(world: World) -> None:
    old = world.pod()
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [
        {"name": "debugger", "image": "busybox", "targetContainerName": "server"}
    ]

    decision = await world.decide(
        review(new, operation="UPDATE", old=old, sub_resource="ephemeralcontainers")
    )

    assert_denied(decision, "InsecurePod", "ephemeral container debugger of this Pod is not hardened")


# --- bypass ---------------------------------------------------------------------------------------------------


def plain_pod(**spec: Any) -> dict[str, Any]:
    containers = spec.pop("containers", None) or [{"name": "job", "image": "python:3.12"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "job"},
        "spec": {"containers": containers, **spec},
    }


@pytest.mark.parametrize(
    ("pod", "fragment"),
    [
        (
            plain_pod(volumes=[{"name": "k", "secret": {"secretName": KEY_SECRET}}]),
            f"uses Secret {KEY_SECRET} (volume k), the key Secret of SecureModel fraud",
        ),
        (
            plain_pod(
                volumes=[
                    {
                        "name": "all",
                        "projected": {
                            "sources": [{"configMap": {"name": "x"}}, {"secret": {"name": KEY_SECRET}}]
                        },
                    }
                ]
            ),
            f"uses Secret {KEY_SECRET} (volume all)",
        ),
        (
            plain_pod(
                containers=[
                    {
                        "name": "job",
                        "image": "python:3.12",
                        "env": [
                            {
                                "name": "KEYSET",
                                "valueFrom": {"secretKeyRef": {"name": KEY_SECRET, "key": "keyset.json"}},
                            }
                        ],
                    }
                ]
            ),
            f"uses Secret {KEY_SECRET} (env KEYSET)",
        ),
        (
            plain_pod(
                containers=[
                    {"name": "job", "image": "python:3.12", "envFrom": [{"secretRef": {"name": KEY_SECRET}}]}
                ]
            ),
            f"uses Secret {KEY_SECRET} (envFrom)",
        ),
        (
            plain_pod(volumes=[{"name": "tls", "secret": {"secretName": "fraud-tls"}}]),
            "the TLS Secret of SecureModel fraud",
        ),
        (
            plain_pod(volumes=[{"name": "c", "secret": {"secretName": "fraud-client-checkout"}}]),
            "the client certificate Secret of SecureModel fraud",
        ),
        (
            plain_pod(
                volumes=[{"name": "k", "csi": {"driver": "x", "nodePublishSecretRef": {"name": KEY_SECRET}}}]
            ),
            f"uses Secret {KEY_SECRET} (volume k)",
        ),
    ],
    ids=["secret-volume", "projected", "env", "env-from", "tls", "client-cert", "csi"],
)
async def test_a_pod_using_a_models_secret_without_its_model_is_a_bypass_attempt(
    world: World, pod: dict[str, Any], fragment: str
) -> None:
    decision = await world.decide(review(pod))

    assert_denied(decision, "BypassAttempt", fragment, "without running it")


@pytest.mark.parametrize("example", examples(), ids=lambda example: example.path)
async def test_every_way_of_naming_a_models_key_secret_is_a_bypass_attempt(
    world: World, example: Example
) -> None:
    spec = json.loads(json.dumps(example.spec).replace(SECRET, KEY_SECRET))

    decision = await world.decide(review(plain_pod(**spec)))

    assert_denied(decision, "BypassAttempt", f"uses Secret {KEY_SECRET} ({example.how}), the key Secret")


async def test_a_pod_given_a_models_artifact_uri_is_a_bypass_attempt(world: World) -> None:
    uri = world.fraud.artifact_uri
    pod = plain_pod(containers=[{"name": "job", "image": "python:3.12", "args": ["--download", uri]}])

    decision = await world.decide(review(pod))

    assert_denied(
        decision,
        "BypassAttempt",
        f"container job of this Pod is given the artifact {uri} of SecureModel fraud",
    )


async def test_a_pod_running_one_model_with_another_models_key_is_refused(world: World) -> None:
    pod = world.pod()
    pod["spec"]["volumes"].append({"name": "churn-key", "secret": {"secretName": OTHER_KEY_SECRET}})

    decision = await world.decide(review(pod))

    assert_denied(
        decision, "BypassAttempt", "the key Secret of SecureModel churn, while it runs SecureModel fraud"
    )


async def test_a_model_pods_server_reading_its_own_key_is_refused(world: World) -> None:
    pod = world.pod()
    container(pod, "server")["volumeMounts"].append({"name": "keys", "mountPath": "/keys", "readOnly": True})

    decision = await world.decide(review(pod))

    assert_denied(decision, "KeyExposed", f"container server of this Pod gets the key Secret {KEY_SECRET}")


async def test_a_key_secret_shared_by_two_models_is_the_running_models_own(world: World) -> None:
    world.models[1] = secure_model("churn", world.churn, key_secret=KEY_SECRET)

    decision = await world.decide(review(world.pod()))

    assert decision.allowed is True, decision


def test_an_artifact_uri_is_matched_whole() -> None:
    assert mentions_uri("--artifact=s3://models/fraud.samd", "s3://models/fraud.samd")
    assert mentions_uri("s3://models/fraud.samd?versionId=3", "s3://models/fraud.samd")
    assert not mentions_uri("s3://models/fraud.samd2", "s3://models/fraud.samd")
    assert not mentions_uri("s3://models/fraud.samd/part-1", "s3://models/fraud.samd")


# --- SecureModel create and update ---------------------------------------------------------------------------


async def test_a_compliant_secure_model_is_admitted(world: World) -> None:
    decision = await world.decide(review(world.model))

    assert decision.allowed is True
    assert decision.reason == "PolicySatisfied"


async def test_a_secure_model_in_a_format_the_policy_does_not_allow_is_refused(world: World) -> None:
    model = secure_model("fraud", world.fraud, format="gguf")

    decision = await world.decide(review(model))

    assert_denied(decision, "PolicyViolation", "policy production allows formats onnx, not gguf")


async def test_a_secure_model_without_encryption_is_refused(world: World) -> None:
    model = secure_model("fraud", world.fraud, encryption=None)

    decision = await world.decide(review(model))

    assert_denied(
        decision, "PolicyViolation", "policy production requires encryption: set spec.encryption.keyRef"
    )


async def test_a_secure_model_downgrade_is_refused(world: World) -> None:
    old = secure_model("fraud", world.fraud, version="1.10.0")
    new = secure_model("fraud", world.fraud, version="1.9.3")

    decision = await world.decide(review(new, operation="UPDATE", old=old))

    assert_denied(decision, "PolicyViolation", "version 1.9.3 is older than 1.10.0")


async def test_a_downgrade_is_admitted_where_the_policy_allows_it(world: World) -> None:
    world.policies = [trust_policy("production", world.fraud.public_key_pem, allow_downgrade=True)]
    old = secure_model("fraud", world.fraud, version="2.0.0")
    new = secure_model("fraud", world.fraud, version="1.0.0")

    decision = await world.decide(review(new, operation="UPDATE", old=old))

    assert decision.allowed is True, decision


async def test_a_secure_model_whose_spec_does_not_parse_is_refused_with_the_parse_error(world: World) -> None:
    model = secure_model("fraud", world.fraud, artifact={"uri": "ftp://models/fraud"})

    decision = await world.decide(review(model))

    assert_denied(decision, "InvalidSpec", "spec.artifact.uri", "s3://, https:// or file://")


async def test_a_secure_model_update_that_keeps_its_spec_is_admitted_even_when_it_now_violates(
    world: World,
) -> None:
    """Finalizer removal on delete must never be blocked by a policy that tightened meanwhile."""
    old = secure_model("fraud", world.fraud, format="gguf")
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = []

    decision = await world.decide(review(new, operation="UPDATE", old=old))

    assert decision.allowed is True
    assert decision.reason == "Unchanged"


# --- warn mode and several policies ---------------------------------------------------------------------------


async def test_warn_mode_admits_with_the_denial_as_a_warning(world: World) -> None:
    world.policies = [trust_policy("audit", world.fraud.public_key_pem, mode="warn")]
    world.config_maps[0] = signature_config_map(world.model, tampered(world.fraud.signature.read_bytes()))

    decision = await world.decide(review(world.pod()))

    assert decision.allowed is True
    assert decision.reason == "Warned"
    assert len(decision.warnings) == 1
    assert "warn mode, audit" in decision.warnings[0]
    assert "does not verify under ModelTrustPolicy audit" in decision.warnings[0]


async def test_an_enforcing_policys_denial_wins_over_a_warn_policy(world: World) -> None:
    world.policies = [
        trust_policy("audit", world.churn.public_key_pem, mode="warn"),
        trust_policy("production", world.fraud.public_key_pem, formats=("safetensors",)),
    ]

    decision = await world.decide(review(world.pod()))

    assert_denied(decision, "PolicyViolation", "policy production allows formats safetensors, not onnx")
    assert decision.policy == "production"
    assert any("does not verify under ModelTrustPolicy audit" in w for w in decision.warnings)


async def test_the_signature_must_verify_under_every_covering_policy(world: World) -> None:
    world.policies.append(trust_policy("second-opinion", world.churn.public_key_pem))

    decision = await world.decide(review(world.pod()))

    assert_denied(decision, "SignatureInvalid", "does not verify under ModelTrustPolicy second-opinion")
    assert "production" not in decision.message


async def test_a_policy_that_cannot_be_parsed_fails_closed(world: World) -> None:
    broken = trust_policy("broken", world.fraud.public_key_pem)
    broken["spec"]["signers"] = [{"name": "nobody"}]
    world.policies.append(broken)

    decision = await world.decide(review(world.pod()))

    assert_denied(
        decision, "InvalidPolicy", "ModelTrustPolicy broken covers this namespace but cannot be used"
    )


def test_a_violation_charged_to_no_policy_denies() -> None:
    decision = conclude(
        [Violation("Odd", "something is wrong", frozenset())],
        Coverage(()),
        model=None,
        allowed_reason="Fine",
        allowed_message="",
    )

    assert decision.allowed is False


# --- the verification cache and failing closed ---------------------------------------------------------------


async def test_a_bundle_is_verified_once_per_policy_generation(world: World) -> None:
    decider = world.decider()
    for zone in ("a", "b", "c"):  # three different pods (identical ones are admitted once, below)
        pod = world.pod()
        pod["spec"]["nodeSelector"] = {"zone": zone}
        assert (await decider.decide(review(pod))).allowed

    assert world.cache.stats.misses == 1
    assert world.cache.stats.hits == 2


async def test_a_policy_change_drops_its_cached_verifications(world: World) -> None:
    decider = world.decider()
    assert (await decider.decide(review(world.pod()))).allowed
    replaced = trust_policy("production", world.churn.public_key_pem)
    replaced["metadata"]["generation"] = 2

    decider.state.apply(Kind.POLICIES, "MODIFIED", replaced)
    decision = await decider.decide(review(world.pod()))

    assert len(world.cache) == 1  # the old generation's entry was dropped, the new one stored
    assert_denied(decision, "SignatureInvalid", "production")


async def test_a_policy_deleted_and_created_again_is_not_answered_from_the_old_ones_cache(
    world: World,
) -> None:
    decider = world.decider()
    assert (await decider.decide(review(world.pod()))).allowed
    recreated = trust_policy("production", world.churn.public_key_pem, uid="uid-recreated")

    decider.state.apply(Kind.POLICIES, "DELETED", world.policies[0])
    decider.state.apply(Kind.POLICIES, "ADDED", recreated)  # metadata.generation is 1 again

    assert_denied(await decider.decide(review(world.pod())), "SignatureInvalid")


async def test_an_unexpected_error_propagates_so_the_server_denies(world: World) -> None:
    class BrokenCache(VerificationCache[VerificationResult]):
        async def get_or_compute(
            self, key: VerificationKey, compute: Callable[[], VerificationResult]
        ) -> VerificationResult:
            raise OSError("the verification thread pool is gone")

    world.cache = BrokenCache()

    with pytest.raises(OSError, match="thread pool"):
        await world.decide(review(world.pod()))


async def test_a_malformed_pod_is_refused_with_the_field_named(world: World) -> None:
    pod = world.pod()
    pod["spec"]["containers"][0]["securityContext"] = "privileged"

    decision = await world.decide(review(pod))

    assert_denied(
        decision, "MalformedObject", "Pod spec.containers[0].securityContext must be an object, not a string"
    )


async def test_a_workload_without_a_template_is_refused(world: World) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": 1},
    }

    decision = await world.decide(review(deployment))

    assert_denied(decision, "MalformedObject", "Deployment spec.template must be an object, not null")


# --- the pieces ------------------------------------------------------------------------------------------------


def test_the_expected_loader_is_the_operators_and_an_equal_command_has_no_differences(
    fraud: ModelArtifacts,
) -> None:
    model_object = secure_model("fraud", fraud)
    pod = operator_pod(model_object, fraud.manifest_digest())
    expected = ExpectedLoader.build(read_model(model_object), fraud.manifest_digest())

    assert compare_argv(container(pod, "samd-fetch")["command"], expected) == []
    assert expected.flags["--expect-digest"] == [fraud.manifest_digest()]
    assert expected.mounts["/var/run/samd/trust"] == ("configMap", "fraud-trust")


async def test_one_admission_builds_the_operators_deployment_once_and_the_next_none(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The expected loader and the expected pod come from one build of the operator's Deployment,
    kept for the model object and digest."""
    pod = world.pod()
    altered = world.pod()  # another pod spec of the same model
    altered["spec"]["containers"][0]["args"] = ["--debug"]
    built: list[str] = []
    # Counted inside the builder's module, where every build of the Deployment makes its init
    # container once, whichever module imported build_deployment.
    init_container = serving_builder._fetch_container

    def counting(context: ModelContext) -> dict[str, Any]:
        built.append(context.name)
        return init_container(context)

    monkeypatch.setattr(serving_builder, "_fetch_container", counting)
    decider = world.decider()
    first = await decider.decide(review(pod))
    assert first.allowed is True, first
    assert built == ["fraud"]
    second = await decider.decide(review(altered))
    assert second.allowed is False
    assert built == ["fraud"]


def test_the_expected_loader_does_not_depend_on_the_operators_settings(fraud: ModelArtifacts) -> None:
    """The loader is taken from the Deployment built with the webhook's real settings; what is compared
    of it is the same as with the placeholder settings `ExpectedLoader.build` uses."""
    model = read_model(secure_model("fraud", fraud))
    settings = replace(
        SETTINGS,
        default_image="registry.example.com/samd:9",
        fetch_image="registry.example.com/samd:9",
        operator_namespace="samd-system",
        model_volume_size="8Gi",
        scratch_volume_size="1Gi",
        keyset_data_key="keys.json",
    )
    loader, pod = expected_for(model, fraud.manifest_digest(), settings, ["registry.example.com/samd:9"])
    assert loader == ExpectedLoader.build(model, fraud.manifest_digest())
    assert pod is not None


def test_loader_images_default_to_the_operators_image() -> None:
    assert DecisionConfig.from_env({}).allowed_loader_images == ("samd:0.1.0",)
    assert DecisionConfig.from_env({"SAMD_IMAGE": "reg/samd:2"}).allowed_loader_images == ("reg/samd:2",)


def test_an_empty_loader_image_list_is_refused_at_start_up() -> None:
    with pytest.raises(SamdError, match="at least one allowed loader image"):
        DecisionConfig.from_env({"SAMD_WEBHOOK_LOADER_IMAGES": " , "})


def test_the_state_is_ready_only_once_every_kind_is_listed() -> None:
    state = WatchedState()
    for kind in list(Kind)[:-1]:
        state.replace(kind, [])
    assert state.ready is False
    state.replace(list(Kind)[-1], [])
    assert state.ready is True


# --- the watched state, in memory -------------------------------------------------------------------------------


def test_a_status_only_change_keeps_the_parsed_model(world: World) -> None:
    state = world.decider().state
    before = state.model(NAMESPACE, "fraud")
    with_status = {
        **copy.deepcopy(world.model),
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }

    state.apply(Kind.MODELS, "MODIFIED", with_status)
    unchanged = state.model(NAMESPACE, "fraud")
    state.apply(Kind.MODELS, "MODIFIED", secure_model("fraud", world.fraud, version="1.3.0"))
    changed = state.model(NAMESPACE, "fraud")

    assert unchanged is before
    assert changed is not None
    assert changed.spec is not None
    assert changed.spec.version == "1.3.0"


def test_a_relist_drops_what_is_gone_and_keeps_a_policys_generation(world: World) -> None:
    state = world.decider().state
    generation = state.policies()[0].generation
    notices: list[str] = []
    state.add_policy_listener(notices.append)

    state.replace(Kind.MODELS, [world.models[1]])
    state.replace(Kind.POLICIES, world.policies)

    assert state.model(NAMESPACE, "fraud") is None
    assert [m.name for m in state.models_in(NAMESPACE)] == ["churn"]
    assert state.policies()[0].generation == generation
    assert notices == []

    state.replace(Kind.POLICIES, [])

    assert state.policies() == []
    assert notices == ["production"]


async def test_a_policy_whose_selector_cannot_be_read_covers_every_namespace(world: World) -> None:
    broken = trust_policy("broken", world.fraud.public_key_pem, selector={"matchLabels": ["not", "a", "map"]})
    broken["spec"]["signers"] = []
    world.policies = [broken]
    pod = world.pod()
    pod["metadata"]["annotations"]["samd.dev/model"] = "ghost"

    decision = await world.decide(review(pod, namespace_name="sandbox"))

    assert_denied(decision, "InvalidPolicy", "ModelTrustPolicy broken")


# --- a version means one signed content (requireSignedVersion) ---------------------------------------------


def older_release(world: World, tmp_path: Path, version: str | None = "1.1.0") -> ModelArtifacts:
    """Another release of the same model, signed by the same CI key (as `version`, or with none)."""
    return make_model(
        tmp_path / "older", model_name="fraud", version=version, signing_key=world.fraud.signing_key
    )


def point_at(world: World, release: ModelArtifacts, version: str) -> dict[str, Any]:
    """The deployer's edit: the SecureModel names `release` at `version`; the operator stores its bundle."""
    world.models[0] = secure_model("fraud", release, version=version)
    world.config_maps[0] = signature_config_map(world.model, release.signature.read_bytes())
    return operator_pod(world.model, release.manifest_digest())


@pytest.mark.parametrize("claimed", ["1.2.0", "1.3.0"])
async def test_a_pod_running_an_older_signed_release_under_a_newer_version_is_refused(
    world: World, tmp_path: Path, claimed: str
) -> None:
    # Every part of the pod matches the older release's verified signature: only the version lies.
    pod = point_at(world, older_release(world, tmp_path), claimed)

    decision = await world.decide(review(pod))

    assert_denied(
        decision,
        "VersionMismatch",
        f"SecureModel fraud: policy production requires a signed version: the signed model is not fraud version {claimed}",
        f"--model-name fraud --model-version {claimed}",
    )
    assert decision.policy == "production"


async def test_a_pod_running_the_release_signed_as_its_version_is_admitted(
    world: World, tmp_path: Path
) -> None:
    decision = await world.decide(review(point_at(world, older_release(world, tmp_path), "1.1.0")))

    assert decision.allowed is True, decision
    assert decision.reason == "Verified"


async def test_a_release_signed_without_a_version_is_refused_with_how_to_sign_it(
    world: World, tmp_path: Path
) -> None:
    decision = await world.decide(review(point_at(world, older_release(world, tmp_path, None), "1.2.0")))

    assert_denied(
        decision, "VersionNotSigned", "a single-file model", "samd sign MODEL_DIR --model-name fraud"
    )


async def test_a_warn_policy_admits_an_unbound_version_with_a_warning(world: World, tmp_path: Path) -> None:
    world.policies = [trust_policy("audit", world.fraud.public_key_pem, mode="warn")]
    pod = point_at(world, older_release(world, tmp_path), "1.2.0")

    decision = await world.decide(review(pod))

    assert decision.allowed is True
    assert decision.reason == "Warned"
    assert len(decision.warnings) == 1
    assert "warn mode, audit" in decision.warnings[0]
    assert "the signed model is not fraud version 1.2.0" in decision.warnings[0]


async def test_a_policy_that_does_not_require_a_signed_version_admits_any_signed_release(
    world: World, tmp_path: Path
) -> None:
    world.policies[0]["spec"]["versionPolicy"]["requireSignedVersion"] = False
    pod = point_at(world, older_release(world, tmp_path), "1.2.0")

    decision = await world.decide(review(pod))

    assert decision.allowed is True, decision
    assert decision.reason == "Verified"
