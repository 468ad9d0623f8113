"""`samd fetch` without --key: an unencrypted artifact (the model file, or a tar stream of the
model directory) is hashed while it is written, exactly as a decrypted one; `--keep-signature`
leaves the verified signature for `samd serve`."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from samd.fetch import KEPT_SIGNATURE
from tests.unit.test_cli import Workspace, make_workspace, run, tree

pytestmark = pytest.mark.unit


@pytest.fixture
def workspace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Workspace:
    return make_workspace(capsys, tmp_path / "ws")


def _plain_argv(
    workspace: Workspace, artifact: Path, output: Path, signature: Path | None = None
) -> list[str]:
    return [
        "fetch", str(artifact), "--signature", str(signature or workspace.signature),
        "--public-key", str(workspace.public_key), "--output", str(output),
    ]  # fmt: skip


def _tar_of(directory: Path, target: Path) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    target.write_bytes(buffer.getvalue())
    return target


def test_an_unencrypted_directory_is_fetched_verified_and_its_signature_kept(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    artifact = _tar_of(workspace.model, tmp_path / "model.tar")
    output = tmp_path / "out"
    result = run(capsys, *_plain_argv(workspace, artifact, output), "--keep-signature")
    assert result.code == 0, result.err
    fetched = tree(output)
    assert fetched.pop(KEPT_SIGNATURE) == workspace.signature.read_bytes()
    assert fetched == tree(workspace.model)


def test_an_unencrypted_single_file_is_written_under_its_signed_name(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    weights = workspace.model / "weights.bin"
    signature = tmp_path / "weights.sig"
    assert (
        run(capsys, "sign", weights, "--private-key", workspace.private_key, "--signature", signature).code
        == 0
    )
    output = tmp_path / "out"
    result = run(capsys, *_plain_argv(workspace, weights, output, signature))
    assert result.code == 0, result.err
    assert tree(output) == {"weights.bin": weights.read_bytes()}


def test_a_tampered_unencrypted_artifact_leaves_nothing(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    (workspace.model / "config.json").write_bytes(b'{"layers": 4}\n')
    artifact = _tar_of(workspace.model, tmp_path / "model.tar")
    output = tmp_path / "out"
    result = run(capsys, *_plain_argv(workspace, artifact, output), "--keep-signature")
    assert result.code == 3
    assert "config.json" in result.err
    assert not output.exists()


def test_an_encrypted_artifact_without_a_key_is_refused_clearly(
    capsys: pytest.CaptureFixture[str], workspace: Workspace, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    result = run(capsys, *_plain_argv(workspace, workspace.artifact, output))
    assert result.code == 2
    assert "is encrypted, and no key was given" in result.err
    assert "--key" in result.err
    assert not output.exists()
