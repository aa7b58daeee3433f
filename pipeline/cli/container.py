"""``auditsift container ...``: the steps a scheduled run's Step Functions definition starts in the auditsift image
(``pipeline.deploy``): thin commands over ``pipeline.stages.scaleout``. Each prints its result as one JSON object."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click
import orjson

from pipeline.cli.boundary import boundary
from pipeline.cli.options import config_option, configure_logging, debug_option, log_level_option, now_option, wait_option, workdir_option
from pipeline.config import load_config
from pipeline.context import RunContext, new_run_id
from pipeline.io.storage import open_storage
from pipeline.stages.clock import parse_iso
from pipeline.stages.scaleout import (
    finish_rcf_scoring,
    finish_rcf_training,
    map_shard,
    plan_key,
    plan_run,
    prepare_rcf_scoring,
    prepare_rcf_training,
    reduce_shards,
    require_rcf,
)

UTC = timezone.utc
spec_option = click.option("--spec-id", required=True, help="Names the run's spec files (Step Functions passes its run id).")


def _echo(value: dict) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


@click.group("container")
@log_level_option("INFO")
@debug_option
def container(log_level: str, debug: bool) -> None:
    """The scheduled run's container steps (SageMaker Processing): scale-out features map/reduce, the run plan,
    and sagemaker-rcf split around the SageMaker jobs. Their stderr is the job's log in CloudWatch Logs."""
    configure_logging(log_level)


@container.command("map")
@click.option("--input-dir", required=True, type=click.Path(path_type=Path), help="Archive hour files of this shard.")
@click.option("--output-dir", required=True, type=click.Path(path_type=Path), help="Where partial files are written.")
@config_option
@boundary
def map_command(input_dir: Path, output_dir: Path, config_path: str | None) -> None:
    """Partial aggregates of one shard of archived events (the features map step)."""
    _echo(map_shard(input_dir, output_dir, load_config(config_path)))


@container.command("reduce")
@click.option("--partials-dir", required=True, type=click.Path(path_type=Path), help="Output of the map step(s).")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Feature table (Parquet).")
@config_option
@boundary
def reduce_command(partials_dir: Path, output: Path, config_path: str | None) -> None:
    """Merge map outputs and finalise them into the feature table (the features reduce step)."""
    _echo(reduce_shards(partials_dir, output, load_config(config_path)))


@container.command("plan")
@workdir_option
@click.option("--plan-id", required=True, help="Names the plan file (Step Functions passes its run id).")
@now_option
@config_option
@boundary
def plan_command(workdir: str, plan_id: str, now: str | None, config_path: str | None) -> None:
    """Decide the ranges and whether to retrain; write state/cluster=<c>/plans/<ID>.json."""
    config = load_config(config_path)
    ctx = RunContext(open_storage(workdir, config), config, plan_id)
    _, plan = plan_run(ctx, parse_iso(now, "--now") if now else datetime.now(UTC))
    ctx.storage.write_json(plan_key(ctx, plan_id), plan)
    _echo(plan)




spec_option = click.option("--spec-id", required=True, help="Names the run's spec files (Step Functions passes its run id).")




def _rcf_step(workdir: str, config_path: str | None, wait_lock: float, step, *args) -> None:
    config = load_config(config_path)
    ctx = RunContext(open_storage(workdir, config), config, new_run_id())
    require_rcf(ctx)
    with ctx.storage.lock(wait_seconds=wait_lock):
        result = step(ctx, *args)
    _echo({key: value for key, value in result.items() if key != "calibration"})


@container.command("rcf-train-prepare")
@workdir_option
@spec_option
@config_option
@wait_option
@boundary
def rcf_train_prepare_command(workdir: str, spec_id: str, config_path: str | None, wait_lock: float) -> None:
    """Scale and upload the training rows; write the training spec for the SageMaker steps."""
    _rcf_step(workdir, config_path, wait_lock, prepare_rcf_training, spec_id)


@container.command("rcf-train-finish")
@workdir_option
@spec_option
@click.option("--training-job", required=True, help="The completed training job.")
@click.option("--model-name", required=True, help="The SageMaker model created from its artifacts.")
@click.option("--transform-job", required=True, help="The completed batch transform over the training rows.")
@config_option
@wait_option
@boundary
def rcf_train_finish_command(workdir: str, spec_id: str, training_job: str, model_name: str, transform_job: str,
                             config_path: str | None, wait_lock: float) -> None:
    """Calibrate on the training transform's scores and register the model (as `auditsift train`)."""
    _rcf_step(workdir, config_path, wait_lock, finish_rcf_training, spec_id, training_job, model_name, transform_job)


@container.command("rcf-score-prepare")
@workdir_option
@spec_option
@config_option
@wait_option
@boundary
def rcf_score_prepare_command(workdir: str, spec_id: str, config_path: str | None, wait_lock: float) -> None:
    """Scale and upload the scoring rows for the current model; write the scoring spec."""
    _rcf_step(workdir, config_path, wait_lock, prepare_rcf_scoring, spec_id)


@container.command("rcf-score-finish")
@workdir_option
@spec_option
@click.option("--transform-job", required=True, help="The completed batch transform over the scoring rows.")
@config_option
@wait_option
@boundary
def rcf_score_finish_command(workdir: str, spec_id: str, transform_job: str, config_path: str | None,
                             wait_lock: float) -> None:
    """Rank and explain findings from the scoring transform's scores (as `auditsift score`)."""
    _rcf_step(workdir, config_path, wait_lock, finish_rcf_scoring, spec_id, transform_job)
