"""docs/events.md lists every Kubernetes Event reason the operator and the webhook can post, and no
other: a reason added in the code without its line in the docs fails here."""

from __future__ import annotations

import ast
import re

import pytest

from samd.operator.steps.shared import EventReason
from samd.webhook.audit import ATTEMPTS, SIGNATURE_FAILURES
from tests.support.cluster import REPO

pytestmark = pytest.mark.unit

EVENTS_PAGE = REPO / "docs" / "events.md"
SOURCE = REPO / "src" / "samd"

# The only places that post Kubernetes Events, and where their reasons come from:
# - operator/handlers.py posts each reconcile's `Event`s (their reason is an `EventReason`),
# - operator/incidents.py posts a loader failure (`EventReason.LOADER_FAILED`),
# - webhook/events.py posts the webhook's security events (reasons in ATTEMPTS | SIGNATURE_FAILURES).
POSTERS = {"operator/handlers.py", "operator/incidents.py", "webhook/events.py"}


def operator_reasons() -> set[str]:
    return {str(reason) for reason in EventReason}


def webhook_reasons() -> set[str]:
    """The denials the webhook turns into security events, and so into Events on the SecureModel."""
    return set(ATTEMPTS | SIGNATURE_FAILURES)


def documented() -> dict[str, set[str]]:
    """reason -> who posts it, from the table under '## Kubernetes Events'."""
    text = EVENTS_PAGE.read_text()
    section = text.split("\n## Kubernetes Events\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (?:Normal|Warning) \| ([a-z, ]+) \|", section, re.MULTILINE)
    return {reason: {who.strip() for who in posted_by.split(",")} for reason, posted_by in rows}


def posting_files() -> set[str]:
    """Files that call kopf's event functions or build a core/v1 Event by hand."""
    found = set()
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            kopf_event = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "kopf"
                and node.func.attr in {"event", "info", "warn", "exception"}
            )
            event_manifest = isinstance(node, ast.Dict) and any(
                isinstance(key, ast.Constant)
                and key.value == "kind"
                and isinstance(value, ast.Constant)
                and value.value == "Event"
                for key, value in zip(node.keys, node.values, strict=True)
            )
            if kopf_event or event_manifest:
                found.add(path.relative_to(SOURCE).as_posix())
    return found


def test_events_are_posted_only_where_this_test_collects_their_reasons() -> None:
    assert posting_files() == POSTERS, (
        "a new place posts Kubernetes Events: give its reasons a closed set (EventReason for the "
        "operator), collect them in this test and document them in docs/events.md"
    )


def test_every_reason_the_code_can_post_is_documented_and_no_other() -> None:
    table = documented()
    assert len(table) >= len(EventReason)  # the table was found and read
    posted = operator_reasons() | webhook_reasons()
    assert sorted(posted - table.keys()) == [], "document these reasons in docs/events.md"
    assert sorted(table.keys() - posted) == [], "docs/events.md lists reasons the code never posts"


def test_the_docs_say_who_posts_each_reason() -> None:
    table = documented()
    for reason, posted_by in table.items():
        expected = {"operator"} if reason in operator_reasons() else set()
        expected |= {"webhook"} if reason in webhook_reasons() else set()
        assert posted_by == expected, reason


def test_the_webhook_posts_only_reasons_its_decisions_can_give() -> None:
    """A name in ATTEMPTS that no decision gives (a typo, a renamed reason) would be documented for
    nothing: each is one of the reason constants of samd.webhook.decide."""
    decide = ast.parse((SOURCE / "webhook" / "decide.py").read_text())
    constants = {
        node.value.value
        for node in decide.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    }
    assert webhook_reasons() <= constants
