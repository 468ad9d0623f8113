"""Which managedFields entry the first apply after `Kube.create_owned` turns into the operator's own."""

from __future__ import annotations

import pytest

from samd.operator.kube import FIELD_MANAGER, _created_entry

pytestmark = pytest.mark.unit


def entry(manager: str, operation: str) -> dict[str, str]:
    return {"manager": manager, "operation": operation, "fieldsType": "FieldsV1"}


def test_the_operator_s_update_entry_is_found_among_others() -> None:
    stored = {
        "metadata": {
            "managedFields": [
                entry(FIELD_MANAGER, "Apply"),
                entry("kube-controller-manager", "Update"),
                entry(FIELD_MANAGER, "Update"),
            ]
        }
    }
    assert _created_entry(stored) == 2


def test_an_object_only_ever_applied_or_written_by_others_has_none() -> None:
    applied = {
        "metadata": {"managedFields": [entry(FIELD_MANAGER, "Apply"), entry("kubectl-edit", "Update")]}
    }
    assert _created_entry(applied) is None
    assert _created_entry({"metadata": {}}) is None


def test_the_operator_s_status_write_is_not_the_create_s_entry() -> None:
    status_write = {**entry(FIELD_MANAGER, "Update"), "subresource": "status"}
    assert (
        _created_entry({"metadata": {"managedFields": [entry(FIELD_MANAGER, "Apply"), status_write]}}) is None
    )
