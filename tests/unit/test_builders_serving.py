"""The serving workload: nothing unverified is served, every container is hardened, secrets stay put."""

from __future__ import annotations

import json
from typing import Any

import pytest

from samd.operator.builders.serving import (
    build_deployment,
    build_pdb,
    build_service,
    build_service_account,
    build_trust_config_map,
    fetch_command,
)
from samd.spec import TrustedSigner
from tests.unit.test_builders_example import DIGEST, SIGNER, fraud_detection, load_snapshot

pytestmark = pytest.mark.unit

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _deployment(spec_changes: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    deployment = build_deployment(fraud_detection(spec_changes, **fields))
    assert deployment is not None
    return deployment


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _all_containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod(deployment)
    return [*pod.get("initContainers", []), *pod["containers"]]


def _mounting(deployment: dict[str, Any], volume_name: str) -> list[str]:
    return [
        container["name"]
        for container in _all_containers(deployment)
        if any(mount["name"] == volume_name for mount in container.get("volumeMounts", []))
    ]


def _volume_of_secret(deployment: dict[str, Any], secret: str) -> list[str]:
    return [v["name"] for v in _pod(deployment)["volumes"] if v.get("secret", {}).get("secretName") == secret]


def test_serving_objects_match_the_reviewed_snapshot() -> None:
    ctx = fraud_detection()
    built = [
        build_service_account(ctx),
        build_trust_config_map(ctx, [SIGNER]),
        build_service(ctx),
        build_deployment(ctx),
        build_pdb(ctx),
    ]
    assert built == load_snapshot("fraud-detection-serving.yaml")


def test_no_deployment_without_a_verified_digest() -> None:
    assert build_deployment(fraud_detection(manifest_digest=None)) is None
    with pytest.raises(ValueError, match="no verified manifest digest"):
        fetch_command(fraud_detection(manifest_digest=None))


def test_nothing_is_served_when_serving_is_disabled() -> None:
    ctx = fraud_detection({"serving": {"enabled": False}})
    assert build_deployment(ctx) is None
    assert build_service(ctx) is None
    assert build_pdb(ctx) is None


def test_a_disruption_budget_only_for_more_than_one_replica() -> None:
    assert build_pdb(fraud_detection({"serving": {"replicas": 1}})) is None
    assert build_pdb(fraud_detection({"serving": {"replicas": 0}})) is None
    budget = build_pdb(fraud_detection({"serving": {"replicas": 3}}))
    assert budget is not None
    assert budget["spec"]["maxUnavailable"] == 1
    # No pods without a verified model, so no budget for them either.
    assert build_pdb(fraud_detection(manifest_digest=None)) is None


def test_every_container_is_hardened() -> None:
    deployment = _deployment()
    containers = _all_containers(deployment)
    assert [c["name"] for c in containers] == ["samd-fetch", "server"]
    for container in containers:
        context = container["securityContext"]
        assert context.items() >= RESTRICTED_CONTAINER.items(), container["name"]


def test_the_pod_runs_restricted_without_a_service_account_token() -> None:
    pod = _pod(_deployment())
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == "fraud-detection-model"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod
    assert "hostPID" not in pod
    assert build_service_account(fraud_detection())["automountServiceAccountToken"] is False


def test_the_key_secret_is_mounted_only_into_the_init_container_read_only() -> None:
    deployment = _deployment()
    key_volumes = _volume_of_secret(deployment, "fraud-detection-kek")
    assert key_volumes == ["keys"]
    assert _mounting(deployment, "keys") == ["samd-fetch"]
    fetch = _all_containers(deployment)[0]
    (mount,) = [m for m in fetch["volumeMounts"] if m["name"] == "keys"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in _pod(deployment)["volumes"] if v["name"] == "keys"]
    assert volume["secret"]["defaultMode"] == 0o400


def test_storage_credentials_reach_only_the_init_container() -> None:
    fetch, server = _all_containers(_deployment())
    from_secrets = [env for env in fetch["env"] if "valueFrom" in env]
    assert {env["valueFrom"]["secretKeyRef"]["name"] for env in from_secrets} == {"fraud-detection-s3"}
    assert [env["name"] for env in from_secrets] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert "env" not in server
    assert "envFrom" not in server


def test_without_credentials_the_init_container_gets_no_secret_env() -> None:
    fetch = _all_containers(_deployment({"artifact": {"credentialsSecret": None}}))[0]
    assert all("valueFrom" not in env for env in fetch.get("env", []))


def test_the_model_lives_in_memory_and_the_server_only_reads_it() -> None:
    deployment = _deployment()
    (model,) = [v for v in _pod(deployment)["volumes"] if v["name"] == "model"]
    assert model["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    fetch, server = _all_containers(deployment)
    assert {"name": "model", "mountPath": "/models"} in fetch["volumeMounts"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]


def test_the_tls_secret_is_mounted_only_into_the_server() -> None:
    deployment = _deployment()
    assert _volume_of_secret(deployment, "fraud-detection-tls") == ["tls"]
    assert _mounting(deployment, "tls") == ["server"]


def test_the_pod_carries_the_verified_digest_for_the_webhook() -> None:
    template = _deployment()["spec"]["template"]["metadata"]
    assert template["annotations"] == {
        "samd.dev/model": "fraud-detection",
        "samd.dev/model-digest": DIGEST,
        "samd.dev/model-version": "1.4.2",
    }
    assert template["labels"]["samd.dev/model"] == "fraud-detection"
    fetch = _all_containers(_deployment())[0]
    digest_flag = fetch["command"].index("--expect-digest")
    assert fetch["command"][digest_flag + 1] == DIGEST


def test_the_default_image_runs_samd_serve_with_the_models_identity_and_provenance() -> None:
    (_, server) = _all_containers(_deployment())
    assert server["image"] == "samd/inference-server:0.1.0"
    command = server["command"]
    assert command[:2] == ["samd", "serve"]

    def values(flag: str) -> list[str]:
        return [command[i + 1] for i, word in enumerate(command) if word == flag]

    assert values("--allowed-client") == ["payments-api", "risk-dashboard"]
    assert values("--client-organization") == ["samd:fraud:fraud-detection"]
    assert values("--model-name") == ["fraud-detection"]
    assert values("--model-version") == ["1.4.2"]
    assert values("--expect-digest") == [DIGEST]
    assert values("--trust-config") == ["/var/run/samd/trust/signers.json"]
    assert values("--format") == ["onnx"]
    assert {"name": "trust", "mountPath": "/var/run/samd/trust", "readOnly": True} in server["volumeMounts"]


def test_a_models_own_image_runs_unchanged_behind_samd_proxy_on_localhost() -> None:
    deployment = _deployment({"serving": {"image": "registry.example/fraud:7"}})
    proxy, model_server = _pod(deployment)["containers"]
    assert proxy["name"] == "server"
    assert proxy["image"] == "samd/inference-server:0.1.0"
    assert proxy["command"][:2] == ["samd", "proxy"]
    upstream = proxy["command"][proxy["command"].index("--upstream") + 1]
    assert upstream == "http://127.0.0.1:8080"
    assert "--format" not in proxy["command"]
    assert proxy["ports"][0] == {"name": "https", "containerPort": 8443, "protocol": "TCP"}
    # The user's server keeps its own entrypoint, learns to listen on loopback, sees no Secret.
    assert model_server["name"] == "model-server"
    assert model_server["image"] == "registry.example/fraud:7"
    assert "command" not in model_server
    assert "args" not in model_server
    assert "ports" not in model_server
    env = {item["name"]: item["value"] for item in model_server["env"]}
    assert env["SAMD_UPSTREAM_HOST"] == env["MLSERVER_HOST"] == "127.0.0.1"
    assert env["SAMD_UPSTREAM_PORT"] == env["MLSERVER_HTTP_PORT"] == "8080"
    assert env["MLSERVER_MODELS_DIR"] == "/models"
    assert {mount["name"] for mount in model_server["volumeMounts"]} == {"model", "model-server-tmp"}
    assert all(mount["readOnly"] for mount in model_server["volumeMounts"] if mount["name"] == "model")
    assert model_server["securityContext"] == proxy["securityContext"]
    assert _mounting(deployment, "tls") == ["server"]
    assert _mounting(deployment, "keys") == ["samd-fetch"]


def test_the_server_is_ready_when_its_port_accepts_connections() -> None:
    server = _all_containers(_deployment({"serving": {"port": 9443}}))[1]
    assert server["ports"] == [
        {"name": "https", "containerPort": 9443, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    assert server["readinessProbe"] == {"tcpSocket": {"port": "https"}}
    port_flag = server["command"].index("--port")
    assert server["command"][port_flag + 1] == "9443"


def test_an_unencrypted_model_is_fetched_without_a_key_and_mounts_no_key() -> None:
    ctx = fraud_detection({"encryption": None})
    command = fetch_command(ctx)
    assert "--key" not in command
    assert command[-5:] == ["--output", "/models", "--keep-signature", "--log-format", "json"]
    deployment = _deployment({"encryption": None})
    assert _mounting(deployment, "keys") == []


def test_every_samd_container_of_the_pod_logs_json_lines() -> None:
    """The loader and the server write one JSON object per line, so that one log pipeline reads
    the whole pod (the loader's refusal of a model included)."""
    deployment = _deployment({})
    commands = {c["name"]: c["command"] for c in _all_containers(deployment) if c["command"][0] == "samd"}
    assert set(commands) == {"samd-fetch", "server"}
    for name, command in commands.items():
        flag = command.index("--log-format")
        assert command[flag + 1] == "json", name


def test_the_service_exposes_the_mtls_port_to_the_model_pods() -> None:
    service = build_service(fraud_detection({"serving": {"port": 9443}}))
    assert service is not None
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 9443, "targetPort": "https", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == {"samd.dev/model": "fraud-detection"}


def test_replicas_and_resources_come_from_the_spec() -> None:
    resources = {"requests": None, "limits": {"cpu": "2", "memory": "4Gi"}}
    deployment = _deployment({"serving": {"replicas": 5, "resources": resources}})
    assert deployment["spec"]["replicas"] == 5
    assert _all_containers(deployment)[1]["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}


def test_fetch_command_with_a_kms_key_and_an_s3_compatible_endpoint() -> None:
    ctx = fraud_detection(
        {
            "artifact": {"endpoint": "https://minio.storage:9000", "region": None, "credentialsSecret": None},
            "encryption": {
                "keyRef": {"provider": "aws-kms", "uri": "aws-kms://alias/fraud", "secretName": None}
            },
        }
    )
    assert fetch_command(ctx) == [
        "samd",
        "fetch",
        "s3://models-prod/fraud-detection/1.4.2/model.onnx.samd",
        "--signature",
        "s3://models-prod/fraud-detection/1.4.2/model.sig",
        "--key",
        "aws-kms://alias/fraud",
        "--trust-config",
        "/var/run/samd/trust/signers.json",
        "--expect-digest",
        DIGEST,
        "--output",
        "/models",
        "--keep-signature",
        "--log-format",
        "json",
    ]
    # The endpoint reaches the storage client through the standard AWS variable.
    fetch = _all_containers(build_deployment(ctx) or {})[0]
    assert {"name": "AWS_ENDPOINT_URL_S3", "value": "https://minio.storage:9000"} in fetch["env"]
    # No local keyset, so no key Secret in the pod at all.
    deployment = build_deployment(ctx)
    assert deployment is not None
    assert "keys" not in [v["name"] for v in _pod(deployment)["volumes"]]
    assert _mounting(deployment, "keys") == []


def test_an_unencrypted_model_is_fetched_without_a_key() -> None:
    ctx = fraud_detection({"encryption": None})
    assert "--key" not in fetch_command(ctx)


def test_the_trust_config_map_is_the_same_whatever_the_order_and_repetition_of_signers() -> None:
    other = TrustedSigner(
        name="auditing-root",
        certificate_roots="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    ctx = fraud_detection()
    first = build_trust_config_map(ctx, [SIGNER, other])
    second = build_trust_config_map(ctx, [other, SIGNER, other])
    assert first == second
    signers = json.loads(first["data"]["signers.json"])
    assert [signer["name"] for signer in signers] == ["auditing-root", "ml-platform-ci"]
    assert signers[0] == {
        "name": "auditing-root",
        "certificateRoots": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    }


def test_manifests_are_json_ready_and_independent_of_the_spec() -> None:
    ctx = fraud_detection()
    deployment = build_deployment(ctx)
    assert deployment is not None
    assert json.loads(json.dumps(deployment)) == deployment
    fetch, server = _all_containers(deployment)
    fetch["resources"]["limits"]["memory"] = "1Ti"
    server["resources"]["requests"]["cpu"] = "64"
    assert server["resources"]["limits"] == {"memory": "3Gi"}
    assert fetch["resources"]["requests"]["cpu"] == "500m"
    assert ctx.spec.serving.resources == {
        "requests": {"cpu": "500m", "memory": "3Gi"},
        "limits": {"memory": "3Gi"},
    }
