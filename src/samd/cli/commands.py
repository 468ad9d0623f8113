"""The `samd` commands. Each imports what it needs when it runs, so that `samd fetch` stays small.

Plain click (no typer): typer builds its parameters with pydantic, which costs ~10 MiB of memory
in every run, and `samd fetch` runs in an init container with a 64 MiB budget.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import click

from samd import __version__
from samd.cli.output import (
    CliState,
    configure_json_lines,
    configure_logging,
    emit,
    progress_bar,
    report_failure,
)
from samd.errors import IntegrityError, UsageError, VerificationError

if TYPE_CHECKING:
    from samd.keys import KeyProvider, KeyResolver
    from samd.signing import Signer, Verifier

HELP = """\
SAMD keeps machine-learning models signed and encrypted from training to serving.

\b
A typical flow:
  samd keygen local:keys.json --signing-key signer.pem   # a keyset and a signing key
  samd sign ./model --private-key signer.pem             # writes ./model.sig
  samd encrypt ./model --key local:keys.json --output model.samd
  samd fetch model.samd --signature model.sig --public-key signer.pub.pem \\
      --key local:keys.json --output /models/current

Exit codes: 0 ok, 1 error, 2 usage, 3 verification, 4 integrity, 5 key provider, 6 storage,
8 audit findings at or above --fail-on.
Run `samd COMMAND --help` for the options and an example of each command.
"""

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
F = TypeVar("F", bound=Callable[..., Any])
PATH = click.Path(path_type=Path)


def _state(context: click.Context) -> CliState:
    state = context.find_object(CliState)
    if state is None:  # invoked without `main` (e.g. by a test runner)
        state = context.ensure_object(CliState)
    return state


def _start(context: click.Context, json_output: bool) -> CliState:
    state = _state(context)
    state.json = json_output
    return state


def _version(context: click.Context, _parameter: click.Parameter, value: bool) -> None:
    if value and not context.resilient_parsing:
        sys.stdout.write(f"samd {__version__}\n")
        context.exit(0)


class _InFlowOrder(click.Group):
    """Lists the commands in the order of a model's flow rather than alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    name="samd", cls=_InFlowOrder, help=HELP, context_settings=CONTEXT_SETTINGS, no_args_is_help=True
)
@click.option(
    "--version",
    is_flag=True,
    callback=_version,
    expose_value=False,
    is_eager=True,
    help="Print the version and exit.",
)
@click.option("--debug", is_flag=True, help="Log everything and show tracebacks on errors.")
@click.pass_context
def app(context: click.Context, debug: bool) -> None:
    state = _state(context)
    state.debug = debug
    configure_logging(debug)


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several click decorators as one (applied in the order listed, as in --help)."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


json_option = click.option("--json", "json_output", is_flag=True, help="Print the result as JSON (for CI).")
key_option = click.option(
    "--key",
    "-k",
    "key",
    multiple=True,
    required=True,
    metavar="URI",
    help="Key URI: local:PATH (a keyset), aws-kms://KEY?region=R, or pkcs11:token=T;object=K?module-path=M. "
    "Repeat to try several keys.",
)
ignore_option = click.option(
    "--ignore", multiple=True, metavar="PATH", help="A path (relative to the model) to leave out; repeatable."
)
allow_unsigned_option = click.option(
    "--allow-unsigned-files",
    is_flag=True,
    help="Accept files the signature does not cover (not recommended).",
)
verifier_options = _options(
    click.option("--public-key", type=PATH, metavar="PEM", help="Verify with this EC public key (PEM)."),
    click.option(
        "--certificate-root",
        "certificate_root",
        type=PATH,
        multiple=True,
        metavar="PEM",
        help="Verify a certificate signature up to these roots (PEM; repeatable).",
    ),
    click.option(
        "--sigstore-identity", metavar="ID", help="Sigstore: the signer's identity (certificate SAN)."
    ),
    click.option(
        "--sigstore-issuer", metavar="URL", help="Sigstore: the OIDC issuer that vouched for the identity."
    ),
    click.option(
        "--trusted-root",
        type=PATH,
        metavar="JSON",
        help="Sigstore: trusted root JSON, for offline verification.",
    ),
)


def _build_verifier(
    public_key: Path | None,
    certificate_roots: Sequence[Path] | None,
    identity: str | None,
    issuer: str | None,
    trusted_root: Path | None,
) -> Verifier:
    from samd.signing import Verifier  # noqa: PLC0415

    chosen = [
        name
        for name, given in (
            ("--public-key", public_key is not None),
            ("--certificate-root", bool(certificate_roots)),
            ("--sigstore-identity", identity is not None or issuer is not None or trusted_root is not None),
        )
        if given
    ]
    if len(chosen) != 1:
        raise UsageError(
            "say how to verify the signature with exactly one of --public-key, --certificate-root or "
            f"--sigstore-identity/--sigstore-issuer/--trusted-root (got {', '.join(chosen) or 'none'})",
            hint="e.g. --public-key signer.pub.pem",
        )
    if public_key is not None:
        return Verifier.from_public_key(public_key)
    if certificate_roots:
        return Verifier.from_certificate_roots(list(certificate_roots))
    if identity is None or issuer is None or trusted_root is None:
        raise UsageError(
            "Sigstore verification needs --sigstore-identity, --sigstore-issuer and --trusted-root",
            hint="the trusted root makes verification work offline",
        )
    return Verifier.from_sigstore(identity, issuer, trusted_root)


def _verifier_from_trust_config(path: Path, bundle: bytes) -> Verifier:
    """The first signer of the trust file that verifies `bundle` (a cheap check: no model bytes)."""
    import json  # noqa: PLC0415

    from pydantic import TypeAdapter, ValidationError  # noqa: PLC0415

    from samd.policy import verifier_for  # noqa: PLC0415
    from samd.signing import verify_bundle  # noqa: PLC0415
    from samd.spec import TrustedSigner  # noqa: PLC0415

    try:
        signers = TypeAdapter(list[TrustedSigner]).validate_python(json.loads(path.read_bytes()))
    except (OSError, ValueError, ValidationError) as error:
        raise UsageError(
            f"cannot read the trusted signers in {path}: {error}",
            hint="it must be a JSON list of signers, as in a ModelTrustPolicy's spec.signers",
        ) from None
    failures = []
    for signer in signers:
        verifier = verifier_for(signer)
        try:
            verify_bundle(bundle, verifier)
        except VerificationError as error:
            failures.append(f"{signer.name}: {error.message}")
            continue
        return verifier
    raise VerificationError(
        f"no signer in {path} verifies the signature ({'; '.join(failures) or 'the file lists no signer'})",
        hint="the model must be signed by a signer its ModelTrustPolicy trusts",
    )


def _check_expected_digest(bundle: bytes, verifier: Verifier, expected: str) -> None:
    from samd.signing import verify_bundle  # noqa: PLC0415

    actual = verify_bundle(bundle, verifier).manifest_digest
    if actual != expected:
        raise VerificationError(
            f"the signature covers manifest {actual}, but {expected} is expected",
            hint="the model was re-signed after it was admitted; the operator will roll out the new digest",
        )


@contextmanager
def _open_keys(uris: Sequence[str]) -> Iterator[KeyProvider | KeyResolver]:
    """Open the key providers named by `uris` (one, or a ring of several); close them afterwards."""
    from samd.keys import KeyRing, provider_from_uri  # noqa: PLC0415

    if not uris:
        raise UsageError("no key given", hint="pass --key local:PATH (or an aws-kms:// or pkcs11: URI)")
    providers: list[KeyProvider] = []
    try:
        for uri in uris:
            providers.append(provider_from_uri(uri))
        yield providers[0] if len(providers) == 1 else KeyRing(providers)
    finally:
        for provider in providers:
            provider.close()


def _default_signature(model: Path) -> Path:
    resolved = Path(os.path.abspath(model))
    return resolved.with_name(resolved.name + ".sig")


def _human_size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


# --- keygen ----------------------------------------------------------------------------------


