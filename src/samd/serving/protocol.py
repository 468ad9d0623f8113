"""The Open Inference Protocol (KServe V2) over REST: requests checked against the model, responses.

Requests are JSON, optionally followed by raw tensor bytes (the binary tensor data extension that
Triton's and KServe's clients use: the `Inference-Header-Content-Length` header gives the length of
the JSON part). Every input is checked against the model's declared inputs (name, datatype, shape)
and against the server's limits before any of it reaches the model; a failure is a
`RefusedError` whose message says which input is wrong and how.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

# V2 datatype -> numpy dtype; BYTES tensors are arrays of Python bytes/str objects.
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The V2 datatype of a numpy array."""
    kind = array.dtype
    if kind.kind in ("O", "S", "U"):
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if name != "BYTES" and kind == np.dtype(dtype):
            return name
    raise ValueError(f"the model returned a {kind} tensor, which the V2 protocol cannot carry")


@dataclass(frozen=True)
class TensorSpec:
    """A declared input or output: its name, V2 datatype and shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name!r} ({self.datatype} {list(self.shape)})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str | None
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "versions": [self.version] if self.version else [],
            "platform": self.platform,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }
        return document


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the model."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_batch: int = 1024
    """The largest size of a tensor's first dimension, where the model leaves it open (-1)."""
    max_elements: int = 1 << 22
    """The most elements one input tensor may have."""


