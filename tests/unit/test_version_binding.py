"""A version and a name mean one signed content: `samd sign --model-version` and the binding check.

Written as the attacker: the deployer controls the SecureModel (its name, spec.version, and where
spec.artifact and spec.signature point) but not the signing key. Every release the CI signed
verifies cryptographically; only the signed samd-model.json says which name and version it is.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from samd.cli import main
from samd.errors import UsageError
from samd.policy import (
    VERSION_MISMATCH,
    VERSION_NOT_SIGNED,
    TrustPolicy,
    check_version_binding,
    verify_under_policies,
    version_binding_reason,
)
from samd.signing import (
    METADATA_FILE,
    Signer,
    Verifier,
    metadata_bytes,
    metadata_digest,
    parse_metadata,
    sign_model,
    verify_bundle,
    verify_model,
)
from samd.spec import parse_trust_policy
from tests.support.signing import (
    KeyPair,
    key_bundle,
    resources_for,
    statement_bytes,
    write_key_pair,
    write_model,
)

pytestmark = pytest.mark.unit

UPSTREAM_CLI = Path(sys.executable).parent / "model_signing"


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return write_key_pair(tmp_path / "keys")


def release(root: Path, keys: KeyPair, version: str | None, name: str = "fraud-detection") -> Path:
    """One release of the model as the CI builds it: its own weights, signed as `name` `version`."""
    model = write_model(
        root / (version or "unversioned") / name, {"model.onnx": f"weights {version}".encode()}
    )
    signature = model.parent / "model.sig"
    sign_model(
        model,
        signature,
        Signer.from_private_key(keys.private_pem),
        model_version=version,
        model_name=name if version else None,
    )
    return signature


def policy(keys: KeyPair, *, require: bool | None = None, mode: str = "enforce") -> TrustPolicy:
    spec: dict[str, object] = {
        "mode": mode,
        "signers": [{"name": "ci", "publicKey": keys.public_pem.read_text()}],
    }
    if require is not None:
        spec["versionPolicy"] = {"requireSignedVersion": require}
    return TrustPolicy("models", 1, parse_trust_policy(spec))


# --- the metadata file ----------------------------------------------------------------------------


def test_metadata_is_canonical_json_known_in_advance() -> None:
    content = metadata_bytes("fraud-detection", "1.2.0")
    assert content == b'{"name":"fraud-detection","version":"1.2.0"}\n'
    assert metadata_digest("fraud-detection", "1.2.0") == hashlib.sha256(content).hexdigest()
    assert parse_metadata(content) == ("fraud-detection", "1.2.0")
    # Only the canonical bytes are metadata: any other spelling could never match the expected digest.
    assert parse_metadata(b'{"version":"1.2.0","name":"fraud-detection"}\n') is None
    assert parse_metadata(b'{"name": "fraud-detection", "version": "1.2.0"}\n') is None
    assert parse_metadata(b'{"name":"fraud-detection","version":"1.2.0"}') is None
    assert parse_metadata(b'{"name":"fraud-detection","version":"1.2.0","extra":1}\n') is None
    assert parse_metadata(b"not json") is None


def test_signing_with_a_version_signs_the_metadata_file(tmp_path: Path, keys: KeyPair) -> None:
    model = write_model(tmp_path / "fraud-detection", {"model.onnx": b"weights"})
    result = sign_model(
        model, tmp_path / "model.sig", Signer.from_private_key(keys.private_pem), model_version="1.2.0"
    )

    assert result.bound == ("fraud-detection", "1.2.0")  # the directory's name by default
    assert (model / METADATA_FILE).read_bytes() == metadata_bytes("fraud-detection", "1.2.0")
    assert {f.name: f.digest for f in result.files}[METADATA_FILE] == metadata_digest(
        "fraud-detection", "1.2.0"
    )
    verified = verify_model(model, tmp_path / "model.sig", Verifier.from_public_key(keys.public_pem))
    assert verified.metadata_digest == metadata_digest("fraud-detection", "1.2.0")
    assert check_version_binding(verified, "fraud-detection", "1.2.0") == []


def test_signing_a_release_again_as_another_version_replaces_the_metadata(
    tmp_path: Path, keys: KeyPair
) -> None:
    model = write_model(tmp_path / "out", {"model.onnx": b"weights"})
    signer = Signer.from_private_key(keys.private_pem)
    sign_model(model, tmp_path / "a.sig", signer, model_name="churn", model_version="1.0.0")
    result = sign_model(model, tmp_path / "b.sig", signer, model_name="churn", model_version="1.1.0")

    assert (model / METADATA_FILE).read_bytes() == metadata_bytes("churn", "1.1.0")
    verified = verify_bundle(tmp_path / "b.sig", Verifier.from_public_key(keys.public_pem))
    assert verified.metadata_digest == metadata_digest("churn", "1.1.0")
    assert result.bound == ("churn", "1.1.0")


def test_a_release_signed_again_without_a_version_keeps_the_one_it_carries(
    tmp_path: Path, keys: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    # E.g. a release re-signed with a new key: its samd-model.json is signed as it is, and said so.
    model = write_model(tmp_path / "release", {"model.onnx": b"weights"})
    sign_model(
        model,
        tmp_path / "a.sig",
        Signer.from_private_key(keys.private_pem),
        model_name="m",
        model_version="1.0.0",
    )
    other = write_key_pair(tmp_path / "new-keys")
    sign = [
        "sign",
        str(model),
        "--private-key",
        str(other.private_pem),
        "--signature",
        str(tmp_path / "b.sig"),
    ]
    assert main(sign) == 0
    assert "model: m version 1.0.0 (signed in samd-model.json)" in capsys.readouterr().out
    result = verify_bundle(tmp_path / "b.sig", Verifier.from_public_key(other.public_pem))
    assert check_version_binding(result, "m", "1.0.0") == []


def test_a_model_name_without_a_version_is_refused(tmp_path: Path, keys: KeyPair) -> None:
    model = write_model(tmp_path / "m", {"model.onnx": b"weights"})
    with pytest.raises(UsageError, match="--model-version"):
        sign_model(model, tmp_path / "m.sig", Signer.from_private_key(keys.private_pem), model_name="m")
    assert not (model / METADATA_FILE).exists()


def test_a_single_file_cannot_carry_a_version_and_is_refused_with_what_to_do(
    tmp_path: Path, keys: KeyPair
) -> None:
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"weights")
    with pytest.raises(UsageError, match="single file") as refused:
        sign_model(
            weights, tmp_path / "m.sig", Signer.from_private_key(keys.private_pem), model_version="1.0.0"
        )
    assert "directory" in str(refused.value.hint)
    assert not (tmp_path / "m.sig").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys", "model.onnx"]


@pytest.mark.parametrize(
    ("folder", "name", "version", "message"),
    [
        ("fraud", None, "latest", "not a semantic version"),
        ("fraud", None, "1.0", "not a semantic version"),
        ("fraud", "Fraud_Detection", "1.0.0", "not a SecureModel name"),
        ("My_Model", None, "1.0.0", "--model-name"),
    ],
)
def test_a_version_or_name_no_securemodel_could_have_is_refused(
    tmp_path: Path, keys: KeyPair, *, folder: str, name: str | None, version: str, message: str
) -> None:
    model = write_model(tmp_path / folder, {"model.onnx": b"weights"})
    with pytest.raises(UsageError) as refused:
        sign_model(
            model,
            tmp_path / "m.sig",
            Signer.from_private_key(keys.private_pem),
            model_version=version,
            model_name=name,
        )
    assert message in f"{refused.value} {refused.value.hint}"
    assert not (model / METADATA_FILE).exists()
    assert not (tmp_path / "m.sig").exists()


def test_the_metadata_file_cannot_be_ignored_when_signing_a_version(tmp_path: Path, keys: KeyPair) -> None:
    model = write_model(tmp_path / "fraud", {"model.onnx": b"weights"})
    with pytest.raises(UsageError, match="left out of the signature"):
        sign_model(
            model,
            tmp_path / "m.sig",
            Signer.from_private_key(keys.private_pem),
            model_version="1.0.0",
            ignore_paths=[METADATA_FILE],
        )


# --- the binding check, as the attacker ------------------------------------------------------------


def test_an_older_release_signed_by_the_same_ci_does_not_pass_as_the_current_version(
    tmp_path: Path, keys: KeyPair
) -> None:
    old = release(tmp_path, keys, "1.3.0")
    release(tmp_path, keys, "1.4.0")
    # The attack's premise: the old release verifies cryptographically under the policy.
    result, _ = verify_under_policies(old.read_bytes(), [policy(keys)])

    for claimed in ("1.4.0", "1.5.0"):  # spec.version kept, or raised
        problems = check_version_binding(result, "fraud-detection", claimed)
        assert len(problems) == 1
        assert f"not fraud-detection version {claimed}" in problems[0]
        assert f"--model-name fraud-detection --model-version {claimed}" in problems[0]
        assert "spec.artifact and spec.signature" in problems[0]
    assert version_binding_reason(result) == VERSION_MISMATCH
    assert check_version_binding(result, "fraud-detection", "1.3.0") == []


def test_another_models_release_does_not_pass_under_this_models_name(tmp_path: Path, keys: KeyPair) -> None:
    churn = release(tmp_path, keys, "1.4.0", name="churn")
    result = verify_bundle(churn, Verifier.from_public_key(keys.public_pem))
    assert check_version_binding(result, "churn", "1.4.0") == []
    assert "not fraud-detection version 1.4.0" in check_version_binding(result, "fraud-detection", "1.4.0")[0]


def test_a_release_signed_without_a_version_names_none(tmp_path: Path, keys: KeyPair) -> None:
    result = verify_bundle(release(tmp_path, keys, None), Verifier.from_public_key(keys.public_pem))
    problems = check_version_binding(result, "fraud-detection", "1.4.0")
    assert version_binding_reason(result) == VERSION_NOT_SIGNED
    assert len(problems) == 1
    assert f"no {METADATA_FILE} among its signed files" in problems[0]
    assert "samd sign MODEL_DIR --model-name fraud-detection --model-version 1.4.0" in problems[0]


def test_a_single_file_signature_names_no_version(tmp_path: Path, keys: KeyPair) -> None:
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"weights")
    sign_model(weights, tmp_path / "m.sig", Signer.from_private_key(keys.private_pem))
    result = verify_bundle(tmp_path / "m.sig", Verifier.from_public_key(keys.public_pem))
    assert "a single-file model" in check_version_binding(result, "fraud-detection", "1.4.0")[0]


def test_only_the_metadata_file_at_the_model_root_counts(keys: KeyPair) -> None:
    # A signed manifest listing the right content under another path binds nothing.
    files = {"model.onnx": b"w", f"sub/{METADATA_FILE}": metadata_bytes("fraud-detection", "1.4.0")}
    bundle = key_bundle(statement_bytes(resources_for(files)), keys.key)
    result = verify_bundle(bundle, Verifier.from_public_key(keys.public_pem))
    assert version_binding_reason(result) == VERSION_NOT_SIGNED
    assert check_version_binding(result, "fraud-detection", "1.4.0")


def test_the_policy_requires_a_signed_version_unless_told_otherwise(keys: KeyPair) -> None:
    assert policy(keys).spec.version_policy.require_signed_version is True
    assert policy(keys, require=False).spec.version_policy.require_signed_version is False


# --- the CLI and the upstream tools ------------------------------------------------------------------


def test_cli_signs_and_verify_prints_the_bound_version(
    tmp_path: Path, keys: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_model(tmp_path / "model", {"model.onnx": b"weights"})
    signature = tmp_path / "model.sig"
    sign = ["sign", str(model), "--private-key", str(keys.private_pem), "--signature", str(signature)]
    assert main([*sign, "--model-name", "fraud-detection", "--model-version", "1.4.0"]) == 0
    assert "model: fraud-detection version 1.4.0" in capsys.readouterr().out

    verify = ["verify", str(model), "--signature", str(signature), "--public-key", str(keys.public_pem)]
    assert main(verify) == 0
    assert "model: fraud-detection version 1.4.0 (signed in samd-model.json)" in capsys.readouterr().out
    assert main([*verify, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bound"] == {"name": "fraud-detection", "version": "1.4.0"}


def test_cli_refuses_a_version_for_a_single_file(
    tmp_path: Path, keys: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"weights")
    assert (
        main(["sign", str(weights), "--private-key", str(keys.private_pem), "--model-version", "1.0.0"]) == 2
    )
    assert "put it in a directory" in capsys.readouterr().err


def test_upstream_signature_without_the_file_verifies_but_binds_no_version(
    tmp_path: Path, keys: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_model(tmp_path / "model", {"model.onnx": b"weights"})
    signature = tmp_path / "upstream.sig"
    signed = subprocess.run(
        [
            str(UPSTREAM_CLI),
            "sign",
            "key",
            str(model),
            "--private_key",
            str(keys.private_pem),
            "--signature",
            str(signature),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert signed.returncode == 0, signed.stderr

    assert (
        main(["verify", str(model), "--signature", str(signature), "--public-key", str(keys.public_pem)]) == 0
    )
    assert "version: not signed" in capsys.readouterr().out
    result, _ = verify_under_policies(signature.read_bytes(), [policy(keys)])
    assert "--model-version 1.4.0" in check_version_binding(result, "fraud-detection", "1.4.0")[0]


def test_a_versioned_signature_verifies_upstream(tmp_path: Path, keys: KeyPair) -> None:
    model = write_model(tmp_path / "model", {"model.onnx": b"weights"})
    signature = tmp_path / "model.sig"
    sign_model(
        model, signature, Signer.from_private_key(keys.private_pem), model_name="m", model_version="2.0.0"
    )
    verified = subprocess.run(
        [
            str(UPSTREAM_CLI),
            "verify",
            "key",
            str(model),
            "--signature",
            str(signature),
            "--public_key",
            str(keys.public_pem),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