@app.command()
@click.argument("key", required=False, metavar="[KEY_URI]")
@click.option(
    "--signing-key",
    type=PATH,
    metavar="PEM",
    help="Also create an EC P-256 signing key: the private key (0600) here, the public key beside it "
    "(NAME.pub.pem).",
)
@click.option("--key-id", metavar="ID", help="The keyset's key id (default: random).")
@click.option("--rotate", is_flag=True, help="Add a new version to an existing key and make it current.")
@click.option("--force", is_flag=True, help="Replace existing files.")
@json_option
@click.pass_context
def keygen(
    context: click.Context,
    *,
    key: str | None,
    signing_key: Path | None,
    key_id: str | None,
    rotate: bool,
    force: bool,
    json_output: bool,
) -> None:
    """Create a local keyset (key-encryption key) and/or an EC signing key pair.

    \b
    Examples:
      samd keygen local:keys.json
      samd keygen --signing-key signer.pem         # writes signer.pem and signer.pub.pem
      samd keygen local:keys.json --rotate         # new key version; old artifacts still decrypt
      samd keygen aws-kms://alias/models --rotate  # rotate a KMS key (if the key allows it)
    """
    state = _start(context, json_output)
    if key is None and signing_key is None:
        raise UsageError("nothing to create", hint="give a keyset URI (local:PATH) and/or --signing-key PATH")
    document: dict[str, Any] = {}
    lines: list[str] = []
    if key is not None:
        document["key"] = _keygen_keyset(key, key_id=key_id, rotate=rotate, force=force)
        description = document["key"]
        verb = "rotated" if rotate else "created"
        lines.append(
            f"{verb} {description['provider']} key {description['key_id']} "
            f"(current version {description['current_version']})"
        )
    if signing_key is not None:
        document["signing_key"] = _keygen_signing_key(signing_key, force=force)
        lines.append(
            f"wrote signing key {document['signing_key']['private_key']} and public key "
            f"{document['signing_key']['public_key']} ({document['signing_key']['key_id']})"
        )
    emit(state, document, "\n".join(lines))


def _keygen_keyset(uri: str, *, key_id: str | None, rotate: bool, force: bool) -> dict[str, Any]:
    from samd.keys import keygen_local, provider_from_uri  # noqa: PLC0415

    if rotate:
        if key_id is not None:
            raise UsageError("--key-id names a new keyset; it cannot be combined with --rotate")
        provider = provider_from_uri(uri)
        try:
            provider.rotate()
            return provider.describe().to_dict()
        finally:
            provider.close()
    if not uri.startswith("local:"):
        raise UsageError(
            f"samd keygen creates local keysets only, not {uri.split(':', 1)[0]} keys",
            hint="create AWS KMS keys with the AWS tools and HSM keys with the token's tools (e.g. pkcs11-tool), "
            "then pass their URI to --key",
        )
    from samd.keys.uri import parse_local_uri  # noqa: PLC0415

    with keygen_local(parse_local_uri(uri), key_id=key_id, overwrite=force) as provider:
        return provider.describe().to_dict()


def _public_key_path(private_key: Path) -> Path:
    name = private_key.name
    stem = name[: -len(".pem")] if name.endswith(".pem") else name
    return private_key.with_name(f"{stem}.pub.pem")


def _keygen_signing_key(private_path: Path, *, force: bool) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    from samd.keys.local import write_secret_file  # noqa: PLC0415
    from samd.signing import key_id  # noqa: PLC0415

    public_path = _public_key_path(private_path)
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise UsageError(
                    f"{path} already exists", hint="choose another path, or pass --force to replace it"
                )
    if not private_path.parent.is_dir():
        raise UsageError(f"the directory {private_path.parent} does not exist")
    private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_secret_file(private_path, private_pem, overwrite=force)
    try:
        write_secret_file(public_path, public_pem, overwrite=force)
        os.chmod(public_path, 0o644)  # the public half is meant to be shared
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return {"private_key": str(private_path), "public_key": str(public_path), "key_id": key_id(public_pem)}


# --- sign and verify -------------------------------------------------------------------------


def _key_signer(
    private_key: Path, certificate: Path | None, chain: Sequence[Path], password_env: str | None
) -> Signer:
    from samd.signing import Signer  # noqa: PLC0415

    if certificate is not None:
        if password_env is not None:
            raise UsageError("certificate signing needs an unencrypted private key (drop --password-env)")
        return Signer.from_certificate(private_key, certificate, list(chain))
    if chain:
        raise UsageError("--certificate-chain needs --certificate")
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise UsageError(f"the environment variable {password_env} is not set")
    return Signer.from_private_key(private_key, password)


@app.command()
@click.argument("model_dir", metavar="MODEL_DIR", type=PATH)
@click.option(
    "--sample",
    type=PATH,
    required=True,
    metavar="FILE",
    help="The validation sample: .npz (one array per model input, optionally per output), .npy or .csv.",
)
@click.option(
    "--input",
    "input_name",
    metavar="NAME",
    help="The model input a .npy or .csv sample holds (default: the ONNX model's only input).",
)
@click.option(
    "--feature",
    "features",
    multiple=True,
    metavar="NAME",
    help="Track only these input features (repeatable; default: all, at most 64 columns in all).",
)
@click.option(
    "--output-tensor",
    "output_tensors",
    multiple=True,
    metavar="NAME",
    help="A .npz array that holds the model's outputs, not an input (repeatable; for models that are not ONNX).",
)
@click.option(
    "--bins", type=click.IntRange(2, 50), default=10, show_default=True, help="Quantile bins per column."
)
@click.option(
    "--output",
    "-o",
    type=PATH,
    metavar="PATH",
    help="Where to write the baseline (default: MODEL_DIR/samd-baseline.json, where it gets signed).",
)
@click.option("--force", is_flag=True, help="Replace an existing baseline.")
@json_option
@click.pass_context
def baseline(
    context: click.Context,
    *,
    model_dir: Path,
    sample: Path,
    input_name: str | None,
    features: tuple[str, ...],
    output_tensors: tuple[str, ...],
    bins: int,
    output: Path | None,
    force: bool,
    json_output: bool,
) -> None:
    """Write the drift baseline of a model from its validation sample, before signing it.

    Every input feature and every output column of the sample is cut into quantile bins, and the
    share of the sample in each bin is recorded in samd-baseline.json inside MODEL_DIR. The model's
    outputs come from the .npz sample if it holds arrays named like them (or named by
    --output-tensor), else from running the directory's ONNX model on the sample. Sign the directory afterwards: `samd serve` and `samd
    proxy` read the baseline only from the verified files and export the drift of what they serve
    against it (docs/monitoring.md).

    \b
    Samples:
      .npz   arrays named like the model's inputs (numpy.savez), one row per example
      .npy   one array, the model's only input (or --input NAME)
      .csv   a header naming the features, then one numeric row per example

    \b
    Example:
      samd baseline ./fraud-detection --sample validation.csv
      samd sign ./fraud-detection --private-key signer.pem --model-version 1.4.0
      samd baseline ./sklearn-model --sample validation.npz --output-tensor predict
    """
    state = _start(context, json_output)
    from samd.drift import BASELINE_FILE, BaselineError, build_baseline, load_sample  # noqa: PLC0415

    if not model_dir.is_dir():
        raise UsageError(
            f"the model directory {model_dir} does not exist",
            hint="the baseline goes inside the model directory, so that `samd sign` signs it",
        )
    destination = output or model_dir / BASELINE_FILE
    if destination.exists() and not force:
        raise UsageError(f"{destination} exists", hint="pass --force to replace it")
    session = _onnx_session(model_dir)
    if input_name is None and session is not None and len(session.get_inputs()) == 1:
        input_name = session.get_inputs()[0].name
    loaded = load_sample(sample, input_name)
    output_names = [node.name for node in session.get_outputs()] if session is not None else []
    output_names += list(output_tensors)
    unknown = sorted(set(output_tensors) - set(loaded.tensors))
    if unknown:
        raise BaselineError(f"--output-tensor {', '.join(unknown)} is not an array of the sample")
    inputs = {name: array for name, array in loaded.tensors.items() if name not in output_names}
    outputs = {name: array for name, array in loaded.tensors.items() if name in output_names}
    if session is not None:
        declared = {node.name for node in session.get_inputs()}
        missing = sorted(declared - set(inputs))
        if missing:
            raise BaselineError(
                f"the sample lacks the model input(s) {', '.join(missing)}; it holds {', '.join(sorted(inputs))}"
            )
        extra = sorted(set(inputs) - declared)
        if extra:
            raise BaselineError(f"{', '.join(extra)} is not an input or output of the model in {model_dir}")
        if not outputs:
            outputs = _run_onnx(session, inputs)
    result = build_baseline(inputs, outputs, names=loaded.names, bins=bins, keep=features)
    destination.write_bytes(result.to_json())
    emit(
        state,
        {
            "baseline": str(destination),
            "rows": result.rows,
            "inputs": [column.name for column in result.inputs],
            "outputs": [column.name for column in result.outputs],
        },
        f"wrote {destination}: {len(result.inputs)} input feature(s) and {len(result.outputs)} output "
        f"column(s) from {result.rows} rows\n"
        + (
            f"sign {model_dir} now, so the baseline is signed with the model"
            if destination.resolve().parent == model_dir.resolve()
            else f"copy it into the model directory as {BASELINE_FILE} before signing"
        ),
    )


