"""Container entry points for scheduled runs: scale-out feature extraction and the run plan.

``python -m pipeline.processing map --input-dir DIR --output-dir DIR [--config FILE]``
    One SageMaker Processing instance's share of the features stage. SageMaker copies a
    shard of the archive's hour files into ``--input-dir`` (``ShardedByS3Key``); each
    Parquet file goes through ``pipeline.stages.hour_partials`` (``flag_events`` then
    ``partial_table`` and the rule pack's hits), written to
    ``<output-dir>/<features fingerprint>/<same relative dir>/<sha256 of the input[:16]>.parquet``.
    That is the workdir's partial cache layout (``features/cluster=<c>/partials/...``):
    uploaded there, the ordinary ``auditsift features`` stage finds every hour cached and
    only reduces and finalises.

``python -m pipeline.processing reduce --partials-dir DIR --output FILE [--config FILE]``
    Merge every window-partial file under ``--partials-dir`` (``reduce_partials``: counts add,
    sets union, first/last times min/max) and ``finalise`` into the feature table.
    Any split of the events over shards gives the single-process table, provided all
    stages of one request (one auditID) fall in the same shard: the map counts a request
    once per shard it appears in (tests/test_processing.py proves the equivalence).

``python -m pipeline.processing plan --workdir URL --plan-id ID [--now ISO]``
    What a scheduled run does next (``plan_run``): the training and scoring ranges ending
    at ``now`` and whether the model is due for retraining. Written to
    ``state/cluster=<c>/plans/<ID>.json`` for Step Functions to read; the cron runner calls
    ``plan_run`` directly.

``sagemaker-rcf`` split around SageMaker jobs that Step Functions runs with ``.sync``
(``ID`` is the execution's run id; specs are ``state/cluster=<c>/sagemaker/<ID>/{training,scoring}.json``):

``python -m pipeline.processing rcf-train-prepare --workdir URL --spec-id ID``
    Scale the feature table's training rows (``SageMakerRcf.prepare_training``), upload
    them as headerless CSV and write the training spec: the CreateTrainingJob and the
    calibration CreateTransformJob bodies the state machine sends.
``python -m pipeline.processing rcf-train-finish --workdir URL --spec-id ID --training-job T --model-name M --transform-job C``
    ``run_train`` attached to those completed jobs: the same scaling check, threshold
    calibration on the calibration transform's scores, peer-group calibration, baselines,
    manifest and model state as ``auditsift train``.
``python -m pipeline.processing rcf-score-prepare --workdir URL --spec-id ID``
    Scale the scoring rows with the current model and write the scoring spec.
``python -m pipeline.processing rcf-score-finish --workdir URL --spec-id ID --transform-job S``
    ``run_score`` attached to the completed scoring transform: findings and ranks as ``auditsift score``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
import orjson
import pyarrow.parquet as pq

from pipeline.config import Config, load_config
from pipeline.context import RunContext, new_run_id
from pipeline.deploy import cli_boundary
from pipeline.errors import ConfigError, InputError
from pipeline.storage import LocalStorage, open_storage, safe_segment

log = logging.getLogger(__name__)
UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FINGERPRINT = re.compile(r"[0-9a-f]{12}")


def parquet_files(directory: Path) -> list[Path]:
    """Every Parquet file below ``directory`` in path order; dot-files and dot-directories are skipped."""
    return sorted(
        path for path in directory.rglob("*.parquet")
        if not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )


def map_shard(input_dir: Path, output_dir: Path, config: Config) -> dict:
    """Partial aggregates of every archived Parquet file in ``input_dir``, one cache entry per input file.

    Each file goes through ``pipeline.stages.hour_partials`` itself, over a storage rooted
    where both directories are visible, so the map writes exactly the cache files (window
    partials, and whatever else that step caches) the features stage would write.
    """
    from pipeline.stages import features_fingerprint, flag_context, hour_partials, load_rule_pack

    if not input_dir.is_dir():
        raise InputError(f"--input-dir {input_dir} is not a directory", hint="point it at the Processing input LocalPath")
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.commonpath([input_dir, output_dir]))
    ctx = RunContext(LocalStorage(root), config, "map")
    fingerprint = features_fingerprint(ctx)
    flags, pack = flag_context(ctx), load_rule_pack(config)
    counts = {"files": 0, "events": 0, "partial_rows": 0, "fingerprint": fingerprint}
    for path in parquet_files(input_dir):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        directory = "/".join(part for part in (output_dir.relative_to(root).as_posix(), fingerprint,
                                               path.parent.relative_to(input_dir).as_posix()) if part not in ("", "."))
        partial, _ = hour_partials(ctx, flags, pack, path.relative_to(root).as_posix(), f"{directory}/{digest}.parquet")
        counts["files"] += 1
        counts["events"] += pq.read_metadata(path).num_rows
        counts["partial_rows"] += partial.num_rows
    return counts


def partials_root(partials_dir: Path, fingerprint: str) -> Path:
    """The directory holding this configuration's partials: ``<dir>/<fingerprint>`` when present.

    Refuses a directory that holds only other configurations' partials, since merging
    partials computed with different windows or address lists gives a meaningless table.
    """
    if (partials_dir / fingerprint).is_dir():
        return partials_dir / fingerprint
    others = sorted(p.name for p in partials_dir.iterdir() if p.is_dir() and _FINGERPRINT.fullmatch(p.name))
    if others and partials_dir.name != fingerprint:
        raise ConfigError(
            f"{partials_dir} holds partials of features configuration(s) {', '.join(others)}, not {fingerprint}",
            hint="run the map step with the same features config, or pass --partials-dir <dir>/<fingerprint>",
        )
    return partials_dir


def reduce_shards(partials_dir: Path, output: Path, config: Config) -> dict:
    """Merge the partials below ``partials_dir`` and write the finalised feature table to ``output``."""
    import pyarrow as pa

    from features.aggregate import SET_NAMES, reduce_partials
    from features.windows import finalise
    from pipeline.stages import RULES_SUFFIX, features_fingerprint, partials_frame

    if not partials_dir.is_dir():
        raise InputError(f"--partials-dir {partials_dir} is not a directory", hint="point it at the map step's output")
    target = LocalStorage(output.parent)
    fingerprint = features_fingerprint(RunContext(target, config, "reduce"))
    files = [path for path in parquet_files(partials_root(partials_dir, fingerprint)) if not path.name.endswith(RULES_SUFFIX)]
    merged = reduce_partials([partials_frame(pq.read_table(path) for path in files)])
    table = finalise(merged, config.features.window_minutes).drop(columns=list(SET_NAMES))
    target.write_parquet(output.name, pa.Table.from_pandas(table, preserve_index=False))
    return {"files": len(files), "rows": int(len(table)), "fingerprint": fingerprint}


def model_trained_at(model: dict) -> datetime | None:
    """When a model was trained: its id starts with the training run's id (``pipeline.context.new_run_id``)."""
    try:
        return datetime.strptime(str(model.get("id", ""))[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def retrain_due(model: dict | None, config: Config, now: datetime) -> tuple[bool, str]:
    """Whether the scheduled run retrains, and why.

    Age is counted in UTC calendar days, so a daily schedule retrains on exactly every
    ``schedule.retrain_every_days``-th run even though training finishes minutes after
    the run starts.
    """
    if not model:
        return True, "no trained model"
    if model.get("backend") != config.model.backend:
        return True, f"model.backend changed from {model.get('backend')} to {config.model.backend}"
    trained_at = model_trained_at(model)
    if trained_at is None:
        return True, f"cannot tell when model {model.get('id')!r} was trained"
    age = (now.astimezone(UTC).date() - trained_at.date()).days
    every = config.schedule.retrain_every_days
    return age >= every, f"model is {age} days old (retrain every {every})"


def plan_run(ctx: RunContext, now: datetime) -> tuple:
    """The ranges and retrain decision of a scheduled run at ``now``.

    Scores the 24 hours of whole windows ending ``archive.grace_minutes`` before ``now``
    (late CloudWatch delivery) and trains on the ``schedule.train_days`` before that.
    Ranges come from the clock, not from the data, so a run whose log delivery stalled
    finds nothing to score and fails loudly instead of rescoring yesterday.
    Returns ``(Ranges, plan dict)``.
    """
    from pipeline.stages import Ranges, iso

    config = ctx.config
    window = timedelta(minutes=config.features.window_minutes)
    settled = now.astimezone(UTC) - timedelta(minutes=config.archive.grace_minutes)
    score_to = EPOCH + (settled - EPOCH) // window * window
    score_from = score_to - timedelta(hours=24)
    ranges = Ranges(score_from - timedelta(days=config.schedule.train_days), score_from, score_from, score_to)
    retrain, reason = retrain_due(ctx.read_state().get("model"), config, now)
    return ranges, {"now": iso(now), "retrain": retrain, "reason": reason, "ranges": ranges.as_dict()}


def plan_key(ctx: RunContext, plan_id: str) -> str:
    return f"state/cluster={safe_segment(ctx.cluster)}/plans/{safe_segment(plan_id)}.json"


SPEC_KINDS = ("training", "scoring")


def rcf_spec_key(ctx: RunContext, spec_id: str, kind: str) -> str:
    """Where the split sagemaker-rcf steps of run ``spec_id`` keep their spec (Step Functions reads it)."""
    assert kind in SPEC_KINDS
    return f"state/cluster={safe_segment(ctx.cluster)}/sagemaker/{safe_segment(spec_id)}/{kind}.json"


def _require_rcf(ctx: RunContext) -> None:
    if ctx.config.model.backend != "sagemaker-rcf":
        raise ConfigError(f"model.backend is {ctx.config.model.backend}; the rcf-* steps are for sagemaker-rcf",
                          hint="regenerate the state machine with `auditsift deploy stepfunctions` for this config")


def _read_spec(ctx: RunContext, spec_id: str, kind: str) -> dict:
    key = rcf_spec_key(ctx, spec_id, kind)
    spec = ctx.storage.read_json_or(key, None)
    if not isinstance(spec, dict) or spec.get("kind") != kind or spec.get("spec_id") != spec_id:
        raise InputError(f"no {kind} spec for run {spec_id} at {ctx.storage.uri(key)}",
                         hint=f"the rcf-{'train' if kind == 'training' else 'score'}-prepare step of this run writes it")
    return spec


def prepare_rcf_training(ctx: RunContext, spec_id: str) -> dict:
    """Stage the scaled training rows for SageMaker and write the training spec; returns a summary."""
    from features.windows import FEATURE_NAMES, feature_matrix
    from pipeline.stages import build_detector, training_rows

    _require_rcf(ctx)
    train, _ = training_rows(ctx)
    spec = build_detector(ctx).prepare_training(feature_matrix(train), list(FEATURE_NAMES), spec_id)
    key = rcf_spec_key(ctx, spec_id, "training")
    ctx.storage.write_json(key, spec)
    return {"spec": ctx.storage.uri(key), "rows": spec["rows"], "train_data": spec["train_data"], "digest": spec["digest"]}


def finish_rcf_training(ctx: RunContext, spec_id: str, training_job: str, model_name: str, transform_job: str) -> dict:
    """``run_train`` on the completed training job, model and calibration transform of run ``spec_id``."""
    from pipeline.aws.sagemaker_rcf import CompletedJobs, completed_jobs
    from pipeline.stages import run_train

    _require_rcf(ctx)
    jobs = CompletedJobs(training_spec=_read_spec(ctx, spec_id, "training"), training_job=training_job,
                         model_name=model_name, calibration_job=transform_job)
    with completed_jobs(jobs):
        return run_train(ctx)


def prepare_rcf_scoring(ctx: RunContext, spec_id: str) -> dict:
    """Stage the scaled scoring rows for the current model's batch transform and write the scoring spec."""
    from features.windows import feature_matrix
    from pipeline.stages import iso, load_features, load_model

    _require_rcf(ctx)
    table, _, ranges = load_features(ctx)
    detector, model, _ = load_model(ctx)
    if model["backend"] != "sagemaker-rcf":
        raise ConfigError(f"the current model {model['id']} is {model['backend']}, not sagemaker-rcf",
                          hint="retrain: start the execution with {\"retrain\": true}")
    records = table[table["split"] == "score"].reset_index(drop=True)
    if records.empty:
        raise ConfigError(f"no entity windows in the scoring range {iso(ranges.score_from)}..{iso(ranges.score_to)}",
                          hint="check --score-from/--score-to against the archived data")
    spec = detector.prepare_scoring(feature_matrix(records), spec_id)
    key = rcf_spec_key(ctx, spec_id, "scoring")
    ctx.storage.write_json(key, spec)
    return {"spec": ctx.storage.uri(key), "rows": spec["rows"], "model": model["id"], "digest": spec["digest"]}


def finish_rcf_scoring(ctx: RunContext, spec_id: str, transform_job: str) -> dict:
    """``run_score`` with the model scores of the completed scoring transform of run ``spec_id``."""
    from pipeline.aws.sagemaker_rcf import CompletedJobs, completed_jobs
    from pipeline.scoring import run_score

    _require_rcf(ctx)
    with completed_jobs(CompletedJobs(scoring_spec=_read_spec(ctx, spec_id, "scoring"), scoring_job=transform_job)):
        return run_score(ctx)


def _echo(value: dict) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), show_default=True,
              help="Logging verbosity (to stderr, which SageMaker sends to CloudWatch Logs).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def processing_cli(log_level: str, debug: bool) -> None:
    """auditsift container entry points: scale-out feature map/reduce and the scheduled-run plan."""
    logging.basicConfig(level=getattr(logging, log_level), format="%(levelname)s %(name)s: %(message)s")


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                             help="YAML config (default: configs/local.yaml).")


