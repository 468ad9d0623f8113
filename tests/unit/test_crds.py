"""The CRDs in `crds/` agree with the typed spec models, are structural and document every field.

The API server enforces the CRDs and the operator parses specs with `samd.spec`; if the two drifted,
an object could be accepted by one and refused by the other. These tests walk both side by side.
"""

from __future__ import annotations

import datetime
import enum
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from samd import spec
from samd.operator.conditions import ConditionType
from tests.support.crds import ALL_CRDS, SECURE_MODELS, TRUST_POLICIES, load_crd

pytestmark = pytest.mark.unit

SPEC_MODELS: list[tuple[Path, type[BaseModel]]] = [
    (SECURE_MODELS, spec.SecureModelSpec),
    (TRUST_POLICIES, spec.ModelTrustPolicySpec),
]

# The keywords a structural schema may use (apiextensions.k8s.io/v1); anything else, such as $ref,
# patternProperties, oneOf or uniqueItems, makes the API server refuse the CRD or ignore the rule.
STRUCTURAL_KEYWORDS = {
    "type",
    "description",
    "properties",
    "items",
    "additionalProperties",
    "required",
    "enum",
    "default",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "nullable",
    "anyOf",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
}


def schema_of(path: Path) -> dict[str, Any]:
    versions = load_crd(path)["spec"]["versions"]
    assert [v["name"] for v in versions] == [spec.VERSION]
    schema: dict[str, Any] = versions[0]["schema"]["openAPIV3Schema"]
    return schema


# --- walking the pydantic models -------------------------------------------------------------------


@dataclass(frozen=True)
class ModelField:
    type_: Any  # with Optional, tuple[...] and Annotated taken off
    is_list: bool
    required: bool
    default: Any  # PydanticUndefined when required or built by a default factory
    has_factory: bool


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        elif origin is tuple:
            annotation, is_list = typing.get_args(annotation)[0], True
        elif origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, is_list


def _is_model(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, BaseModel)


def model_fields(model: type[BaseModel], prefix: str = "") -> dict[str, ModelField]:
    """Every field of `model` and of the models nested in it, by camelCase path ("serving.rateLimit.burst")."""
    found: dict[str, ModelField] = {}
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        type_, is_list = _unwrap(info.annotation)
        found[path] = ModelField(
            type_=type_,
            is_list=is_list,
            required=info.is_required(),
            default=info.default,
            has_factory=info.default_factory is not None,
        )
        if _is_model(type_):
            found.update(model_fields(type_, path + "."))
    return found


def opaque_paths(fields: dict[str, ModelField]) -> set[str]:
    """Fields the models keep as a plain dict (resources, label selectors): the CRD types their inside."""
    return {path for path, f in fields.items() if typing.get_origin(f.type_) is dict or f.type_ is dict}


# --- walking the CRD schemas -----------------------------------------------------------------------


