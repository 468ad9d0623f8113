"""The `samd` CLI end to end on local files: exit codes, messages, --json, and nothing left behind."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pty
import stat
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from samd.cli import main
from samd.envelope import read_header

pytestmark = pytest.mark.unit

SAMD = str(Path(sys.executable).with_name("samd"))
COMMANDS = (
    "keygen",
    "sign",
    "verify",
    "encrypt",
    "decrypt",
    "rewrap",
    "fetch",
    "inspect",
    "reencrypt",
    "audit",
    "quarantine",
)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    capsys.readouterr()  # drop anything printed before
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


@dataclass(frozen=True)
class Workspace:
    """A signed model, its encrypted artifact, and the keys, all made with the CLI itself."""

    root: Path
    model: Path
    keyset: Path
    private_key: Path
    public_key: Path
    signature: Path
    artifact: Path

    @property
    def key(self) -> str:
        return f"local:{self.keyset}"

    def fetch_argv(self, output: Path, source: str | Path | None = None) -> list[str]:
        """`samd fetch` of this workspace's artifact (or `source`) with its signature, public key and keyset."""
        return [
            "fetch",
            str(self.artifact if source is None else source),
            "--signature",
            str(self.signature),
            "--public-key",
            str(self.public_key),
            "--key",
            self.key,
            "--output",
            str(output),
        ]


def write_model(model: Path) -> dict[str, bytes]:
    files = {
        "weights.bin": os.urandom(3 * (1 << 20) + 12345),  # a few segments of 1 MiB
        "config.json": b'{"layers": 3}\n',
        "tokenizer/vocab.txt": b"a\nb\nc\n",
    }
    for name, data in files.items():
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_bytes(data)
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_workspace(capsys: pytest.CaptureFixture[str], root: Path) -> Workspace:
    model = root / "model"
    model.mkdir(parents=True)
    write_model(model)
    workspace = Workspace(
        root=root,
        model=model,
        keyset=root / "keys.json",
        private_key=root / "signer.pem",
        public_key=root / "signer.pub.pem",
        signature=root / "model.sig",
        artifact=root / "model.samd",
    )
    assert run(capsys, "keygen", workspace.key, "--signing-key", workspace.private_key).code == 0
    assert run(capsys, "sign", model, "--private-key", workspace.private_key).code == 0
    assert run(capsys, "encrypt", model, "--key", workspace.key, "--output", workspace.artifact).code == 0
    return workspace


@pytest.fixture
def workspace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Workspace:
    return make_workspace(capsys, tmp_path / "ws")


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def leftovers(directory: Path) -> list[str]:
    return sorted(
        entry.name for entry in directory.iterdir() if "staging" in entry.name or "partial" in entry.name
    )


# --- the basics ------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "--version")
    assert result.code == 0
    assert result.out.strip().startswith("samd ")


def test_no_arguments_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys)
    assert result.code == 0
    for command in COMMANDS:
        assert command in result.out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str], command: str) -> None:
    result = run(capsys, command, "--help")
    assert result.code == 0
    assert "Examples:" in result.out
    assert f"samd {command}" in result.out.split("Examples:")[1]


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "fetch", "--no-such-option")
    assert result.code == 2
    first_line = result.err.splitlines()[0]
    assert first_line.startswith("error: No such option")
    assert "--no-such-option" in first_line
    assert result.err.splitlines()[1].startswith("hint: run `samd fetch --help`")


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "frobnicate")
    assert result.code == 2
    assert "error: No such command 'frobnicate'" in result.err


def test_missing_required_option_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run(capsys, "encrypt", tmp_path, "--key", "local:k.json")
    assert result.code == 2
    assert "Missing option '--output'" in result.err


