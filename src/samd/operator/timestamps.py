"""Kubernetes timestamps (RFC 3339, UTC, whole seconds, `Z`) as the operator writes and reads them."""

from __future__ import annotations

import datetime


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: object) -> datetime.datetime | None:
    """A timestamp the API server or the operator wrote; None for anything that is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
