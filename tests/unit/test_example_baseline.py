"""The example's drift baseline is what `samd baseline` writes for the demo's model from the
example's validation sample: generated, not hand-written, and current."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from hack.demo import build_model  # the example's model, as `make demo` builds it

from samd.cli import main
from samd.cli.commands import app
from tests.support.cluster import REPO

pytestmark = pytest.mark.unit

EXAMPLE = REPO / "examples" / "fraud-detection"


def test_the_committed_baseline_is_regenerated_from_the_validation_sample(tmp_path: Path) -> None:
    build_model(tmp_path / "model")
    written = tmp_path / "baseline.json"
    result = CliRunner().invoke(
        app,
        [
            "baseline",
            str(tmp_path / "model"),
            "--sample",
            str(EXAMPLE / "validation.csv"),
            "--output",
            str(written),
        ],
    )
    assert result.exit_code == 0, result.output
    assert written.read_text() == (EXAMPLE / "samd-baseline.json").read_text(), (
        "regenerate it: samd baseline MODEL_DIR --sample examples/fraud-detection/validation.csv "
        "--output examples/fraud-detection/samd-baseline.json --force"
    )


def _demo_model(directory: Path) -> Path:
    build_model(directory)
    (directory / "samd-baseline.json").unlink()
    return directory


def test_baseline_refuses_what_it_cannot_use_and_says_how_to_fix_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np  # noqa: PLC0415

    def samd(*args: str | Path) -> tuple[int, str]:
        code = main([str(arg) for arg in args])
        return code, capsys.readouterr().err

    sample = EXAMPLE / "validation.csv"
    assert samd("baseline", tmp_path / "nowhere", "--sample", sample) == (
        2,
        f"error: the model directory {tmp_path / 'nowhere'} does not exist\n"
        "hint: the baseline goes inside the model directory, so that `samd sign` signs it\n",
    )
    model = _demo_model(tmp_path / "model")
    np.savez(tmp_path / "sample.npz", transactions=np.zeros((200, 8), dtype=np.float32))
    code, error = samd("baseline", model, "--sample", tmp_path / "sample.npz")
    assert code == 2
    assert "lacks the model input(s) features; it holds transactions" in error
    assert samd("baseline", model, "--sample", sample)[0] == 0
    assert (model / "samd-baseline.json").is_file()
    code, error = samd("baseline", model, "--sample", sample)
    assert code == 2
    assert "pass --force to replace it" in error
