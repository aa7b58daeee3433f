"""Every command says what it does (sqlite-utils' rule): each command, group and option has help text, and
each command and subcommand appears in README.md's command table, so the CLI and its documentation cannot drift."""
from __future__ import annotations

import re
from pathlib import Path

import click

from pipeline.cli import main

README = Path(__file__).resolve().parents[3] / "README.md"


def commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def command_table() -> list[str]:
    """The first cell of each row of README's table whose header is ``| command | what it does |``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| command | what it does |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(re.split(r"(?<!\\)\|", line)[1])
    return rows


def test_every_command_group_and_option_has_help():
    missing = []
    for path, command in [((), main), *commands(main)]:
        if not (command.help or "").strip():
            missing.append(" ".join(("auditsift", *path)))
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{' '.join(('auditsift', *path))} {param.opts[0]}")
    assert missing == []


def test_every_command_is_in_the_readme_command_table():
    rows = command_table()
    missing = []
    for path, _ in commands(main):
        top = path[0]
        row = next((r for r in rows if re.search(rf"`auditsift {re.escape(top)}\b", r)), None)
        if len(path) == 1:
            listed = row is not None or any(re.search(rf"`{re.escape(top)}\b", r) for r in rows)
        else:
            listed = row is not None and re.search(rf"(?<![\w-]){re.escape(path[-1])}(?![\w-])", row) is not None
        if not listed:
            missing.append(" ".join(("auditsift", *path)))
    assert missing == []


def test_the_checks_see_a_missing_command():
    """A command nobody documented is found (the table is parsed, not just searched)."""
    @main.command("undocumented-probe")
    def probe() -> None:
        pass

    try:
        names = [" ".join(path) for path, command in commands(main) if not (command.help or "").strip()]
        assert names == ["undocumented-probe"]
        assert not any("undocumented-probe" in row for row in command_table())
    finally:
        del main.commands["undocumented-probe"]
