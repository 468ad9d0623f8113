"""The protected-namespace label the operator keeps: set while a namespace holds models or a policy
selects it, removed once neither holds, and written only when it differs."""

from __future__ import annotations

import pytest

from samd.operator.coverage import desired_label, label_patch

pytestmark = pytest.mark.unit

TEAM = {"matchLabels": {"team": "fraud"}}


@pytest.mark.parametrize(
    ("labels", "selectors", "holds_models", "expected"),
    [
        ({"team": "fraud"}, [TEAM], False, "true"),  # a policy selects it
        ({"team": "churn"}, [TEAM], True, "true"),  # it holds SecureModels, whatever the policies say
        ({"team": "churn"}, [TEAM], False, None),  # nothing to protect
        ({}, [], False, None),
        ({"team": "churn"}, [{}], False, "true"),  # an empty selector covers every namespace
        # A selector SAMD cannot read covers everything (fail closed), as in the webhook.
        ({"team": "churn"}, [{"matchLabels": ["not", "a", "map"]}], False, "true"),
    ],
)
def test_the_label_follows_models_and_policies(
    labels: dict[str, str], selectors: list[dict[str, object]], holds_models: bool, expected: str | None
) -> None:
    assert desired_label(labels, selectors, holds_models=holds_models) == expected


def test_the_patch_sets_or_removes_the_label_and_nothing_when_it_is_right() -> None:
    assert label_patch({}, "true") == {"metadata": {"labels": {"samd.dev/protected": "true"}}}
    assert label_patch({"samd.dev/protected": "false"}, "true") == {
        "metadata": {"labels": {"samd.dev/protected": "true"}}
    }
    assert label_patch({"samd.dev/protected": "true"}, None) == {
        "metadata": {"labels": {"samd.dev/protected": None}}
    }
    assert label_patch({"samd.dev/protected": "true", "team": "x"}, "true") is None
    assert label_patch({"team": "x"}, None) is None