def _onnx_session(model_dir: Path) -> Any:
    """An onnxruntime session of the directory's only .onnx file; None if it has none."""
    candidates = sorted(model_dir.glob("*.onnx"))
    if not candidates:
        return None
    if len(candidates) > 1:
        raise UsageError(f"{model_dir} holds {len(candidates)} .onnx files; a model directory holds one")
    import onnxruntime  # noqa: PLC0415

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(
            str(candidates[0]), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own exception types
        raise UsageError(f"onnxruntime cannot load {candidates[0]}: {error}") from None


_ONNX_NUMPY = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64"}


def _run_onnx(session: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """The model's outputs on the sample, computed in chunks."""
    import numpy as np  # noqa: PLC0415

    from samd.drift import BaselineError  # noqa: PLC0415

    typed = {}
    for node in session.get_inputs():
        dtype = _ONNX_NUMPY.get(node.type)
        typed[node.name] = inputs[node.name].astype(dtype) if dtype else inputs[node.name]
    rows = next(iter(typed.values())).shape[0]
    names = [node.name for node in session.get_outputs()]
    chunks: list[list[Any]] = []
    try:
        for start in range(0, rows, 4096):
            chunks.append(
                session.run(names, {key: value[start : start + 4096] for key, value in typed.items()})
            )
    except Exception as error:  # onnxruntime raises its own exception types
        raise BaselineError(f"the model cannot run on the sample: {error}") from None
    return {name: np.concatenate([chunk[index] for chunk in chunks]) for index, name in enumerate(names)}


@app.command()
@click.argument("model", type=PATH)
@click.option(
    "--signature",
    "-s",
    type=PATH,
    metavar="PATH",
    help="Where to write the signature (default: MODEL.sig beside it).",
)
@click.option("--private-key", type=PATH, metavar="PEM", help="Sign with this EC private key (PEM).")
@click.option(
    "--password-env", metavar="VAR", help="Read the private key's password from this environment variable."
)
@click.option(
    "--certificate", type=PATH, metavar="PEM", help="With --private-key: the signing certificate (PEM)."
)
@click.option(
    "--certificate-chain",
    type=PATH,
    multiple=True,
    metavar="PEM",
    help="Intermediate certificates up to the root (repeatable).",
)
@click.option("--pkcs11-uri", metavar="URI", help="Sign with a key in an HSM (RFC 7512 URI).")
@ignore_option
@click.option("--no-ignore-git", is_flag=True, help="Sign git files too (.git, .gitignore, ...).")
@click.option("--allow-symlinks", is_flag=True, help="Follow symlinks that stay inside the model.")
@click.option(
    "--model-version",
    metavar="SEMVER",
    help="Sign the model's version with it: writes samd-model.json into the model directory first. "
    "Must be the SecureModel's spec.version.",
)
@click.option(
    "--model-name",
    metavar="NAME",
    help="With --model-version: the SecureModel's metadata.name (default: the model directory's name).",
)
@json_option
@click.pass_context
def sign(
    context: click.Context,
    *,
    model: Path,
    signature: Path | None,
    private_key: Path | None,
    password_env: str | None,
    certificate: Path | None,
    certificate_chain: tuple[Path, ...],
    pkcs11_uri: str | None,
    ignore: tuple[str, ...],
    no_ignore_git: bool,
    allow_symlinks: bool,
    model_version: str | None,
    model_name: str | None,
    json_output: bool,
) -> None:
    """Sign a model (OpenSSF Model Signing format; the upstream model_signing CLI verifies it).

    With --model-version (and --model-name), the model's name and version are signed with its
    files, in a samd-model.json written into the model directory: a SecureModel of that name and
    spec.version is then served only from this signed content. A single file cannot carry it: put
    the model in a directory.

    \b
    Examples:
      samd sign ./fraud-detection --private-key signer.pem --model-version 1.4.0
      samd sign ./model --private-key signer.pem --model-name fraud-detection --model-version 1.4.0
      samd sign model.onnx --private-key key.pem --certificate cert.pem --certificate-chain ca.pem
      samd sign ./model --pkcs11-uri 'pkcs11:token=ml;object=signer?module-path=/usr/lib/softhsm/libsofthsm2.so'
    """
    state = _start(context, json_output)
    from samd.signing import METADATA_FILE, Signer, sign_model  # noqa: PLC0415

    if not model.exists():
        raise UsageError(f"the model {model} does not exist")
    if pkcs11_uri is not None and private_key is None:
        if certificate is not None or certificate_chain or password_env is not None:
            raise UsageError("--certificate, --certificate-chain and --password-env go with --private-key")
        signer = Signer.from_pkcs11_uri(pkcs11_uri)
    elif private_key is not None and pkcs11_uri is None:
        signer = _key_signer(private_key, certificate, certificate_chain, password_env)
    else:
        raise UsageError(
            "say how to sign with exactly one of --private-key or --pkcs11-uri",
            hint="e.g. --private-key signer.pem (create one with `samd keygen --signing-key signer.pem`)",
        )
    destination = signature or _default_signature(model)
    result = sign_model(
        model,
        destination,
        signer,
        ignore_paths=list(ignore or ()),
        ignore_git_paths=not no_ignore_git,
        allow_symlinks=allow_symlinks,
        model_version=model_version,
        model_name=model_name,
    )
    bound = _describe_bound(result.bound, any(f.name == METADATA_FILE for f in result.files))
    emit(
        state,
        result.to_dict(),
        f"signed {len(result.files)} file(s) of {model} with {signer.describe()}\n"
        f"signature: {result.signature}\nmanifest: {result.manifest_digest}\n{bound}",
    )


@app.command()
@click.argument("model", type=PATH)
@click.option(
    "--signature",
    "-s",
    type=PATH,
    metavar="PATH",
    help="The signature (default: MODEL.sig beside the model).",
)
@verifier_options
@allow_unsigned_option
@json_option
@click.pass_context
def verify(
    context: click.Context,
    *,
    model: Path,
    signature: Path | None,
    public_key: Path | None,
    certificate_root: tuple[Path, ...],
    sigstore_identity: str | None,
    sigstore_issuer: str | None,
    trusted_root: Path | None,
    allow_unsigned_files: bool,
    json_output: bool,
) -> None:
    """Verify a model on disk against its signature: the signature, then every file's digest.

    \b
    Examples:
      samd verify ./model --public-key signer.pub.pem
      samd verify model.onnx --signature model.onnx.sig --certificate-root ca.pem
      samd verify ./model --sigstore-identity ml@example.com \\
          --sigstore-issuer https://accounts.example.com --trusted-root trusted_root.json
    """
    state = _start(context, json_output)
    from samd.signing import read_signed_metadata, verify_model  # noqa: PLC0415

    verifier = _build_verifier(public_key, certificate_root, sigstore_identity, sigstore_issuer, trusted_root)
    if not model.exists():
        raise UsageError(f"the model {model} does not exist")
    signature_path = signature or _default_signature(model)
    if not signature_path.is_file():
        raise UsageError(f"the signature {signature_path} does not exist", hint="pass --signature PATH")
    result = verify_model(model, signature_path, verifier, allow_unsigned_files=allow_unsigned_files)
    bound = read_signed_metadata(model, result.metadata_digest)  # the bytes verify_model just checked
    described = _describe_bound(bound, result.metadata_digest is not None)
    document = result.to_dict()
    document["bound"] = {"name": bound[0], "version": bound[1]} if bound else None
    emit(
        state,
        document,
        f"verified: {len(result.files)} file(s) match the signature\n"
        f"signer: {result.signer} ({result.method}{', issuer ' + result.issuer if result.issuer else ''})\n"
        f"manifest: {result.manifest_digest}\n{described}",
    )


def _describe_bound(bound: tuple[str, str] | None, signed: bool) -> str:
    """The line saying which name and version a signature binds (samd-model.json)."""
    if bound is not None:
        return f"model: {bound[0]} version {bound[1]} (signed in samd-model.json)"
    if signed:
        return "version: samd-model.json is signed but is not SAMD model metadata"
    return "version: not signed (no samd-model.json; sign with --model-version to bind it)"


# --- encrypt, decrypt, rewrap ----------------------------------------------------------------


class _ProducerReader:
    """A readable stream fed by a producer thread; the producer's error is raised to the reader.

    `samd encrypt` to object storage: the upload reads what encryption writes. If encryption fails,
    the upload fails too (instead of storing a truncated artifact).
    """

    def __init__(self, depth: int = 4) -> None:
        import queue  # noqa: PLC0415

        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._pending = memoryview(b"")
        self._done = False
        self.closed = False

    # writer side (producer thread)
    def write(self, data: Any) -> int:
        chunk = bytes(data)  # the encryptor reuses its buffer
        self._put(chunk)
        return len(chunk)

    def flush(self) -> None:
        return None

    def finish(self, error: BaseException | None = None) -> None:
        self._put(error)

    def _put(self, item: bytes | BaseException | None) -> None:
        import queue  # noqa: PLC0415

        while not self.closed:
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise BrokenPipeError("the upload stopped reading")

    # reader side (uploader)
    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunks: list[bytes] = []
        wanted = size if size is not None and size >= 0 else sys.maxsize
        while wanted > 0:
            if not self._pending:
                if self._done:
                    break
                item = self._queue.get()
                if item is None:
                    self._done = True
                    break
                if isinstance(item, BaseException):
                    self._done = True
                    raise item
                self._pending = memoryview(item)
            taken = self._pending[:wanted]
            self._pending = self._pending[len(taken) :]
            chunks.append(bytes(taken))
            wanted -= len(taken)
        return b"".join(chunks)

    def close(self) -> None:
        self.closed = True


def encrypt_to_storage(  # noqa: PLR0917
    source: BinaryIO,
    destination: str,
    provider: KeyProvider,
    attributes: dict[str, str],
    segment_size: int,
    sse: str | None,
    kms_key_id: str | None,
    progress: Any,
) -> Any:
    import threading  # noqa: PLC0415

    from samd.envelope import encrypt_stream  # noqa: PLC0415
    from samd.storage import put_artifact  # noqa: PLC0415

    pipe = _ProducerReader()
    outcome: dict[str, Any] = {}

    def produce() -> None:
        try:
            outcome["header"] = encrypt_stream(
                source,
                pipe,  # type: ignore[arg-type]
                provider,
                attributes=attributes,
                segment_size=segment_size,
                progress=progress,
            )
        except BaseException as error:
            outcome["error"] = error
            with contextlib.suppress(BrokenPipeError):
                pipe.finish(error)
            return
        with contextlib.suppress(BrokenPipeError):
            pipe.finish()

    producer = threading.Thread(target=produce, name="samd-encrypt", daemon=True)
    producer.start()
    try:
        put_artifact(destination, pipe, sse=sse, kms_key_id=kms_key_id)  # type: ignore[arg-type]
    finally:
        pipe.close()
        producer.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["header"]


@app.command()
@click.argument("model", type=PATH)
@key_option
@click.option(
    "--output",
    "-o",
    required=True,
    metavar="LOCATION",
    help="Where to write the artifact: a path, file://, or s3://BUCKET/KEY.",
)
@ignore_option
@click.option("--no-ignore-git", is_flag=True, help="Pack git files too (sign with --no-ignore-git as well).")
@click.option(
    "--segment-size",
    type=int,
    default=1 << 20,
    show_default=True,
    metavar="BYTES",
    help="Plaintext bytes per authenticated segment.",
)
@click.option("--sse", metavar="MODE", help="S3 server-side encryption as a second layer: AES256 or aws:kms.")
@click.option(
    "--sse-kms-key-id", "kms_key_id", metavar="KEY", help="With --sse aws:kms: the KMS key for S3 to use."
)
@click.option("--force", is_flag=True, help="Replace an existing local artifact.")
@json_option
@click.pass_context
def encrypt(
    context: click.Context,
    *,
    model: Path,
    key: tuple[str, ...],
    output: str,
    ignore: tuple[str, ...],
    no_ignore_git: bool,
    segment_size: int,
    sse: str | None,
    kms_key_id: str | None,
    force: bool,
    json_output: bool,
) -> None:
    """Encrypt a model (a file, or a directory packed as a tar stream) under a fresh data key.

    The data key is wrapped by the key given with --key; the artifact's header records which key
    and version. Directories are packed deterministically, leaving out git files (like signing).

    \b
    Examples:
      samd encrypt model.onnx --key local:keys.json --output model.samd
      samd encrypt ./model --key aws-kms://alias/models?region=eu-west-1 \\
          --output s3://models/fraud/v3.samd --sse aws:kms
    """
    state = _start(context, json_output)
    from samd.fetch import CONTENT_ATTRIBUTE, CONTENT_FILE, CONTENT_TAR, NAME_ATTRIBUTE  # noqa: PLC0415
    from samd.modelpack import pack_directory  # noqa: PLC0415
    from samd.storage import LocalPath, parse_artifact_uri  # noqa: PLC0415

    if len(key) != 1:
        raise UsageError("encrypt wraps the data key with exactly one --key")
    if not model.exists():
        raise UsageError(f"the model {model} does not exist")
    location = parse_artifact_uri(output)
    if isinstance(location, LocalPath):
        if location.path.exists() and not force:
            raise UsageError(f"{location.path} already exists", hint="pass --force to replace it")
        if location.path.is_dir():
            raise UsageError(f"{location.path} is a directory; give the artifact a file name")
    started = time.monotonic()
    source: BinaryIO
    if model.is_dir():
        stream = pack_directory(model, ignore=list(ignore or ()), ignore_git_paths=not no_ignore_git)
        attributes = {CONTENT_ATTRIBUTE: CONTENT_TAR}
        total, file_count = stream.total_size, len(stream.files)
        source = stream  # type: ignore[assignment]
    else:
        if ignore:
            raise UsageError("--ignore applies to directories only")
        source = open(model, "rb")  # noqa: SIM115 - closed below
        attributes = {CONTENT_ATTRIBUTE: CONTENT_FILE, NAME_ATTRIBUTE: model.name}
        total, file_count = os.fstat(source.fileno()).st_size, 1
    try:
        with _open_keys(key) as provider, progress_bar("encrypt", total) as progress:
            if getattr(provider, "provider_for", None) is not None:
                raise UsageError("encrypt wraps the data key with exactly one --key")
            wrapping: KeyProvider = provider  # type: ignore[assignment]
            if isinstance(location, LocalPath):
                from samd.envelope import atomic_output, encrypt_stream  # noqa: PLC0415

                if not location.path.parent.is_dir():
                    raise UsageError(f"the directory {location.path.parent} does not exist")
                with atomic_output(location.path) as out:
                    header = encrypt_stream(
                        source,
                        out,
                        wrapping,
                        attributes=attributes,
                        segment_size=segment_size,
                        progress=progress,
                    )
            else:
                header = encrypt_to_storage(
                    source, output, wrapping, attributes, segment_size, sse, kms_key_id, progress
                )
    finally:
        source.close()
    seconds = time.monotonic() - started
    document = {
        "output": output,
        "content": attributes[CONTENT_ATTRIBUTE],
        "files": file_count,
        "plaintext_bytes": total,
        "seconds": round(seconds, 3),
        "header": header.to_dict(),
    }
    emit(
        state,
        document,
        f"encrypted {model} ({file_count} file(s), {_human_size(total)}) to {output}\n"
        f"key: {header.provider} {header.key_id} version {header.key_version}",
    )


@app.command()
@click.argument("artifact", metavar="ARTIFACT")
@key_option
@click.option(
    "--output",
    "-o",
    type=PATH,
    required=True,
    metavar="PATH",
    help="Where to write the model (a file or a directory).",
)
@click.option("--force", is_flag=True, help="Replace an existing output.")
@json_option
@click.pass_context
def decrypt(
    context: click.Context,
    *,
    artifact: str,
    key: tuple[str, ...],
    output: Path,
    force: bool,
    json_output: bool,
) -> None:
    """Decrypt an artifact. The output appears only once every segment has authenticated.

    This does NOT check a signature: use `samd fetch` to load a model you will run.

    \b
    Examples:
      samd decrypt model.samd --key local:keys.json --output model.onnx
      samd decrypt s3://models/fraud/v3.samd --key aws-kms://alias/models --output ./fraud-v3/
    """
    state = _start(context, json_output)
    from samd.envelope import EnvelopeReader, atomic_output  # noqa: PLC0415
    from samd.fetch import StagedOutput, artifact_packing, stream_into_directory  # noqa: PLC0415
    from samd.storage import open_artifact  # noqa: PLC0415

    started = time.monotonic()
    with _open_keys(key) as keys, open_artifact(artifact) as source:
        reader = EnvelopeReader(source, keys)
        packing, recorded_name = artifact_packing(reader.header.attributes)
        with progress_bar("decrypt", getattr(source, "size", None)) as progress:
            if packing == "tar":
                with StagedOutput(output, force=force) as staged:
                    files = stream_into_directory(
                        reader.segments(prefetch=0, progress=progress),
                        staged.root,
                        packing="tar",
                        expected={},
                        allow_unsigned_files=True,
                    )
                    staged.commit()
                listing: list[dict[str, Any]] = [
                    {"name": f.name, "size": f.size, "sha256": f.digest} for f in files
                ]
            else:
                if output.is_dir():
                    raise UsageError(
                        f"{output} is a directory; this artifact holds one file ({recorded_name or 'unnamed'})",
                        hint=f"give a file name, e.g. --output {output / (recorded_name or 'model')}",
                    )
                if output.exists() and not force:
                    raise UsageError(f"{output} already exists", hint="pass --force to replace it")
                size = 0
                with atomic_output(output, mode=0o644) as out:
                    for segment in reader.segments(progress=progress):
                        out.write(segment)
                        size += len(segment)
                listing = [{"name": output.name, "size": size}]
    total = sum(item["size"] for item in listing)
    document = {
        "output": str(output),
        "content": packing,
        "files": listing,
        "plaintext_bytes": total,
        "seconds": round(time.monotonic() - started, 3),
        "header": reader.header.to_dict(),
    }
    emit(state, document, f"decrypted {artifact} to {output} ({len(listing)} file(s), {_human_size(total)})")


@app.command()
@click.argument("artifact", type=PATH, metavar="ARTIFACT")
@key_option
@click.option(
    "--old-key",
    multiple=True,
    metavar="URI",
    help="The key that wrapped it, if not --key (e.g. when moving to another key).",
)
@json_option
@click.pass_context
def rewrap(
    context: click.Context,
    *,
    artifact: Path,
    key: tuple[str, ...],
    old_key: tuple[str, ...],
    json_output: bool,
) -> None:
    """Re-wrap an artifact's data key under the current version of --key, without re-encrypting.

    Only the header changes (the encrypted body is copied byte for byte), and the file is replaced
    atomically. Run it after `samd keygen KEY --rotate`.

    \b
    Examples:
      samd rewrap model.samd --key local:keys.json
      samd rewrap model.samd --key aws-kms://alias/new --old-key local:old-keys.json
    """
    state = _start(context, json_output)
    from samd.envelope import rewrap_header  # noqa: PLC0415

    if len(key) != 1:
        raise UsageError("rewrap wraps the data key with exactly one --key")
    with _open_keys(key) as provider:
        wrapping: KeyProvider = provider  # type: ignore[assignment]
        if old_key:
            with _open_keys(old_key) as old:
                result = rewrap_header(artifact, wrapping, keys=old)
        else:
            result = rewrap_header(artifact, wrapping)
    before, after = result.previous, result.header
    document = {
        "artifact": str(artifact),
        "rewrapped": result.rewrapped,
        "previous": before.to_dict(),
        "header": after.to_dict(),
    }
    if result.rewrapped:
        text = (
            f"rewrapped {artifact}: {before.provider} {before.key_id} version {before.key_version} -> "
            f"{after.provider} {after.key_id} version {after.key_version}"
        )
    else:
        text = f"{artifact} is already wrapped by the current version ({after.key_id} version {after.key_version})"
    emit(state, document, text)


# --- fetch and inspect -----------------------------------------------------------------------


@app.command()
@click.argument("artifact", metavar="ARTIFACT")
@click.option(
    "--signature",
    "-s",
    required=True,
    metavar="LOCATION",
    help="The model's signature: a path or a storage URI.",
)
@click.option(
    "--key",
    "-k",
    "key",
    multiple=True,
    metavar="URI",
    help="Key URI, as for decrypt (repeatable). Leave it out for an unencrypted artifact: the model file "
    "itself, or a tar stream of a model directory.",
)
@click.option(
    "--output", "-o", type=PATH, required=True, metavar="DIR", help="The directory to write the model into."
)
@verifier_options
@click.option(
    "--trust-config",
    type=PATH,
    metavar="JSON",
    help="Verify with any signer listed in this file (the operator's trust ConfigMap, signers.json).",
)
@click.option(
    "--expect-digest",
    metavar="sha256:HEX",
    help="Refuse unless the signed manifest has this digest (the operator pins the verified one).",
)
@click.option(
    "--force", is_flag=True, help="Replace what the output directory holds (after the model verified)."
)
@click.option(
    "--keep-signature",
    is_flag=True,
    help="Also write the verified signature into DIR (as .samd-signature.json), for `samd serve` "
    "and `samd proxy` to check the model again when they load it.",
)
@allow_unsigned_option
@json_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    is_eager=True,  # set before the other options are read, so that their errors are JSON lines too
    expose_value=False,
    callback=lambda context, _parameter, value: _fetch_log_format(context, value),
    help="text: `level: message` lines for a person; json: one JSON object per line on stderr, "
    "errors included, as `samd serve` logs (what the init container uses).",
)
@click.pass_context
def fetch(
    context: click.Context,
    *,
    artifact: str,
    signature: str,
    key: tuple[str, ...],
    output: Path,
    public_key: Path | None,
    certificate_root: tuple[Path, ...],
    sigstore_identity: str | None,
    sigstore_issuer: str | None,
    trusted_root: Path | None,
    trust_config: Path | None,
    expect_digest: str | None,
    force: bool,
    keep_signature: bool,
    allow_unsigned_files: bool,
    json_output: bool,
) -> None:
    """Download, decrypt and verify a model in one pass; write it only if every file matches.

    The signature is checked first; the artifact is then streamed, decrypted and hashed into a
    staging directory, and moved into --output only if every file matches the signed manifest.
    On any failure nothing of the model is left in --output. This is what the init container runs.

    \b
    Examples:
      samd fetch model.samd --signature model.sig --public-key signer.pub.pem \\
          --key local:keys.json --output /models/current
      samd fetch s3://models/fraud/v3.samd --signature s3://models/fraud/v3.sig \\
          --certificate-root ca.pem --key aws-kms://alias/models --output /models
    """
    state = _start(context, json_output)
    import signal  # noqa: PLC0415

    from samd.fetch import fetch_model, read_signature  # noqa: PLC0415

    bundle = read_signature(signature)
    if trust_config is not None:
        if public_key or certificate_root or sigstore_identity or sigstore_issuer or trusted_root:
            raise UsageError(
                "--trust-config replaces --public-key, --certificate-root and the Sigstore options"
            )
        verifier = _verifier_from_trust_config(trust_config, bundle)
    else:
        verifier = _build_verifier(
            public_key, certificate_root, sigstore_identity, sigstore_issuer, trusted_root
        )
    if expect_digest is not None:
        _check_expected_digest(bundle, verifier, expect_digest)
    previous_handler = None
    if threading_is_main():
        # The kubelet stops an init container with SIGTERM: remove the partial model, then exit.
        previous_handler = signal.signal(signal.SIGTERM, functools.partial(_terminate, state))
    try:
        opened = _open_keys(key) if key else contextlib.nullcontext(None)
        with opened as keys, progress_bar("fetch", None) as progress:
            try:
                result = fetch_model(
                    artifact,
                    signature=bundle,
                    verifier=verifier,
                    keys=keys,
                    output=output,
                    force=force,
                    allow_unsigned_files=allow_unsigned_files,
                    keep_signature=keep_signature,
                    progress=progress,
                )
            except (VerificationError, IntegrityError) as error:
                _log_load_decision(
                    "refused", type(error).__name__.removesuffix("Error"), artifact, str(error)
                )
                raise
        # The figures of the fetch ride on the decision line (the file list stays out: it can be long).
        figures = {name: value for name, value in result.to_dict().items() if name != "files"}
        _log_load_decision("verified", "Verified", artifact, result.verification.manifest_digest, **figures)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    if state.log_json and not state.json:
        return  # JSON lines only: the decision line above is the summary
    rate = result.total_bytes / result.seconds / 1e6 if result.seconds > 0 else 0.0
    emit(
        state,
        result.to_dict(),
        f"fetched {len(result.files)} verified file(s) ({_human_size(result.total_bytes)}) into {result.output} "
        f"in {result.seconds:.2f} s ({rate:.0f} MB/s)\n"
        f"signer: {result.verification.signer} ({result.verification.method})\n"
        f"manifest: {result.verification.manifest_digest}",
    )


def _fetch_log_format(context: click.Context, value: str) -> None:
    """--log-format json: JSON lines from here on, errors included (component `loader`)."""
    if value == "json" and not context.resilient_parsing:
        state = _state(context)
        state.log_json = True
        configure_json_lines(state.debug, component="loader")


def _log_load_decision(decision: str, reason: str, artifact: str, detail: str, **more: object) -> None:
    """The loader's decision line (SAMD's shared shape; the init container's log)."""
    from samd.logs import decision_fields  # noqa: PLC0415
    from samd.storage.uri import redact_url  # noqa: PLC0415

    logging.getLogger("samd.loader").log(
        logging.INFO if decision == "verified" else logging.WARNING,
        "model %s: %s",
        decision,
        detail,
        extra={
            **decision_fields(
                component="loader",
                event="model_load",
                decision=decision,
                reason=reason,
                model=None,
                artifact=redact_url(artifact),
            ),
            **more,
        },
    )


EXIT_TERMINATED = 143


def _terminate(state: CliState, signum: int, frame: object) -> None:
    """SIGTERM: remove the staging directory and exit at once with 128 + 15.

    Not an exception: unwinding could wait forever on a worker blocked in a stalled read.
    """
    from samd.fetch import remove_active_staging  # noqa: PLC0415

    remove_active_staging()
    report_failure(state, "terminated by SIGTERM; the partial model was removed", exit_code=EXIT_TERMINATED)
    sys.stdout.flush()
    os._exit(EXIT_TERMINATED)


def threading_is_main() -> bool:
    import threading  # noqa: PLC0415

    return threading.current_thread() is threading.main_thread()


@app.command()
@click.argument("target", metavar="LOCATION")
@json_option
@click.pass_context
def inspect(context: click.Context, *, target: str, json_output: bool) -> None:
    """Show an artifact's header or a signature's claims, without any key. Nothing shown is verified.

    \b
    Examples:
      samd inspect model.samd      # cipher, key provider, key id and version, segment size
      samd inspect model.sig       # signing method, signer, files and digests (unverified)
      samd inspect s3://models/fraud/v3.samd --json
    """
    state = _start(context, json_output)
    from samd.envelope import MAGIC  # noqa: PLC0415
    from samd.storage import open_artifact  # noqa: PLC0415

    with open_artifact(target) as source:
        start = source.peek(len(MAGIC))[: len(MAGIC)]
        if start == MAGIC:
            from samd.envelope import read_header  # noqa: PLC0415

            header = read_header(source)
            document: dict[str, Any] = {"kind": "artifact", "verified": False, "header": header.to_dict()}
            text = _describe_header(target, document["header"])
        else:
            from samd.signing import MAX_BUNDLE_BYTES, inspect_signature  # noqa: PLC0415
            from samd.storage.stream import read_at_most  # noqa: PLC0415

            data = read_at_most(source, MAX_BUNDLE_BYTES)
            if not data.lstrip()[:1] == b"{":
                raise UsageError(
                    f"{target} is neither a SAMD artifact nor a signature bundle",
                    hint="inspect takes a file written by `samd encrypt` or `samd sign`",
                )
            if len(data) > MAX_BUNDLE_BYTES:
                raise UsageError(f"{target} is larger than a signature can be ({MAX_BUNDLE_BYTES} bytes)")
            claims = inspect_signature(data)
            document = {"kind": "signature", **claims}
            text = _describe_signature(target, claims)
    emit(state, document, text)


def _describe_header(target: str, header: dict[str, Any]) -> str:
    key = header["key"]
    attributes = header.get("attributes") or {}
    lines = [
        f"{target}: SAMD encrypted artifact (format version {header['format_version']})",
        f"  cipher:       {header['cipher']}, {header['segment_size']}-byte segments",
        f"  key:          {key['provider']} {key['id']} version {key['version']}",
        f"  data key id:  {key['data_key_id']} (kept by rewrap, new after reencrypt)",
    ]
    lines.extend(f"  {name}: {value}" for name, value in sorted(attributes.items()))
    lines.append("  (read without a key: the header is authenticated only when the artifact is decrypted)")
    return "\n".join(lines)


def _describe_signature(target: str, claims: dict[str, Any]) -> str:
    lines = [f"{target}: model signature (NOT verified)"]
    for name, value in claims.items():
        if name in ("files", "verified"):
            continue
        if isinstance(value, dict | list):
            continue
        lines.append(f"  {name}: {value}")
    files = claims.get("files")
    if isinstance(files, list):
        lines.append(f"  files: {len(files)}")
        lines.extend(f"    {entry.get('digest', '')}  {entry.get('name', '')}" for entry in files[:20])
        if len(files) > 20:
            lines.append(f"    ... and {len(files) - 20} more (use --json for all)")
    return "\n".join(lines)


# --- serve and proxy -------------------------------------------------------------------------


serving_options = _options(
    click.option(
        "--model-dir",
        type=PATH,
        required=True,
        metavar="DIR",
        help="The model `samd fetch --keep-signature` verified into DIR (the memory volume).",
    ),
    click.option("--model-name", required=True, metavar="NAME", help="The model's name in /v2/models/NAME."),
    click.option("--model-version", metavar="SEMVER", help="The model's version (spec.version)."),
    click.option(
        "--expect-digest",
        metavar="sha256:HEX",
        help="Refuse to start unless the model's signed manifest has this digest (the operator pins it).",
    ),
    click.option(
        "--trust-config",
        type=PATH,
        metavar="JSON",
        help="Verify the kept signature with any signer listed in this file (the trust ConfigMap).",
    ),
    verifier_options,
    click.option("--host", default="0.0.0.0", show_default=True, help="The address to listen on."),  # noqa: S104
    click.option(
        "--port", type=click.IntRange(0, 65535), default=8443, show_default=True, help="The mTLS port."
    ),
    click.option(
        "--tls-cert", type=PATH, required=True, metavar="PEM", help="The server certificate (chain)."
    ),
    click.option("--tls-key", type=PATH, required=True, metavar="PEM", help="The server certificate's key."),
    click.option(
        "--client-ca",
        type=PATH,
        required=True,
        metavar="PEM",
        help="The CA that issues the clients' certificates.",
    ),
    click.option(
        "--client-organization",
        required=True,
        metavar="O",
        help="The organization (O) a client certificate must carry: samd:NAMESPACE:MODEL.",
    ),
    click.option(
        "--allowed-client",
        "allowed_client",
        multiple=True,
        metavar="NAME",
        help="A client (certificate common name) allowed to call the model; repeatable (spec.serving.clients).",
    ),
    click.option(
        "--rate-limit",
        type=click.FloatRange(min=0, min_open=True),
        default=50.0,
        show_default=True,
        help="Requests per second each client may make.",
    ),
    click.option(
        "--burst",
        type=click.IntRange(min=1),
        default=100,
        show_default=True,
        help="Requests a client may save up.",
    ),
    click.option(
        "--max-body-bytes",
        type=click.IntRange(min=1024),
        default=8 * 1024 * 1024,
        show_default=True,
        help="The largest request body.",
    ),
    click.option(
        "--max-batch",
        type=click.IntRange(min=1),
        default=1024,
        show_default=True,
        help="The largest batch (first dimension, where the model leaves it open).",
    ),
    click.option(
        "--max-elements",
        type=click.IntRange(min=1),
        default=1 << 22,
        show_default=True,
        help="The most elements one input tensor may have.",
    ),
    click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        metavar="PORT",
        help="Serve Prometheus metrics over plain HTTP on this port (default: no metrics).",
    ),
    click.option(
        "--drift-window",
        type=click.IntRange(min=100),
        default=10_000,
        show_default=True,
        metavar="ROWS",
        help="Predictions in the rolling window compared with the model's signed drift baseline.",
    ),
    click.option(
        "--cert-reload-interval",
        type=click.FloatRange(min=0.1),
        default=10.0,
        show_default=True,
        metavar="SECONDS",
        help="How often to check the certificate, key and client CA files for a change.",
    ),
    click.option(
        "--log-format",
        type=click.Choice(["auto", "json", "text"]),
        default="auto",
        show_default=True,
        help="JSON lines (auto: unless stderr is a terminal).",
    ),
)