@processing_cli.command("map")
@click.option("--input-dir", required=True, type=click.Path(path_type=Path), help="Archive hour files of this shard.")
@click.option("--output-dir", required=True, type=click.Path(path_type=Path), help="Where partial files are written.")
@config_option
@cli_boundary
def map_command(input_dir: Path, output_dir: Path, config_path: str | None) -> None:
    """Partial aggregates of one shard of archived events (the features map step)."""
    _echo(map_shard(input_dir, output_dir, load_config(config_path)))


@processing_cli.command("reduce")
@click.option("--partials-dir", required=True, type=click.Path(path_type=Path), help="Output of the map step(s).")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Feature table (Parquet).")
@config_option
@cli_boundary
def reduce_command(partials_dir: Path, output: Path, config_path: str | None) -> None:
    """Merge map outputs and finalise them into the feature table (the features reduce step)."""
    _echo(reduce_shards(partials_dir, output, load_config(config_path)))


@processing_cli.command("plan")
@click.option("--workdir", required=True, help="Workdir: a local directory or s3://bucket/prefix.")
@click.option("--plan-id", required=True, help="Names the plan file (Step Functions passes its run id).")
@click.option("--now", default=None, help="ISO 8601 time the run is for (default: the current time).")
@config_option
@cli_boundary
def plan_command(workdir: str, plan_id: str, now: str | None, config_path: str | None) -> None:
    """Decide the ranges and whether to retrain; write state/cluster=<c>/plans/<ID>.json."""
    from pipeline.stages import parse_iso

    config = load_config(config_path)
    ctx = RunContext(open_storage(workdir, config), config, plan_id)
    _, plan = plan_run(ctx, parse_iso(now, "--now") if now else datetime.now(UTC))
    ctx.storage.write_json(plan_key(ctx, plan_id), plan)
    _echo(plan)


