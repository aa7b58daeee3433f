"""The ``auditsift`` command line: thin commands over the stage functions.

Every command loads the configuration once, opens the workdir, takes the workdir lock
where it writes, calls stage functions, and turns domain errors into one line plus a
hint with a documented exit code (docs/operations.md):
0 ok, 1 unexpected error, 2 bad configuration/arguments/input, 3 storage, 4 AWS call,
10 findings flagged (only with --fail-on-flagged), 75 workdir locked by another run.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.config import load_config
from pipeline.context import ProgressHandle, RunContext, new_run_id
from pipeline.errors import AuditsiftError, ConfigError
from pipeline.storage import open_storage
from pipeline.text import printable

log = logging.getLogger("auditsift")
console = Console(stderr=True)
EXIT_FLAGGED = 10


class RichProgress(ProgressHandle):
    def __init__(self, progress: Progress, description: str, total: int | None):
        self.progress = progress
        self.task = progress.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        self.progress.advance(self.task, amount)

    def close(self) -> None:
        self.progress.update(self.task, visible=True)


def make_progress(enabled: bool):
    if not enabled:
        return None, None
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    return progress, (lambda description, total: RichProgress(progress, description, total))


def parse_time_option(value: str | None, flag: str):
    from pipeline.stages import parse_iso

    return parse_iso(value, flag) if value else None


def open_context(workdir: str, config_path: str | None, cluster: str | None, backend: str | None = None,
                 quiet: bool = False) -> RunContext:
    overrides = {}
    if cluster:
        overrides["cluster"] = cluster
    if backend:
        overrides["model"] = {"backend": backend}
    config = load_config(config_path, overrides)
    progress, factory = make_progress(not quiet and sys.stderr.isatty())
    ctx = RunContext(open_storage(workdir, config), config, new_run_id())
    if factory:
        ctx.progress = factory
        ctx.live_progress = progress
    if not quiet:
        ctx.notify = lambda message: console.print(printable(message), markup=False, highlight=False)
    return ctx


def boundary(fn):
    """Turn every error into one line on stderr and an exit code; tracebacks only with --debug."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except AuditsiftError as error:
            _fail(f"error: {error.message}", error.hint, error.exit_code, debug)
        except Exception as error:  # the outermost boundary: report, never hide
            hint = getattr(error, "hint", None)
            if hint is not None and type(error).__module__.startswith("training."):
                _fail(f"error: {error}", hint, 2, debug)
            _fail(f"internal error: {type(error).__name__}: {error}", "rerun with --debug for the traceback and report it", 1, debug)

    return wrapper


def _fail(message: str, hint: str | None, code: int, debug: bool) -> None:
    if debug:
        console.print_exception()
    first_line = printable(message.splitlines()[0] if message else message)
    console.print(first_line[:400] + ("…" if len(first_line) > 400 else ""), markup=False, highlight=False, soft_wrap=True)
    if hint:
        console.print(printable(f"hint: {hint}"), markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--log-level", default="WARNING", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), show_default=True,
              help="Logging verbosity (to stderr).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="auditsift")
def main(log_level: str, debug: bool) -> None:
    """auditsift: find intruders in Amazon EKS Kubernetes audit logs.

    Archive audit logs to partitioned Parquet, extract per-identity and per-address
    window features, train an anomaly model, and write ranked, explained reports.
    Start with `auditsift sample --out sample-data` then `auditsift run --input sample-data --workdir work
    --now T` with the clock `sample` prints (the sample's dates are fixed by its seed).
    """
    logging.basicConfig(level=getattr(logging, log_level), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


workdir_option = click.option("--workdir", required=True, help="Workdir: a local directory or s3://bucket/prefix.")
config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                             help="YAML config (default: configs/local.yaml).")
cluster_option = click.option("--cluster", default=None, help="Cluster name (partition and state key); overrides the config.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
wait_option = click.option("--wait-lock", default=0.0, type=float, show_default=True,
                           help="Seconds to wait for another run on the same workdir before giving up.")


now_option = click.option("--now", default=None, help=(
    "ISO 8601 time the run is for (reruns, backfills, sample data); default: the current time. The scored day ends at "
    "its last whole window, and events stamped later than it plus archive.future_skew_minutes are quarantined."))


def range_options(fn):
    for name in ("score-to", "score-from", "train-to", "train-from"):
        fn = click.option(f"--{name}", default=None, help=f"ISO 8601 time ({name.replace('-', ' ')}); default from --now.")(fn)
    return fn


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write the sample into.")
@click.option("--days", default=4, show_default=True, type=click.IntRange(2, 60), help="Days of audit events (attacks land on the last).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: identities, times and attacks vary with it.")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0.01, 100.0), help="Multiplier on background volume.")
@boundary
def sample(out: str, days: int, seed: int, scale: float) -> None:
    """Write realistic EKS audit logs with injected attacks (gzipped JSON lines + labels.json)."""
    from pipeline.sample import generate_sample, sample_clock
    from pipeline.stages import iso

    summary = generate_sample(Path(out), days=days, seed=seed, scale=scale)
    clock = iso(sample_clock(Path(out)))
    total = sum(summary.get("events_per_day", {}).values()) if isinstance(summary.get("events_per_day"), dict) else summary.get("events")
    console.print(f"wrote {total} events over {days} days to {out} ({len(summary.get('scenarios', []))} attack scenarios in labels.json); "
                  f"the data ends at {clock}: score its last day with `auditsift run --input {out} --workdir WORKDIR --now {clock}`",
                  markup=False, highlight=False, soft_wrap=True)


