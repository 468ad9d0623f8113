"""The whole serving path through the real CLI: the loader and the server run exactly the commands
the operator builds, as processes, with the files laid out as the kubelet mounts them for the pod
(the model's TLS Secret, the trust ConfigMap, the key Secret), and a client of the model gets a
prediction over mTLS. For a local keyset, an unencrypted model, AWS KMS (on the local moto server)
and a PKCS#11 key in SoftHSM2."""

from __future__ import annotations

import base64
import datetime
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest

from samd.operator.builders.certificates import (
    CertificateAuthority,
    issue_client_certificate,
    issue_server_certificate,
)
from samd.operator.builders.context import ModelContext
from samd.operator.builders.names import serving_name
from samd.operator.builders.serving import (
    FETCH_CONTAINER,
    SERVER_CONTAINER,
    build_deployment,
    build_trust_config_map,
)
from samd.spec import TrustedSigner
from tests.support.moto_server import MotoServer
from tests.support.serving import (
    SAMD,
    SignedModel,
    V2Client,
    client_context,
    fraud_data,
    running,
    sign_directory,
    train_fraud_model,
    write_secret,
)
from tests.support.softhsm import SoftHSMToken
from tests.support.webhook import free_port
from tests.unit.test_builders_example import fraud_detection

pytestmark = pytest.mark.integration

CLIENT = "payments-api"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_fraud_model(tmp_path_factory.mktemp("trained") / "fraud-detection")


