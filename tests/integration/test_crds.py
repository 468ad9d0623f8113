"""The SAMD CRDs on the real API server: accepted, enforced, with a status subresource and useful kubectl output."""

from __future__ import annotations

import copy
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from samd.spec import GROUP, VERSION, SpecError, parse_secure_model, parse_trust_policy
from tests.support.cluster import REPO, Cluster
from tests.support.crds import install_crds

pytestmark = pytest.mark.integration

MODELS = "securemodels"
POLICIES = "modeltrustpolicies"
DELETE = object()  # a value for `changed` that removes the field


@pytest.fixture(scope="session")
def samd_crds(k8s: client.ApiClient) -> client.ApiClient:
    """The SAMD CRDs, installed once per session and left installed for the other tests."""
    install_crds(k8s)
    return k8s


@pytest.fixture
def custom(samd_crds: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(samd_crds)


@pytest.fixture
def policy_name(custom: client.CustomObjectsApi) -> Iterator[str]:
    """A unique ModelTrustPolicy name; the policy (cluster-scoped) is deleted after the test if created."""
    name = f"test-policy-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        custom.delete_cluster_custom_object(GROUP, VERSION, POLICIES, name)
    except ApiException as error:
        if error.status != 404:
            raise


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Callable[..., str]:
    bin_dir = subprocess.run(
        [str(REPO / "hack" / "build-control-plane")], capture_output=True, text=True, check=True
    ).stdout.strip()

    def run(*args: str) -> str:
        result = subprocess.run(
            [f"{bin_dir}/kubectl", f"--kubeconfig={cluster.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    return run


def eventually(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


# --- objects -----------------------------------------------------------------------------------------


def full_spec() -> dict[str, Any]:
    """A SecureModel spec that uses every field."""
    return {
        "format": "onnx",
        "version": "1.4.0",
        "owner": "ml-fraud-team",
        "description": "Scores card payments for fraud.",
        "dependencies": [{"name": "scikit-learn", "version": "1.5.2"}],
        "artifact": {
            "uri": "s3://models/fraud/1.4.0/model.onnx.samd",
            "digest": "sha256:" + "ab" * 32,
            "endpoint": "https://objects.storage.svc:9000",
            "region": "eu-west-1",
            "credentialsSecret": "fraud-s3",
        },
        "signature": {"uri": "s3://models/fraud/1.4.0/model.sig"},
        "encryption": {
            "keyRef": {"provider": "local", "secretName": "fraud-keyset"},
            "rotationPeriod": "168h",
        },
        "access": {
            "deployers": [{"kind": "Group", "name": "ml-ops"}],
            "reviewers": [{"kind": "User", "name": "auditor@example.com"}],
            "grants": [
                {
                    "subject": {"kind": "ServiceAccount", "name": "release-bot", "namespace": "ci"},
                    "role": "deployer",
                    "expires": "2030-01-01T00:00:00Z",
                }
            ],
        },
        "serving": {
            "enabled": True,
            "image": "registry.internal/samd/inference:0.1.0",
            "replicas": 2,
            "port": 9443,
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"cpu": 2, "memory": "2Gi"},
            },
            "rateLimit": {"requestsPerSecond": 20.5, "burst": 40},
            "clients": [{"name": "payments-api"}, {"name": "risk-dashboard"}],
            "allowedClients": [
                {
                    "namespaceSelector": {"matchLabels": {"team": "payments"}},
                    "podSelector": {
                        "matchExpressions": [{"key": "app", "operator": "In", "values": ["payments-api"]}]
                    },
                }
            ],
        },
    }


def minimal_spec() -> dict[str, Any]:
    return {
        "format": "onnx",
        "version": "1.0.0",
        "owner": "ml-fraud-team",
        "artifact": {"uri": "s3://models/fraud/model.onnx.samd"},
        "signature": {"uri": "s3://models/fraud/model.sig"},
        "encryption": {"keyRef": {"provider": "local", "secretName": "fraud-keyset"}},
    }


def policy_spec() -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchExpressions": [{"key": "samd.dev/models", "operator": "Exists"}]},
        "mode": "warn",
        "signers": [
            {"name": "ml-ci", "publicKey": "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"},
            {
                "name": "release",
                "keyless": {
                    "identity": "release@example.com",
                    "issuer": "https://accounts.example.com",
                    "trustedRoot": '{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}',
                },
            },
        ],
        "allowedFormats": ["onnx", "safetensors"],
        "requireEncryption": False,
        "versionPolicy": {"allowDowngrade": True, "requireSignedVersion": False},
    }


def secure_model(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SecureModel",
        "metadata": {"name": name},
        "spec": spec,
    }


def trust_policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelTrustPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def changed(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `spec` with the dotted `path` ("access.grants.0.expires") set to `value` (or removed)."""
    result = copy.deepcopy(spec)
    *parents, last = path.split(".")
    node: Any = result
    for step in parents:
        node = node[int(step)] if isinstance(node, list) else node[step]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return result


def as_object(answer: object) -> dict[str, Any]:
    """The custom-objects API answers with plain dicts; say so to the type checker."""
    assert isinstance(answer, dict)
    return answer


def create_model(
    custom: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    return as_object(
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MODELS, secure_model(name, spec))
    )


def create_policy(custom: client.CustomObjectsApi, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return as_object(custom.create_cluster_custom_object(GROUP, VERSION, POLICIES, trust_policy(name, spec)))


def get_model(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return as_object(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, MODELS, name))


def rejection(action: Callable[[], object]) -> str:
    """The API server's message when it refuses `action` as invalid."""
    with pytest.raises(ApiException) as refused:
        action()
    assert refused.value.status == 422, refused.value.body
    return str(refused.value.body)


# --- the CRDs are accepted ---------------------------------------------------------------------------


def test_both_crds_are_established_with_their_names(samd_crds: client.ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(samd_crds)
    for name, scope, short in (
        ("securemodels.samd.dev", "Namespaced", "sm"),
        ("modeltrustpolicies.samd.dev", "Cluster", "mtp"),
    ):
        crd = extensions.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
        assert crd.spec.scope == scope
        assert crd.status.accepted_names.short_names == [short]


def test_installing_again_replaces_the_crds_in_place(samd_crds: client.ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(samd_crds)
    before = extensions.read_custom_resource_definition("securemodels.samd.dev").metadata.uid
    install_crds(samd_crds)
    assert extensions.read_custom_resource_definition("securemodels.samd.dev").metadata.uid == before


def test_a_secure_model_using_every_field_is_accepted_as_written(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    created = create_model(custom, namespace, "fraud-detection", full_spec())
    assert created["spec"] == full_spec()
    assert parse_secure_model(created["spec"]).serving.clients[1].name == "risk-dashboard"


def test_a_minimal_secure_model_gets_the_documented_defaults(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    created = create_model(custom, namespace, "minimal", minimal_spec())
    spec = created["spec"]
    assert spec["encryption"]["rotationPeriod"] == "720h"
    assert spec["serving"] == {
        "enabled": True,
        "replicas": 1,
        "port": 8443,
        "rateLimit": {"requestsPerSecond": 50, "burst": 100},
    }
    assert spec["access"] == {}
    # The API server's defaults and the spec models' defaults describe the same model.
    assert parse_secure_model(spec) == parse_secure_model(minimal_spec())


# Where a model's author might try to name a certificate issuer: only a ModelTrustPolicy
# (spec.certificateIssuer) and the chart (SAMD_CERT_ISSUER) may choose one (docs/operator.md).
ATTACKER_ISSUER = {"kind": "ClusterIssuer", "name": "attacker-ca", "group": "cert-manager.io"}
ISSUER_GUESSES: dict[str, Any] = {
    "certificateIssuer": ATTACKER_ISSUER,
    "certificates": {"issuerRef": ATTACKER_ISSUER},
    "issuerRef": ATTACKER_ISSUER,
}


def with_issuer_guesses() -> dict[str, Any]:
    spec = {**minimal_spec(), **copy.deepcopy(ISSUER_GUESSES)}
    spec["serving"] = {"certificateIssuer": ATTACKER_ISSUER, "tls": {"issuerRef": ATTACKER_ISSUER}}
    return spec


def test_a_secure_model_cannot_name_a_certificate_issuer(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    """The API server prunes every guess (clients that do not ask for strict validation get a
    warning naming each field), and refuses them where a client asks for strict validation, as
    kubectl does by default. Either way no issuer a model names is ever stored for the operator.
    The namespace is a fresh one that no policy covers: this holds before any policy has a say."""
    created, _, headers = custom.create_namespaced_custom_object_with_http_info(
        GROUP, VERSION, namespace, MODELS, secure_model("guesses", with_issuer_guesses())
    )
    stored = get_model(custom, namespace, "guesses")
    for spec in (as_object(created)["spec"], stored["spec"]):
        assert not set(ISSUER_GUESSES) & set(spec), spec
        assert {"certificateIssuer", "tls"}.isdisjoint(spec["serving"]), spec["serving"]
    # What is stored is exactly the model without the guesses (with the API server's defaults).
    assert parse_secure_model(stored["spec"]) == parse_secure_model(minimal_spec())
    warnings = str(headers.get("Warning", ""))
    pruned = ("certificateIssuer", "certificates", "issuerRef", "serving.certificateIssuer", "serving.tls")
    for field in (f"spec.{name}" for name in pruned):
        assert f'unknown field \\"{field}\\"' in warnings, warnings

    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            MODELS,
            secure_model("strict", with_issuer_guesses()),
            field_validation="Strict",
        )
    assert 'unknown field \\"spec.certificateIssuer\\"' in str(refused.value.body)
    assert refused.value.status == 400  # a strict decoding error, before any validation
    with pytest.raises(ApiException) as missing:
        get_model(custom, namespace, "strict")
    assert missing.value.status == 404  # refused: nothing stored


def test_a_trust_policy_is_accepted_and_defaulted(custom: client.CustomObjectsApi, policy_name: str) -> None:
    created = create_policy(custom, policy_name, policy_spec())
    # Automated incident responses are off unless asked for (docs/events.md).
    assert created["spec"] == {**policy_spec(), "responses": {"quarantine": False}}
    assert "namespace" not in created["metadata"]  # cluster-scoped

    minimal = {
        "signers": [
            {"name": "ml-ci", "publicKey": "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"}
        ]
    }
    custom.delete_cluster_custom_object(GROUP, VERSION, POLICIES, policy_name)
    eventually(lambda: _gone(custom, policy_name), what="the policy to be deleted")
    defaulted = create_policy(custom, policy_name, minimal)
    assert defaulted["spec"]["mode"] == "enforce"
    assert defaulted["spec"]["requireEncryption"] is True
    assert defaulted["spec"]["versionPolicy"] == {"allowDowngrade": False, "requireSignedVersion": True}
    assert defaulted["spec"]["namespaceSelector"] == {}
    assert defaulted["spec"]["responses"] == {"quarantine": False}
    assert parse_trust_policy(defaulted["spec"]) == parse_trust_policy(minimal)


def _gone(custom: client.CustomObjectsApi, name: str) -> bool:
    try:
        custom.get_cluster_custom_object(GROUP, VERSION, POLICIES, name)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


# --- each rule refuses what violates it --------------------------------------------------------------


class Bad(NamedTuple):
    """A field set to a value the API server must refuse, and what it says."""

    field: str
    value: Any
    message: str
    spec_refuses: bool  # whether samd.spec refuses it too (the CRD is stricter in a few places)


def case_id(bad: Bad) -> str:
    shown = "(removed)" if bad.value is DELETE else repr(bad.value)
    return f"{bad.field}={shown[:30]}"


BAD_MODEL_FIELDS: list[Bad] = [
    Bad("version", "1.0", "spec.version must be a semantic version", True),
    Bad("version", "01.2.3", "spec.version must be a semantic version", True),
    Bad("version", "v1.2.3", "spec.version must be a semantic version", True),
    Bad("format", "keras", 'Unsupported value: \\"keras\\"', True),
    Bad(
        "artifact.uri",
        "ftp://files.example.com/model.onnx",
        "spec.artifact.uri must start with s3://, https:// or file://",
        True,
    ),
    Bad(
        "artifact.uri",
        "http://files.example.com/model.onnx",
        "spec.artifact.uri must start with s3://, https:// or file://",
        True,
    ),
    Bad(
        "signature.uri",
        "gs://models/fraud/model.sig",
        "spec.signature.uri must start with s3://, https:// or file://",
        False,  # samd.spec checks only the artifact's scheme
    ),
    Bad("artifact.digest", "sha256:abc", "spec.artifact.digest must look like sha256:", True),
    Bad("serving.replicas", 101, "spec.serving.replicas must be between 0 and 100", True),
    Bad("serving.replicas", -1, "spec.serving.replicas must be between 0 and 100", True),
    Bad("serving.port", 443, "spec.serving.port must be between 1024 and 65535", True),
    Bad("serving.port", 65536, "spec.serving.port must be between 1024 and 65535", True),
    Bad(
        "serving.rateLimit.requestsPerSecond",
        0,
        "requestsPerSecond must be more than 0 and at most 100000",
        True,
    ),
    Bad(
        "serving.rateLimit.requestsPerSecond",
        100000.5,
        "requestsPerSecond must be more than 0 and at most 100000",
        True,
    ),
    Bad("serving.rateLimit.burst", 0, "spec.serving.rateLimit.burst must be between 1 and 100000", True),
    Bad(
        "encryption.rotationPeriod",
        "30 days",
        "rotationPeriod must be a duration of hours, minutes and",
        True,
    ),
    Bad("encryption.rotationPeriod", "", "rotationPeriod must be a duration of hours, minutes and", True),
    Bad(
        "encryption.rotationPeriod",
        "59s",
        "spec.encryption.rotationPeriod must be between 1m and 87600h",
        True,
    ),
    Bad(
        "encryption.rotationPeriod",
        "99999999999h",
        "spec.encryption.rotationPeriod must be between 1m and 87600h",
        True,
    ),
    Bad("encryption.keyRef", {"provider": "local"}, "a local key needs secretName", True),
    Bad(
        "encryption.keyRef",
        {"provider": "aws-kms", "secretName": "k"},
        "an aws-kms or pkcs11 key needs uri",
        True,
    ),
    Bad("encryption.keyRef", {"provider": "pkcs11"}, "an aws-kms or pkcs11 key needs uri", True),
    Bad(
        "access.deployers.0",
        {"kind": "ServiceAccount", "name": "ci"},
        "a ServiceAccount subject needs a namespace",
        True,
    ),
    Bad("access.grants.0.subject.namespace", DELETE, "a ServiceAccount subject needs a namespace", True),
    Bad("access.grants.0.role", "admin", 'Unsupported value: \\"admin\\"', True),
    Bad(
        "access.grants.0.expires",
        "2030-01-01T00:00:00",
        "expires must be an RFC 3339 date-time with a time zone",
        True,
    ),
    Bad(
        "access.grants.0.expires",
        "next tuesday",
        "expires must be an RFC 3339 date-time with a time zone",
        True,
    ),
    Bad(
        "access.grants.0.expires",
        "2030-13-01T00:00:00Z",
        "expires must be an RFC 3339 date-time with a time zone",
        True,
    ),
    Bad(
        "access.grants.0.expires",
        "2030-02-30T00:00:00Z",
        "expires must be an RFC 3339 date-time with a time zone",
        True,
    ),
    Bad("serving.clients.0.name", "Payments_API", "client names must be DNS labels", True),
    # Stricter than samd.spec: these would fail later, in boto3 or in the NetworkPolicy.
    Bad(
        "artifact.endpoint",
        "objects.storage.svc:9000",
        "spec.artifact.endpoint must be an http:// or https:// URL",
        False,
    ),
    Bad(
        "serving.allowedClients.0",
        {},
        "an allowed client needs a namespaceSelector, a podSelector or both",
        False,
    ),
    Bad(
        "serving.allowedClients.0.podSelector.matchExpressions.0.values",
        DELETE,
        "In and NotIn need values; Exists and DoesNotExist take none",
        False,
    ),
    Bad("serving.clients.1.name", "payments-api", "Duplicate value", False),
    Bad(
        "encryption.rotationPeriod",
        "87601h",
        "spec.encryption.rotationPeriod must be between 1m and 87600h",
        False,
    ),
]


@pytest.mark.parametrize("bad", BAD_MODEL_FIELDS, ids=case_id)
def test_a_secure_model_breaking_a_rule_is_refused_with_its_message(
    custom: client.CustomObjectsApi, namespace: str, bad: Bad
) -> None:
    spec = changed(full_spec(), bad.field, bad.value)
    body = rejection(lambda: create_model(custom, namespace, "bad", spec))
    assert bad.message in body
    if bad.spec_refuses:
        with pytest.raises(SpecError):
            parse_secure_model(spec)


@pytest.mark.parametrize("name", ["fraud.v2", "2fraud", "fraud-"])
def test_a_secure_model_name_that_cannot_name_a_service_is_refused(
    custom: client.CustomObjectsApi, namespace: str, name: str
) -> None:
    body = rejection(lambda: create_model(custom, namespace, name, minimal_spec()))
    assert "a SecureModel name must start with a lower case letter" in body


BAD_POLICY_FIELDS: list[Bad] = [
    Bad(
        "signers.0.keyless",
        {"identity": "a@example.com", "issuer": "https://accounts.example.com", "trustedRoot": "{}"},
        "a signer must set exactly one of publicKey, certificateRoots or keyless",
        True,
    ),
    Bad(
        "signers.0.publicKey",
        DELETE,
        "a signer must set exactly one of publicKey, certificateRoots or keyless",
        True,
    ),
    Bad("signers", [], "should have at least 1 items", True),
    Bad("signers.1.keyless.trustedRoot", DELETE, "spec.signers[1].keyless.trustedRoot: Required value", True),
    Bad("mode", "audit", 'Unsupported value: \\"audit\\"', True),
    Bad("allowedFormats", ["keras"], 'Unsupported value: \\"keras\\"', True),
    # Stricter than samd.spec: these would fail later, when the policy is used.
    Bad(
        "signers.0.publicKey",
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
        "publicKey must be a PEM public key",
        False,
    ),
    Bad("signers.1.name", "ml-ci", "Duplicate value", False),
    Bad("allowedFormats", ["onnx", "onnx"], "Duplicate value", False),
    Bad(
        "namespaceSelector.matchExpressions.0.values",
        ["x"],
        "In and NotIn need values; Exists and DoesNotExist take none",
        False,
    ),
]


@pytest.mark.parametrize("bad", BAD_POLICY_FIELDS, ids=case_id)
def test_a_trust_policy_breaking_a_rule_is_refused_with_its_message(
    custom: client.CustomObjectsApi, policy_name: str, bad: Bad
) -> None:
    spec = changed(policy_spec(), bad.field, bad.value)
    body = rejection(lambda: create_policy(custom, policy_name, spec))
    assert bad.message in body
    if bad.spec_refuses:
        with pytest.raises(SpecError):
            parse_trust_policy(spec)


# --- updates -----------------------------------------------------------------------------------------


def patch_spec(
    custom: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    return as_object(
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, MODELS, name, {"spec": spec})
    )


@pytest.mark.parametrize(
    ("spec_patch", "message"),
    [
        ({"format": "safetensors"}, "spec.format is immutable: create a new SecureModel"),
        (
            {"encryption": {"keyRef": {"provider": "aws-kms", "uri": "aws-kms://alias/fraud"}}},
            "spec.encryption.keyRef.provider is immutable",
        ),
        ({"encryption": None}, "spec.encryption cannot be removed from an encrypted SecureModel"),
    ],
    ids=["format", "key-provider", "remove-encryption"],
)
def test_changing_an_immutable_field_is_refused(
    custom: client.CustomObjectsApi, namespace: str, spec_patch: dict[str, Any], message: str
) -> None:
    create_model(custom, namespace, "fraud", full_spec())
    body = rejection(lambda: patch_spec(custom, namespace, "fraud", spec_patch))
    assert message in body
    stored = get_model(custom, namespace, "fraud")
    assert stored["spec"] == full_spec()


def test_ordinary_updates_are_accepted(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_model(custom, namespace, "fraud", full_spec())
    patched = patch_spec(
        custom,
        namespace,
        "fraud",
        {
            "version": "1.5.0",
            "artifact": {"uri": "s3://models/fraud/1.5.0/model.onnx.samd", "digest": "sha256:" + "cd" * 32},
            "encryption": {"keyRef": {"secretName": "fraud-keyset-2"}, "rotationPeriod": "24h"},
            "serving": {"replicas": 3},
        },
    )
    assert patched["metadata"]["generation"] == 2
    assert patched["spec"]["version"] == "1.5.0"
    assert patched["spec"]["encryption"] == {
        "keyRef": {"provider": "local", "secretName": "fraud-keyset-2"},
        "rotationPeriod": "24h",
    }
    assert patched["spec"]["serving"]["replicas"] == 3


def test_encryption_can_be_added_to_an_unencrypted_model(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    create_model(custom, namespace, "plain", changed(minimal_spec(), "encryption", DELETE))
    patched = patch_spec(
        custom,
        namespace,
        "plain",
        {"encryption": {"keyRef": {"provider": "pkcs11", "uri": "pkcs11:token=samd"}}},
    )
    assert patched["spec"]["encryption"]["keyRef"]["provider"] == "pkcs11"


# --- the status subresource ------------------------------------------------------------------------

STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "lastReconciled": "2026-01-02T03:04:05Z",
    "conditions": [
        {
            "type": "Verified",
            "status": "True",
            "reason": "SignatureVerified",
            "message": "signed by ml-ci",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 1,
        },
        {
            "type": "Ready",
            "status": "False",
            "reason": "ServingFalse",
            "message": "Serving: 0/2 replicas available",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 1,
        },
    ],
    "verification": {
        "method": "key",
        "signer": "ml-ci",
        "issuer": "",
        "manifestDigest": "sha256:" + "ab" * 32,
        "verifiedAt": "2026-01-02T03:04:05Z",
        "policy": "fraud-signers",
        "version": "1.4.0",
    },
    "key": {
        "provider": "local",
        "keyId": "fraud-keyset",
        "keyVersion": "3",
        "rotatedAt": "2026-01-01T00:00:00Z",
        "nextRotation": "2026-01-08T00:00:00Z",
    },
    "certificates": {"serverNotAfter": "2026-04-01T00:00:00Z", "clients": ["payments-api", "risk-dashboard"]},
    "serving": {"deployment": "fraud", "service": "fraud", "readyReplicas": 0, "replicas": 2},
    "storage": {"encrypted": True, "publicAccessBlocked": True, "checkedAt": "2026-01-02T03:04:05Z"},
}


def write_status(
    custom: client.CustomObjectsApi, namespace: str, name: str, status: dict[str, Any]
) -> dict[str, Any]:
    return as_object(
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, MODELS, name, {"status": status}
        )
    )


def test_status_is_written_only_through_the_status_subresource(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    create_model(custom, namespace, "fraud", full_spec())

    written = write_status(custom, namespace, "fraud", STATUS)
    assert written["status"] == STATUS
    assert written["metadata"]["generation"] == 1  # a status write is not a spec change

    updated = patch_spec(custom, namespace, "fraud", {"version": "1.4.1"})
    assert updated["metadata"]["generation"] == 2
    assert updated["status"] == STATUS  # a spec write leaves the status alone

    ignored = as_object(
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, MODELS, "fraud", {"status": {"observedGeneration": 2}}
        )
    )
    assert ignored["status"]["observedGeneration"] == 1  # status cannot be written through the main resource


def test_status_is_typed_not_a_scratchpad(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_model(custom, namespace, "fraud", full_spec())
    written = write_status(custom, namespace, "fraud", {"observedGeneration": 1, "notes": "anything"})
    assert written["status"] == {"observedGeneration": 1}  # unknown fields are pruned

    bad_condition = dict(STATUS["conditions"][0], status="Maybe")
    body = rejection(lambda: write_status(custom, namespace, "fraud", {"conditions": [bad_condition]}))
    assert 'Unsupported value: \\"Maybe\\"' in body


# --- kubectl -----------------------------------------------------------------------------------------


def test_kubectl_explain_shows_the_field_descriptions(
    samd_crds: client.ApiClient, kubectl: Callable[..., str]
) -> None:
    def explained() -> bool:
        try:
            text = kubectl("explain", "securemodel.spec.artifact")
        except AssertionError:
            return False  # the OpenAPI document is published a moment after the CRD
        return "The location of the model artifact" in text

    eventually(explained, what="kubectl explain to know securemodel.spec.artifact")
    text = kubectl("explain", "securemodel.spec.artifact")
    assert "Where the (encrypted) model files are stored and how to reach them." in text
    for field in ("uri", "digest", "endpoint", "region", "credentialsSecret"):
        assert f"\n  {field}\t" in text, f"{field} missing from:\n{text}"
    assert "Optional pin of the signed manifest digest" in text

    serving = kubectl("explain", "securemodel.spec.serving.rateLimit.burst")
    assert "How many requests a client may send at once above the sustained rate" in serving
    policy = kubectl("explain", "modeltrustpolicy.spec.signers.keyless")
    assert "A Sigstore keyless identity" in policy


def test_kubectl_get_shows_the_printer_columns(
    custom: client.CustomObjectsApi,
    namespace: str,
    policy_name: str,
    kubectl: Callable[..., str],
    tmp_path: Path,
) -> None:
    create_model(custom, namespace, "fraud", full_spec())
    write_status(custom, namespace, "fraud", STATUS)
    create_policy(custom, policy_name, policy_spec())
    fresh_discovery = f"--cache-dir={tmp_path / 'kube-cache'}"

    header, row = kubectl("get", "sm", "-n", namespace, fresh_discovery).splitlines()
    assert header.split() == ["NAME", "VERSION", "FORMAT", "VERIFIED", "READY", "AGE"]
    assert row.split()[:5] == ["fraud", "1.4.0", "onnx", "True", "False"]

    wide_header, wide_row = kubectl("get", "sm", "-n", namespace, "-o", "wide", fresh_discovery).splitlines()
    assert wide_header.split() == [
        "NAME",
        "VERSION",
        "FORMAT",
        "VERIFIED",
        "READY",
        "AGE",
        "SIGNER",
        "KEY",
        "VERSION",
        "REASON",
    ]
    assert wide_row.split()[-3:] == ["ml-ci", "3", "ServingFalse"]

    custom.patch_cluster_custom_object_status(
        GROUP, VERSION, POLICIES, policy_name, {"status": {"observedGeneration": 1, "signerCount": 2}}
    )
    policies = kubectl("get", "mtp", policy_name, fresh_discovery).splitlines()
    assert policies[0].split() == ["NAME", "MODE", "SIGNERS", "AGE"]
    assert policies[1].split()[:3] == [policy_name, "warn", "2"]

    everything = kubectl("get", "samd", "-n", namespace, "-o", "name", fresh_discovery).split()
    assert "securemodel.samd.dev/fraud" in everything
    assert f"modeltrustpolicy.samd.dev/{policy_name}" in everything