def test_the_console_script_prints_one_line_errors_without_traceback(tmp_path: Path) -> None:
    completed = subprocess.run(
        [SAMD, "decrypt", str(tmp_path / "missing.samd"), "--key", "local:/nope.json", "--output", "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.startswith("error: local keyset /nope.json does not exist")
    assert completed.stdout == ""


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run(capsys, "--debug", "inspect", tmp_path / "missing.samd")
    assert result.code == 6
    assert "Traceback" in result.err
    assert "error: no such file" in result.err


# --- keygen ----------------------------------------------------------------------------------


def test_keygen_writes_a_private_keyset_and_a_signing_key_pair(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = run(
        capsys,
        "keygen",
        f"local:{tmp_path / 'keys.json'}",
        "--signing-key",
        tmp_path / "signer.pem",
        "--json",
    )

    assert result.code == 0
    document = result.json()
    assert document["key"]["provider"] == "local"
    assert document["key"]["current_version"] == "1"
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "signer.pem").stat().st_mode) == 0o600
    private = serialization.load_pem_private_key((tmp_path / "signer.pem").read_bytes(), None)
    public_pem = (tmp_path / "signer.pub.pem").read_bytes()
    assert (
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == public_pem
    )
    der = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert document["signing_key"]["key_id"] == "sha256:" + hashlib.sha256(der).hexdigest()
    assert "BEGIN" not in result.out  # no key material on stdout


def test_keygen_refuses_to_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "signer.pem").write_text("precious")
    result = run(capsys, "keygen", "--signing-key", tmp_path / "signer.pem")
    assert result.code == 2
    assert "already exists" in result.err
    assert (tmp_path / "signer.pem").read_text() == "precious"
    assert not (tmp_path / "signer.pub.pem").exists()


def test_keygen_needs_something_to_create(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "keygen")
    assert result.code == 2
    assert "error: nothing to create" in result.err


def test_keygen_refuses_remote_key_creation(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "keygen", "aws-kms://alias/models?region=eu-west-1")
    assert result.code == 2
    assert "creates local keysets only" in result.err


# --- sign and verify -------------------------------------------------------------------------


def test_sign_and_verify_report_the_same_manifest(
    capsys: pytest.CaptureFixture[str], workspace: Workspace
) -> None:
    result = run(capsys, "verify", workspace.model, "--public-key", workspace.public_key, "--json")

    assert result.code == 0
    document = result.json()
    assert document["verified"] is True
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in tree(workspace.model).items()}
    assert {entry["name"]: entry["digest"] for entry in document["files"]} == expected


def test_verify_refuses_a_modified_model(capsys: pytest.CaptureFixture[str], workspace: Workspace) -> None:
    (workspace.model / "config.json").write_text('{"layers": 4}\n')
    result = run(capsys, "verify", workspace.model, "--public-key", workspace.public_key)
    assert result.code == 3
    assert "differ from what was signed" in result.err
    assert "config.json" in result.err


def test_verify_refuses_a_tampered_signature(
    capsys: pytest.CaptureFixture[str], workspace: Workspace
) -> None:
    bundle = json.loads(workspace.signature.read_text())
    signature = bundle["dsseEnvelope"]["signatures"][0]
    signature["sig"] = ("A" if signature["sig"][0] != "A" else "B") + signature["sig"][1:]
    workspace.signature.write_text(json.dumps(bundle))
    result = run(capsys, "verify", workspace.model, "--public-key", workspace.public_key)
    assert result.code == 3
    assert result.err.startswith("error: ")