def _verified_model(
    model_dir: Path,
    expect_digest: str | None,
    trust_config: Path | None,
    verifier_args: tuple[Path | None, Sequence[Path], str | None, str | None, Path | None],
) -> Any:
    """The model in `model_dir`, its kept signature verified again and its files hashed against it."""
    from samd.serving.model import read_kept_signature, verify_model_files  # noqa: PLC0415
    from samd.signing import verify_bundle  # noqa: PLC0415

    bundle = read_kept_signature(model_dir)
    if trust_config is not None:
        if any(verifier_args[1:]) or verifier_args[0] is not None:
            raise UsageError(
                "--trust-config replaces --public-key, --certificate-root and the Sigstore options"
            )
        verifier = _verifier_from_trust_config(trust_config, bundle)
    else:
        verifier = _build_verifier(*verifier_args)
    verification = verify_bundle(bundle, verifier)
    return verify_model_files(model_dir, verification, expect_digest)


def _drift_monitor(verified: Any, window_rows: int) -> Any:
    """The drift monitor of the model's signed baseline, read from the verified files; None without one."""
    import logging  # noqa: PLC0415

    from samd.drift import BASELINE_FILE, Baseline, DriftMonitor  # noqa: PLC0415

    log = logging.getLogger("samd.serving")
    if BASELINE_FILE not in verified.files:
        log.info(
            "the model carries no %s: drift is not measured (write one with `samd baseline` before signing)",
            BASELINE_FILE,
        )
        return None
    baseline = Baseline.from_json(verified.read_verified(BASELINE_FILE), BASELINE_FILE)
    log.info(
        "drift baseline loaded",
        extra={"inputs": len(baseline.inputs), "outputs": len(baseline.outputs), "rows": baseline.rows},
    )
    return DriftMonitor(baseline, window_rows=window_rows)


