"""The model the loader verified: its files checked again at load, and the runtimes that run them.

`samd fetch --keep-signature` leaves the signature bundle it verified beside the model
(`KEPT_SIGNATURE`). At start-up the server verifies that bundle again with the trusted signers
(which yields the signer), requires its manifest digest to be the pinned one, and hashes the files
of the model directory against the signed manifest with the same code as `samd verify`. The model
file a runtime loads is read into memory once and its digest checked on those very bytes, so what
runs is what was signed even if the file changed after it was hashed.

Runtimes are found by format in `RUNTIMES` (ONNX through onnxruntime first); each declares its
inputs and outputs, which the front end checks requests against.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from samd.errors import UsageError, VerificationError
from samd.fetch import KEPT_SIGNATURE
from samd.signing import SINGLE_FILE_RESOURCE, VerificationResult, check_files_against_manifest
from samd.signing.tree import hash_files, list_model_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifiedModel:
    """A model directory whose files match a verified signature, and that signature's result."""

    root: Path
    files: Mapping[str, Path]  # file name in the directory -> path
    verification: VerificationResult
    load_seconds: float = 0.0

    @property
    def manifest_digest(self) -> str:
        return self.verification.manifest_digest

    @property
    def signer(self) -> str:
        return self.verification.signer

    def signed_digest(self, name: str) -> str:
        resource = SINGLE_FILE_RESOURCE if self.verification.is_single_file else name
        return self.verification.digests()[resource]

    def read_verified(self, name: str) -> bytes:
        """The bytes of one model file, checked against the signed digest after they were read."""
        data = self.files[name].read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.signed_digest(name):
            raise VerificationError(
                f"the model file {name} changed after it was verified (sha256 {actual})",
                hint="the model volume must be written only by the loader",
            )
        return data


def read_kept_signature(model_dir: Path) -> bytes:
    """The signature bundle `samd fetch --keep-signature` left in the model directory."""
    if not model_dir.is_dir():
        raise UsageError(
            f"there is no model directory {model_dir}",
            hint="the init container `samd fetch` writes the model there; pass --model-dir",
        )
    path = model_dir / KEPT_SIGNATURE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"{model_dir} holds no verified model: {KEPT_SIGNATURE} is missing",
            hint="fetch the model with `samd fetch --keep-signature --output DIR` first",
        ) from None
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None


def verify_model_files(
    model_dir: Path, verification: VerificationResult, expect_digest: str | None
) -> VerifiedModel:
    """Check that `model_dir` holds exactly the files `verification` signed (and the pinned digest)."""
    started = time.monotonic()
    if expect_digest is not None and verification.manifest_digest != expect_digest:
        raise VerificationError(
            f"the model in {model_dir} is signed manifest {verification.manifest_digest}, "
            f"but {expect_digest} is pinned",
            hint="the loader fetched another model version; the pod must be restarted by the operator",
        )
    listing = list_model_files(
        model_dir,
        ignored_paths=verification.ignored_paths,
        excluded={KEPT_SIGNATURE},
        allow_symlinks=verification.allow_symlinks,
    )
    files = dict(listing.files)
    if not files:
        raise UsageError(f"the model directory {model_dir} holds no model files")
    if verification.is_single_file:
        if len(files) != 1:
            raise VerificationError(
                f"the signature covers a single file but {model_dir} holds {len(files)}: "
                + ", ".join(sorted(files)[:5])
            )
        (name,) = files
        digests = {SINGLE_FILE_RESOURCE: hash_files(files)[name]}
    else:
        digests = hash_files(files)
    check_files_against_manifest(digests, verification)
    seconds = time.monotonic() - started
    logger.info(
        "model files verified",
        extra={
            "files": len(files),
            "manifest_digest": verification.manifest_digest,
            "signer": verification.signer,
        },
    )
    return VerifiedModel(root=model_dir, files=files, verification=verification, load_seconds=seconds)


# --- runtimes ------------------------------------------------------------------------------------


class Runtime(Protocol):
    """A model loaded in this process."""

    platform: str
    inputs: tuple[Any, ...]  # TensorSpec
    outputs: tuple[Any, ...]

    def infer(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        """Run the model; `outputs` empty means all of them."""
        ...


RuntimeLoader = Callable[[VerifiedModel, int], Runtime]
"""Loads a runtime from a verified model with that many compute threads."""


def _pick_file(model: VerifiedModel, suffixes: tuple[str, ...], what: str) -> str:
    candidates = sorted(name for name in model.files if name.lower().endswith(suffixes))
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise UsageError(
            f"a {what} model directory must hold exactly one {'/'.join(suffixes)} file; {model.root} holds {found}",
        )
    return candidates[0]


_ONNX_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


class OnnxRuntime:
    """An ONNX model in onnxruntime (CPU)."""

    platform = "onnxruntime_onnx"

    def __init__(self, model: VerifiedModel, threads: int) -> None:
        import onnxruntime  # noqa: PLC0415 - only `samd serve` of an ONNX model needs it

        from samd.serving.protocol import TensorSpec  # noqa: PLC0415

        name = _pick_file(model, (".onnx",), "ONNX")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                model.read_verified(name), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise UsageError(f"onnxruntime cannot load {name}: {error}") from None

        def spec(node: Any, kind: str) -> TensorSpec:
            datatype = _ONNX_TYPES.get(node.type)
            if datatype is None:
                raise UsageError(
                    f"the model's {kind} {node.name!r} is a {node.type}, which the V2 protocol cannot carry",
                    hint="export tensors only (skl2onnx: options={'zipmap': False})",
                )
            shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
            return TensorSpec(node.name, datatype, shape)

        self.inputs = tuple(spec(node, "input") for node in self._session.get_inputs())
        self.outputs = tuple(spec(node, "output") for node in self._session.get_outputs())

    def infer(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        names = list(outputs) or [spec.name for spec in self.outputs]
        results = self._session.run(names, dict(inputs))
        return dict(zip(names, results, strict=True))


def _load_onnx(model: VerifiedModel, threads: int) -> Runtime:
    return OnnxRuntime(model, threads)


RUNTIMES: dict[str, RuntimeLoader] = {"onnx": _load_onnx}
"""Format (spec.format) -> how to load it. Register other formats here."""


def load_runtime(model: VerifiedModel, model_format: str, threads: int = 1) -> Runtime:
    loader = RUNTIMES.get(model_format)
    if loader is None:
        raise UsageError(
            f"samd serve cannot run {model_format} models; it runs {', '.join(sorted(RUNTIMES))}",
            hint="serve other formats with a model server of your own behind `samd proxy` (spec.serving.image)",
        )
    return loader(model, threads)