@main.command()
@click.option("--input", "inputs", multiple=True, required=True, help="File, directory, glob or s3:// prefix (repeatable).")
@workdir_option
@config_option
@cluster_option
@range_options
@now_option
@click.option("--report-dir", default=None, help="Where to write the report (default: WORKDIR/reports/cluster=C/RUN_ID/).")
@click.option("--backend", default=None, type=click.Choice(["iforest", "rcf-local", "sagemaker-rcf"]), help="Override model.backend.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable result object on stdout.")
@click.option("--fail-on-flagged", is_flag=True, help=f"Exit {EXIT_FLAGGED} when any finding is flagged.")
@quiet_option
@wait_option
@boundary
def run(inputs, workdir, config_path, cluster, train_from, train_to, score_from, score_to, now, report_dir, backend, as_json,
        fail_on_flagged, quiet, wait_lock) -> None:
    """Archive, features, train, score and report in one go: the day ending at --now (default: now)."""
    from pipeline.runner import run_pipeline

    times = {k: parse_time_option(v, f"--{k.replace('_', '-')}") for k, v in
             dict(train_from=train_from, train_to=train_to, score_from=score_from, score_to=score_to, now=now).items()}
    ctx = open_context(workdir, config_path, cluster, backend, quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        result = run_pipeline(ctx, list(inputs), report_dir=report_dir, **times)
    finish(ctx, result, as_json, fail_on_flagged)


@main.command()
@click.option("--input", "inputs", multiple=True, help="File, directory, glob or s3:// prefix (repeatable).")
@click.option("--from-cloudwatch", "log_group", default=None, help="CloudWatch Logs group, e.g. /aws/eks/CLUSTER/cluster.")
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
    from pipeline.stages import run_archive, write_quarantine

    if bool(inputs) == bool(log_group):
        raise ConfigError("give either --input or --from-cloudwatch", hint="e.g. --input logs/ or --from-cloudwatch /aws/eks/prod/cluster")
    clock = parse_time_option(now, "--now")
    ctx = open_context(workdir, config_path, cluster, quiet=quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        if log_group:
            from pipeline.aws.cloudwatch import archive_from_cloudwatch

            result = archive_from_cloudwatch(ctx.storage, log_group, ctx.cluster, ctx.run_id, ctx.config,
                                             start=parse_time_option(start, "--start"), end=parse_time_option(end, "--end"), now=clock)
            write_quarantine(ctx, result.quarantine)
            counts = result.as_dict()
            ctx.update_state("archive", {"run_id": ctx.run_id, **{k: v for k, v in counts.items() if k != "inputs"}})
        else:
            counts = run_archive(ctx, list(inputs), clock)
    summary = {k: v for k, v in counts.items() if k != "inputs"}
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        console.print(f"archived {summary['events_added']} new events ({summary['duplicates']} duplicates, "
                      f"{summary['audit_id_collisions']} audit-ID collisions, {summary['quarantined']} quarantined) "
                      f"into {ctx.storage.url}", markup=False, highlight=False)


@main.command()
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
    from pipeline.stages import resolve_ranges, run_features

    times = [parse_time_option(train_from, "--train-from"), parse_time_option(train_to, "--train-to"),
             parse_time_option(score_from, "--score-from"), parse_time_option(score_to, "--score-to"),
             parse_time_option(now, "--now")]
    ctx = open_context(workdir, config_path, cluster, quiet=quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        ranges = resolve_ranges(ctx, *times)
        counts = run_features(ctx, ranges)
    console.print(f"features: {counts['train_rows']} training and {counts['score_rows']} scoring entity windows",
                  markup=False, highlight=False)


@main.command()
@workdir_option
@config_option
@cluster_option
@click.option("--backend", default=None, type=click.Choice(["iforest", "rcf-local", "sagemaker-rcf"]), help="Override model.backend.")
@quiet_option
@wait_option
@boundary
def train(workdir, config_path, cluster, backend, quiet, wait_lock) -> None:
    """Train the anomaly model on the latest feature table's training rows."""
    from pipeline.stages import run_train

    ctx = open_context(workdir, config_path, cluster, backend, quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        info = run_train(ctx)
    console.print(f"model {info['id']}: threshold {info['threshold']:.4f} ({info['threshold_method']}), "
                  f"{info['train_rows']} training rows", markup=False, highlight=False)


@main.command()
@workdir_option
@config_option
@cluster_option
@quiet_option
@wait_option
@boundary
def score(workdir, config_path, cluster, quiet, wait_lock) -> None:
    """Score the scoring range with the latest model and the rule pack."""
    from pipeline.scoring import run_score

    ctx = open_context(workdir, config_path, cluster, quiet=quiet)
    with live(ctx), ctx.storage.lock(wait_seconds=wait_lock):
        summary = run_score(ctx)
    console.print(f"scored {summary['records']} entity windows: {summary['flagged']} flagged, {summary['suppressed']} suppressed",
                  markup=False, highlight=False)


@main.command()
@workdir_option
@config_option
@cluster_option
@click.option("--report-dir", default=None, help="Where to write the report (default: WORKDIR/reports/cluster=C/RUN_ID/).")
@click.option("--top", "top", default=None, type=click.IntRange(1, 1000), help="Print this many findings (default: report.terminal_top).")
@click.option("--no-write", is_flag=True, help="Only print the latest report's findings; write nothing.")
@quiet_option
@wait_option
@boundary
def report(workdir, config_path, cluster, report_dir, top, no_write, quiet, wait_lock) -> None:
    """Write the report files for the latest scores and print the top findings."""
    from pipeline.report import run_report

    ctx = open_context(workdir, config_path, cluster, quiet=quiet)
    if no_write:
        findings = latest_findings(ctx)
        print_findings(findings, top or ctx.config.report.terminal_top)
        return
    with ctx.storage.lock(wait_seconds=wait_lock):
        run = run_report(ctx, report_dir)
    print_findings(latest_findings(ctx), top or ctx.config.report.terminal_top)
    console.print(f"report: {run['report']['html']}", markup=False, highlight=False)


@main.command()
@workdir_option
@config_option
@click.option("--force", is_flag=True, help="Remove the lock even while it holds: only when its run is certainly dead.")
@boundary
def unlock(workdir, config_path, force) -> None:
    """Remove the workdir lock a dead or stuck run left, saying whose it was (host, pid, age).

    A lock whose owner is gone or that is older than storage.lock_expire_minutes is removed;
    one that still holds is refused (exit 75) unless --force."""
    config = load_config(config_path)
    console.print(open_storage(workdir, config).unlock(force=force), markup=False, highlight=False, soft_wrap=True)


@main.command()
@config_option
@boundary
def catalog(config_path) -> None:
    """Print every event flag, window feature and rule (Markdown), from their registries."""
    from pipeline.catalog import catalog_markdown
    from pipeline.stages import load_rule_pack

    click.echo(catalog_markdown(load_rule_pack(load_config(config_path))), nl=False)


def latest_findings(ctx: RunContext) -> list[dict]:
    from pipeline.errors import StageError

    score_state = ctx.read_state().get("score")
    if not score_state:
        raise StageError("nothing scored yet in this workdir", hint="run `auditsift run` or `auditsift score` first")
    return ctx.storage.read_json(f"{score_state['key']}/findings.json")


def print_findings(findings: list[dict], top: int) -> None:
    """The top findings as a terminal table: log-derived text printed literally, never as markup, with control
    characters and bidirectional overrides shown as escapes (``pipeline.text.printable``)."""
    from rich.text import Text

    table = Table(title=f"top {min(top, len(findings))} of {len(findings)} entity windows", show_lines=False)
    for column in ("rank", "score", "flag", "entity", "window (UTC)", "rules", "top reason"):
        table.add_column(column, overflow="fold")
    for f in findings[:top]:
        rules = ", ".join(f"{h['rule']}×{h['count']}" for h in f["rule_hits"][:3])
        reason = f["reasons"][0] if f["reasons"] else None
        reason_text = f"{reason['feature']}={reason['value']} (usual {reason['baseline']})" if reason else ""
        flag = "FLAG" if f["flagged"] else ("supp" if f.get("suppressed") else "")
        table.add_row(str(f["rank"]), f"{f['score']:.2f}", flag, Text(printable(f"{f['entity_type']}: {f['entity']}")),
                      f["window_start"][5:16].replace("T", " "), Text(printable(rules)), Text(printable(reason_text)))
    Console().print(table)


class live:
    """Show the run's progress bars while the block runs (no-op without a terminal)."""

    def __init__(self, ctx: RunContext):
        self.progress = getattr(ctx, "live_progress", None)

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()
        return False


def finish(ctx: RunContext, result: dict, as_json: bool, fail_on_flagged: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print_findings(latest_findings(ctx), ctx.config.report.terminal_top)
        console.print(f"{result['flagged']} flagged of {result['records']} entity windows; "
                      f"report: {result['report']}", markup=False, highlight=False)
    if fail_on_flagged and result["flagged"]:
        sys.exit(EXIT_FLAGGED)


from pipeline.deploy import deploy_command  # noqa: E402  (command groups registered after main exists)
from pipeline.findings_export import export_command  # noqa: E402
from pipeline.triage import triage_command  # noqa: E402

main.add_command(triage_command)
main.add_command(deploy_command)
main.add_command(export_command)

if __name__ == "__main__":  # pragma: no cover
    main()