def _run_front_end(state: CliState, options: dict[str, Any], backend_factory: Callable[[Any], Any]) -> None:
    """Verify the model, build the front end around the backend, and serve until SIGTERM."""
    import prometheus_client  # noqa: PLC0415
    import uvloop  # noqa: PLC0415

    from samd.logs import configure_logging as configure_json_logging  # noqa: PLC0415
    from samd.serving.access import IdentityPolicy, allowed_clients  # noqa: PLC0415
    from samd.serving.metrics import ServingMetrics  # noqa: PLC0415
    from samd.serving.protocol import Limits  # noqa: PLC0415
    from samd.serving.server import FrontEnd, FrontEndConfig, Provenance, serve_until_signalled  # noqa: PLC0415
    from samd.serving.tls import TlsFiles  # noqa: PLC0415

    # In JSON mode a failure to start (a model that does not verify, say) is a JSON line too.
    state.log_json = configure_json_logging(
        "DEBUG" if state.debug else "INFO", options["log_format"], component="server"
    )
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    clients = allowed_clients(options["allowed_client"])
    if not clients:
        import logging  # noqa: PLC0415

        logging.getLogger("samd.serving").warning(
            "no --allowed-client given: every request will be refused (list clients in spec.serving.clients)"
        )
    metrics = ServingMetrics(clients)
    started = time.monotonic()
    verified = _verified_model(
        options["model_dir"],
        options["expect_digest"],
        options["trust_config"],
        (
            options["public_key"],
            options["certificate_root"],
            options["sigstore_identity"],
            options["sigstore_issuer"],
            options["trusted_root"],
        ),
    )
    backend = backend_factory(verified)
    metrics.drift.monitor = _drift_monitor(verified, options["drift_window"])
    metrics.model_load_seconds.set(time.monotonic() - started)
    config = FrontEndConfig(
        host=options["host"],
        port=options["port"],
        tls=TlsFiles(options["tls_cert"], options["tls_key"], options["client_ca"]),
        identity=IdentityPolicy(options["client_organization"], clients),
        provenance=Provenance(
            model_name=options["model_name"],
            model_version=options["model_version"],
            manifest_digest=verified.manifest_digest,
            signer=verified.signer,
        ),
        rate=options["rate_limit"],
        burst=options["burst"],
        limits=Limits(
            max_body_bytes=options["max_body_bytes"],
            max_batch=options["max_batch"],
            max_elements=options["max_elements"],
        ),
        metrics_port=options["metrics_port"],
        cert_reload_interval=options["cert_reload_interval"],
    )
    front = FrontEnd(config, backend, metrics)
    uvloop.run(serve_until_signalled(front))


