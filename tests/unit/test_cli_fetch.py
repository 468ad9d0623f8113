"""`samd fetch`: only a model whose every file matches the signed manifest reaches the output.

Each failure case asserts the exit code, the message, and that nothing of the model (and no
staging directory) is left in or beside the output directory.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import resource
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from samd.envelope import encrypt_stream
from samd.keys import LocalKeyProvider
from tests.support.signing import write_certificate_chain
from tests.unit.test_cli import SAMD, Result, Workspace, flip_byte, make_workspace, run, tree, write_model

pytestmark = pytest.mark.unit


@pytest.fixture
def workspace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Workspace:
    return make_workspace(capsys, tmp_path / "ws")


def fetch(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, output: Path, *extra: str | Path
) -> Result:
    return run(capsys, *workspace.fetch_argv(output), *extra)


def reencrypt(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, *extra: str, source: Path | None = None
) -> None:
    """Replace the workspace's artifact by an encryption of its model as it is now (or of `source`)."""
    workspace.artifact.unlink()
    model = workspace.model if source is None else source
    assert (
        run(capsys, "encrypt", model, "--key", workspace.key, "--output", workspace.artifact, *extra).code
        == 0
    )


def assert_nothing_left(output: Path) -> None:
    """The output holds nothing of the model: it is absent, or an existing directory left empty."""
    if output.exists():
        assert list(output.iterdir()) == []
    siblings = [entry.name for entry in output.parent.iterdir() if "staging" in entry.name]
    assert siblings == []