def test_verify_refuses_another_key(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    assert run(capsys, "keygen", "--signing-key", tmp_path / "other.pem").code == 0
    result = run(capsys, "verify", workspace.model, "--public-key", tmp_path / "other.pub.pem")
    assert result.code == 3


def test_verify_needs_exactly_one_way_to_verify(
    capsys: pytest.CaptureFixture[str], workspace: Workspace
) -> None:
    none = run(capsys, "verify", workspace.model)
    both = run(
        capsys,
        "verify",
        workspace.model,
        "--public-key",
        workspace.public_key,
        "--certificate-root",
        workspace.public_key,
    )
    assert none.code == both.code == 2
    assert "exactly one of --public-key" in none.err
    assert "--public-key, --certificate-root" in both.err


def test_verify_names_a_missing_model_or_signature(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    missing_model = run(capsys, "verify", tmp_path / "nope", "--public-key", workspace.public_key)
    missing_signature = run(
        capsys,
        "verify",
        workspace.model,
        "--public-key",
        workspace.public_key,
        "--signature",
        tmp_path / "no.sig",
    )
    assert missing_model.code == missing_signature.code == 2
    assert "does not exist" in missing_model.err
    assert "no.sig does not exist" in missing_signature.err


# --- encrypt, decrypt, rewrap, inspect -------------------------------------------------------


def test_directory_round_trip(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    result = run(
        capsys, "decrypt", workspace.artifact, "--key", workspace.key, "--output", tmp_path / "out", "--json"
    )
    assert result.code == 0
    assert tree(tmp_path / "out") == tree(workspace.model)
    assert result.json()["content"] == "tar"
    assert leftovers(tmp_path) == []


def test_single_file_round_trip(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    source = workspace.model / "weights.bin"
    artifact = tmp_path / "weights.samd"
    encrypted = run(capsys, "encrypt", source, "--key", workspace.key, "--output", artifact, "--json")
    decrypted = run(capsys, "decrypt", artifact, "--key", workspace.key, "--output", tmp_path / "weights.bin")

    assert encrypted.code == decrypted.code == 0
    assert encrypted.json()["header"]["attributes"] == {"samd.content": "file", "samd.name": "weights.bin"}
    assert (tmp_path / "weights.bin").read_bytes() == source.read_bytes()
    assert (
        hashlib.sha256(artifact.read_bytes()).hexdigest() != hashlib.sha256(source.read_bytes()).hexdigest()
    )


def test_encrypt_refuses_to_replace_an_artifact(
    capsys: pytest.CaptureFixture[str], workspace: Workspace
) -> None:
    before = workspace.artifact.read_bytes()
    result = run(capsys, "encrypt", workspace.model, "--key", workspace.key, "--output", workspace.artifact)
    assert result.code == 2
    assert "already exists" in result.err
    assert workspace.artifact.read_bytes() == before


def test_encrypt_names_a_missing_model_and_a_bad_key_uri(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    missing = run(
        capsys, "encrypt", tmp_path / "nope", "--key", workspace.key, "--output", tmp_path / "a.samd"
    )
    bad_key = run(capsys, "encrypt", workspace.model, "--key", "vault://x", "--output", tmp_path / "a.samd")
    assert missing.code == bad_key.code == 2
    assert "nope does not exist" in missing.err
    assert "unknown key URI" in bad_key.err
    assert not (tmp_path / "a.samd").exists()
    assert leftovers(tmp_path) == []


def test_decrypt_with_the_wrong_key_writes_nothing(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    assert run(capsys, "keygen", f"local:{tmp_path / 'other.json'}").code == 0
    result = run(
        capsys,
        "decrypt",
        workspace.artifact,
        "--key",
        f"local:{tmp_path / 'other.json'}",
        "--output",
        tmp_path / "out",
    )
    assert result.code == 5
    assert "wrapped by local key" in result.err
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_decrypt_of_a_tampered_artifact_writes_nothing(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    flip_byte(workspace.artifact, workspace.artifact.stat().st_size // 2)
    result = run(capsys, "decrypt", workspace.artifact, "--key", workspace.key, "--output", tmp_path / "out")
    assert result.code == 4
    assert "failed authentication" in result.err
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_decrypt_of_a_truncated_artifact_writes_nothing(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    data = workspace.artifact.read_bytes()
    workspace.artifact.write_bytes(data[: len(data) - 5000])
    result = run(capsys, "decrypt", workspace.artifact, "--key", workspace.key, "--output", tmp_path / "out")
    assert result.code == 4
    assert "truncated" in result.err
    assert not (tmp_path / "out").exists()


def test_rotate_then_rewrap_changes_only_the_header(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    with workspace.artifact.open("rb") as handle:
        old_header = read_header(handle)
    old_body = workspace.artifact.read_bytes()[old_header.size :]

    rotated = run(capsys, "keygen", workspace.key, "--rotate", "--json")
    rewrapped = run(capsys, "rewrap", workspace.artifact, "--key", workspace.key, "--json")
    again = run(capsys, "rewrap", workspace.artifact, "--key", workspace.key, "--json")

    assert rotated.code == rewrapped.code == again.code == 0
    assert rotated.json()["key"]["current_version"] == "2"
    assert rewrapped.json()["rewrapped"] is True
    assert rewrapped.json()["previous"]["key"]["version"] == "1"
    assert rewrapped.json()["header"]["key"]["version"] == "2"
    assert again.json()["rewrapped"] is False
    with workspace.artifact.open("rb") as handle:
        new_header = read_header(handle)
    assert workspace.artifact.read_bytes()[new_header.size :] == old_body
    decrypted = run(
        capsys, "decrypt", workspace.artifact, "--key", workspace.key, "--output", tmp_path / "out"
    )
    assert decrypted.code == 0
    assert tree(tmp_path / "out") == tree(workspace.model)


def test_inspect_shows_an_artifact_header_without_a_key(
    capsys: pytest.CaptureFixture[str], workspace: Workspace
) -> None:
    text = run(capsys, "inspect", workspace.artifact)
    document = run(capsys, "inspect", workspace.artifact, "--json").json()
    keyset = json.loads(workspace.keyset.read_text())

    assert text.code == 0
    assert document["kind"] == "artifact"
    assert document["header"]["key"]["provider"] == "local"
    assert document["header"]["key"]["id"] == keyset["key_id"]
    assert document["header"]["key"]["version"] == "1"
    assert document["header"]["attributes"] == {"samd.content": "tar"}
    assert keyset["key_id"] in text.out


def test_inspect_shows_a_signature_as_unverified(
    capsys: pytest.CaptureFixture[str], workspace: Workspace
) -> None:
    document = run(capsys, "inspect", workspace.signature, "--json").json()
    text = run(capsys, "inspect", workspace.signature)

    assert document["kind"] == "signature"
    assert document["verified"] is False
    assert sorted(entry["name"] for entry in document["files"]) == sorted(tree(workspace.model))
    assert "NOT verified" in text.out


def test_inspect_refuses_other_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = run(capsys, "inspect", tmp_path / "notes.txt")
    assert result.code == 2
    assert "neither a SAMD artifact nor a signature bundle" in result.err


def test_json_errors_are_parseable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run(capsys, "inspect", tmp_path / "missing.samd", "--json")
    assert result.code == 6
    error = result.json()["error"]
    assert error["exit_code"] == 6
    assert error["type"] == "StorageError"
    assert "no such file" in error["message"]


def test_progress_bar_only_on_a_terminal(workspace: Workspace, tmp_path: Path) -> None:
    def encrypt(output: Path, stderr: int) -> None:
        subprocess.run(
            [SAMD, "encrypt", str(workspace.model), "--key", workspace.key, "--output", str(output)],
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            check=True,
            cwd=tmp_path,
        )

    primary, secondary = pty.openpty()
    fcntl.ioctl(
        secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0)
    )  # a real terminal has a size
    try:
        encrypt(tmp_path / "tty.samd", secondary)
        os.close(secondary)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once everything written has been read
            while chunk := os.read(primary, 65536):
                shown += chunk
    finally:
        os.close(primary)
    with (tmp_path / "stderr.txt").open("w") as quiet:
        encrypt(tmp_path / "file.samd", quiet.fileno())

    assert b"encrypt:" in shown
    assert b"B/s" in shown  # a byte-rate progress bar
    assert (tmp_path / "stderr.txt").read_text() == ""


def test_samd_serve_in_json_mode_reports_a_failure_to_start_as_a_json_line(tmp_path: Path) -> None:
    """What the model pod's server logs when it cannot start: JSON lines only, the error included."""
    pem = tmp_path / "any.pem"
    pem.write_text("not used: the model directory is checked first\n")
    files = ("--tls-cert", pem, "--tls-key", pem, "--client-ca", pem, "--public-key", pem)
    identity = ("--client-organization", "samd:ns:m", "--allowed-client", "c")
    model = ("--model-dir", tmp_path / "absent", "--model-name", "m")
    process = subprocess.run(
        [SAMD, "serve", *model, *files, *identity, "--log-format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert process.returncode == 2
    lines = [json.loads(line) for line in process.stderr.splitlines()]
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1, process.stderr
    assert errors[0]["component"] == "server"
    assert f"no model directory {tmp_path / 'absent'}" in errors[0]["message"]
    assert "samd fetch" in errors[0]["hint"]
    assert (errors[0]["error"], errors[0]["exit_code"]) == ("UsageError", 2)
