"""SAMD_NAMESPACE_SELECTOR: parsed strictly, matched like Kubernetes, one Lease per shard."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from samd.operator.config import OperatorConfig
from samd.operator.leader import ElectionConfig
from samd.operator.shard import SelectorError, parse_selector

pytestmark = pytest.mark.unit

LABELS = {"samd.dev/shard": "a", "team": "ml", "tier": ""}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("samd.dev/shard=a", True),
        ("samd.dev/shard==a", True),
        ("samd.dev/shard=b", False),
        ("samd.dev/shard!=b", True),
        ("samd.dev/shard!=a", False),
        ("samd.dev/shard in (a, b)", True),
        ("samd.dev/shard in (b,c)", False),
        ("samd.dev/shard notin (b,c)", True),
        ("samd.dev/shard notin (a)", False),
        ("team", True),
        ("owner", False),
        ("!owner", True),
        ("!team", False),
        ("tier=", True),  # an empty value is a value
        ("samd.dev/shard=a, team=ml", True),
        ("samd.dev/shard=a,team=ops", False),
        ("", True),  # no selector: every namespace
    ],
)
def test_a_selector_matches_namespace_labels_as_kubectl_would(text: str, matches: bool) -> None:
    assert parse_selector(text).matches(LABELS) is matches


def test_a_missing_key_matches_notin_and_not_equal_as_in_kubernetes() -> None:
    assert parse_selector("samd.dev/shard!=a").matches({})
    assert parse_selector("samd.dev/shard notin (a)").matches({})
    assert not parse_selector("samd.dev/shard in (a)").matches({})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a=b,,c", "empty requirement"),
        ("a in ()", "at least one value"),
        ("a in (b", "'(' is not closed"),
        ("a=b)", "')' closes nothing"),
        ("a in ((b))", "nested parentheses"),
        ("a>1", "node selectors"),
        ("a=b c", "is not a requirement"),
        ("-a=b", "is not a label name"),
        ("Samd.Dev/x=1", "is not a DNS subdomain"),
        ("a=" + "x" * 64, "is not a label value"),
        ("a in (b,-c)", "is not a label value"),
    ],
)
def test_a_bad_selector_is_refused_naming_the_part_that_is_wrong(text: str, says: str) -> None:
    with pytest.raises(SelectorError, match="SAMD_NAMESPACE_SELECTOR") as refused:
        parse_selector(text)
    assert says in str(refused.value)


def test_spellings_of_one_selector_share_one_shard_and_different_selectors_do_not() -> None:
    same = {parse_selector(t).shard_id() for t in ("a=b,c", "c, a==b", "a in (b),c")}
    assert len(same) == 1
    assert parse_selector("a=b").shard_id() != parse_selector("a=c").shard_id()


def test_the_configuration_refuses_a_bad_selector_at_start_up() -> None:
    with pytest.raises(ValueError, match="SAMD_NAMESPACE_SELECTOR='team in ml'"):
        OperatorConfig.from_env({"SAMD_NAMESPACE_SELECTOR": "team in ml"})
    assert OperatorConfig.from_env({}).namespace_selector.everything
    assert not OperatorConfig.from_env({"SAMD_NAMESPACE_SELECTOR": "team=ml"}).namespace_selector.matches({})


def test_each_shard_elects_through_a_lease_of_its_own_unless_one_is_named() -> None:
    unsharded = ElectionConfig.from_env({"SAMD_LEADER_IDENTITY": "x"})
    shard_a = ElectionConfig.from_env({"SAMD_LEADER_IDENTITY": "x", "SAMD_NAMESPACE_SELECTOR": "shard=a"})
    shard_b = ElectionConfig.from_env({"SAMD_LEADER_IDENTITY": "x", "SAMD_NAMESPACE_SELECTOR": "shard=b"})
    named = ElectionConfig.from_env(
        {"SAMD_LEADER_IDENTITY": "x", "SAMD_NAMESPACE_SELECTOR": "shard=a", "SAMD_LEADER_LEASE": "mine"}
    )
    assert unsharded.lease_name == "samd-operator"
    assert shard_a.lease_name.startswith("samd-operator-shard-")
    assert len({unsharded.lease_name, shard_a.lease_name, shard_b.lease_name}) == 3
    assert named.lease_name == "mine"


def test_the_operator_exits_with_the_selector_error_before_doing_anything(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from samd.operator import __main__ as entry  # noqa: PLC0415 - importing registers kopf handlers

    monkeypatch.setenv("SAMD_NAMESPACE_SELECTOR", "shard in (a")
    monkeypatch.setattr(entry, "configure_logging", lambda *_args, **_kwargs: None)
    assert entry.main(["--log-format", "text"]) == 2
    assert "'(' is not closed" in caplog.text


class RecordingKube:
    """Records the merge patches the handlers send (the namespace label, the re-queue annotation)."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str | None, str]] = []

    async def patch_merge(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: dict[str, Any]
    ) -> bool:
        self.patches.append((kind, namespace, name))
        return True


