"""The ``auditsift`` executable (``pyproject.toml``'s script; ``python -m pipeline`` too).

The commands that start worker processes (``WORKER_COMMANDS``) get their fork server started before the CLI's
imports: the server imports the stages (0.65 s) on one core while this process imports the CLI (0.8 s) on another,
so the first worker no longer waits for it (``pipeline.stages.workers``). Only the standard library is imported
before that; everything else is the CLI's (``pipeline.cli``).
"""
from __future__ import annotations

import sys

WORKER_COMMANDS = frozenset({"run", "archive", "features", "score"})
# The top-level options that take a value (``pipeline.cli.main``): the value is not the command.
VALUE_OPTIONS = frozenset({"--log-level"})


def command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` (without the program name) runs; None for help, version or no command."""
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help", "--version"):
            return None
        if arg in VALUE_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return None if {"-h", "--help"} & set(argv) else arg
    return None


def main() -> None:
    if command_of(sys.argv[1:]) in WORKER_COMMANDS:
        from pipeline.stages.workers import start_fork_server
        start_fork_server()
    from pipeline.cli import main as cli
    cli()
