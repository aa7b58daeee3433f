"""The pipeline's commands: ``run`` (every stage in sequence) and one command per stage (archive, features,
train, score, report). Each loads the configuration once, opens the workdir, takes its lock where it writes
and calls the stage functions of ``pipeline.stages``."""
from __future__ import annotations

import sys

import click
import orjson

from pipeline.catalog import load_rule_pack
from pipeline.cli.boundary import boundary
from pipeline.cli.options import (
    backend_option,
    check_local_inputs,
    cluster_option,
    config_option,
    from_cloudwatch_option,
    now_option,
    open_context,
    parse_time_option,
    quiet_option,
    range_options,
    report_dir_option,
    require_workdir,
    wait_option,
    workdir_option,
)
from pipeline.cli.output import console, live, print_report, report_json
from pipeline.context import RunContext
from pipeline.errors import ConfigError, StageError
from pipeline.stages.archive import archive_cloudwatch, run_archive
from pipeline.stages.features import run_features
from pipeline.stages.ranges import resolve_ranges
from pipeline.stages.report import latest_incidents, run_report
from pipeline.stages.run import run_pipeline
from pipeline.stages.score import run_score
from pipeline.stages.train import run_train

EXIT_FLAGGED = 10


@click.command()
@click.option("--input", "inputs", multiple=True, required=True, help="File, directory, glob or s3:// prefix (repeatable).")
@workdir_option
@config_option
@cluster_option
@range_options
@now_option
@report_dir_option
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable result object on stdout.")
@click.option("--fail-on-flagged", is_flag=True, help=f"Exit {EXIT_FLAGGED} when any finding is flagged.")
@quiet_option
@wait_option
@boundary
def run(inputs, workdir, config_path, cluster, train_from, train_to, score_from, score_to, now, report_dir, backend, as_json,
        fail_on_flagged, quiet, wait_lock) -> None:
    """Archive, features, train, score and report in one go: the day ending at --now (default: now)."""
    times = {k: parse_time_option(v, f"--{k.replace('_', '-')}") for k, v in
             dict(train_from=train_from, train_to=train_to, score_from=score_from, score_to=score_to, now=now).items()}
    check_local_inputs(list(inputs))
    ctx = open_context(workdir, config_path, cluster, backend, quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        result = run_pipeline(ctx, list(inputs), report_dir=report_dir, **times)
    finish(ctx, result, as_json, fail_on_flagged)


@click.command()
@click.option("--input", "inputs", multiple=True, help="File, directory, glob or s3:// prefix (repeatable).")
@from_cloudwatch_option
@click.option("--start", default=None, help="With --from-cloudwatch: ISO 8601 start (default: checkpoint minus grace).")
@click.option("--end", default=None, help="With --from-cloudwatch: ISO 8601 end (default: now).")
@now_option
@workdir_option
@config_option
@cluster_option
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON on stdout.")
@quiet_option
@wait_option
@boundary
def archive(inputs, log_group, start, end, now, workdir, config_path, cluster, as_json, quiet, wait_lock) -> None:
    """Archive audit events into WORKDIR/archive as hour-partitioned Parquet, exactly once."""
    if bool(inputs) == bool(log_group):
        raise ConfigError("give either --input or --from-cloudwatch", hint="e.g. --input logs/ or --from-cloudwatch /aws/eks/prod/cluster")
    clock = parse_time_option(now, "--now")
    check_local_inputs(list(inputs))
    ctx = open_context(workdir, config_path, cluster, quiet=quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        if log_group:
            counts = archive_cloudwatch(ctx, log_group, clock, start=parse_time_option(start, "--start"),
                                        end=parse_time_option(end, "--end"))
        else:
            counts = run_archive(ctx, list(inputs), clock)
    summary = {k: v for k, v in counts.items() if k != "inputs"}
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        console.print(f"archived {summary['events_added']} new events ({summary['duplicates']} duplicates, "
                      f"{summary['audit_id_collisions']} audit-ID collisions, {summary['quarantined']} quarantined) "
                      f"into {ctx.storage.url}", markup=False, highlight=False)


@click.command()
@workdir_option
@config_option
@cluster_option
@range_options
@now_option
@quiet_option
@wait_option
@boundary
def features(workdir, config_path, cluster, train_from, train_to, score_from, score_to, now, quiet, wait_lock) -> None:
    """Compute per-entity window features for the training and scoring ranges (the day ending at --now)."""
    times = [parse_time_option(train_from, "--train-from"), parse_time_option(train_to, "--train-to"),
             parse_time_option(score_from, "--score-from"), parse_time_option(score_to, "--score-to"),
             parse_time_option(now, "--now")]
    ctx = open_context(workdir, config_path, cluster, quiet=quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        ranges = resolve_ranges(ctx, *times)
        counts = run_features(ctx, ranges)
    console.print(f"features: {counts['train_rows']} training and {counts['score_rows']} scoring entity windows",
                  markup=False, highlight=False)


@click.command()
@workdir_option
@config_option
@cluster_option
@backend_option
@quiet_option
@wait_option
@boundary
def train(workdir, config_path, cluster, backend, quiet, wait_lock) -> None:
    """Train the anomaly model on the latest feature table's training rows."""
    ctx = open_context(workdir, config_path, cluster, backend, quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        info = run_train(ctx)
    console.print(f"model {info['id']}: threshold {info['threshold']:.4f} ({info['threshold_method']}), "
                  f"{info['train_rows']} training rows", markup=False, highlight=False)


@click.command()
@workdir_option
@config_option
@cluster_option
@quiet_option
@wait_option
@boundary
def score(workdir, config_path, cluster, quiet, wait_lock) -> None:
    """Score the scoring range with the latest model and the rule pack."""
    ctx = open_context(workdir, config_path, cluster, quiet=quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        summary = run_score(ctx)
    console.print(f"scored {summary['records']} entity windows: {summary['flagged']} flagged, {summary['suppressed']} suppressed",
                  markup=False, highlight=False)


@click.command()
@workdir_option
@config_option
@cluster_option
@report_dir_option
@click.option("--top", "top", default=None, type=click.IntRange(1, 1000),
              help="Print this many incidents and findings (default: report.terminal_top).")
@click.option("--no-write", is_flag=True, help="Only print the latest report's incidents and findings; write nothing.")
@click.option("--width", default=None, type=click.IntRange(40, 1000),
              help="Table width in columns (default: the terminal's, else COLUMNS, else 80).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: every incident and finding as {incidents, findings} on stdout.")
@quiet_option
@wait_option
@boundary
def report(workdir, config_path, cluster, report_dir, top, no_write, width, fmt, quiet, wait_lock) -> None:
    """Write the report files for the latest scores and print the top incidents, then the findings in none."""
    if no_write:
        require_workdir(workdir)
    ctx = open_context(workdir, config_path, cluster, quiet=quiet)
    run = None
    if not no_write:
        with ctx.storage.lock(wait_seconds=wait_lock):
            run = run_report(ctx, report_dir)
    show(ctx, top or ctx.config.report.terminal_top, width, fmt)
    if run:
        console.print(f"report: {run['report']['html']}", markup=False, highlight=False)


def show(ctx: RunContext, top: int, width: int | None = None, fmt: str = "table") -> None:
    """The latest scores' incidents and findings on stdout: tables, or JSON."""
    score_state = ctx.read_state().get("score")
    if not score_state:
        raise StageError("nothing scored yet in this workdir", hint="run `auditsift run` or `auditsift score` first")
    findings = ctx.storage.read_json(f"{score_state['key']}/findings.json")
    incidents = latest_incidents(ctx.storage, score_state)
    titles = {r.id: r.title for r in load_rule_pack(ctx.config).rules}
    if fmt == "json":
        sys.stdout.buffer.write(report_json(findings, incidents, titles) + b"\n")
        sys.stdout.flush()
    else:
        print_report(findings, incidents, titles, top, width)


def finish(ctx: RunContext, result: dict, as_json: bool, fail_on_flagged: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        show(ctx, ctx.config.report.terminal_top)
        console.print(f"{result['flagged']} flagged of {result['records']} entity windows; "
                      f"report: {result['report']}", markup=False, highlight=False)
    if fail_on_flagged and result["flagged"]:
        sys.exit(EXIT_FLAGGED)


COMMANDS = (run, archive, features, train, score, report)