class Forgetful:
    def __init__(self) -> None:
        self.dropped: list[tuple[str, str]] = []

    def drop_model(self, namespace: str, name: str) -> None:
        self.dropped.append((namespace, name))

    def forget_model(self, namespace: str, name: str) -> None:
        self.dropped.append((namespace, name))


def shard_memo(selector: str) -> Any:
    return types.SimpleNamespace(
        config=OperatorConfig.from_env({"SAMD_NAMESPACE_SELECTOR": selector}),
        kube=RecordingKube(),
        shared_indexes={},
        shard_members={},
        reconciler=Forgetful(),
        metrics=Forgetful(),
    )


def indexes(labels: dict[str, dict[str, str]], models: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "namespace_labels": {ns: [value] for ns, value in labels.items()},
        "policy_selectors": {},
        "secure_models": {key: [None] for key in models},
    }


def test_an_instance_holds_only_namespaces_its_selector_takes() -> None:
    from samd.operator.handlers import holds, in_this_shard  # noqa: PLC0415

    memo = shard_memo("shard=a")
    index = indexes({"ns-a": {"shard": "a"}, "ns-b": {"shard": "b"}, "bare": {}}, [])["namespace_labels"]
    assert holds(memo, "ns-a", index)
    assert not holds(memo, "ns-b", index)
    assert not holds(memo, "bare", index)
    assert not holds(memo, "deleted", index)  # unknown: nobody's
    assert not holds(memo, "ns-a")  # no index seen yet: nothing is touched
    assert in_this_shard("ns-a", memo, namespace_labels=index)
    assert not in_this_shard(None, memo, namespace_labels=index)
    assert holds(shard_memo(""), "anything")  # unsharded: every namespace


def test_the_protected_label_of_another_shards_namespace_is_left_alone() -> None:
    from samd.operator.handlers import sync_protection  # noqa: PLC0415

    memo = shard_memo("shard=a")
    found = indexes({"ns-a": {"shard": "a"}, "ns-b": {"shard": "b"}}, [("ns-a", "m"), ("ns-b", "m")])
    asyncio.run(sync_protection(memo, "ns-b", found))
    assert memo.kube.patches == []
    asyncio.run(sync_protection(memo, "ns-a", found))
    assert memo.kube.patches == [("Namespace", None, "ns-a")]


def test_a_namespace_that_joins_the_shard_has_its_models_requeued_and_one_that_leaves_forgotten() -> None:
    from samd.operator.handlers import follow_shard  # noqa: PLC0415

    memo = shard_memo("shard=b")
    models = [("moving", "m1"), ("moving", "m2"), ("other", "m3")]
    asyncio.run(follow_shard(memo, "moving", indexes({"moving": {"shard": "a"}}, models)))
    assert memo.kube.patches == []  # first sight: start-up resumes what the shard holds
    asyncio.run(follow_shard(memo, "moving", indexes({"moving": {"shard": "b"}}, models)))
    assert memo.kube.patches == [("SecureModel", "moving", "m1"), ("SecureModel", "moving", "m2")]
    asyncio.run(follow_shard(memo, "moving", indexes({"moving": {"shard": "b", "x": "y"}}, models)))
    assert len(memo.kube.patches) == 2  # relabelled within the shard: nothing to hand over
    asyncio.run(follow_shard(memo, "moving", indexes({"moving": {"shard": "c"}}, models)))
    assert len(memo.kube.patches) == 2  # leaving writes nothing
    assert memo.reconciler.dropped == [("moving", "m1"), ("moving", "m2")]


def test_changes_to_another_shards_owned_objects_requeue_nothing() -> None:
    from samd.operator.handlers import OwnedObjects  # noqa: PLC0415

    async def scenario() -> list[tuple[str, str | None, str]]:
        kube = RecordingKube()
        owned = OwnedObjects(kube, Forgetful(), lambda namespace: namespace == "mine")  # type: ignore[arg-type]
        owned._requeue(("theirs", "m"), "ConfigMap/m-trust deleted")
        owned._requeue(("mine", "m"), "ConfigMap/m-trust deleted")
        await asyncio.sleep(0.05)
        return kube.patches

    assert asyncio.run(scenario()) == [("SecureModel", "mine", "m")]
