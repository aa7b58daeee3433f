"""``auditsift catalog``: every event flag, window feature and rule, printed from their registries."""
from __future__ import annotations

import click

from pipeline.catalog import catalog_markdown, load_rule_pack
from pipeline.cli.boundary import boundary
from pipeline.cli.options import config_option
from pipeline.config import load_config


@click.command()
@config_option
@boundary
def catalog(config_path) -> None:
    """Print every event flag, window feature and rule (Markdown), from their registries."""
    click.echo(catalog_markdown(load_rule_pack(load_config(config_path))), nl=False)