class RefusedError(Exception):
    """A request the server refuses: an HTTP status, a metric reason and a message for the client."""

    def __init__(self, status: int, reason: str, message: str, *, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = dict(headers or {})


def _invalid(reason: str, message: str) -> RefusedError:
    return RefusedError(400, reason, message)


@dataclass
class InferRequest:
    """A checked request: its inputs as arrays, which outputs to return and how."""

    id: str | None
    inputs: dict[str, np.ndarray[Any, Any]]
    outputs: tuple[str, ...]  # empty: all of the model's outputs
    binary_outputs: frozenset[str] = frozenset()
    binary_all: bool = False
    raw: dict[str, Any] = field(default_factory=dict)  # the request's JSON document (for the proxy)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a body, per the binary tensor data extension."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise _invalid("malformed", f"the {HEADER_LENGTH} header {header_length!r} is not a number") from None
    if not 0 < length <= len(body):
        raise _invalid(
            "malformed", f"the {HEADER_LENGTH} header says {length} bytes but the body has {len(body)}"
        )
    return body[:length], body[length:]


def load_document(data: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise _invalid("malformed", f"the request is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise _invalid("malformed", "the request must be a JSON object with an 'inputs' list")
    return document


def _shape_of(item: Mapping[str, Any], name: str) -> tuple[int, ...]:
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise _invalid("malformed", f"input {name!r} needs a 'shape': a list of non-negative integers")
    return tuple(shape)


def _check_shape(name: str, shape: tuple[int, ...], spec: TensorSpec, limits: Limits) -> None:
    declared = spec.shape
    if len(shape) != len(declared) or any(
        want not in (-1, got) for want, got in zip(declared, shape, strict=True)
    ):
        raise _invalid(
            "wrong_shape",
            f"input {name!r} has shape {list(shape)} but the model takes {list(declared)} (-1: any size)",
        )
    if declared and declared[0] == -1 and shape[0] > limits.max_batch:
        raise _invalid(
            "batch_too_large",
            f"input {name!r} has a batch of {shape[0]}, more than this server's limit of {limits.max_batch}; "
            "split the request",
        )
    elements = math.prod(shape)
    if elements > limits.max_elements:
        raise _invalid(
            "tensor_too_large",
            f"input {name!r} has {elements} elements, more than this server's limit of {limits.max_elements}",
        )


def _array_from_json(name: str, data: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    dtype = DATATYPES[datatype]
    try:
        array = np.array(data, dtype=object) if datatype == "BYTES" else np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise _invalid(
            "wrong_data", f"input {name!r}: its data are not all {datatype} values of one nested shape"
        ) from None
    if datatype != "BYTES" and array.dtype.kind != np.dtype(dtype).kind:
        raise _invalid("wrong_data", f"input {name!r}: its data are not {datatype} values")
    expected = math.prod(shape)
    if array.size != expected:
        raise _invalid(
            "wrong_data",
            f"input {name!r} has {array.size} values but its shape {list(shape)} needs {expected}",
        )
    return array.reshape(shape)


def _array_from_binary(
    name: str, chunk: bytes, datatype: str, shape: tuple[int, ...]
) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        raise _invalid(
            "wrong_data", f"input {name!r}: binary BYTES tensors are not supported; send JSON data"
        )
    dtype = np.dtype(DATATYPES[datatype])
    expected = math.prod(shape) * dtype.itemsize
    if len(chunk) != expected:
        raise _invalid(
            "wrong_data",
            f"input {name!r} has {len(chunk)} bytes of binary data but {datatype} {list(shape)} needs {expected}",
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _binary_size(item: Mapping[str, Any], name: str) -> int | None:
    parameters = item.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise _invalid("malformed", f"input {name!r}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise _invalid("malformed", f"input {name!r}: binary_data_size must be a non-negative integer")
    return int(size)


def parse_infer_request(
    document: dict[str, Any], binary: bytes, metadata: ModelMetadata, limits: Limits
) -> InferRequest:
    """Check a V2 inference request against the model's inputs and the limits; decode its tensors."""
    declared = {spec.name: spec for spec in metadata.inputs}
    expected_inputs = ", ".join(spec.describe() for spec in metadata.inputs)
    items = document.get("inputs")
    if not isinstance(items, list) or not items:
        raise _invalid(
            "malformed", f"the request needs a non-empty 'inputs' list; the model takes {expected_inputs}"
        )
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _invalid("malformed", "every entry of 'inputs' needs a 'name'")
        name = item["name"]
        spec = declared.get(name)
        if spec is None:
            raise _invalid(
                "unknown_input",
                f"input {name!r} is not an input of model {metadata.name}; it takes {expected_inputs}",
            )
        if name in inputs:
            raise _invalid("malformed", f"input {name!r} is given twice")
        datatype = item.get("datatype")
        if datatype != spec.datatype:
            raise _invalid(
                "wrong_datatype",
                f"input {name!r} has datatype {datatype!r} but the model takes {spec.datatype}",
            )
        shape = _shape_of(item, name)
        _check_shape(name, shape, spec, limits)
        size = _binary_size(item, name)
        if size is not None:
            chunk = binary[offset : offset + size]
            offset += size
            inputs[name] = _array_from_binary(name, chunk, datatype, shape)
        elif "data" in item:
            inputs[name] = _array_from_json(name, item["data"], datatype, shape)
        else:
            raise _invalid("malformed", f"input {name!r} has neither 'data' nor binary data")
    if offset != len(binary):
        raise _invalid(
            "malformed",
            f"the request carries {len(binary) - offset} bytes of binary data that no input claims",
        )
    missing = [spec.describe() for spec in metadata.inputs if spec.name not in inputs]
    if missing:
        raise _invalid(
            "missing_input", f"the request lacks input {', '.join(missing)} of model {metadata.name}"
        )
    outputs, binary_outputs = _requested_outputs(document, metadata)
    parameters = document.get("parameters")
    binary_all = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    request_id = document.get("id")
    return InferRequest(
        id=request_id if isinstance(request_id, str) else None,
        inputs=inputs,
        outputs=outputs,
        binary_outputs=binary_outputs,
        binary_all=binary_all,
        raw=document,
    )


def _requested_outputs(
    document: Mapping[str, Any], metadata: ModelMetadata
) -> tuple[tuple[str, ...], frozenset[str]]:
    items = document.get("outputs")
    if items is None:
        return (), frozenset()
    if not isinstance(items, list):
        raise _invalid("malformed", "'outputs' must be a list")
    known = {spec.name for spec in metadata.outputs}
    names: list[str] = []
    binary: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _invalid("malformed", "every entry of 'outputs' needs a 'name'")
        name = item["name"]
        if name not in known:
            raise _invalid(
                "unknown_output",
                f"output {name!r} is not an output of model {metadata.name}; it has "
                + ", ".join(spec.describe() for spec in metadata.outputs),
            )
        names.append(name)
        parameters = item.get("parameters")
        if isinstance(parameters, dict) and parameters.get("binary_data") is True:
            binary.add(name)
    return tuple(names), frozenset(binary)


def _json_data(array: np.ndarray[Any, Any]) -> list[Any]:
    if array.dtype.kind in ("O", "S"):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    return list(array.ravel().tolist())


def encode_response(
    document: dict[str, Any], binary_parts: Sequence[bytes] = ()
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a V2 response: JSON, then the binary outputs if there are any."""
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary_parts:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    return header + b"".join(binary_parts), {
        "Content-Type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(header)),
    }


def infer_document(
    request: InferRequest, results: Mapping[str, np.ndarray[Any, Any]]
) -> tuple[dict[str, Any], list[bytes]]:
    """A V2 inference response document from the model's outputs, in the order and encoding requested,
    and its binary parts (the front end adds the model's name, version and provenance)."""
    names = request.outputs or tuple(results)
    outputs: list[dict[str, Any]] = []
    binary_parts: list[bytes] = []
    for name in names:
        array = np.asarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if (request.binary_all or name in request.binary_outputs) and array.dtype.kind not in ("O", "S", "U"):
            data = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            binary_parts.append(data)
        else:
            entry["data"] = _json_data(array)
        outputs.append(entry)
    document: dict[str, Any] = {"outputs": outputs}
    if request.id is not None:
        document["id"] = request.id
    return document, binary_parts


def tensor_specs(items: Any, what: str) -> tuple[TensorSpec, ...]:
    """Tensor specs from a V2 model metadata document's `inputs` or `outputs`."""
    if not isinstance(items, list):
        raise ValueError(f"its {what} are not a list")
    specs = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"an entry of its {what} is not an object")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or datatype not in DATATYPES or not isinstance(shape, list):
            raise ValueError(f"the {what} entry {item!r} needs a name, a V2 datatype and a shape")
        if not all(type(dim) is int and dim >= -1 for dim in shape):
            raise ValueError(f"the {what} entry {name!r} has a shape of other than integers >= -1")
        specs.append(TensorSpec(name, str(datatype), tuple(shape)))
    return tuple(specs)


def error_body(message: str) -> bytes:
    """A V2 error response: {"error": message}."""
    return orjson.dumps({"error": message})