def test_fetch_writes_the_verified_model(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    output = tmp_path / "serving" / "model"
    output.parent.mkdir()

    result = fetch(capsys, workspace, output, "--json")

    assert result.code == 0, result.err
    assert tree(output) == tree(workspace.model)
    document = result.json()
    assert {entry["name"]: entry["digest"] for entry in document["files"]} == {
        name: hashlib.sha256(data).hexdigest() for name, data in tree(workspace.model).items()
    }
    assert (
        document["manifest_digest"]
        == json.loads(run(capsys, "inspect", workspace.signature, "--json").out)["manifest_digest"]
    )
    assert sorted(entry.name for entry in output.parent.iterdir()) == ["model"]


def test_fetch_into_an_existing_empty_directory(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"  # an emptyDir mount: it exists, and its parent may be read-only
    volume.mkdir()

    result = fetch(capsys, workspace, volume)

    assert result.code == 0, result.err
    assert tree(volume) == tree(workspace.model)
    assert sorted(entry.name for entry in volume.iterdir()) == ["config.json", "tokenizer", "weights.bin"]
    assert "fetched 3 verified file(s)" in result.out


def test_fetch_refuses_a_directory_that_holds_files(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "old.bin").write_text("previous model")

    result = fetch(capsys, workspace, volume)

    assert result.code == 2
    assert "is not empty (it holds old.bin)" in result.err
    assert "--force" in result.err
    assert [entry.name for entry in volume.iterdir()] == ["old.bin"]


def test_fetch_force_replaces_the_contents_after_verifying(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    (volume / "old").mkdir(parents=True)
    (volume / "old" / "weights.bin").write_text("previous model")

    result = fetch(capsys, workspace, volume, "--force")

    assert result.code == 0, result.err
    assert tree(volume) == tree(workspace.model)


def test_fetch_force_keeps_the_old_contents_when_the_new_model_fails(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "old.bin").write_text("previous model")
    flip_byte(workspace.artifact, workspace.artifact.stat().st_size // 2)

    result = fetch(capsys, workspace, volume, "--force")

    assert result.code == 4
    assert tree(volume) == {"old.bin": b"previous model"}


def test_fetch_removes_a_staging_directory_left_by_a_killed_run(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    stale = volume / ".samd-staging-killed"
    stale.mkdir(parents=True)
    (stale / "weights.bin").write_bytes(b"half")

    result = fetch(capsys, workspace, volume)

    assert result.code == 0, result.err
    assert tree(volume) == tree(workspace.model)


def test_fetch_of_a_single_file_model(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    model_file = workspace.model / "weights.bin"
    artifact, signature = tmp_path / "weights.samd", tmp_path / "weights.sig"
    assert (
        run(capsys, "sign", model_file, "--private-key", workspace.private_key, "--signature", signature).code
        == 0
    )
    assert run(capsys, "encrypt", model_file, "--key", workspace.key, "--output", artifact).code == 0

    result = run(
        capsys,
        "fetch",
        artifact,
        "--signature",
        signature,
        "--public-key",
        workspace.public_key,
        "--key",
        workspace.key,
        "--output",
        tmp_path / "out",
    )

    assert result.code == 0, result.err
    assert tree(tmp_path / "out") == {"weights.bin": model_file.read_bytes()}


def test_fetch_tries_each_key_given(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    assert run(capsys, "keygen", f"local:{tmp_path / 'other.json'}").code == 0
    result = fetch(capsys, workspace, tmp_path / "out", "--key", f"local:{tmp_path / 'other.json'}")
    assert result.code == 0, result.err


# --- failures: each with its code and message, and nothing left ------------------------------


def test_fetch_refuses_a_tampered_artifact(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    # Late in the body: the first files were already written to staging when the failure is found.
    flip_byte(workspace.artifact, workspace.artifact.stat().st_size - 100_000)
    output = tmp_path / "out"

    result = fetch(capsys, workspace, output)

    assert result.code == 4
    assert "failed authentication" in result.err
    assert_nothing_left(output)


def test_fetch_refuses_a_truncated_artifact(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    data = workspace.artifact.read_bytes()
    workspace.artifact.write_bytes(data[: len(data) - (1 << 20) - 16])  # a whole segment gone
    output = tmp_path / "out"

    result = fetch(capsys, workspace, output)

    assert result.code == 4
    assert "truncated" in result.err
    assert_nothing_left(output)


def test_fetch_refuses_the_wrong_key(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    assert run(capsys, "keygen", f"local:{tmp_path / 'other.json'}").code == 0
    output = tmp_path / "out"

    result = run(
        capsys,
        "fetch",
        workspace.artifact,
        "--signature",
        workspace.signature,
        "--public-key",
        workspace.public_key,
        "--key",
        f"local:{tmp_path / 'other.json'}",
        "--output",
        output,
    )

    assert result.code == 5
    assert "wrapped by local key" in result.err
    assert_nothing_left(output)


def test_fetch_refuses_a_tampered_signature(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    bundle = json.loads(workspace.signature.read_text())
    envelope = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    workspace.signature.write_text(json.dumps(bundle))
    output = tmp_path / "out"

    result = fetch(capsys, workspace, output)

    assert result.code == 3
    assert_nothing_left(output)


def test_fetch_refuses_the_signature_of_another_model(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    other = tmp_path / "other-model"
    other.mkdir()
    write_model(other)  # same names, different bytes
    assert (
        run(
            capsys, "sign", other, "--private-key", workspace.private_key, "--signature", workspace.signature
        ).code
        == 0
    )
    output = tmp_path / "out"

    result = fetch(capsys, workspace, output)

    assert result.code == 3
    assert "signature of another model" in result.err or "differ from what was signed" in result.err
    assert_nothing_left(output)


def test_fetch_refuses_a_model_changed_after_signing(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    (workspace.model / "config.json").write_text('{"layers": 4}\n')
    reencrypt(capsys, workspace)
    output = tmp_path / "out"

    result = fetch(capsys, workspace, output)

    assert result.code == 3
    assert "config.json" in result.err
    assert "differ from what was signed" in result.err
    assert_nothing_left(output)


def test_fetch_refuses_a_file_the_signature_does_not_cover(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    (workspace.model / "backdoor.py").write_text("import os\n")
    reencrypt(capsys, workspace)
    output = tmp_path / "out"

    result = fetch(capsys, workspace, output)

    assert result.code == 3
    assert "'backdoor.py', which the signature does not cover" in result.err
    assert_nothing_left(output)


def test_fetch_refuses_a_model_missing_a_signed_file(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    reencrypt(capsys, workspace, "--ignore", "config.json")
    output = tmp_path / "out"

    result = fetch(capsys, workspace, output)

    assert result.code == 3
    assert "signed file(s) missing from the model: 'config.json'" in result.err
    assert_nothing_left(output)


def test_fetch_leaves_out_files_the_signer_ignored(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    (workspace.model / "README.md").write_text("notes, not signed\n")
    assert (
        run(
            capsys, "sign", workspace.model, "--private-key", workspace.private_key, "--ignore", "README.md"
        ).code
        == 0
    )
    reencrypt(capsys, workspace)

    result = fetch(capsys, workspace, tmp_path / "out")

    assert result.code == 0, result.err
    assert "README.md" not in tree(tmp_path / "out")
    assert len(tree(tmp_path / "out")) == 3


def encrypt_archive(workspace: Workspace, archive: bytes, attributes: dict[str, str]) -> None:
    provider = LocalKeyProvider.from_path(workspace.keyset)
    with workspace.artifact.open("wb") as out:
        encrypt_stream(io.BytesIO(archive), out, provider, attributes=attributes)


def test_fetch_refuses_a_hostile_archive_even_when_properly_encrypted(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in ("config.json", "tokenizer/vocab.txt"):
            data = (workspace.model / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("weights.bin")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        archive.addfile(link)
    encrypt_archive(workspace, buffer.getvalue(), {"samd.content": "tar"})
    output = tmp_path / "out"

    result = fetch(capsys, workspace, output)

    assert result.code == 4
    assert "'weights.bin' is a symbolic link" in result.err
    assert_nothing_left(output)


def test_fetch_refuses_a_single_file_artifact_for_a_directory_signature(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    reencrypt(capsys, workspace, source=workspace.model / "weights.bin")
    output = tmp_path / "out"

    result = fetch(capsys, workspace, output)

    assert result.code == 3
    assert "signature covers a directory" in result.err
    assert_nothing_left(output)


def test_fetch_refuses_an_unknown_content_type(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    encrypt_archive(workspace, b"whatever", {"samd.content": "zip"})
    result = fetch(capsys, workspace, tmp_path / "out")
    assert result.code == 4
    assert "content is 'zip'" in result.err
    assert_nothing_left(tmp_path / "out")


def test_fetch_names_a_missing_artifact(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    workspace.artifact.unlink()
    result = fetch(capsys, workspace, tmp_path / "out")
    assert result.code == 6
    assert "no such file" in result.err
    assert_nothing_left(tmp_path / "out")


def test_fetch_refuses_an_oversized_signature(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    with workspace.signature.open("wb") as handle:
        handle.truncate(16 * 1024 * 1024 + 1)
    result = fetch(capsys, workspace, tmp_path / "out")
    assert result.code == 3
    assert "larger than" in result.err
    assert_nothing_left(tmp_path / "out")


def test_fetch_json_error_is_parseable(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    flip_byte(workspace.artifact, workspace.artifact.stat().st_size // 2)
    result = fetch(capsys, workspace, tmp_path / "out", "--json")
    assert result.code == 4
    assert result.json()["error"]["type"] == "IntegrityError"


def json_lines(stderr: str) -> list[dict[str, object]]:
    """Each line of `stderr` as the JSON object it must be."""
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert all(isinstance(line, dict) for line in lines), stderr
    return lines


def test_fetch_logs_json_lines_with_its_error_and_decision(workspace: Workspace, tmp_path: Path) -> None:
    """`--log-format json`, as the init container runs it: every line on stderr is one JSON object
    in SAMD's log shape, the error and the loader's refusal included; nothing else is written."""
    flip_byte(workspace.artifact, workspace.artifact.stat().st_size // 2)
    process = subprocess.run(
        [SAMD, *workspace.fetch_argv(tmp_path / "out"), "--log-format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert process.returncode == 4
    assert process.stdout == ""
    lines = json_lines(process.stderr)
    assert all({"time", "level", "component", "logger", "message"} <= line.keys() for line in lines)
    assert {line["component"] for line in lines} == {"loader"}
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1, lines
    assert errors[0]["error"] == "IntegrityError"
    assert errors[0]["exit_code"] == 4
    assert "failed authentication" in str(errors[0]["message"])
    refusals = [line for line in lines if line.get("event") == "model_load"]
    assert [(line["decision"], line["reason"]) for line in refusals] == [("refused", "Integrity")]
    assert_nothing_left(tmp_path / "out")


def test_fetch_logs_its_verified_model_as_json_lines(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    process = subprocess.run(
        [SAMD, *workspace.fetch_argv(tmp_path / "out"), "--log-format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout == ""
    lines = json_lines(process.stderr)
    decisions = [line for line in lines if line.get("event") == "model_load"]
    assert [(line["decision"], line["level"]) for line in decisions] == [("verified", "info")]
    inspected = json.loads(run(capsys, "inspect", workspace.signature, "--json").out)
    assert decisions[0]["manifest_digest"] == inspected["manifest_digest"]
    assert decisions[0]["file_count"] == len(tree(workspace.model))
    assert tree(tmp_path / "out") == tree(workspace.model)


def test_sigterm_during_fetch_leaves_nothing(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    """The kubelet stops init containers with SIGTERM; the partial model must go with it."""
    fifo = tmp_path / "artifact.fifo"
    os.mkfifo(fifo)
    output = tmp_path / "out"
    output.mkdir()
    process = subprocess.Popen(
        [SAMD, *workspace.fetch_argv(output, source=fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with fifo.open("wb") as writer:
            data = workspace.artifact.read_bytes()
            # Most of the model, then the download stalls (the reader needs one segment of look-ahead).
            writer.write(data[: len(data) - 200_000])
            writer.flush()
            deadline = time.monotonic() + 60
            while not any(path.is_file() for path in output.rglob("*")):
                assert time.monotonic() < deadline, "fetch wrote nothing to its staging directory"
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143
    assert "terminated" in stderr
    assert list(output.iterdir()) == []


def test_a_full_output_volume_is_a_clear_storage_error(workspace: Workspace, tmp_path: Path) -> None:
    def limit_file_size() -> None:  # like an emptyDir at its sizeLimit: writes past 1 MiB fail
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    output = tmp_path / "out"
    completed = subprocess.run(
        [SAMD, *workspace.fetch_argv(output)],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        check=False,
    )

    assert completed.returncode == 6
    assert completed.stderr.startswith("error: writing ")
    assert "weights.bin failed: File too large" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert_nothing_left(output)


def test_a_new_output_directory_gets_the_mode_mkdir_gives(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    (tmp_path / "reference").mkdir()
    assert fetch(capsys, workspace, tmp_path / "out").code == 0
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == stat.S_IMODE(
        (tmp_path / "reference").stat().st_mode
    )


def test_certificate_signed_model_from_sign_to_fetch(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    pki = write_certificate_chain(tmp_path / "pki", name="ml-team")
    signature = tmp_path / "cert.sig"
    signed = run(
        capsys,
        "sign",
        workspace.model,
        "--private-key",
        pki.signing_key,
        "--certificate",
        pki.signing_certificate,
        "--certificate-chain",
        pki.intermediate,
        "--signature",
        signature,
    )
    verified = run(
        capsys, "verify", workspace.model, "--signature", signature, "--certificate-root", pki.root, "--json"
    )
    fetched = run(
        capsys,
        "fetch",
        workspace.artifact,
        "--signature",
        signature,
        "--certificate-root",
        pki.root,
        "--key",
        workspace.key,
        "--output",
        tmp_path / "out",
        "--json",
    )
    other = write_certificate_chain(tmp_path / "other-pki", name="someone-else")
    untrusted = run(
        capsys,
        "fetch",
        workspace.artifact,
        "--signature",
        signature,
        "--certificate-root",
        other.root,
        "--key",
        workspace.key,
        "--output",
        tmp_path / "untrusted",
    )

    assert signed.code == 0, signed.err
    assert verified.code == 0, verified.err
    assert verified.json()["method"] == "certificate"
    assert fetched.code == 0, fetched.err
    assert fetched.json()["signer"] == verified.json()["signer"] == pki.subject
    assert tree(tmp_path / "out") == tree(workspace.model)
    assert untrusted.code == 3
    assert_nothing_left(tmp_path / "untrusted")
