"""The SAMD CRDs from `crds/`: load them, and install them into a cluster for the tests that need them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import REPO

CRD_DIR = REPO / "crds"
SECURE_MODELS = CRD_DIR / "securemodels.samd.dev.yaml"
TRUST_POLICIES = CRD_DIR / "modeltrustpolicies.samd.dev.yaml"
ALL_CRDS = (SECURE_MODELS, TRUST_POLICIES)


def load_crd(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise TypeError(f"{path} does not hold one YAML mapping")
    return document


def install_crds(api_client: client.ApiClient, timeout: float = 60.0) -> None:
    """Create the SAMD CRDs, or replace them if they exist, and wait until the API server serves them.

    The CRDs stay installed afterwards: every test that needs SecureModels shares them.
    """
    extensions = client.ApiextensionsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    for path in ALL_CRDS:
        crd = load_crd(path)
        name = crd["metadata"]["name"]
        try:
            extensions.create_custom_resource_definition(crd)  # type: ignore[arg-type] # dicts are accepted
        except ApiException as error:
            if error.status != 409:
                raise
            existing = extensions.read_custom_resource_definition(name)
            crd["metadata"]["resourceVersion"] = existing.metadata.resource_version
            extensions.replace_custom_resource_definition(name, crd)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        while not (_established(extensions, name) and _served(custom, crd)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} was not established and served within {timeout} s")
            time.sleep(0.2)


def _established(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    conditions = extensions.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def _served(custom: client.CustomObjectsApi, crd: dict[str, Any]) -> bool:
    # Established can come a moment before the resource's REST endpoint answers.
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    version = crd["spec"]["versions"][0]["name"]
    try:
        custom.list_cluster_custom_object(group, version, plural, limit=1)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True
