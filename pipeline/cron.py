"""Scheduled runs from cron, for hosts without Step Functions.

``scripts/auditsift-cron`` is the crontab entry (``auditsift deploy cron`` prints the line): it
takes a non-blocking ``flock`` on ``<workdir>/.auditsift-cron.lock`` for local workdirs, so a
run still going when the next one fires makes the new one exit 75 at once, then runs
``python -m pipeline.cron ... --wait-lock 0``. That takes the workdir's own lock
(``Storage.lock``), which also guards against ``auditsift`` commands started by hand and
works for s3:// workdirs; a held lock is exit 75 with the holder's host and pid.

A scheduled pass is the Step Functions run on one host: archive, plan (ranges ending now,
retrain when ``schedule.retrain_every_days`` have passed), features, train only when due,
score, report, and the configured findings export. Its result object is ``auditsift run``'s
plus ``retrained``, ``plan`` and ``exported``.
"""
from __future__ import annotations

import logging
import re
import shlex
import sys
from datetime import datetime, timezone

import click
import orjson

from pipeline.config import Config, load_config
from pipeline.context import RunContext, new_run_id
from pipeline.deploy import cli_boundary
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)
_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")
_CRON = re.compile(r"cron\((.+)\)")
_DOW_VALUE = re.compile(r"\d+")


def _weekday_field(field: str) -> str:
    """EventBridge numbers weekdays 1-7 from Sunday, cron 0-6: shift the numbers, keep names and steps."""
    if any(mark in field for mark in ("L", "#")):
        raise ConfigError(f"schedule.expression day-of-week {field!r} has no crontab equivalent",
                          hint="use plain days, ranges or lists (MON-FRI, 2-6, 1,4)")
    shifted = []
    for item in field.split(","):
        base, _, step = item.partition("/")
        base = _DOW_VALUE.sub(lambda m: str(int(m.group()) - 1), base)
        shifted.append(f"{base}/{step}" if step else base)
    return ",".join(shifted)


def crontab_schedule(expression: str) -> str:
    """The five crontab fields for an EventBridge ``cron(...)`` or whole-unit ``rate(...)`` expression."""
    rate = _RATE.fullmatch(expression)
    if rate:
        value, unit = int(rate.group(1)), rate.group(2).rstrip("s")
        if unit == "minute" and 0 < value < 60 and 60 % value == 0:
            return f"*/{value} * * * *"
        if unit == "hour" and 0 < value < 24 and 24 % value == 0:
            return f"0 */{value} * * *"
        if unit == "day" and value == 1:
            return "0 0 * * *"
        raise ConfigError(f"schedule.expression {expression!r} has no exact crontab equivalent",
                          hint="use cron(...) or a rate that divides an hour or a day")
    match = _CRON.fullmatch(expression)
    fields = match.group(1).split() if match else []
    if len(fields) != 6:
        raise ConfigError(f"schedule.expression {expression!r} is not cron(min hour day month weekday year) or rate(...)",
                          hint="e.g. cron(15 6 * * ? *)")
    minute, hour, day, month, weekday, year = fields
    if year not in ("*", "?"):
        raise ConfigError(f"schedule.expression year {year!r} has no crontab equivalent", hint="use * for the year")
    if any(mark in day for mark in ("L", "W")):
        raise ConfigError(f"schedule.expression day-of-month {day!r} has no crontab equivalent", hint="use plain days")
    day = "*" if day == "?" else day
    weekday = "*" if weekday in ("?", "*") else _weekday_field(weekday)
    return " ".join((minute, hour, day, month, weekday))


def crontab_line(config: Config, config_path: str | None, workdir: str, inputs: list[str],
                 script: str = "/opt/auditsift/scripts/auditsift-cron", log_file: str = "/var/log/auditsift-cron.log") -> str:
    """A comment and the crontab line running scripts/auditsift-cron at ``schedule.expression``.

    EventBridge expressions are UTC and cron uses the host's zone: the comment says so.
    Without ``inputs`` the run archives the cluster's CloudWatch log group.
    """
    arguments = [script, "--workdir", workdir]
    if config_path:
        arguments += ["--config", config_path]
    if inputs:
        for item in inputs:
            arguments += ["--input", item]
    else:
        arguments += ["--from-cloudwatch", config.deploy.log_group or f"/aws/eks/{config.cluster}/cluster"]
    command = " ".join(shlex.quote(item) for item in arguments).replace("%", r"\%")
    return (f"# auditsift scheduled run for cluster {config.cluster}: {config.schedule.expression} is UTC; "
            "the host's cron must run in UTC (or shift the hour)\n"
            f"{crontab_schedule(config.schedule.expression)} {command} >> {shlex.quote(log_file)} 2>&1")


def scheduled_run(ctx: RunContext, inputs: list[str], log_group: str | None, now: datetime) -> dict:
    """One scheduled pass (the caller holds the workdir lock); returns the run's result object."""
    from pipeline.processing import plan_key, plan_run
    from pipeline.runner import finish_run, result_object
    from pipeline.report import run_report
    from pipeline.scoring import run_score
    from pipeline.stages import run_archive, run_features, run_train, write_quarantine

    if log_group:
        from pipeline.aws.cloudwatch import archive_from_cloudwatch

        archived = archive_from_cloudwatch(ctx.storage, log_group, ctx.cluster, ctx.run_id, ctx.config, now=now)
        write_quarantine(ctx, archived.quarantine)
        counts = archived.as_dict()
        ctx.update_state("archive", {"run_id": ctx.run_id, **{k: v for k, v in counts.items() if k != "inputs"}})
    else:
        counts = run_archive(ctx, inputs, now)
    ranges, plan = plan_run(ctx, now)
    ctx.storage.write_json(plan_key(ctx, ctx.run_id), plan)
    log.info("plan: retrain=%s (%s)", plan["retrain"], plan["reason"])
    feature_counts = run_features(ctx, ranges)
    model = run_train(ctx) if plan["retrain"] else ctx.read_state()["model"]
    summary = run_score(ctx)
    run = run_report(ctx, None, {"inputs": counts["inputs"], "archive": counts})
    result = result_object(ctx, counts, feature_counts, model, summary, run, ranges)
    result.update(retrained=plan["retrain"], plan=plan)
    return finish_run(ctx, result, summary)


@click.command("cron")
@click.option("--workdir", required=True, help="Workdir: a local directory or s3://bucket/prefix.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: configs/local.yaml).")
@click.option("--cluster", default=None, help="Cluster name; overrides the config.")
@click.option("--input", "inputs", multiple=True, help="File, directory, glob or s3:// prefix (repeatable).")
@click.option("--from-cloudwatch", "log_group", default=None, help="CloudWatch Logs group, e.g. /aws/eks/CLUSTER/cluster.")
@click.option("--now", default=None, help="ISO 8601 time the run is for (default: the current time).")
@click.option("--wait-lock", default=0.0, type=float, show_default=True,
              help="Seconds to wait for another run on the same workdir (the wrapper passes 0).")
@click.option("--json", "as_json", is_flag=True, help="Print the result object on stdout.")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), show_default=True)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@cli_boundary
def cron_command(workdir: str, config_path: str | None, cluster: str | None, inputs: tuple[str, ...],
                 log_group: str | None, now: str | None, wait_lock: float, as_json: bool, log_level: str, debug: bool) -> None:
    """One scheduled auditsift pass; exit 75 at once when another run holds the workdir."""
    from pipeline.stages import parse_iso
    from pipeline.storage import open_storage

    logging.basicConfig(level=getattr(logging, log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
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


if __name__ == "__main__":  # pragma: no cover
    cron_command()
