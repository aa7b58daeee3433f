"""The docs list exactly what the code computes, and every command explains itself."""
from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from pipeline.catalog import catalog_markdown, load_rule_pack
from pipeline.cli import main
from pipeline.config import load_config

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_docs_catalog_is_generated_from_the_registries():
    expected = catalog_markdown(load_rule_pack(load_config()))
    assert (DOCS / "catalog.md").read_text() == expected, "run: .venv/bin/auditsift catalog > docs/catalog.md"


def commands(group: click.Group, prefix: tuple = ()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from commands(command, prefix + (name,))


def test_every_command_has_help_text():
    for path, command in commands(main):
        assert command.help and len(command.help) > 20, path
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, path
