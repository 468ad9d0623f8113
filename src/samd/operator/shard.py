"""Sharding by namespace: an operator instance reconciles only SecureModels in namespaces whose labels
match its selector (SAMD_NAMESPACE_SELECTOR), so that instances with disjoint selectors share a cluster.

The selector is written as `kubectl get -l` takes it (Kubernetes' label selector syntax):
``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``, ``key`` and
``!key``, joined by commas, every requirement must hold. It is parsed strictly at start-up: a value
that is not a selector stops the operator with a message naming the part that is wrong, since a
typo would otherwise leave a shard's models with no operator or with two.

Everything here is pure; docs/scaling.md says how to run shards.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from samd.policy import selector_matches

# Kubernetes' qualified name (the part after an optional DNS-subdomain prefix) and label value.
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_KEY = r"[^\s=!(),]+"
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\((.*)\)$")
_EQUALITY = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*([^\s=!(),]*)$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
SYNTAX = "write key=value, key!=value, key in (a,b), key notin (a,b), key or !key, joined by commas"


class SelectorError(ValueError):
    """SAMD_NAMESPACE_SELECTOR is not a label selector."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist (metav1.LabelSelectorRequirement)
    values: tuple[str, ...] = ()

    def text(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        word = "in" if self.operator == "In" else "notin"
        return f"{self.key} {word} ({','.join(self.values)})"


@dataclass(frozen=True)
class NamespaceSelector:
    """The namespaces one operator instance reconciles; an empty selector takes every namespace."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def everything(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return selector_matches(self.label_selector(), labels)

    def label_selector(self) -> dict[str, list[dict[str, object]]]:
        """The same selector as a metav1.LabelSelector (matchExpressions)."""
        return {
            "matchExpressions": [
                {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
                for r in self.requirements
            ]
        }

    def text(self) -> str:
        """One canonical spelling: `a=b` and `a==b` and `a in (b)` read the same."""
        return ",".join(sorted(r.text() for r in self.requirements))

    def shard_id(self) -> str:
        """A short stable name for this selector: the default Lease and kopf's annotation prefix use it."""
        return "shard-" + hashlib.sha256(self.text().encode()).hexdigest()[:10]


def parse_selector(text: str, *, variable: str = "SAMD_NAMESPACE_SELECTOR") -> NamespaceSelector:
    """Parse `text` strictly; empty text selects every namespace."""
    requirements = []
    for part in _split(text, variable):
        requirements.append(_requirement(part, text, variable))
    return NamespaceSelector(tuple(requirements))


def _split(text: str, variable: str) -> list[str]:
    """Split at the commas outside parentheses (those inside separate the values of a set)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
            if depth > 1:
                raise SelectorError(f"{variable}={text!r}: nested parentheses; {SYNTAX}")
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"{variable}={text!r}: a ')' closes nothing; {SYNTAX}")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth:
        raise SelectorError(f"{variable}={text!r}: a '(' is not closed; {SYNTAX}")
    parts.append("".join(current).strip())
    if parts == [""]:
        return []
    if "" in parts:
        raise SelectorError(f"{variable}={text!r}: an empty requirement between commas; {SYNTAX}")
    return parts


def _requirement(part: str, text: str, variable: str) -> Requirement:
    where = f"{variable}={text!r}: {part!r}"
    if re.search(r"[<>]", part):
        raise SelectorError(f"{where}: `<` and `>` are for node selectors, not namespace labels; {SYNTAX}")
    if match := _SET.match(part):
        key, word, inside = match.group(1, 2, 3)
        values = tuple(value.strip() for value in inside.split(","))
        if values == ("",):
            raise SelectorError(f"{where}: a set needs at least one value, as in {key} {word} (a,b)")
        for value in values:
            _check_value(value, where)
        return Requirement(
            _check_key(key, where), "In" if word == "in" else "NotIn", tuple(sorted(set(values)))
        )
    if match := _EQUALITY.match(part):
        key, sign, value = match.group(1, 2, 3)
        _check_value(value, where)
        return Requirement(_check_key(key, where), "NotIn" if sign == "!=" else "In", (value,))
    if match := _EXISTS.match(part):
        bang, key = match.group(1, 2)
        return Requirement(_check_key(key, where), "DoesNotExist" if bang else "Exists")
    raise SelectorError(f"{where} is not a requirement; {SYNTAX}")


def _check_key(key: str, where: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _PREFIX.match(prefix)):
        raise SelectorError(f"{where}: the key's prefix {prefix!r} is not a DNS subdomain (like samd.dev)")
    if len(name) > 63 or not _NAME.match(name):
        raise SelectorError(
            f"{where}: {name!r} is not a label name (at most 63 letters, digits, '-', '_' or '.', "
            "beginning and ending with a letter or digit)"
        )
    return key


def _check_value(value: str, where: str) -> None:
    if value and (len(value) > 63 or not _NAME.match(value)):
        raise SelectorError(
            f"{where}: {value!r} is not a label value (at most 63 letters, digits, '-', '_' or '.', "
            "beginning and ending with a letter or digit)"
        )
