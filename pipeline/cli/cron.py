"""``auditsift cron``: one scheduled run from cron, for hosts without Step Functions.

``scripts/auditsift-cron`` is the crontab entry (``auditsift deploy cron`` prints the line): it
takes a non-blocking ``flock`` on ``<workdir>/.auditsift-cron.lock`` for local workdirs, so a
run still going when the next one fires makes the new one exit 75 at once, then runs
``auditsift cron ... --wait-lock 0``. That takes the workdir's own lock
(``Storage.lock``), which also guards against ``auditsift`` commands started by hand and
works for s3:// workdirs; a held lock is exit 75 with the holder's host and pid.

A scheduled pass is the Step Functions run on one host: archive, plan (ranges ending now,
retrain when ``schedule.retrain_every_days`` have passed), features, train only when due,
score, report, and the configured findings export. Its result object is ``auditsift run``'s
plus ``retrained``, ``plan`` and ``exported``.
"""
from __future__ import annotations

from datetime import datetime, timezone

import click
import orjson

from pipeline.cli.boundary import boundary
from pipeline.cli.options import (
    cluster_option,
    config_option,
    configure_logging,
    debug_option,
    from_cloudwatch_option,
    log_level_option,
    now_option,
    wait_option,
    workdir_option,
)
from pipeline.config import load_config
from pipeline.context import RunContext, new_run_id
from pipeline.errors import ConfigError
from pipeline.io.storage import open_storage
from pipeline.stages.clock import parse_iso
from pipeline.stages.run import scheduled_run


@click.command("cron")
@workdir_option
@config_option
@cluster_option
@click.option("--input", "inputs", multiple=True, help="File, directory, glob or s3:// prefix (repeatable).")
@from_cloudwatch_option
@now_option
@wait_option
@click.option("--json", "as_json", is_flag=True, help="Print the result object on stdout.")
@log_level_option("INFO")
@debug_option
@boundary
def cron_command(workdir: str, config_path: str | None, cluster: str | None, inputs: tuple[str, ...],
                 log_group: str | None, now: str | None, wait_lock: float, as_json: bool, log_level: str, debug: bool) -> None:
    """One scheduled auditsift pass; exit 75 at once when another run holds the workdir."""
    configure_logging(log_level, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(inputs) == bool(log_group):
        raise ConfigError("give either --input or --from-cloudwatch", hint="e.g. --from-cloudwatch /aws/eks/prod/cluster")
    config = load_config(config_path, {"cluster": cluster} if cluster else None)
    moment = parse_iso(now, "--now") if now else datetime.now(timezone.utc)
    ctx = RunContext(open_storage(workdir, config), config, new_run_id())
    with ctx.storage.lock(wait_seconds=wait_lock):
        result = scheduled_run(ctx, list(inputs), log_group, moment)
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(f"{ctx.run_id}: {result['flagged']} flagged of {result['records']} entity windows; "
                   f"retrained: {result['retrained']}; report: {result['report']}")