@app.command()
@serving_options
@click.option(
    "--format",
    "model_format",
    default="onnx",
    show_default=True,
    metavar="FORMAT",
    help="The model's format (spec.format); samd serve runs onnx.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="onnxruntime threads per inference.",
)
@click.pass_context
def serve(context: click.Context, /, **options: Any) -> None:
    """Serve a verified model over mTLS on the Open Inference Protocol (KServe V2, REST).

    At start-up the signature `samd fetch --keep-signature` kept is verified again, its manifest
    digest must be --expect-digest, and the model's files are hashed against it; only then is the
    model loaded. Clients need a certificate from --client-ca with O=--client-organization and a
    CN among --allowed-client; each client is limited to --rate-limit requests/s. Every response
    carries the model's name, version, manifest digest and signer. SIGTERM stops it gracefully.

    \b
    Example (what the operator runs):
      samd serve --model-dir /models --model-name fraud-detection --model-version 1.4.0 \\
          --expect-digest sha256:... --trust-config /var/run/samd/trust/signers.json \\
          --tls-cert tls.crt --tls-key tls.key --client-ca ca.crt \\
          --client-organization samd:fraud-detection:fraud-detection --allowed-client payments-api
    """
    state = _state(context)
    model_format = options["model_format"]
    threads = options["threads"]

    def backend(verified: Any) -> Any:
        from samd.serving.backends import InProcessBackend  # noqa: PLC0415
        from samd.serving.model import load_runtime  # noqa: PLC0415

        runtime = load_runtime(verified, model_format, threads)
        return InProcessBackend(runtime, options["model_name"], options["model_version"])

    _run_front_end(state, options, backend)


