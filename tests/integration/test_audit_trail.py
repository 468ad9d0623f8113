"""The API server's audit log under SAMD's audit policy (deploy/audit-policy.yaml), on the local control plane.

A named user's change of a SecureModel is logged with that user and the object as stored; a read of
a Secret is logged with who read it, never with its data.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from samd.spec import GROUP, VERSION
from tests.support.cluster import REPO
from tests.support.crds import install_crds

pytestmark = pytest.mark.integration

AUDIT_LOG = Path(os.environ.get("SAMD_LOCAL_DIR", REPO / ".local")) / "cluster" / "audit" / "audit.log"
EDITOR = "model-editor@example.com"


def as_user(api: client.ApiClient, user: str) -> client.ApiClient:
    impersonating = client.ApiClient(api.configuration)
    impersonating.set_default_header("Impersonate-User", user)  # type: ignore[no-untyped-call]
    return impersonating


def grant(api: client.ApiClient, namespace: str, user: str, rules: list[dict[str, Any]]) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    name = f"audit-test-{uuid.uuid4().hex[:6]}"
    role: Any = {"metadata": {"name": name}, "rules": rules}  # the client accepts plain dicts
    rbac.create_namespaced_role(namespace, role)
    binding: Any = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
    }
    rbac.create_namespaced_role_binding(namespace, binding)


def audit_entries(match: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> list[dict[str, Any]]:
    """The audit log's entries that `match` (the API server writes them before it answers, in blocking mode)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = [json.loads(line) for line in AUDIT_LOG.read_text().splitlines() if line.strip()]
        found = [entry for entry in entries if match(entry)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def retry_forbidden(action: Callable[[], object]) -> object:
    """RBAC caches a new binding for a moment: retry a 403 briefly."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return action()
        except client.ApiException as error:
            if error.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_named_users_change_to_a_secure_model_is_in_the_audit_log_with_the_stored_object(
    k8s: client.ApiClient, namespace: str
) -> None:
    install_crds(k8s)
    custom = client.CustomObjectsApi(k8s)
    name = f"audited-{uuid.uuid4().hex[:6]}"
    spec = {
        "format": "onnx",
        "version": "1.0.0",
        "owner": "ml-fraud-team",
        "artifact": {"uri": "s3://models/fraud/model.onnx.samd"},
        "signature": {"uri": "s3://models/fraud/model.sig"},
        "encryption": {"keyRef": {"provider": "local", "secretName": "fraud-keyset"}},
    }
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "securemodels",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SecureModel", "metadata": {"name": name}, "spec": spec},
    )
    grant(
        k8s,
        namespace,
        EDITOR,
        [{"apiGroups": [GROUP], "resources": ["securemodels"], "verbs": ["get", "patch"]}],
    )
    editor = client.CustomObjectsApi(as_user(k8s, EDITOR))
    retry_forbidden(
        lambda: editor.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "securemodels", name, {"spec": {"version": "1.0.1"}}
        )
    )

    changes = audit_entries(
        lambda entry: (
            entry.get("verb") == "patch"
            and entry.get("objectRef", {}).get("resource") == "securemodels"
            and entry.get("objectRef", {}).get("namespace") == namespace
            and entry.get("objectRef", {}).get("name") == name
            and entry.get("responseStatus", {}).get("code") == 200
        )
    )
    assert len(changes) == 1, changes
    change = changes[0]
    # Impersonation: the API server records both who acted (the admin) and as whom (the editor).
    assert change["impersonatedUser"]["username"] == EDITOR
    assert change["level"] == "RequestResponse"
    assert change["stage"] == "ResponseComplete"
    assert change["requestObject"] == {"spec": {"version": "1.0.1"}}
    assert change["responseObject"]["spec"]["version"] == "1.0.1"


def test_a_secret_read_is_in_the_audit_log_without_its_data(k8s: client.ApiClient, namespace: str) -> None:
    canary = f"model-key-{uuid.uuid4().hex}"
    core = client.CoreV1Api(k8s)
    secret_body: Any = {"metadata": {"name": "fraud-keyset"}, "stringData": {"keyset.json": canary}}
    core.create_namespaced_secret(namespace, secret_body)
    reader = "secret-reader@example.com"
    grant(k8s, namespace, reader, [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
    secret = retry_forbidden(
        lambda: client.CoreV1Api(as_user(k8s, reader)).read_namespaced_secret("fraud-keyset", namespace)
    )
    assert isinstance(secret, client.V1Secret)
    assert base64.b64decode(secret.data["keyset.json"]).decode() == canary  # the read really returned it

    reads = audit_entries(
        lambda entry: (
            entry.get("verb") == "get"
            and entry.get("objectRef", {}).get("resource") == "secrets"
            and entry.get("objectRef", {}).get("namespace") == namespace
            and entry.get("responseStatus", {}).get("code") == 200
            and entry.get("impersonatedUser", {}).get("username") == reader
        )
    )
    assert len(reads) == 1, reads
    assert reads[0]["level"] == "Metadata"
    assert "responseObject" not in reads[0]
    assert "requestObject" not in reads[0]
    whole_log = AUDIT_LOG.read_text()
    assert canary not in whole_log
    assert base64.b64encode(canary.encode()).decode() not in whole_log
