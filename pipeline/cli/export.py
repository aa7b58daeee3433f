"""``auditsift export``: the latest scored incidents to Security Hub and/or SNS (``pipeline.stages.export``)."""
from __future__ import annotations

import click
import orjson

from pipeline.cli.boundary import boundary
from pipeline.cli.options import cluster_option, config_option, require_workdir, workdir_option
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.io.storage import open_storage
from pipeline.stages.export import export_findings, latest_run


@click.command("export")
@workdir_option
@config_option
@cluster_option
@boundary
def export_command(workdir: str, config_path: str | None, cluster: str | None) -> None:
    """Export the latest scored incidents to Security Hub and/or SNS, as the config enables."""
    config = load_config(config_path, {"cluster": cluster} if cluster else None)
    if not config.findings.securityhub.enabled and not config.findings.sns.enabled:
        raise ConfigError("nothing to export: findings.securityhub.enabled and findings.sns.enabled are both false",
                          hint="enable one of them in the config (configs/local.yaml describes both)")
    require_workdir(workdir)
    findings, incidents, run_result = latest_run(open_storage(workdir, config), config)
    click.echo(orjson.dumps(export_findings(config, findings, incidents, run_result)).decode())