@app.command()
@serving_options
@click.option(
    "--upstream",
    required=True,
    metavar="URL",
    help="The model server in the pod, on localhost only: http://127.0.0.1:PORT.",
)
@click.pass_context
def proxy(context: click.Context, /, **options: Any) -> None:
    """Put the mTLS front end of `samd serve` before a V2 model server of your own on localhost.

    The same identity checks, rate limits, input checks against the model's declared inputs (read
    from the upstream's /v2/models/NAME), provenance and metrics as `samd serve`; requests that
    pass are forwarded to --upstream. The model directory is verified the same way at start-up, so
    the provenance is the verified one. Ready once the upstream is ready.

    \b
    Example (what the operator runs beside an MLServer container):
      samd proxy --upstream http://127.0.0.1:8080 --model-dir /models --model-name fraud-detection \\
          --trust-config /var/run/samd/trust/signers.json --tls-cert tls.crt --tls-key tls.key \\
          --client-ca ca.crt --client-organization samd:fraud:fraud-detection --allowed-client payments-api
    """
    state = _state(context)
    upstream = options["upstream"]

    def backend(_verified: Any) -> Any:
        from samd.serving.backends import UpstreamBackend  # noqa: PLC0415

        return UpstreamBackend(upstream, options["model_name"])

    _run_front_end(state, options, backend)


# --- reencrypt --------------------------------------------------------------------------------


@app.command()
@click.argument("artifact", metavar="ARTIFACT")
@key_option
@click.option(
    "--old-key",
    multiple=True,
    metavar="URI",
    help="The key that wrapped the current data key, if not --key (repeatable).",
)
@click.option(
    "--output",
    "-o",
    metavar="LOCATION",
    help="Write the new artifact here (a path or s3://) instead of replacing ARTIFACT (local files only).",
)
@json_option
@click.pass_context
def reencrypt(
    context: click.Context,
    *,
    artifact: str,
    key: tuple[str, ...],
    old_key: tuple[str, ...],
    output: str | None,
    json_output: bool,
) -> None:
    """Re-encrypt an artifact under a fresh data key: the answer to a leaked data key.

    `samd rewrap` only wraps the same data key again (after a key-encryption key rotation); a data
    key that leaked still decrypts a rewrapped artifact. reencrypt decrypts the artifact segment by
    segment (every segment authenticated) and encrypts it under a new random data key wrapped by
    --key. The result appears atomically: a local ARTIFACT is replaced only once complete. The
    model's files, and therefore its signature, do not change.

    \b
    Examples:
      samd reencrypt model.samd --key local:keys.json
      samd reencrypt s3://models/fraud/1.4.0/model.samd --key aws-kms://alias/models \\
          --output s3://models/fraud/1.4.0/model.samd
    """
    state = _start(context, json_output)
    from samd.envelope import reencrypt_file, reencrypt_stream  # noqa: PLC0415
    from samd.storage import LocalPath, open_artifact, parse_artifact_uri  # noqa: PLC0415

    if len(key) != 1:
        raise UsageError("reencrypt wraps the new data key with exactly one --key")
    source = parse_artifact_uri(artifact)
    if output is None and not isinstance(source, LocalPath):
        raise UsageError(
            f"{artifact} is not a local file: give --output (it may name the same object to replace it)"
        )
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        wrapping: KeyProvider = stack.enter_context(_open_keys(key))  # type: ignore[assignment]
        unwrapping = stack.enter_context(_open_keys(old_key)) if old_key else wrapping
        if isinstance(source, LocalPath):
            total = source.path.stat().st_size if source.path.is_file() else None
        else:
            total = None
        progress = stack.enter_context(progress_bar("reencrypt", total))
        target = parse_artifact_uri(output) if output is not None else source
        if isinstance(source, LocalPath) and isinstance(target, LocalPath):
            result = reencrypt_file(
                source.path,
                wrapping,
                keys=unwrapping,
                output=target.path if output else None,
                progress=progress,
            )
        else:
            reader = stack.enter_context(open_artifact(artifact))
            result = _reencrypt_to_storage(
                reader, output or artifact, unwrapping, wrapping, progress, reencrypt_stream
            )
    before, after = result.previous, result.header
    document = {
        "artifact": artifact,
        "output": output or artifact,
        "plaintext_bytes": result.plaintext_bytes,
        "seconds": round(time.monotonic() - started, 3),
        "previous": before.to_dict(),
        "header": after.to_dict(),
    }
    emit(
        state,
        document,
        f"re-encrypted {artifact} under a new data key ({_human_size(result.plaintext_bytes)}) to "
        f"{output or artifact}\nkey: {after.provider} {after.key_id} version {after.key_version} "
        f"(was {before.provider} {before.key_id} version {before.key_version})\n"
        "the old data key no longer decrypts it; delete every other copy of the old artifact",
    )


