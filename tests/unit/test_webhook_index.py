"""The precomputed per-namespace index the bypass rule reads, and the cached signer verifiers.

Both exist for speed; these tests hold them to the exact answers of the plain rules they replace.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from samd.errors import SamdError
from samd.policy import verifier_for
from samd.spec import TrustedSigner
from samd.webhook.decide import Subject, check_bypass, mentions_uri
from samd.webhook.state import Kind, NamespaceIndex, WatchedState, read_model

pytestmark = pytest.mark.unit

NAMESPACE = "ml"


def model_object(name: str, uri: str, *, key_secret: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "format": "onnx",
        "version": "1.0.0",
        "owner": "team",
        "artifact": {"uri": uri},
        "signature": {"uri": uri + ".sig"},
        "serving": {"clients": [{"name": "checkout"}]},
    }
    if key_secret:
        spec["encryption"] = {"keyRef": {"provider": "local", "secretName": key_secret}}
    return {"metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}"}, "spec": spec}


def pod_spec(*args: str, secret: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "job", "image": "python:3.12", "args": list(args)}]}
    if secret:
        spec["volumes"] = [{"name": "s", "secret": {"secretName": secret}}]
    return spec


URIS = ["s3://b/m", "s3://b/m2", "s3://b/m?v=1", "s3://b/x/s3://b/m2"]
TEXTS = [
    "s3://b/m",
    "--from=s3://b/m2",
    "s3://b/m?v=1",
    "s3://b/m/part-1",
    "s3://b/x/s3://b/m2",
    "copy s3://b/m3 and s3://b/m",
    "nothing here",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_index_finds_exactly_the_uris_the_plain_rule_finds(text: str) -> None:
    index = NamespaceIndex.build(read_model(model_object(f"m{i}", uri)) for i, uri in enumerate(URIS))

    assert index.mentioned_uris([text]) == {uri for uri in URIS if mentions_uri(text, uri)}


@pytest.mark.parametrize(
    "texts", [["--from", "s3://b/m", "2"], ["s3://b/m2", "s3://b/m"], ["s3://b/", "m"], ["s3://b/m\n2"]]
)
def test_several_texts_are_searched_each_on_its_own(texts: list[str]) -> None:
    index = NamespaceIndex.build(read_model(model_object(f"m{i}", uri)) for i, uri in enumerate(URIS))

    assert index.mentioned_uris(texts) == {uri for uri in URIS if any(mentions_uri(t, uri) for t in texts)}


def test_a_uri_inside_another_models_uri_is_still_found() -> None:
    index = NamespaceIndex.build(read_model(model_object(f"m{i}", uri)) for i, uri in enumerate(URIS))

    assert index.mentioned_uris(["s3://b/x/s3://b/m2"]) == {"s3://b/x/s3://b/m2", "s3://b/m2"}


def test_a_namespace_without_models_protects_nothing() -> None:
    index = NamespaceIndex.build([])

    assert index.mentioned_uris(["s3://b/m"]) == set()
    assert not index.may_protect("fraud-tls")


def test_the_index_follows_a_models_change_of_artifact() -> None:
    state = WatchedState.from_objects(models=[model_object("fraud", "s3://b/old.samd")])
    subject = Subject("Pod")
    assert check_bypass(pod_spec("s3://b/old.samd"), subject, state.namespace_index(NAMESPACE), None)

    state.apply(Kind.MODELS, "MODIFIED", model_object("fraud", "s3://b/new.samd"))

    assert not check_bypass(pod_spec("s3://b/old.samd"), subject, state.namespace_index(NAMESPACE), None)
    (violation,) = check_bypass(pod_spec("s3://b/new.samd"), subject, state.namespace_index(NAMESPACE), None)
    assert "artifact s3://b/new.samd of SecureModel fraud" in violation.message


def test_the_index_follows_a_new_and_a_deleted_model() -> None:
    state = WatchedState.from_objects(models=[model_object("fraud", "s3://b/f.samd")])
    subject = Subject("Pod")
    assert not check_bypass(pod_spec(secret="churn-keys"), subject, state.namespace_index(NAMESPACE), None)

    churn = model_object("churn", "s3://b/c.samd", key_secret="churn-keys")
    state.apply(Kind.MODELS, "ADDED", churn)
    (violation,) = check_bypass(
        pod_spec(secret="churn-keys"), subject, state.namespace_index(NAMESPACE), None
    )
    assert "the key Secret of SecureModel churn" in violation.message

    state.apply(Kind.MODELS, "DELETED", churn)
    assert not check_bypass(pod_spec(secret="churn-keys"), subject, state.namespace_index(NAMESPACE), None)


def test_an_undeclared_client_secret_of_a_model_is_still_protected() -> None:
    state = WatchedState.from_objects(models=[model_object("fraud", "s3://b/f.samd")])

    (violation,) = check_bypass(
        pod_spec(secret="fraud-client-undeclared"), Subject("Pod"), state.namespace_index(NAMESPACE), None
    )

    assert "the client certificate Secret of SecureModel fraud" in violation.message


def public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def test_a_signers_verifier_is_built_once_per_key_material() -> None:
    pem = public_pem()
    first = verifier_for(TrustedSigner(name="ci", public_key=pem))

    assert verifier_for(TrustedSigner(name="renamed", public_key=pem)) is first
    other = verifier_for(TrustedSigner(name="ci", public_key=public_pem()))
    assert other is not first
    assert other.public_key_pem != first.public_key_pem


def test_a_signer_whose_key_does_not_parse_fails_every_time() -> None:
    signer = TrustedSigner(
        name="typo", public_key="-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"
    )

    for _ in range(2):
        with pytest.raises(SamdError):
            verifier_for(signer)
