"""The ``auditsift`` command line: the only package that imports click or rich.

Thin commands over the stage functions (``pipeline.stages``), one module per command group:
``stages`` (run, archive, features, train, score, report), ``sample``, ``catalog``, ``locks`` (unlock),
``triage``, ``suppressions``, ``deploy``, ``export``, ``container`` (the scheduled run's container steps) and ``cron``.
Every command is wrapped in the one error boundary (``boundary``) and takes the shared options
declared once in ``options``. Exit codes: docs/operations.md.
"""
from __future__ import annotations

import click

from pipeline.cli import stages
from pipeline.cli.catalog import catalog
from pipeline.cli.container import container
from pipeline.cli.cron import cron_command
from pipeline.cli.deploy import deploy_command
from pipeline.cli.export import export_command
from pipeline.cli.locks import unlock
from pipeline.cli.options import LOG_LEVELS, configure_logging
from pipeline.cli.sample import sample
from pipeline.cli.triage import suppressions_group, triage_command

# These set up logging themselves (their own --log-level, default INFO: their stderr is a scheduled run's log).
OWN_LOGGING = ("cron", "container")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--log-level", default="WARNING", type=click.Choice(LOG_LEVELS), show_default=True,
              help="Logging verbosity (to stderr).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="auditsift")
@click.pass_context
def main(ctx: click.Context, log_level: str, debug: bool) -> None:
    """auditsift: find intruders in Amazon EKS Kubernetes audit logs.

    Archive audit logs to partitioned Parquet, extract per-identity and per-address
    window features, train an anomaly model, and write ranked, explained reports.
    Start with `auditsift sample --out sample-data` then `auditsift run --input sample-data --workdir work
    --now T` with the clock `sample` prints (the sample's dates are fixed by its seed).
    """
    if ctx.invoked_subcommand not in OWN_LOGGING:
        configure_logging(log_level)


for command in (sample, *stages.COMMANDS, unlock, catalog, triage_command, suppressions_group, deploy_command, export_command, container, cron_command):
    main.add_command(command)

if __name__ == "__main__":  # pragma: no cover
    main()