def _reencrypt_to_storage(  # noqa: PLR0917
    reader: BinaryIO,
    destination: str,
    unwrapping: Any,
    wrapping: KeyProvider,
    progress: Any,
    reencrypt_stream: Callable[..., Any],
) -> Any:
    """Stream a re-encryption into object storage (or a local path) through the uploader."""
    import tempfile  # noqa: PLC0415

    from samd.envelope import atomic_output  # noqa: PLC0415
    from samd.storage import LocalPath, parse_artifact_uri, put_artifact  # noqa: PLC0415

    target = parse_artifact_uri(destination)
    if isinstance(target, LocalPath):
        with atomic_output(target.path) as out:
            return reencrypt_stream(reader, out, unwrapping, wrapping, progress=progress)
    # The source may be the destination object: stage the new artifact before replacing it.
    with tempfile.TemporaryFile(prefix="samd-reencrypt-") as staged:
        result = reencrypt_stream(reader, staged, unwrapping, wrapping, progress=progress)
        staged.seek(0)
        put_artifact(destination, staged)
    return result


# --- audit ------------------------------------------------------------------------------------

AUDIT_EXIT_FINDINGS = 8
"""`samd audit` exit code when a finding is at or above --fail-on."""


@app.command()
@click.option("--namespace", "-n", metavar="NS", help="Audit the models of one namespace (default: all).")
@click.option("--context", "kube_context", metavar="NAME", help="The kubeconfig context (default: current).")
@click.option(
    "--fail-on",
    default="high",
    show_default=True,
    type=click.Choice(["critical", "high", "medium", "low", "info", "none"]),
    help=f"Exit {AUDIT_EXIT_FINDINGS} when a finding is at this severity or worse ('none': never).",
)
@click.option("--html", "html_path", type=PATH, metavar="FILE", help="Also write a report a person reads.")
@click.option(
    "--history",
    type=PATH,
    metavar="DIR",
    help="A directory of earlier JSON reports: charted over time in --html; this report is added to it.",
)
@click.option(
    "--store-configmap",
    metavar="NS/NAME",
    help="Write the report (report.json, report.html, history.json, metrics.prom) into this existing "
    "ConfigMap, keeping the history it holds (what the chart's CronJob does).",
)
@click.option(
    "--metrics-file", type=PATH, metavar="FILE", help="Also write the Prometheus text-format metrics."
)
@click.option(
    "--certificate-warning",
    default="720h",
    show_default=True,
    metavar="DURATION",
    help="Report certificates expiring sooner than this.",
)
@click.option(
    "--reconcile-grace",
    default="5m",
    show_default=True,
    metavar="DURATION",
    help="How long a change may wait for the operator before it counts as not reconciled.",
)
@click.option(
    "--operator-namespace",
    default="samd-system",
    show_default=True,
    metavar="NS",
    help="Where SAMD runs (its service accounts' access is expected).",
)
@json_option
@click.pass_context
def audit(
    context: click.Context,
    *,
    namespace: str | None,
    kube_context: str | None,
    fail_on: str,
    html_path: Path | None,
    history: Path | None,
    store_configmap: str | None,
    metrics_file: Path | None,
    certificate_warning: str,
    reconcile_grace: str,
    operator_namespace: str,
    json_output: bool,
) -> int:
    """Audit SAMD in the cluster named by KUBECONFIG: every finding with its severity, the object,
    why it matters and how to fix it.

    Checks: keys past their rotation period; certificates (model servers, signers, the webhook's CA)
    near expiry; signatures verified again under the current trust policies; who may read each
    model's key Secret, update its SecureModel or create pods next to it (asked of the API server
    with SubjectAccessReviews, for every subject of every binding and the groups that stand for
    everyone); expired time-bound grants still bound; Services, Ingresses and HTTPRoutes reaching
    model pods; NetworkPolicies that allow all; namespaces without Pod Security enforcement;
    unpinned images; the bucket posture; the webhook's configuration; whether the operator and the
    webhook run. Read only, apart from --store-configmap.

    \b
    Exit codes: 0 nothing at or above --fail-on, 8 findings at or above it, 2 usage, 1 other errors.
    \b
    Examples:
      samd audit
      samd audit --json --fail-on critical > audit.json
      samd audit --html audit.html --history ./audits/
    """
    state = _start(context, json_output)
    from samd.audit import CHECK_NAMES, AuditSettings, Severity, fails_gate, run_audit  # noqa: PLC0415
    from samd.audit.cluster import connect  # noqa: PLC0415
    from samd.audit.render import (  # noqa: PLC0415
        HistoryPoint,
        history_from_directory,
        history_json,
        parse_history,
        print_table,
        to_html,
        to_json,
        to_metrics,
    )
    from samd.audit.run import utc_now  # noqa: PLC0415
    from samd.spec import parse_duration  # noqa: PLC0415

    def duration(option: str, text: str) -> Any:
        try:
            return parse_duration(text)
        except (ValueError, UsageError):
            raise UsageError(
                f"{option} {text!r} is not a duration", hint="write it like 720h, 1h30m or 90s"
            ) from None

    configmap: tuple[str, str] | None = None
    if store_configmap is not None:
        ns, _, name = store_configmap.partition("/")
        if not ns or not name:
            raise UsageError(f"--store-configmap {store_configmap!r} must be NAMESPACE/NAME")
        configmap = (ns, name)
    if history is not None and not history.is_dir():
        raise UsageError(f"--history {history} is not a directory", hint=f"create it: mkdir -p {history}")
    settings = AuditSettings(
        now=utc_now(),
        certificate_warning=duration("--certificate-warning", certificate_warning),
        reconcile_grace=duration("--reconcile-grace", reconcile_grace),
        operator_namespace=operator_namespace,
    )
    with connect(kube_context) as reader:
        report = run_audit(reader, settings, namespace=namespace)
        points = history_from_directory(history) if history is not None else []
        stored: dict[str, str] = {}
        if configmap is not None:
            existing = reader.get("v1", "ConfigMap", configmap[1], configmap[0])
            points += parse_history(((existing or {}).get("data") or {}).get("history.json"))
        points = sorted([*points, HistoryPoint.of(report)], key=lambda p: p.generated_at)
        page = to_html(report, points)
        metrics = to_metrics(report, CHECK_NAMES)
        if configmap is not None:
            stored = {
                "report.json": to_json(report),
                "report.html": page,
                "history.json": history_json(points),
                "metrics.prom": metrics,
            }
            reader.write_config_map(configmap[0], configmap[1], stored)
    if html_path is not None:
        html_path.write_text(page)
    if history is not None:
        stamp = report.generated_at.strftime("%Y%m%dT%H%M%S.%fZ")  # two runs in one second keep both
        (history / f"samd-audit-{stamp}.json").write_text(to_json(report))
    if metrics_file is not None:
        metrics_file.write_text(metrics)
    if state.json:
        sys.stdout.write(to_json(report))
    else:
        print_table(report, sys.stdout)
    sys.stdout.flush()
    threshold = None if fail_on == "none" else Severity.parse(fail_on)
    return AUDIT_EXIT_FINDINGS if fails_gate(report, threshold) else 0


# --- incident response (its own module) ----------------------------------------------------------------

from samd.cli.quarantine import quarantine as _quarantine_group  # noqa: E402 - registered after the others

app.add_command(_quarantine_group)
