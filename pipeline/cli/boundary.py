"""THE error boundary: every command is wrapped in ``boundary``, which turns every error into one line on
stderr (plus a hint) and a documented exit code (docs/operations.md):
0 ok, 1 unexpected error, 2 bad configuration/arguments/input, 3 storage, 4 AWS call,
10 findings flagged (only with --fail-on-flagged), 75 workdir locked by another run.
Tracebacks only with --debug (on the main group, or on a group or command that declares it)."""
from __future__ import annotations

import functools
import sys

import click

from pipeline.cli.output import console
from pipeline.errors import AuditsiftError
from pipeline.text import printable


def boundary(fn):
    """Turn every error into one line on stderr and an exit code; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = _debug(click.get_current_context())
        try:
            return fn(*args, **kwargs)
        except AuditsiftError as error:
            _fail(f"error: {error.message}", error.hint, error.exit_code, debug)
        except Exception as error:  # the outermost boundary: report, never hide
            hint = getattr(error, "hint", None)
            if hint is not None and type(error).__module__.startswith("training."):
                _fail(f"error: {error}", hint, 2, debug)
            _fail(f"internal error: {type(error).__name__}: {error}", "rerun with --debug for the traceback and report it", 1, debug)

    return wrapper


def _debug(ctx: click.Context | None) -> bool:
    """--debug given on this command or any group above it."""
    while ctx is not None:
        if ctx.params.get("debug"):
            return True
        ctx = ctx.parent
    return False


def _fail(message: str, hint: str | None, code: int, debug: bool) -> None:
    if debug:
        console.print_exception()
    first_line = printable(message.splitlines()[0] if message else message)
    console.print(first_line[:400] + ("…" if len(first_line) > 400 else ""), markup=False, highlight=False, soft_wrap=True)
    if hint:
        console.print(printable(f"hint: {hint}"), markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)
