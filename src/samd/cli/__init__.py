"""The `samd` command line: keygen, baseline, sign, verify, encrypt, decrypt, rewrap, reencrypt, fetch, inspect, serve,
proxy, quarantine, audit.

`main` runs the commands and turns every failure into one clear line on stderr (`error: ...`,
then `hint: ...` when there is one) and the exit code of its `samd.errors` class; tracebacks only
with `--debug`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

import click

from samd.cli.commands import app
from samd.cli.output import CliState, report_error, report_failure
from samd.errors import SamdError

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run `samd` with `argv` (default: the process arguments); return the exit code."""
    state = CliState()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["--help"]
    try:
        outcome = app.main(args=args, prog_name="samd", standalone_mode=False, obj=state)
    except SamdError as error:
        if state.debug:
            traceback.print_exc()
        report_error(state, error)
        return error.exit_code
    except click.exceptions.Exit as error:
        return int(error.exit_code)
    except click.UsageError as error:
        # Argument parsing errors (unknown option, missing argument, bad value): exit code 2.
        command = error.ctx.command_path if error.ctx is not None else "samd"
        report_failure(
            state,
            error.format_message(),
            f"run `{command} --help` for the options and an example",
            exit_code=error.exit_code,
        )
        return error.exit_code
    except click.ClickException as error:
        report_failure(state, error.format_message(), exit_code=error.exit_code)
        return error.exit_code
    except (click.Abort, KeyboardInterrupt):
        report_failure(state, "interrupted", exit_code=EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except Exception as error:
        if state.debug:
            traceback.print_exc()
        report_failure(
            state,
            f"unexpected {type(error).__name__}: {error}",
            "this is a bug in samd; run again with --debug for a traceback and report it",
            exit_code=1,
        )
        return 1
    return outcome if isinstance(outcome, int) else 0


__all__ = ["app", "main"]
