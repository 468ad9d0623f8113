"""The docs say what the code does: generated configuration, printer columns, no dangling references."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import REPO

pytestmark = pytest.mark.unit

VARIABLE = re.compile(r"^SAMD_[A-Z0-9_]*[A-Z0-9]$")
CONFIGURATION = REPO / "docs" / "configuration.md"


def test_the_configuration_page_is_generated_from_the_current_code() -> None:
    result = subprocess.run(
        [str(REPO / "hack" / "generate-config-docs"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def variables_read_by(folder: Path) -> set[str]:
    """Every string constant in the folder's code that is a whole SAMD_* variable name.

    Names the operator writes into a model pod's environment (``{"name": "SAMD_MODEL_DIR", ...}``)
    are what the pod reads, not settings of the operator: serving.md documents those.
    """
    found = set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text())
        written = {
            id(value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Dict)
            for key, value in zip(node.keys, node.values, strict=True)
            if isinstance(key, ast.Constant) and key.value == "name"
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and VARIABLE.match(node.value)
                and id(node) not in written
            ):
                found.add(node.value)
    return found


@pytest.mark.parametrize("folder", ["operator", "webhook"])
def test_every_variable_the_code_reads_is_documented(folder: str) -> None:
    documented = set(re.findall(r"`(SAMD_[A-Z0-9_]+)`", CONFIGURATION.read_text()))
    read = variables_read_by(REPO / "src" / "samd" / folder)
    assert read, "the scan found no variables at all"
    assert read - documented == set(), "add them to the code's variables() (then hack/generate-config-docs)"


def test_every_printer_column_is_documented_with_what_it_shows() -> None:
    api = (REPO / "docs" / "api.md").read_text()
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        for version in yaml.safe_load(crd.read_text())["spec"]["versions"]:
            for column in version.get("additionalPrinterColumns", []):
                if column["jsonPath"] == ".metadata.creationTimestamp":
                    continue
                assert f"`{column['jsonPath']}`" in api, f"{crd.name}: column {column['name']}"


def test_nothing_refers_to_a_design_document_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    this_file = Path(__file__).relative_to(REPO).as_posix()
    offenders = [
        f"{name}:{number}"
        for name in tracked
        if name != this_file and (REPO / name).is_file() and not (REPO / name).is_symlink()
        for number, line in enumerate((REPO / name).read_text(errors="replace").splitlines(), 1)
        if re.search(r"\bDESIGN\b", line)
    ]
    assert offenders == [], "point to docs/architecture.md instead"
