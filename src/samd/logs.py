"""Structured logging (JSON lines in production, plain text on a terminal) and SAMD's decision shape.

Every decision SAMD takes about a model (the webhook admits or refuses a pod, the operator verifies
a signature or quarantines a model, the server refuses a client, the loader refuses an artifact) is
logged as one JSON line of the same shape, so that one query finds them all::

    {"time": ..., "level": "warning", "component": "webhook", "logger": ..., "message": ...,
     "event": "admission", "decision": "denied", "reason": "SignatureInvalid",
     "user": "alice", "model": {"namespace": "fraud", "name": "scorer"}, ...more fields}

`decision_fields` builds the `extra=` of such a line; the JSON itself is written by
python-json-logger's orjson formatter (measured faster than the hand-written one it replaced).
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

# Context some libraries attach to every record (kopf: its whole settings object); too big to log.
_NOISE = ("settings",)

COMPONENTS = ("webhook", "operator", "server", "loader", "cli")
DECISIONS = ("allowed", "denied", "warned", "error", "refused", "verified", "quarantined", "cleared")


def decision_fields(
    *,
    component: str,
    event: str,
    decision: str,
    reason: str,
    user: str | None = None,
    model: tuple[str | None, str] | None = None,
    **more: object,
) -> dict[str, object]:
    """The `extra=` of a decision line: the shared fields first, then what is particular to it.

    `model` is the SecureModel as (namespace, name), None when the decision is about no model
    (the namespace is None where it is not known: `samd serve` knows only the model's name);
    `user` is who asked, as the API server or the client certificate names them (None: unknown).
    """
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: one of {', '.join(COMPONENTS)}")
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}: one of {', '.join(DECISIONS)}")
    return {
        "component": component,
        "event": event,
        "decision": decision,
        "reason": reason,
        "user": user,
        "model": {"namespace": model[0], "name": model[1]} if model else None,
        **more,
    }


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line: time (ISO 8601, UTC), level, component, logger, message, extras."""

    def __init__(self, component: str | None = None) -> None:
        super().__init__(
            "%(message)s",
            reserved_attrs=[*_RESERVED, *_NOISE],
        )
        self.component = component

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat()
        log_data["level"] = record.levelname.lower()
        if self.component is not None:
            log_data["component"] = self.component
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)
        for key in [key for key in log_data if key.startswith("_")]:
            del log_data[key]
        if "exc_info" in log_data:
            log_data["exception"] = log_data.pop("exc_info")


# Attributes every LogRecord has; anything else was passed with `extra=` and is emitted as a field.
_RESERVED = tuple(sorted(set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}))


def configure_logging(level: str = "INFO", fmt: str = "auto", *, component: str | None = None) -> bool:
    """Set up the root logger once; `fmt` is "json", "text" or "auto" (JSON unless stderr is a terminal).

    `component` (webhook, operator, server, loader) is written into every JSON line. True when the
    lines are JSON.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(component)
        if use_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return use_json
