"""``auditsift deploy``: print the deployment artefacts of ``pipeline.deploy``, never apply them."""
from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cli.boundary import boundary
from pipeline.cli.options import config_option
from pipeline.config import load_config
from pipeline.deploy.asl import state_machine_definition
from pipeline.deploy.athena import athena_script
from pipeline.deploy.iam import iam_policies
from pipeline.deploy.names import DEFAULT_PREFIX, check_prefix, workdir
from pipeline.deploy.processing import processing_requests
from pipeline.deploy.schedule import crontab_line, schedule_request


def _write(text: str, out: str | None) -> None:
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    else:
        click.echo(text)


def _json(value: dict) -> str:
    return json.dumps(value, indent=2)


prefix_option = click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
                             help="Key prefix of the workdir in deploy.bucket (workdir = s3://BUCKET/PREFIX).")
out_option = click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")


@click.group("deploy")
def deploy_command() -> None:
    """Print deployment artefacts for scheduled runs (Step Functions, EventBridge Scheduler, IAM, Athena, cron)."""


@deploy_command.command("stepfunctions")
@config_option
@prefix_option
@out_option
@boundary
def stepfunctions_command(config_path: str | None, prefix: str, out: str | None) -> None:
    """The Amazon States Language definition of one scheduled run."""
    _write(_json(state_machine_definition(load_config(config_path), prefix)), out)


@deploy_command.command("schedule")
@config_option
@click.option("--role-arn", required=True, help="Role EventBridge Scheduler assumes (scheduler_role in `deploy iam`).")
@click.option("--state-machine-arn", default=None, help="Default: auditsift-<cluster> in aws.region and the roles' account.")
@out_option
@boundary
def schedule_command(config_path: str | None, role_arn: str, state_machine_arn: str | None, out: str | None) -> None:
    """The EventBridge Scheduler CreateSchedule request (aws scheduler create-schedule --cli-input-json)."""
    _write(_json(schedule_request(load_config(config_path), role_arn, state_machine_arn)), out)


@deploy_command.command("iam")
@config_option
@prefix_option
@out_option
@boundary
def iam_command(config_path: str | None, prefix: str, out: str | None) -> None:
    """Least-privilege trust and permission policies for every role a scheduled run uses."""
    _write(_json(iam_policies(load_config(config_path), prefix)), out)


@deploy_command.command("processing")
@config_option
@prefix_option
@out_option
@boundary
def processing_command(config_path: str | None, prefix: str, out: str | None) -> None:
    """The scale-out features CreateProcessingJob requests (map over N instances, then reduce)."""
    _write(_json(processing_requests(load_config(config_path), prefix)), out)


@deploy_command.command("athena")
@config_option
@prefix_option
@click.option("--date-from", default=None, help="First date of the example queries (default: 7 days ago).")
@click.option("--date-to", default=None, help="Last date of the example queries (default: today).")
@out_option
@boundary
def athena_command(config_path: str | None, prefix: str, date_from: str | None, date_to: str | None, out: str | None) -> None:
    """CREATE EXTERNAL TABLE over the archive (partition projection) and example analyst queries."""
    config = load_config(config_path)
    _write(athena_script(config, f"{workdir(config, check_prefix(prefix))}/archive/", date_from, date_to), out)


@deploy_command.command("cron")
@config_option
@click.option("--workdir", "workdir_url", required=True, help="Workdir the scheduled runs use.")
@click.option("--input", "inputs", multiple=True, help="Input path or s3:// prefix (repeatable); default: --from-cloudwatch.")
@click.option("--script", default="/opt/auditsift/scripts/auditsift-cron", show_default=True, help="Installed wrapper path.")
@click.option("--log-file", default="/var/log/auditsift-cron.log", show_default=True, help="Where cron output goes.")
@boundary
def cron_command(config_path: str | None, workdir_url: str, inputs: tuple[str, ...], script: str, log_file: str) -> None:
    """The crontab line that runs scheduled passes at schedule.expression (UTC) through scripts/auditsift-cron."""
    click.echo(crontab_line(load_config(config_path), config_path, workdir_url, list(inputs), script, log_file))
