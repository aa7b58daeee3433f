"""Every option more than one command takes, declared once, and the run context they open."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from pipeline.cli.output import console, make_progress
from pipeline.config import load_config
from pipeline.context import RunContext, new_run_id
from pipeline.errors import ConfigError, InputError
from pipeline.io.storage import open_storage, resolve_local_inputs
from pipeline.stages.clock import parse_iso
from pipeline.text import printable

BACKENDS = ("iforest", "rcf-local", "sagemaker-rcf")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

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
backend_option = click.option("--backend", default=None, type=click.Choice(BACKENDS), help="Override model.backend.")
report_dir_option = click.option("--report-dir", default=None,
                                 help="Where to write the report (default: WORKDIR/reports/cluster=C/RUN_ID/).")
from_cloudwatch_option = click.option("--from-cloudwatch", "log_group", default=None,
                                      help="CloudWatch Logs group, e.g. /aws/eks/CLUSTER/cluster.")
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks for errors.")


def log_level_option(default: str):
    return click.option("--log-level", default=default, type=click.Choice(LOG_LEVELS), show_default=True,
                        help="Logging verbosity (to stderr).")


def configure_logging(level: str, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """Logging to stderr at ``level``, once per process: by the main group, or by ``cron`` and ``container``,
    which declare their own --log-level (default INFO: their stderr is the scheduled run's log)."""
    logging.basicConfig(level=getattr(logging, level), format=fmt, stream=sys.stderr)


def range_options(fn):
    for name in ("score-to", "score-from", "train-to", "train-from"):
        fn = click.option(f"--{name}", default=None, help=f"ISO 8601 time ({name.replace('-', ' ')}); default from --now.")(fn)
    return fn


def parse_time_option(value: str | None, flag: str):
    return parse_iso(value, flag) if value else None


def require_workdir(workdir: str) -> None:
    """A command that only reads a workdir stops on a local one that does not exist, before anything creates it."""
    if "://" not in workdir and not Path(workdir).is_dir():
        raise ConfigError(f"no such workdir: {workdir}", hint="give the --workdir an earlier `auditsift run` wrote")


def check_local_inputs(specs: list[str]) -> None:
    """Every local ``--input`` names something readable before a workdir or lock is created (s3:// inputs are listed by
    the archive stage, with the configuration's credentials)."""
    for spec in specs:
        if not spec.startswith("s3://") and not resolve_local_inputs(spec):
            raise InputError(f"no input files found in {spec}", hint="pass files, directories or globs of audit logs")


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
