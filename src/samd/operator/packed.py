"""A JSON document kept compressed in memory, for per-model records that are rarely read back.

A parsed spec or status is a tree of small dicts and strings: several kilobytes of Python objects per
model, held for every model the operator knows. The same document as compressed JSON is a few hundred
bytes; unpacking it costs tens of microseconds, paid only on the rare path that reads it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any


class Packed:
    """One JSON-serialisable mapping, compressed; `unpack` gives a fresh copy each time."""

    __slots__ = ("_data",)

    def __init__(self, document: Mapping[str, Any]) -> None:
        text = json.dumps(document, separators=(",", ":"), default=_refuse)
        self._data = zlib.compress(text.encode(), 1)

    def unpack(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(zlib.decompress(self._data))
        return document

    def __len__(self) -> int:
        """The compressed size in bytes."""
        return len(self._data)


def _refuse(value: object) -> Any:
    raise TypeError(f"cannot pack a {type(value).__name__}: only JSON values are kept packed")