def schema_fields(node: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every property under `node`, by path; a list's item properties continue the list's path."""
    found: dict[str, dict[str, Any]] = {}
    for name, child in node.get("properties", {}).items():
        path = prefix + name
        found[path] = child
        inner = child.get("items", {}) if child.get("type") == "array" else child
        found.update(schema_fields(inner, path + "."))
    return found


def spec_fields(path: Path, model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """The CRD's spec properties, without the inside of fields the model keeps as a plain dict."""
    opaque = opaque_paths(model_fields(model))
    return {
        field: node
        for field, node in schema_fields(schema_of(path)["properties"]["spec"]).items()
        if not any(field.startswith(o + ".") for o in opaque)
    }


def all_nodes(node: dict[str, Any], where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node, with a readable location."""
    yield where or "(root)", node
    for name, child in node.get("properties", {}).items():
        yield from all_nodes(child, f"{where}.{name}")
    if isinstance(node.get("items"), dict):
        yield from all_nodes(node["items"], f"{where}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from all_nodes(node["additionalProperties"], f"{where}{{*}}")
    for index, option in enumerate(node.get("anyOf", [])):
        yield from all_nodes(option, f"{where}|anyOf{index}")


def rules_at(node: dict[str, Any]) -> list[str]:
    return [validation["rule"] for validation in node.get("x-kubernetes-validations", [])]


def regex_in(rule: str) -> str:
    """The pattern of the first self.matches(...) in a CEL rule (raw or plain single-quoted string)."""
    match = re.search(r"self\.matches\(r?'([^']*)'\)", rule)
    assert match, f"no self.matches('...') in {rule!r}"
    return match.group(1)


# --- the spec schema and the models agree ----------------------------------------------------------


@pytest.mark.parametrize(
    ("crd", "model"), SPEC_MODELS, ids=lambda x: getattr(x, "name", getattr(x, "__name__", ""))
)
def test_the_crd_spec_has_exactly_the_fields_of_the_model(crd: Path, model: type[BaseModel]) -> None:
    in_crd = set(spec_fields(crd, model))
    in_model = set(model_fields(model))
    assert sorted(in_crd - in_model) == [], "fields in the CRD that the model does not know"
    assert sorted(in_model - in_crd) == [], "fields in the model that the CRD does not declare"


def _crd_type_for(type_: Any) -> str:
    if type_ is bool:
        return "boolean"
    if type_ is int:
        return "integer"
    if type_ is float:
        return "number"
    if type_ in (str, datetime.datetime) or typing.get_origin(type_) is typing.Literal:
        return "string"
    if isinstance(type_, type) and issubclass(type_, enum.StrEnum):
        return "string"
    if _is_model(type_) or type_ is dict or typing.get_origin(type_) is dict:
        return "object"
    raise AssertionError(f"no CRD type known for {type_!r}")


@pytest.mark.parametrize(
    ("crd", "model"), SPEC_MODELS, ids=lambda x: getattr(x, "name", getattr(x, "__name__", ""))
)
def test_every_field_has_the_type_and_allowed_values_of_the_model(crd: Path, model: type[BaseModel]) -> None:
    nodes = spec_fields(crd, model)
    for path, field in model_fields(model).items():
        node = nodes[path]
        if field.is_list:
            assert node["type"] == "array", path
            node = node["items"]
        assert node["type"] == _crd_type_for(field.type_), path
        if typing.get_origin(field.type_) is typing.Literal:
            assert node.get("enum") == list(typing.get_args(field.type_)), path
        elif isinstance(field.type_, type) and issubclass(field.type_, enum.StrEnum):
            assert node.get("enum") == [member.value for member in field.type_], path
        else:
            assert "enum" not in node, path


@pytest.mark.parametrize(
    ("crd", "model"), SPEC_MODELS, ids=lambda x: getattr(x, "name", getattr(x, "__name__", ""))
)
def test_required_fields_are_the_same(crd: Path, model: type[BaseModel]) -> None:
    spec_node = schema_of(crd)["properties"]["spec"]
    nodes = {"": spec_node} | spec_fields(crd, model)
    fields = model_fields(model)
    for path, field in fields.items():
        parent_path = path.rpartition(".")[0]
        parent = nodes[parent_path]
        if parent.get("type") == "array":
            parent = parent["items"]
        required_in_crd = path.rpartition(".")[2] in parent.get("required", [])
        assert required_in_crd == field.required, path


@pytest.mark.parametrize(
    ("crd", "model"), SPEC_MODELS, ids=lambda x: getattr(x, "name", getattr(x, "__name__", ""))
)
def test_defaults_are_the_same(crd: Path, model: type[BaseModel]) -> None:
    nodes = spec_fields(crd, model)
    for path, field in model_fields(model).items():
        crd_default = nodes[path].get("default", PydanticUndefined)
        if field.has_factory and _is_model(field.type_):
            # The model builds a default object; the CRD defaults it to {} so its inner defaults apply.
            assert crd_default == {}, path
        elif field.default is None or field.default == () or field.has_factory:
            # Absent means "none" or "empty" to the model; the CRD leaves such fields out.
            assert crd_default is PydanticUndefined or crd_default == {}, path
        else:
            assert crd_default == field.default, path


def test_the_hand_written_defaults_are_the_documented_ones() -> None:
    nodes = spec_fields(SECURE_MODELS, spec.SecureModelSpec)
    assert nodes["encryption.rotationPeriod"]["default"] == "720h"
    assert nodes["serving.enabled"]["default"] is True
    assert nodes["serving.replicas"]["default"] == 1
    assert nodes["serving.port"]["default"] == 8443
    assert nodes["serving.rateLimit.requestsPerSecond"]["default"] == 50
    assert nodes["serving.rateLimit.burst"]["default"] == 100
    policy = spec_fields(TRUST_POLICIES, spec.ModelTrustPolicySpec)
    assert policy["mode"]["default"] == "enforce"
    assert policy["requireEncryption"]["default"] is True
    assert policy["versionPolicy.allowDowngrade"]["default"] is False


def test_the_formats_are_the_model_formats_in_both_crds() -> None:
    formats = ["onnx", "safetensors", "pytorch", "tensorflow", "sklearn", "xgboost", "gguf", "other"]
    assert [f.value for f in spec.ModelFormat] == formats
    model_spec = schema_of(SECURE_MODELS)["properties"]["spec"]["properties"]
    policy_spec = schema_of(TRUST_POLICIES)["properties"]["spec"]["properties"]
    assert model_spec["format"]["enum"] == formats
    assert policy_spec["allowedFormats"]["items"]["enum"] == formats


# --- the rules use the same expressions as the models ----------------------------------------------


def test_the_semver_rule_is_the_models_semver_expression() -> None:
    version = schema_of(SECURE_MODELS)["properties"]["spec"]["properties"]["version"]
    (rule,) = rules_at(version)
    assert regex_in(rule) == spec.SEMVER.pattern


def test_the_rotation_period_rules_use_the_models_duration_expression() -> None:
    period = spec_fields(SECURE_MODELS, spec.SecureModelSpec)["encryption.rotationPeriod"]
    rules = rules_at(period)
    assert len(rules) == 2
    assert {regex_in(rule) for rule in rules} == {spec.DURATION.pattern}
    assert "duration('1m')" in rules[1]


def test_the_client_name_rule_is_the_models_dns_label_expression() -> None:
    name = spec_fields(SECURE_MODELS, spec.SecureModelSpec)["serving.clients.name"]
    (rule,) = rules_at(name)
    assert regex_in(rule) == spec.DNS_LABEL.pattern


def test_format_and_key_provider_are_immutable() -> None:
    nodes = spec_fields(SECURE_MODELS, spec.SecureModelSpec)
    for path in ("format", "encryption.keyRef.provider"):
        (validation,) = nodes[path]["x-kubernetes-validations"]
        assert validation["rule"] == "self == oldSelf", path
        assert "create a new SecureModel" in validation["message"], path


# --- structural, documented, cost-bounded ----------------------------------------------------------


@pytest.mark.parametrize("crd", ALL_CRDS, ids=lambda p: p.name)
def test_the_schema_is_structural(crd: Path) -> None:
    for where, node in all_nodes(schema_of(crd)):
        unknown = set(node) - STRUCTURAL_KEYWORDS
        assert not unknown, f"{where}: keywords a structural schema does not allow: {sorted(unknown)}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], where
            continue
        if "|anyOf" in where:
            continue
        assert "type" in node, f"{where} has no type"
        assert "anyOf" not in node, f"{where}: anyOf is only allowed for int-or-string"
        assert not ("properties" in node and "additionalProperties" in node), where
        if where == ".metadata":
            assert node == {"type": "object"}, "metadata may not be restricted beyond its type"


@pytest.mark.parametrize("crd", ALL_CRDS, ids=lambda p: p.name)
def test_every_field_has_a_description(crd: Path) -> None:
    schema = schema_of(crd)
    missing = [
        path
        for path, node in schema_fields(schema).items()
        if path != "metadata" and not str(node.get("description", "")).strip()
    ]
    assert missing == []


@pytest.mark.parametrize("crd", ALL_CRDS, ids=lambda p: p.name)
def test_what_cel_rules_read_has_a_size_bound(crd: Path) -> None:
    # The API server estimates each rule's cost from the largest input it could see; unbounded
    # strings and lists make the estimate exceed its budget.
    def visit(node: dict[str, Any], where: str, lists: list[str]) -> Iterator[str]:
        if "x-kubernetes-validations" in node and where != "":
            if node.get("type") == "string" and "maxLength" not in node and "enum" not in node:
                yield f"{where}: string without maxLength"
            yield from (f"{where}: inside list {w} without maxItems" for w in lists)
        for name, child in node.get("properties", {}).items():
            yield from visit(child, f"{where}.{name}", lists)
        if node.get("type") == "array":
            unbounded = [] if "maxItems" in node else [where]
            yield from visit(node["items"], f"{where}[]", lists + unbounded)

    assert list(visit(schema_of(crd), "", [])) == []


def test_every_condition_type_of_the_operator_is_documented() -> None:
    conditions = schema_of(SECURE_MODELS)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    for condition_type in ConditionType:
        assert condition_type.value in conditions["description"]
        assert condition_type.value in conditions["items"]["properties"]["type"]["description"]


@pytest.mark.parametrize("crd", ALL_CRDS, ids=lambda p: p.name)
def test_conditions_have_the_metav1_condition_shape(crd: Path) -> None:
    item = schema_of(crd)["properties"]["status"]["properties"]["conditions"]["items"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


# --- names and columns -----------------------------------------------------------------------------


def test_a_secure_model_spec_keeps_no_field_it_does_not_declare() -> None:
    """The API server prunes what SecureModel.spec does not declare, such as an issuer a model's
    author names (only a ModelTrustPolicy or the chart choose one): nothing may switch that off."""
    crd = load_crd(SECURE_MODELS)
    assert not crd["spec"].get("preserveUnknownFields", False)
    model_spec = schema_of(SECURE_MODELS)["properties"]["spec"]
    kept = [
        where
        for where, node in all_nodes(model_spec, ".spec")
        if "x-kubernetes-preserve-unknown-fields" in node
    ]
    assert kept == []
    issuers = [where for where, _ in all_nodes(model_spec, ".spec") if "issuer" in where.lower()]
    assert issuers == []
    # And were the API server ever to keep one, the operator would refuse the spec, not use it.
    with pytest.raises(spec.SpecError, match="certificateIssuer"):
        spec.parse_secure_model(
            {
                "format": "onnx",
                "version": "1.0.0",
                "owner": "ml-team",
                "artifact": {"uri": "s3://models/m.samd"},
                "signature": {"uri": "s3://models/m.sig"},
                "encryption": {"keyRef": {"provider": "local", "secretName": "keys"}},
                "certificateIssuer": {"kind": "ClusterIssuer", "name": "attacker-ca"},
            }
        )


def test_names_scope_and_status_subresource() -> None:
    model, policy = load_crd(SECURE_MODELS)["spec"], load_crd(TRUST_POLICIES)["spec"]
    assert (model["group"], model["scope"], model["names"]["kind"]) == (
        "samd.dev",
        "Namespaced",
        "SecureModel",
    )
    assert model["names"]["shortNames"] == ["sm"]
    assert (policy["group"], policy["scope"], policy["names"]["kind"]) == (
        "samd.dev",
        "Cluster",
        "ModelTrustPolicy",
    )
    assert policy["names"]["shortNames"] == ["mtp"]
    for crd in (model, policy):
        assert crd["names"]["categories"] == ["samd"]
        assert crd["versions"][0]["subresources"] == {"status": {}}
        assert crd["group"] == spec.GROUP


def _resolves(schema: dict[str, Any], json_path: str) -> bool:
    if json_path.startswith(".metadata."):
        return True  # object metadata is the API server's, not part of the schema
    node = schema
    # '.status.conditions[?(@.type=="Ready")].status' walks status, conditions, items, status.
    for step in re.sub(r"\[[^\]]*\]", ".[]", json_path).strip(".").split("."):
        node = node.get("items", {}) if step == "[]" else node.get("properties", {}).get(step, {})
        if not node:
            return False
    return True


@pytest.mark.parametrize("crd", ALL_CRDS, ids=lambda p: p.name)
def test_printer_columns_point_at_fields_that_exist(crd: Path) -> None:
    schema = schema_of(crd)
    for column in load_crd(crd)["spec"]["versions"][0]["additionalPrinterColumns"]:
        assert _resolves(schema, column["jsonPath"]), column


def test_the_default_columns_are_version_format_verified_ready_age() -> None:
    columns = load_crd(SECURE_MODELS)["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = [c["name"] for c in columns if c.get("priority", 0) == 0]
    assert shown == ["Version", "Format", "Verified", "Ready", "Age"]
    by_name = {c["name"]: c["jsonPath"] for c in columns}
    assert by_name["Verified"] == '.status.conditions[?(@.type=="Verified")].status'
    assert by_name["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert by_name["Signer"] == ".status.verification.signer"
    assert by_name["Key Version"] == ".status.key.keyVersion"
