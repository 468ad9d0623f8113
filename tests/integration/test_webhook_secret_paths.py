"""The webhook's table of Secret references holds to the REAL API server's PodSpec schema.

The schema (OpenAPI v3, ``/openapi/v3/api/v1``) is walked from PodSpec, following ``$ref`` and list
items, and every field that may name a Secret must be on a path of `SECRET_NAME_PATHS` (which the
decider walks and the matchConditions are generated from). A field may name a Secret when:

1. its name contains "secret" (any case): ``secretName``, ``secretRef``, ``nodePublishSecretRef``,
   ``secretKeyRef``, ``imagePullSecrets``, ``secret``;
2. its type is a schema whose name contains "Secret" (``SecretVolumeSource``, ``SecretKeySelector``...);
3. its type is ``LocalObjectReference`` (the bare name of an object in the pod's namespace);
4. its description mentions a secret.

Such a field is handled when the table has it as the name itself (a string), or the name inside it
(``.name`` or ``.secretName`` of an object; ``[].name`` of a list of objects). The walk does not go below a field it matched by rules
1-3 (the reference's own fields); a field matched only by its description is walked further.
Fields that match a rule but name no Secret are listed in `NOT_SECRET_REFERENCES` with the reason,
and each of them must still be in the schema, so that the list cannot go stale.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from samd.webhook.workloads import SECRET_NAME_PATHS, path_parts

pytestmark = pytest.mark.integration

POD_SPEC = "io.k8s.api.core.v1.PodSpec"
LOCAL_OBJECT_REFERENCE = "io.k8s.api.core.v1.LocalObjectReference"
SECRET_WORD = re.compile("secret", re.IGNORECASE)

NOT_SECRET_REFERENCES = {
    "volumes[].cephfs.secretFile": "a path on the node to a Ceph key ring, read from the node's disk, "
    "not a Secret object (the Secret form is cephfs.secretRef, in the table)",
    "securityContext.fsGroupChangePolicy": "its description names secret volumes as an example of a "
    "volume type; the field is an enum (OnRootMismatch, Always)",
    "volumes[].image.reference": "an image reference; its description says it is pulled with the "
    "pod's imagePullSecrets, which are in the table",
    "volumes[].projected": "holds a list of sources; its secret sources are walked and in the table",
}
"""Fields that match a rule above but do not name a Secret, and why."""


@dataclass(frozen=True)
class Field:
    path: str
    """Dotted path from the pod spec, with [] after a list."""
    schema: dict[str, Any]
    """The field's own schema (for a list: the list's)."""
    type_name: str | None
    """The schema the field (or, for a list, its items) refers to."""
    rules: tuple[int, ...]


def _reference(schema: dict[str, Any]) -> str | None:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for key in ("allOf", "oneOf", "anyOf"):
        for option in schema.get(key, ()):
            if "$ref" in option:
                return str(option["$ref"]).rsplit("/", 1)[-1]
    return None


def _fields(schemas: dict[str, Any], name: str, path: str, seen: frozenset[str]) -> Iterator[Field]:
    """Every field below the schema `name`, matched ones not walked further; cycles walked once."""
    for prop, schema in schemas[name].get("properties", {}).items():
        is_list = schema.get("type") == "array"
        target = _reference(schema.get("items", {}) if is_list else schema)
        field_path = (f"{path}.{prop}" if path else prop) + ("[]" if is_list else "")
        rules = tuple(
            rule
            for rule, matched in (
                (1, SECRET_WORD.search(prop) is not None),
                (2, target is not None and SECRET_WORD.search(target.rsplit(".", 1)[-1]) is not None),
                (3, target == LOCAL_OBJECT_REFERENCE),
                (4, SECRET_WORD.search(schema.get("description", "")) is not None),
            )
            if matched
        )
        yield Field(field_path, schema, target, rules)
        if rules and rules != (4,):
            continue
        if target is not None and target not in seen:
            yield from _fields(schemas, target, field_path, seen | {target})


@pytest.fixture(scope="module")
def schemas(k8s: client.ApiClient) -> dict[str, Any]:
    method, url, headers, body, post = k8s.param_serialize(
        method="GET",
        resource_path="/openapi/v3/api/v1",
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = k8s.call_api(method, url, headers, body, post)
    document = json.loads(response.read())  # type: ignore[no-untyped-call]
    found: dict[str, Any] = document["components"]["schemas"]
    assert POD_SPEC in found
    return found


def _expected_paths(field: Field, schemas: dict[str, Any]) -> list[str]:
    """The table path(s) that handle `field`: the name itself, or the name inside it."""
    if field.schema.get("type") == "string":
        return [field.path]
    target = schemas.get(field.type_name or "", {})
    return [
        f"{field.path}.{name}"
        for name, schema in target.get("properties", {}).items()
        if name in ("name", "secretName") and schema.get("type") == "string"
    ]


def test_every_field_of_the_pod_spec_that_may_name_a_secret_is_in_the_table(schemas: dict[str, Any]) -> None:
    fields = [field for field in _fields(schemas, POD_SPEC, "", frozenset({POD_SPEC})) if field.rules]

    missing = []
    for field in fields:
        if field.path in NOT_SECRET_REFERENCES:
            continue
        expected = _expected_paths(field, schemas)
        if not expected or not set(expected) <= set(SECRET_NAME_PATHS):
            missing.append(f"{field.path} (rules {field.rules}): expected {expected or 'a name field'}")
    assert missing == [], (
        "fields of the PodSpec schema that may name a Secret are not in samd.webhook.workloads' table "
        "(add them, or to NOT_SECRET_REFERENCES with the reason):\n" + "\n".join(missing)
    )
    # The exceptions are all real, current fields that a rule matched.
    assert set(NOT_SECRET_REFERENCES) <= {field.path for field in fields}


def test_every_path_of_the_table_is_a_string_field_of_the_pod_spec(schemas: dict[str, Any]) -> None:
    for path in SECRET_NAME_PATHS:
        schema: dict[str, Any] = schemas[POD_SPEC]
        for part in path_parts(path):
            if part == "[]":
                assert schema.get("type") == "array", path
                schema = schema["items"]
            else:
                if "properties" not in schema:
                    schema = schemas[_reference(schema) or ""]
                assert part in schema.get("properties", {}), f"{path}: no field {part}"
                schema = schema["properties"][part]
        assert schema.get("type") == "string", path
