"""Signing and verifying models with EC keys, and refusing hostile input, each with its own message."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from samd.errors import UsageError, VerificationError
from samd.signing import (
    MAX_BUNDLE_BYTES,
    MAX_RESOURCES,
    SINGLE_FILE_RESOURCE,
    ManifestMismatchError,
    SignedFile,
    Signer,
    VerificationResult,
    Verifier,
    check_files_against_manifest,
    check_resource_name,
    inspect_signature,
    key_id,
    sign_model,
    verify_bundle,
    verify_model,
)
from tests.support.signing import (
    KeyPair,
    key_bundle,
    payload_of,
    resources_for,
    rewrite_bundle,
    sha256_hex,
    statement_bytes,
    tree_snapshot,
    write_certificate_chain,
    write_key_pair,
    write_model,
)

pytestmark = pytest.mark.unit

MODEL_FILES = {
    "model.onnx": b"onnx-graph" * 1000,
    "config.json": b'{"labels": 3}',
    "tokenizer/vocab.txt": b"a\nb\nc\n",
}


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return write_key_pair(tmp_path / "keys")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "my-model", MODEL_FILES)


@pytest.fixture
def signature(tmp_path: Path, model: Path, keys: KeyPair) -> Path:
    out = tmp_path / "my-model.sig"
    sign_model(model, out, Signer.from_private_key(keys.private_pem))
    return out


@pytest.fixture
def verifier(keys: KeyPair) -> Verifier:
    return Verifier.from_public_key(keys.public_pem)


def expected_manifest_digest(files: dict[str, bytes]) -> str:
    root = hashlib.sha256()
    for name in sorted(files):
        root.update(hashlib.sha256(files[name]).digest())
    return "sha256:" + root.hexdigest()


def signed_bundle(keys: KeyPair, resources: list[dict[str, Any]], **statement: Any) -> bytes:
    return key_bundle(statement_bytes(resources, **statement), keys.key)


# --- the happy paths --------------------------------------------------------------------------


def test_directory_model_verifies_with_its_manifest(
    model: Path, signature: Path, verifier: Verifier, keys: KeyPair
) -> None:
    result = verify_model(model, signature, verifier)

    assert result.method == "key"
    assert result.signer == "sha256:" + keys.public_key_der_sha256()
    assert result.issuer is None
    assert result.model_name == "my-model"
    assert result.files == tuple(
        SignedFile(name=name, algorithm="sha256", digest=sha256_hex(MODEL_FILES[name]))
        for name in sorted(MODEL_FILES)
    )
    assert result.manifest_digest == expected_manifest_digest(MODEL_FILES)
    assert not result.is_single_file


def test_single_file_model_is_one_resource_named_dot(
    tmp_path: Path, keys: KeyPair, verifier: Verifier
) -> None:
    weights = tmp_path / "classifier.onnx"
    weights.write_bytes(b"single-file model")
    out = tmp_path / "classifier.sig"

    signing = sign_model(weights, out, Signer.from_private_key(keys.private_pem))
    result = verify_model(weights, out, verifier)

    assert SINGLE_FILE_RESOURCE == "."
    assert result.files == (
        SignedFile(name=".", algorithm="sha256", digest=sha256_hex(b"single-file model")),
    )
    assert result.is_single_file
    assert result.model_name == "classifier.onnx"
    assert (
        signing.manifest_digest
        == result.manifest_digest
        == expected_manifest_digest({".": b"single-file model"})
    )


def test_verify_bundle_returns_the_manifest_without_any_model(signature: Path, verifier: Verifier) -> None:
    from_bytes = verify_bundle(signature.read_bytes(), verifier)
    from_path = verify_bundle(signature, verifier)

    assert from_bytes == from_path
    assert from_bytes.digests() == {name: sha256_hex(content) for name, content in MODEL_FILES.items()}


def test_result_to_dict_is_json_ready(model: Path, signature: Path, verifier: Verifier) -> None:
    as_json = json.loads(json.dumps(verify_model(model, signature, verifier).to_dict()))

    assert as_json["verified"] is True
    assert as_json["method"] == "key"
    assert {entry["name"] for entry in as_json["files"]} == set(MODEL_FILES)
    assert as_json["manifest_digest"] == expected_manifest_digest(MODEL_FILES)


def test_signature_written_inside_the_model_is_left_out_of_it(
    model: Path, keys: KeyPair, verifier: Verifier
) -> None:
    inside = model / "model.sig"

    signing = sign_model(model, inside, Signer.from_private_key(keys.private_pem))
    result = verify_model(model, inside, verifier)

    assert {f.name for f in result.files} == set(MODEL_FILES)
    assert "model.sig" in signing.ignored_paths


def test_ignored_paths_are_recorded_and_not_checked(model: Path, tmp_path: Path, keys: KeyPair) -> None:
    (model / "README.md").write_text("notes")
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: main")
    out = tmp_path / "sig"

    sign_model(model, out, Signer.from_private_key(keys.private_pem), ignore_paths=["README.md"])
    (model / "README.md").write_text("changed after signing")
    result = verify_model(model, out, Verifier.from_public_key(keys.public_pem))

    assert {f.name for f in result.files} == set(MODEL_FILES)
    assert {"README.md", ".git"} <= set(result.ignored_paths)


def test_git_paths_are_signed_when_asked(model: Path, tmp_path: Path, keys: KeyPair) -> None:
    (model / ".gitattributes").write_text("*.onnx lfs")
    out = tmp_path / "sig"

    signing = sign_model(model, out, Signer.from_private_key(keys.private_pem), ignore_git_paths=False)

    assert ".gitattributes" in {f.name for f in signing.files}


def test_password_protected_key(model: Path, tmp_path: Path) -> None:
    keys = write_key_pair(tmp_path / "locked", password=b"s3cret")
    out = tmp_path / "sig"

    sign_model(model, out, Signer.from_private_key(keys.private_pem, password="s3cret"))

    assert verify_model(model, out, Verifier.from_public_key(keys.public_pem)).method == "key"
    with pytest.raises(UsageError, match="wrong password"):
        Signer.from_private_key(keys.private_pem, password="guess")
    with pytest.raises(UsageError, match="is encrypted"):
        Signer.from_private_key(keys.private_pem)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_larger_curves_sign_and_verify(model: Path, tmp_path: Path, curve: ec.EllipticCurve) -> None:
    keys = write_key_pair(tmp_path / "k", curve=curve)
    out = tmp_path / "sig"

    sign_model(model, out, Signer.from_private_key(keys.private_pem))

    assert verify_model(model, out, Verifier.from_public_key(keys.public_pem)).signer == key_id(
        keys.public_pem.read_bytes()
    )


def test_key_id_is_the_sha256_of_the_der_public_key(keys: KeyPair) -> None:
    assert key_id(keys.public_pem.read_bytes()) == "sha256:" + keys.public_key_der_sha256()


# --- tampering and wrong keys ------------------------------------------------------------------


def test_tampered_file_bytes_are_refused(model: Path, signature: Path, verifier: Verifier) -> None:
    weights = model / "model.onnx"
    content = bytearray(weights.read_bytes())
    content[500] ^= 0x01
    weights.write_bytes(bytes(content))

    with pytest.raises(
        ManifestMismatchError, match=r"1 file\(s\) differ from what was signed: 'model.onnx'"
    ) as error:
        verify_model(model, signature, verifier)
    assert error.value.mismatched == ("model.onnx",)
    assert error.value.exit_code == 3


def test_signed_file_missing_is_refused(model: Path, signature: Path, verifier: Verifier) -> None:
    (model / "tokenizer" / "vocab.txt").unlink()

    with pytest.raises(
        ManifestMismatchError, match=r"1 signed file\(s\) missing from the model: 'tokenizer/vocab.txt'"
    ):
        verify_model(model, signature, verifier)


def test_unsigned_file_is_refused_unless_allowed(model: Path, signature: Path, verifier: Verifier) -> None:
    (model / "extra.py").write_text("import os")

    with pytest.raises(ManifestMismatchError, match=r"not covered by the signature: 'extra.py'") as error:
        verify_model(model, signature, verifier)
    assert error.value.unsigned == ("extra.py",)

    result = verify_model(model, signature, verifier, allow_unsigned_files=True)
    assert "extra.py" not in result.digests()


def test_signature_of_another_model_is_refused(tmp_path: Path, signature: Path, verifier: Verifier) -> None:
    other = write_model(tmp_path / "other", {"other.bin": b"x", "model.onnx": b"different"})

    with pytest.raises(ManifestMismatchError, match=r"different set of files.*signature of another model"):
        verify_model(other, signature, verifier)


def test_signature_of_another_model_with_the_same_names_is_refused(
    tmp_path: Path, signature: Path, verifier: Verifier
) -> None:
    lookalike = write_model(
        tmp_path / "lookalike", {name: b"other " + content for name, content in MODEL_FILES.items()}
    )

    with pytest.raises(ManifestMismatchError, match=r"none of the 3 files match.*signature of another model"):
        verify_model(lookalike, signature, verifier)


def test_wrong_public_key_is_refused(model: Path, signature: Path, tmp_path: Path) -> None:
    stranger = write_key_pair(tmp_path / "stranger")

    with pytest.raises(VerificationError, match="made with another key, not the given public key sha256:"):
        verify_model(model, signature, Verifier.from_public_key(stranger.public_pem))


def test_flipped_byte_in_the_signature_is_refused(signature: Path, verifier: Verifier) -> None:
    def flip(document: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(document["dsseEnvelope"]["signatures"][0]["sig"]))
        raw[-3] ^= 0x01
        document["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()

    with pytest.raises(VerificationError, match="does not verify with public key"):
        verify_bundle(rewrite_bundle(signature.read_bytes(), flip), verifier)


def test_altered_statement_is_refused(model: Path, signature: Path, verifier: Verifier) -> None:
    """An attacker swaps in the digest of their own weights without re-signing."""
    (model / "model.onnx").write_bytes(b"backdoored weights")
    statement = payload_of(signature.read_bytes())
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "model.onnx":
            resource["digest"] = sha256_hex(b"backdoored weights")

    def swap(document: dict[str, Any]) -> None:
        document["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    tampered = signature.parent / "tampered.sig"
    tampered.write_bytes(rewrite_bundle(signature.read_bytes(), swap))
    with pytest.raises(VerificationError, match="does not verify"):
        verify_model(model, tampered, verifier)


def test_forged_key_hint_does_not_help_another_signer(
    model: Path, signature: Path, verifier: Verifier, tmp_path: Path
) -> None:
    """The hint is only a label: a bundle signed by another key but carrying our hint still fails."""
    attacker = write_key_pair(tmp_path / "attacker")
    forged = key_bundle(statement_bytes(resources_for(MODEL_FILES)), attacker.key)
    real_hint = json.loads(signature.read_bytes())["verificationMaterial"]["publicKey"]["hint"]

    def relabel(document: dict[str, Any]) -> None:
        document["verificationMaterial"]["publicKey"]["hint"] = real_hint

    with pytest.raises(VerificationError, match="does not verify with public key"):
        verify_bundle(rewrite_bundle(forged, relabel), verifier)


# --- hostile manifests --------------------------------------------------------------------------

HOSTILE_NAMES = [
    ("/etc/passwd", "absolute path"),
    ("../outside", "climbs out of the model"),
    ("weights/../../outside", "climbs out of the model"),
    ("a//b", "empty or '.' path component"),
    ("a/./b", "empty or '.' path component"),
    ("dir/", "empty or '.' path component"),
    ("", "empty file name"),
    ("a\\b", "backslash"),
    ("line\nbreak", "control character"),
    ("x" * 5000, "longer than 4096 bytes"),
    ("d/" + "y" * 300, "component longer than 255 bytes"),
]


@pytest.mark.parametrize(("name", "reason"), HOSTILE_NAMES, ids=[reason for _, reason in HOSTILE_NAMES])
def test_hostile_resource_names_are_refused(
    keys: KeyPair, verifier: Verifier, name: str, reason: str
) -> None:
    resources = [
        {"name": "config.json", "algorithm": "sha256", "digest": sha256_hex(b"{}")},
        {"name": name, "algorithm": "sha256", "digest": sha256_hex(b"evil")},
    ]
    with pytest.raises(VerificationError, match=reason):
        verify_bundle(signed_bundle(keys, resources), verifier)


def test_dot_is_only_allowed_as_the_single_file(keys: KeyPair, verifier: Verifier) -> None:
    resources = [
        {"name": ".", "algorithm": "sha256", "digest": sha256_hex(b"a")},
        {"name": "b", "algorithm": "sha256", "digest": sha256_hex(b"b")},
    ]
    with pytest.raises(VerificationError, match=r"empty or '.' path component"):
        verify_bundle(signed_bundle(keys, resources), verifier)


def test_duplicate_names_are_refused(keys: KeyPair, verifier: Verifier) -> None:
    resources = [{"name": "w.bin", "algorithm": "sha256", "digest": sha256_hex(x)} for x in (b"1", b"2")]
    with pytest.raises(VerificationError, match=r"lists 'w.bin' twice"):
        verify_bundle(signed_bundle(keys, resources), verifier)


def test_a_name_both_file_and_directory_is_refused(keys: KeyPair, verifier: Verifier) -> None:
    resources = [
        {"name": "w", "algorithm": "sha256", "digest": sha256_hex(b"1")},
        {"name": "w/inner.bin", "algorithm": "sha256", "digest": sha256_hex(b"2")},
    ]
    with pytest.raises(VerificationError, match="'w' both as a file and as a directory"):
        verify_bundle(signed_bundle(keys, resources), verifier)


def test_manifest_with_too_many_files_is_refused(keys: KeyPair, verifier: Verifier) -> None:
    digest = sha256_hex(b"")
    resources = [{"name": f"f{i}", "algorithm": "sha256", "digest": digest} for i in range(MAX_RESOURCES + 1)]
    bundle = signed_bundle(keys, resources)
    assert len(bundle) < MAX_BUNDLE_BYTES  # refused for its file count, not its size

    with pytest.raises(
        VerificationError, match=f"lists {MAX_RESOURCES + 1} files, more than the {MAX_RESOURCES}"
    ):
        verify_bundle(bundle, verifier)


def test_oversized_bundle_is_refused_before_parsing(tmp_path: Path, verifier: Verifier) -> None:
    huge = b" " * (MAX_BUNDLE_BYTES + 1)
    path = tmp_path / "huge.sig"
    path.write_bytes(huge)

    with pytest.raises(VerificationError, match="larger than the 16777216 allowed"):
        verify_bundle(huge, verifier)
    with pytest.raises(VerificationError, match="larger than the 16777216 allowed"):
        verify_bundle(path, verifier)


def test_empty_manifest_is_refused(keys: KeyPair, verifier: Verifier) -> None:
    with pytest.raises(VerificationError, match="lists no files"):
        verify_bundle(signed_bundle(keys, []), verifier)


def test_inconsistent_subject_digest_is_refused(keys: KeyPair, verifier: Verifier) -> None:
    with pytest.raises(VerificationError, match="inconsistent: its subject digest does not match"):
        verify_bundle(signed_bundle(keys, resources_for(MODEL_FILES), subject_digest="0" * 64), verifier)


@pytest.mark.parametrize(
    ("serialization", "reason"),
    [
        (
            {"method": "shards", "hash_type": "sha256", "shard_size": 10, "allow_symlinks": False},
            "'shards' serial",
        ),
        (
            {"method": "files", "hash_type": "blake3", "allow_symlinks": False},
            "'blake3'; SAMD accepts only sha256",
        ),
        (
            {"method": "files", "hash_type": "sha256", "allow_symlinks": "yes"},
            "allow_symlinks is not a boolean",
        ),
        (
            {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": ["../up"]},
            "ignored path that climbs out",
        ),
        (
            {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": [""]},
            "empty ignored path",
        ),
    ],
)
def test_unsupported_or_hostile_serialization_is_refused(
    keys: KeyPair, verifier: Verifier, serialization: dict[str, Any], reason: str
) -> None:
    with pytest.raises(VerificationError, match=reason):
        verify_bundle(signed_bundle(keys, resources_for(MODEL_FILES), serialization=serialization), verifier)


def test_legacy_and_foreign_predicates_are_refused(keys: KeyPair, verifier: Verifier) -> None:
    resources = resources_for(MODEL_FILES)
    with pytest.raises(VerificationError, match=r"pre-1.0 model_signing format"):
        verify_bundle(
            signed_bundle(keys, resources, predicate_type="https://model_signing/Digests/v0.1"), verifier
        )
    with pytest.raises(VerificationError, match="not an OpenSSF model signature"):
        verify_bundle(
            signed_bundle(keys, resources, predicate_type="https://slsa.dev/provenance/v1"), verifier
        )


def test_payload_that_is_not_in_toto_is_refused(keys: KeyPair, verifier: Verifier) -> None:
    bundle = key_bundle(statement_bytes(resources_for(MODEL_FILES)), keys.key, payload_type="text/plain")
    with pytest.raises(VerificationError, match="'text/plain', not an in-toto statement"):
        verify_bundle(bundle, verifier)


@pytest.mark.parametrize(
    ("bundle", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"mediaType": "text/plain"}', "not a Sigstore bundle"),
        (
            json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}).encode(),
            "verificationMaterial",
        ),
        (
            json.dumps(
                {
                    "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                    "verificationMaterial": {"publicKey": {"hint": "00"}},
                    "messageSignature": {},
                }
            ).encode(),
            "no DSSE envelope",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ],
    ids=["garbage", "array", "media type", "no material", "message signature", "deep nesting"],
)
def test_malformed_bundles_are_refused(verifier: Verifier, bundle: bytes, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason):
        verify_bundle(bundle, verifier)


def test_envelope_with_two_signatures_is_refused(signature: Path, verifier: Verifier) -> None:
    def duplicate(document: dict[str, Any]) -> None:
        document["dsseEnvelope"]["signatures"] *= 2

    with pytest.raises(VerificationError, match="exactly one signature, it holds 2"):
        verify_bundle(rewrite_bundle(signature.read_bytes(), duplicate), verifier)


def test_bundle_without_key_hint_is_refused_as_legacy(signature: Path, verifier: Verifier) -> None:
    def drop_hint(document: dict[str, Any]) -> None:
        document["verificationMaterial"]["publicKey"] = {}

    with pytest.raises(VerificationError, match="no public-key hint"):
        verify_bundle(rewrite_bundle(signature.read_bytes(), drop_hint), verifier)


def test_key_signature_checked_with_certificate_roots_says_what_to_use(
    signature: Path, tmp_path: Path
) -> None:
    roots = Verifier.from_certificate_roots([write_certificate_chain(tmp_path / "ca").root])
    with pytest.raises(
        VerificationError, match=r"made with a private key.*certificate roots was given"
    ) as error:
        verify_bundle(signature, roots)
    assert error.value.hint == "verify it with a public key"


# --- symlinks and special files ------------------------------------------------------------------


def test_symlink_leaving_the_model_is_refused_at_verify(
    model: Path, signature: Path, verifier: Verifier, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("outside")
    (model / "link.txt").symlink_to(outside)

    with pytest.raises(VerificationError, match=r"'link.txt' that points outside the model directory"):
        verify_model(model, signature, verifier, allow_unsigned_files=True)


def test_symlink_leaving_the_model_is_refused_at_signing_and_nothing_is_written(
    model: Path, keys: KeyPair, tmp_path: Path
) -> None:
    (model / "escape").symlink_to("/etc/hostname")
    out = tmp_path / "out.sig"

    with pytest.raises(UsageError, match="'escape' that points outside the model directory"):
        sign_model(model, out, Signer.from_private_key(keys.private_pem))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.sig")] == []


def test_internal_symlink_needs_allow_symlinks(model: Path, keys: KeyPair, tmp_path: Path) -> None:
    (model / "alias.onnx").symlink_to("model.onnx")
    out = tmp_path / "sig"

    with pytest.raises(UsageError, match=r"symbolic link 'alias.onnx', and symbolic links are not allowed"):
        sign_model(model, out, Signer.from_private_key(keys.private_pem))

    sign_model(model, out, Signer.from_private_key(keys.private_pem), allow_symlinks=True)
    result = verify_model(model, out, Verifier.from_public_key(keys.public_pem))
    assert result.allow_symlinks
    assert result.digests()["alias.onnx"] == sha256_hex(MODEL_FILES["model.onnx"])


def test_internal_symlink_refused_when_the_signature_did_not_allow_links(
    model: Path, signature: Path, verifier: Verifier
) -> None:
    (model / "alias.onnx").symlink_to("model.onnx")

    with pytest.raises(VerificationError, match="symbolic links are not allowed"):
        verify_model(model, signature, verifier, allow_unsigned_files=True)


def test_symlink_to_a_directory_is_refused(model: Path, signature: Path, verifier: Verifier) -> None:
    (model / "loop").symlink_to(model / "tokenizer", target_is_directory=True)

    with pytest.raises(VerificationError, match="symbolic link to a directory, 'loop'"):
        verify_model(model, signature, verifier)


def test_fifo_in_the_model_is_refused(model: Path, signature: Path, verifier: Verifier) -> None:
    os.mkfifo(model / "pipe")

    with pytest.raises(VerificationError, match="'pipe', which is not a regular file"):
        verify_model(model, signature, verifier)


def test_file_names_we_would_refuse_are_refused_at_signing(
    model: Path, keys: KeyPair, tmp_path: Path
) -> None:
    (model / "new\nline.txt").write_text("x")
    out = tmp_path / "sig"

    with pytest.raises(UsageError, match="the model has a control character"):
        sign_model(model, out, Signer.from_private_key(keys.private_pem))
    assert not out.exists()


# --- signing input errors leave nothing behind ----------------------------------------------------


def test_failed_signing_keeps_the_previous_signature(model: Path, signature: Path, keys: KeyPair) -> None:
    before = signature.read_bytes()
    os.mkfifo(model / "pipe")

    with pytest.raises(UsageError, match="not a regular file"):
        sign_model(model, signature, Signer.from_private_key(keys.private_pem))
    assert signature.read_bytes() == before


def test_signing_errors_are_usage_errors(tmp_path: Path, keys: KeyPair, model: Path) -> None:
    signer = Signer.from_private_key(keys.private_pem)
    with pytest.raises(UsageError, match="does not exist"):
        sign_model(tmp_path / "absent", tmp_path / "s.sig", signer)
    with pytest.raises(UsageError, match=r"for the signature, .* does not exist"):
        sign_model(model, tmp_path / "no-dir" / "s.sig", signer)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="holds no files to sign"):
        sign_model(empty, tmp_path / "e.sig", signer)
    with pytest.raises(UsageError, match="the signature path is the model itself"):
        sign_model(model / "model.onnx", model / "model.onnx", signer)
    with pytest.raises(UsageError, match="climbs out"):
        sign_model(model, tmp_path / "s.sig", signer, ignore_paths=["../elsewhere"])
    assert tree_snapshot(model) == MODEL_FILES


def test_unusable_key_material_is_refused(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = tmp_path / "rsa.pem"
    rsa_pem.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    k1 = write_key_pair(tmp_path / "k1", curve=ec.SECP256K1())

    with pytest.raises(UsageError, match="not an EC private key"):
        Signer.from_private_key(rsa_pem)
    with pytest.raises(UsageError, match="curve secp256k1 is not supported"):
        Signer.from_private_key(k1.private_pem)
    with pytest.raises(UsageError, match="curve secp256k1 is not supported"):
        Verifier.from_public_key(k1.public_pem)
    with pytest.raises(UsageError, match="not a PEM or DER public key"):
        Verifier.from_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(UsageError, match="cannot read the public key"):
        Verifier.from_public_key(tmp_path / "missing.pub")
    with pytest.raises(UsageError, match="starts with 'pkcs11:'"):
        Signer.from_pkcs11_uri("token=T;object=K")


def test_pkcs11_pin_never_shows(tmp_path: Path) -> None:
    signer = Signer.from_pkcs11_uri("pkcs11:token=T;object=K?module-path=/lib/x.so&pin-value=9876")

    assert "9876" not in repr(signer)
    assert "9876" not in signer.describe()


# --- inspect and check_files_against_manifest -------------------------------------------------------


def test_inspect_shows_the_claims_marked_unverified(signature: Path, keys: KeyPair) -> None:
    info = inspect_signature(signature)

    assert info["verified"] is False
    assert "UNVERIFIED" in str(info["warning"])
    assert info["method"] == "key"
    assert info["model_name"] == "my-model"
    assert info["manifest_digest"] == expected_manifest_digest(MODEL_FILES)
    assert [f["name"] for f in info["files"]] == sorted(MODEL_FILES)  # type: ignore[attr-defined]
    pem = keys.public_pem.read_bytes()
    assert info["public_key_hint"] == hashlib.sha256(pem).hexdigest()


def test_inspect_refuses_hostile_manifests_too(keys: KeyPair) -> None:
    bundle = signed_bundle(keys, [{"name": "../x", "algorithm": "sha256", "digest": sha256_hex(b"")}])
    with pytest.raises(VerificationError, match="climbs out of the model"):
        inspect_signature(bundle)


def _result(files: dict[str, bytes], ignored: tuple[str, ...] = ()) -> VerificationResult:
    return VerificationResult(
        method="key",
        signer="sha256:00",
        issuer=None,
        manifest_digest=expected_manifest_digest(files),
        files=tuple(SignedFile(name, "sha256", sha256_hex(files[name])) for name in sorted(files)),
        model_name="m",
        ignored_paths=ignored,
    )


def test_check_files_against_manifest_accepts_the_signed_digests() -> None:
    result = _result(MODEL_FILES)
    actual = {name: sha256_hex(content).upper() for name, content in MODEL_FILES.items()}

    check_files_against_manifest(actual, result)


def test_check_files_against_manifest_reports_each_case_on_its_own() -> None:
    result = _result(MODEL_FILES, ignored=(".git",))
    good = {name: sha256_hex(content) for name, content in MODEL_FILES.items()}

    with pytest.raises(ManifestMismatchError, match=r"missing from the model: 'config.json'") as missing:
        check_files_against_manifest({k: v for k, v in good.items() if k != "config.json"}, result)
    assert missing.value.missing == ("config.json",)
    with pytest.raises(ManifestMismatchError, match=r"not covered by the signature: 'run.py'") as unsigned:
        check_files_against_manifest({**good, "run.py": sha256_hex(b"")}, result)
    assert unsigned.value.unsigned == ("run.py",)
    with pytest.raises(
        ManifestMismatchError, match=r"differ from what was signed: 'config.json'"
    ) as mismatched:
        check_files_against_manifest({**good, "config.json": sha256_hex(b"{}x")}, result)
    assert mismatched.value.mismatched == ("config.json",)

    check_files_against_manifest({**good, "run.py": sha256_hex(b"")}, result, allow_unsigned_files=True)
    check_files_against_manifest({**good, ".git/HEAD": sha256_hex(b"")}, result)


def test_check_resource_name_is_usable_for_tar_members() -> None:
    assert check_resource_name("dir/weights.bin") == "dir/weights.bin"
    with pytest.raises(VerificationError, match="climbs out"):
        check_resource_name("../../etc/cron.d/x")


def test_importing_the_package_stays_light() -> None:
    probe = (
        "import sys, samd.signing; "
        "print(sorted(m for m in ('cryptography', 'model_signing', 'sigstore', 'OpenSSL') if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(sys.executable).parent,
    )
    assert completed.stdout.strip() == "[]"


def test_verifying_a_key_signature_does_not_load_model_signing(signature: Path, keys: KeyPair) -> None:
    probe = (
        "import sys; from pathlib import Path; from samd.signing import Verifier, verify_bundle; "
        f"verify_bundle(Path({str(signature)!r}), Verifier.from_public_key(Path({str(keys.public_pem)!r}))); "
        "print(sorted(m for m in ('model_signing', 'sigstore') if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(sys.executable).parent,
    )
    assert completed.stdout.strip() == "[]"
