"""Per-model records kept packed: the same document back, in a fraction of the memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from samd.operator.packed import Packed

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fraud-detection" / "securemodel.yaml"


def example_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())["spec"]
    return spec


def test_a_packed_spec_unpacks_to_the_same_document() -> None:
    spec = example_spec()
    assert Packed({"spec": spec}).unpack() == {"spec": spec}


def test_a_packed_spec_is_smaller_than_its_json_text() -> None:
    spec = example_spec()
    assert len(Packed({"spec": spec})) < len(json.dumps({"spec": spec}, separators=(",", ":")))


def test_changing_an_unpacked_copy_leaves_the_packed_one_as_it_was() -> None:
    packed = Packed({"conditions": [{"type": "Ready", "status": "True"}]})
    copy = packed.unpack()
    copy["conditions"].append({"type": "Serving"})
    assert packed.unpack() == {"conditions": [{"type": "Ready", "status": "True"}]}


def test_a_value_json_cannot_hold_is_refused_with_its_type() -> None:
    with pytest.raises(TypeError, match="cannot pack a bytes"):
        Packed({"signature": b"\x00"})