def _samd(*argv: str | Path, env: Mapping[str, str] | None = None) -> None:
    result = subprocess.run(
        [str(SAMD), *map(str, argv)], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


class Pod:
    """The Deployment's pod template run on this machine: volumes become folders, containers processes."""

    def __init__(self, ctx: ModelContext, root: Path, files: Mapping[str, Mapping[str, str]]) -> None:
        deployment = build_deployment(ctx)
        assert deployment is not None
        self.spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
        self.root = root
        self.secrets = files  # Secret name -> {key: value}, as `kubectl create secret` holds it
        self.volumes: dict[str, Path] = {}
        for volume in self.spec["volumes"]:
            folder = root / "volumes" / volume["name"]
            folder.mkdir(parents=True)
            self.volumes[volume["name"]] = folder
            if "secret" in volume:
                data = files[volume["secret"]["secretName"]]
                items = volume["secret"].get("items")
                if items:
                    data = {item["path"]: data[item["key"]] for item in items}
                write_secret(
                    folder, {name: base64.b64encode(value.encode()).decode() for name, value in data.items()}
                )
            elif "configMap" in volume:
                for name, value in files[volume["configMap"]["name"]].items():
                    (folder / name).write_text(value)

    def container(self, name: str) -> dict[str, Any]:
        every = [*self.spec.get("initContainers", []), *self.spec["containers"]]
        return next(container for container in every if container["name"] == name)

    def argv(self, name: str) -> list[str]:
        """The container's command with its mount paths mapped to the volume folders."""
        container = self.container(name)
        mounts = sorted(container["volumeMounts"], key=lambda mount: -len(mount["mountPath"]))
        argv = []
        for word in container["command"]:
            scheme, _, path = word.rpartition("local:")  # a local keyset's URI names a mounted file
            mapped = word
            for mount in mounts:
                if path == mount["mountPath"] or path.startswith(mount["mountPath"] + "/"):
                    mapped = scheme + ("local:" if word != path else "") + str(self.volumes[mount["name"]])
                    mapped += path[len(mount["mountPath"]) :]
                    break
            argv.append(mapped)
        assert argv[0] == "samd"
        return [str(SAMD), *argv[1:]]

    def env(self, name: str) -> dict[str, str]:
        resolved = {}
        for entry in self.container(name).get("env", []):
            if "value" in entry:
                resolved[entry["name"]] = entry["value"]
            else:
                reference = entry["valueFrom"]["secretKeyRef"]
                resolved[entry["name"]] = self.secrets[reference["name"]][reference["key"]]
        return resolved


def _serve(
    ctx: ModelContext,
    signed: SignedModel,
    root: Path,
    secrets: dict[str, dict[str, str]],
    extra_env: Mapping[str, str],
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = CertificateAuthority.generate(now, common_name=f"samd-operator-ca-{os.urandom(3).hex()}")
    files: dict[str, dict[str, str]] = {
        name: {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
        for secret in [issue_server_certificate(ca, ctx, now)]
        for name in [secret["metadata"]["name"]]
    }
    signer = TrustedSigner(name="ml-ci", public_key=signed.public_key_pem)
    trust = build_trust_config_map(ctx, [signer])
    files[trust["metadata"]["name"]] = trust["data"]
    files.update(secrets)
    pod = Pod(ctx, root, files)
    # Only what the pod gives the process: no AWS variables of the test's own.
    base = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    fetch = subprocess.run(
        pod.argv(FETCH_CONTAINER), capture_output=True, text=True, timeout=120, check=False,
        env={**base, **extra_env, **pod.env(FETCH_CONTAINER)},
    )  # fmt: skip
    assert fetch.returncode == 0, fetch.stderr
    server_argv = pod.argv(SERVER_CONTAINER)
    # The pod has a network namespace of its own; here the metrics port must not collide.
    server_argv[server_argv.index("--metrics-port") + 1] = "0"
    client_secret = issue_client_certificate(ca, ctx, CLIENT, now)
    client_dir = write_secret(root / "client", client_secret["data"])
    with running(server_argv, env={**base, **pod.env(SERVER_CONTAINER)}) as server:
        context = client_context(client_dir / "ca.crt", client_dir / "tls.crt", client_dir / "tls.key")
        client = V2Client(server.port, context, server_name=serving_name(ctx.name))
        rows, _ = fraud_data(5, seed=1)
        answer = client.infer(ctx.name, rows)
        client.close()
        assert answer.status == 200, answer.body
        assert answer.json()["outputs"][0]["shape"] == [5]
        assert answer.headers["samd-manifest-digest"] == ctx.manifest_digest
        assert answer.headers["samd-model-version"] == ctx.spec.version
        assert server.stop() == 0


def _context(
    signed: SignedModel, artifact: dict[str, Any], encryption: dict[str, Any] | None
) -> ModelContext:
    spec = {
        "artifact": {"endpoint": None, "region": None, "credentialsSecret": None, **artifact},
        "signature": {"uri": f"file://{signed.signature}"},
        "encryption": encryption,
        "serving": {"port": free_port(), "clients": [{"name": CLIENT}]},
    }
    return fraud_detection(spec, manifest_digest=signed.manifest_digest())


def test_a_model_encrypted_with_a_local_keyset(trained: Path, tmp_path: Path) -> None:
    signed = sign_directory(trained, tmp_path / "ci")
    keyset = tmp_path / "ci" / "keyset.json"
    _samd("keygen", f"local:{keyset}")
    artifact = tmp_path / "ci" / "fraud.samd"
    _samd("encrypt", trained, "--key", f"local:{keyset}", "--output", artifact)
    encryption = {"keyRef": {"provider": "local", "secretName": "fraud-kek"}}
    ctx = _context(signed, {"uri": f"file://{artifact}"}, encryption)
    _serve(ctx, signed, tmp_path / "pod", {"fraud-kek": {"keyset.json": keyset.read_text()}}, {})


def test_an_unencrypted_model(trained: Path, tmp_path: Path) -> None:
    # One file, signed as such: the artifact is the model file itself.
    signed = sign_directory(trained / "model.onnx", tmp_path / "ci")
    ctx = _context(signed, {"uri": f"file://{trained / 'model.onnx'}"}, None)
    assert (
        "--key"
        not in (build_deployment(ctx) or {})["spec"]["template"]["spec"]["initContainers"][0]["command"]
    )
    _serve(ctx, signed, tmp_path / "pod", {}, {})


def test_a_model_in_s3_encrypted_with_aws_kms(trained: Path, tmp_path: Path, aws_env: MotoServer) -> None:
    signed = sign_directory(trained, tmp_path / "ci")
    bucket = f"models-{os.urandom(4).hex()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    key_id = boto3.client("kms").create_key(Description="fraud model KEK")["KeyMetadata"]["KeyId"]
    key = f"aws-kms://{key_id}?region={aws_env.region}&endpoint={aws_env.endpoint}"
    _samd(
        "encrypt",
        trained,
        "--key",
        key,
        "--output",
        f"s3://{bucket}/fraud/1.4.2/model.samd",
        env=aws_env.env(),
    )
    artifact = {
        "uri": f"s3://{bucket}/fraud/1.4.2/model.samd",
        "endpoint": aws_env.endpoint,
        "region": aws_env.region,
        "credentialsSecret": "fraud-s3",
    }
    ctx = _context(signed, artifact, {"keyRef": {"provider": "aws-kms", "uri": key}})
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    _serve(ctx, signed, tmp_path / "pod", {"fraud-s3": credentials}, {})


def test_a_model_encrypted_with_a_key_in_an_hsm(trained: Path, tmp_path: Path, softhsm: SoftHSMToken) -> None:
    softhsm.generate_aes_key("fraud-kek", key_id="03")
    signed = sign_directory(trained, tmp_path / "ci")
    artifact = tmp_path / "ci" / "fraud.samd"
    hsm_env = {"SOFTHSM2_CONF": str(softhsm.conf)}
    _samd("encrypt", trained, "--key", softhsm.uri("fraud-kek"), "--output", artifact, env=hsm_env)
    encryption = {"keyRef": {"provider": "pkcs11", "uri": softhsm.uri("fraud-kek")}}
    ctx = _context(signed, {"uri": f"file://{artifact}"}, encryption)
    # The HSM's client configuration comes with the node's HSM integration, not from the pod spec.
    _serve(ctx, signed, tmp_path / "pod", {}, hsm_env)
