"""How the CLI talks: results on stdout (text or JSON), errors and progress on stderr."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from samd.errors import SamdError

Progress = Callable[[int], None]


@dataclass
class CliState:
    """Options that outlive argument parsing: the error handler in `main` reads them."""

    debug: bool = False
    json: bool = False
    log_json: bool = False  # --log-format json: errors are JSON log lines too, not `error:` lines


def emit(state: CliState, document: Mapping[str, Any], text: str) -> None:
    """Print a command's result: `document` as JSON with --json, else `text` for a person."""
    if state.json:
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    elif text:
        sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def report_error(state: CliState, error: SamdError) -> None:
    """`error: <message>` and `hint: <hint>` on stderr; with --json also a JSON document on stdout."""
    report_failure(state, error.message, error.hint, error=type(error).__name__, exit_code=error.exit_code)
    if state.json:
        document = {
            "error": {
                "type": type(error).__name__,
                "message": error.message,
                "hint": error.hint,
                "exit_code": error.exit_code,
            }
        }
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()


def print_error(message: str, hint: str | None = None, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    out.write(f"error: {_one_line(message)}\n")
    if hint:
        out.write(f"hint: {_one_line(hint)}\n")
    out.flush()


def report_failure(state: CliState, message: str, hint: str | None = None, **fields: object) -> None:
    """A failure on stderr: `error:` and `hint:` lines for a person, or with --log-format json one
    JSON log line (logger samd.cli, level error, `hint` and `fields` as fields) for a log collector."""
    if state.log_json:
        hint_line = _one_line(hint) if hint else None
        logging.getLogger("samd.cli").error(_one_line(message), extra={"hint": hint_line, **fields})
    else:
        print_error(message, hint)


def configure_json_lines(debug: bool, component: str) -> None:
    """--log-format json: every log record as one JSON object per line on stderr (SAMD's shape, as
    `samd serve` writes it), from INFO up (everything with --debug)."""
    from samd.logs import configure_logging as configure_json_logging  # noqa: PLC0415

    configure_json_logging("DEBUG" if debug else "INFO", "json", component=component)
    if not debug:
        _quiet_libraries()


def _quiet_libraries() -> None:
    # Third-party libraries log routine retries and connection details at INFO/WARNING.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "sigstore", "tuf"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"{record.levelname.lower()}: {message}"


def configure_logging(debug: bool) -> None:
    """Warnings (and with --debug, everything) from the library go to stderr as `level: message`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter("%(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_samd_cli", False):
            root.removeHandler(existing)
    handler._samd_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        _quiet_libraries()


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Progress | None]:
    """A byte progress bar on stderr when it is a terminal; None (no bar, no import) otherwise."""
    if not stderr_is_terminal():
        yield None
        return
    from tqdm import tqdm  # noqa: PLC0415 - only interactive runs pay for it

    with tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    ) as bar:

        def advance(count: int) -> None:
            bar.update(count)

        yield advance
