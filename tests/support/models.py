"""Signed and encrypted model artifacts made for a test, with the library the CLI uses."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from samd.envelope import encrypt_file
from samd.keys import LocalKeyProvider
from samd.signing import Signer, sign_model
from tests.support.signing import write_key_pair


@dataclass(frozen=True)
class ModelArtifacts:
    model: Path  # the plaintext model file
    artifact: Path  # encrypted, file:// in SecureModels
    signature: Path
    public_key_pem: str
    keyset: bytes

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


def make_model(directory: Path, *, size: int = 64 * 1024, name: str = "model.onnx") -> ModelArtifacts:
    """A random single-file model, signed with a fresh EC key and encrypted with a fresh local keyset."""
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / name
    model.write_bytes(os.urandom(size))

    signing_key = write_key_pair(directory, "signing-key")
    signature = directory / f"{name}.sig"
    sign_model(model, signature, Signer.from_private_key(signing_key.private_pem))

    provider = LocalKeyProvider.generate()
    artifact = directory / f"{name}.samd"
    encrypt_file(model, artifact, provider, attributes={"samd.content": "file", "samd.name": name})
    return ModelArtifacts(model, artifact, signature, signing_key.public_pem.read_text(), provider.to_bytes())