workdir_option = click.option("--workdir", required=True, help="Workdir: s3://bucket/prefix.")
spec_option = click.option("--spec-id", required=True, help="Names the run's spec files (Step Functions passes its run id).")
wait_option = click.option("--wait-lock", default=0.0, type=float, show_default=True,
                           help="Seconds to wait for another run on the same workdir before giving up.")


def _rcf_step(workdir: str, config_path: str | None, wait_lock: float, step, *args) -> None:
    config = load_config(config_path)
    ctx = RunContext(open_storage(workdir, config), config, new_run_id())
    _require_rcf(ctx)
    with ctx.storage.lock(wait_seconds=wait_lock):
        result = step(ctx, *args)
    _echo({key: value for key, value in result.items() if key != "calibration"})


@processing_cli.command("rcf-train-prepare")
@workdir_option
@spec_option
@config_option
@wait_option
@cli_boundary
def rcf_train_prepare_command(workdir: str, spec_id: str, config_path: str | None, wait_lock: float) -> None:
    """Scale and upload the training rows; write the training spec for the SageMaker steps."""
    _rcf_step(workdir, config_path, wait_lock, prepare_rcf_training, spec_id)


@processing_cli.command("rcf-train-finish")
@workdir_option
@spec_option
@click.option("--training-job", required=True, help="The completed training job.")
@click.option("--model-name", required=True, help="The SageMaker model created from its artifacts.")
@click.option("--transform-job", required=True, help="The completed batch transform over the training rows.")
@config_option
@wait_option
@cli_boundary
def rcf_train_finish_command(workdir: str, spec_id: str, training_job: str, model_name: str, transform_job: str,
                             config_path: str | None, wait_lock: float) -> None:
    """Calibrate on the training transform's scores and register the model (as `auditsift train`)."""
    _rcf_step(workdir, config_path, wait_lock, finish_rcf_training, spec_id, training_job, model_name, transform_job)


@processing_cli.command("rcf-score-prepare")
@workdir_option
@spec_option
@config_option
@wait_option
@cli_boundary
def rcf_score_prepare_command(workdir: str, spec_id: str, config_path: str | None, wait_lock: float) -> None:
    """Scale and upload the scoring rows for the current model; write the scoring spec."""
    _rcf_step(workdir, config_path, wait_lock, prepare_rcf_scoring, spec_id)


@processing_cli.command("rcf-score-finish")
@workdir_option
@spec_option
@click.option("--transform-job", required=True, help="The completed batch transform over the scoring rows.")
@config_option
@wait_option
@cli_boundary
def rcf_score_finish_command(workdir: str, spec_id: str, transform_job: str, config_path: str | None,
                             wait_lock: float) -> None:
    """Rank and explain findings from the scoring transform's scores (as `auditsift score`)."""
    _rcf_step(workdir, config_path, wait_lock, finish_rcf_scoring, spec_id, transform_job)


if __name__ == "__main__":  # pragma: no cover
    processing_cli()
