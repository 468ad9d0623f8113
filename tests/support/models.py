"""Signed and encrypted model artifacts made for a test, with the library the CLI uses."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from samd.envelope import atomic_output, encrypt_file, encrypt_stream
from samd.keys import LocalKeyProvider
from samd.modelpack import pack_directory
from samd.signing import Signer, sign_model
from tests.support.signing import KeyPair, write_key_pair

MODEL_NAME = "fraud-detection"
"""The SecureModel name the models are signed for (the example's metadata.name)."""
MODEL_VERSION = "1.4.0"
"""The version they are signed as (the example's spec.version)."""


@dataclass(frozen=True)
class ModelArtifacts:
    model: Path  # the plaintext model: its directory, or the file of a single-file model
    weights: Path  # the model file (inside `model` unless it is a single-file model)
    artifact: Path  # encrypted, file:// in SecureModels
    signature: Path
    public_key_pem: str
    keyset: bytes
    signing_key: KeyPair  # to sign another release with the same key

    @property
    def artifact_uri(self) -> str:
        return f"file://{self.artifact}"

    @property
    def signature_uri(self) -> str:
        return f"file://{self.signature}"

    def manifest_digest(self) -> str:
        """The signed manifest's digest, read straight from the bundle's in-toto statement."""
        bundle = json.loads(self.signature.read_bytes())
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        return "sha256:" + str(statement["subject"][0]["digest"]["sha256"])

    def keyset_secret(self, name: str, keyset: bytes | None = None) -> client.V1Secret:
        """The Secret a user creates for a local key (`kubectl create secret generic`)."""
        data = base64.b64encode(self.keyset if keyset is None else keyset).decode()
        return client.V1Secret(metadata=client.V1ObjectMeta(name=name), data={"keyset.json": data})


def make_model(
    directory: Path,
    *,
    size: int = 64 * 1024,
    name: str = "model.onnx",
    model_name: str = MODEL_NAME,
    version: str | None = MODEL_VERSION,
    signing_key: KeyPair | None = None,
    keyset: bytes | None = None,
    content: bytes | None = None,
) -> ModelArtifacts:
    """A random model, signed with an EC key and encrypted with a local keyset (fresh unless given).

    With a `version` (the default) the model is a directory holding `name` and the samd-model.json
    that `samd sign --model-name model_name --model-version version` writes, packed as a tar stream
    when encrypted; with `version=None` it is a single file, signed without name or version.
    `content` replaces the random bytes (a real ONNX model, for the tests that serve it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if signing_key is None:
        signing_key = write_key_pair(directory, "signing-key")
    provider = LocalKeyProvider.generate() if keyset is None else LocalKeyProvider.from_bytes(keyset)
    signer = Signer.from_private_key(signing_key.private_pem)
    if version is None:
        model = weights = directory / name
        weights.write_bytes(os.urandom(size))
        signature, artifact = directory / f"{name}.sig", directory / f"{name}.samd"
        sign_model(model, signature, signer)
        encrypt_file(model, artifact, provider, attributes={"samd.content": "file", "samd.name": name})
    else:
        model = directory / "model"
        model.mkdir(exist_ok=True)
        weights = model / name
        weights.write_bytes(os.urandom(size) if content is None else content)
        signature, artifact = directory / "model.sig", directory / "model.samd"
        sign_model(model, signature, signer, model_name=model_name, model_version=version)
        with pack_directory(model) as packed, atomic_output(artifact) as out:
            encrypt_stream(packed, out, provider, attributes={"samd.content": "tar"})  # type: ignore[arg-type]
    return ModelArtifacts(
        model,
        weights,
        artifact,
        signature,
        signing_key.public_pem.read_text(),
        provider.to_bytes(),
        signing_key,
    )
