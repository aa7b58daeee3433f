"""The container steps of a scheduled run (``auditsift container ...``, pipeline/cli/container.py): scale-out
feature extraction and the run plan.

``auditsift container map --input-dir DIR --output-dir DIR [--config FILE]``
    One SageMaker Processing instance's share of the features stage. SageMaker copies a
    shard of the archive's hour files into ``--input-dir`` (``ShardedByS3Key``); each
    Parquet file goes through ``pipeline.stages.features.hour_partials`` (``flag_events`` then
    ``partial_table`` and the rule pack's hits), written to
    ``<output-dir>/<features fingerprint>/<same relative dir>/<sha256 of the input[:16]>.arrow`` (and ``.rules.arrow``,
    and ``.requests.arrow`` for a busy hour).
    That is the workdir's partial cache layout (``features/cluster=<c>/partials/...``):
    uploaded there, the ordinary ``auditsift features`` stage finds every hour cached and
    only reduces and finalises.

``auditsift container reduce --partials-dir DIR --output FILE [--config FILE]``
    Merge every window-partial file under ``--partials-dir`` (``reduce_partials``: counts add,
    sets union, first/last times min/max) and ``finalise`` into the feature table.
    Any split of the events over shards gives the single-process table, provided all
    stages of one request (one auditID) fall in the same shard: the map counts a request
    once per shard it appears in (tests/pipeline/stages/test_processing.py proves the equivalence).

``auditsift container plan --workdir URL --plan-id ID [--now ISO]``
    What a scheduled run does next (``plan_run``): the training and scoring ranges ending
    at ``now`` and whether the model is due for retraining. Written to
    ``state/cluster=<c>/plans/<ID>.json`` for Step Functions to read; the cron runner calls
    ``plan_run`` directly.

``sagemaker-rcf`` split around SageMaker jobs that Step Functions runs with ``.sync``
(``ID`` is the execution's run id; specs are ``state/cluster=<c>/sagemaker/<ID>/{training,scoring}.json``):

``auditsift container rcf-train-prepare --workdir URL --spec-id ID``
    Scale the feature table's training rows (``SageMakerRcf.prepare_training``), upload
    them as headerless CSV and write the training spec: the CreateTrainingJob and the
    calibration CreateTransformJob bodies the state machine sends.
``auditsift container rcf-train-finish --workdir URL --spec-id ID --training-job T --model-name M --transform-job C``
    ``run_train`` attached to those completed jobs: the same scaling check, threshold
    calibration on the calibration transform's scores, peer-group calibration, baselines,
    manifest and model state as ``auditsift train``.
``auditsift container rcf-score-prepare --workdir URL --spec-id ID``
    Scale the scoring rows with the current model and write the scoring spec.
``auditsift container rcf-score-finish --workdir URL --spec-id ID --transform-job S``
    ``run_score`` attached to the completed scoring transform: findings and ranks as ``auditsift score``."""
from __future__ import annotations

import hashlib
import logging
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.aggregate import SET_NAMES, reduce_partials
from features.windows import FEATURE_NAMES, feature_matrix, finalise
from pipeline.catalog import load_rule_pack
from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import ConfigError, InputError
from pipeline.io.storage import LocalStorage, safe_segment
from pipeline.stages.clock import iso
from pipeline.stages.features import (
    PARTIALS_SUFFIX,
    features_fingerprint,
    flag_context,
    hour_partials,
    is_partials_file,
    load_features,
    partials_frame,
    read_cache,
)
from pipeline.stages.ranges import Ranges, training_start
from pipeline.stages.score import run_score
from pipeline.stages.train import build_detector, load_model, run_train, training_rows

log = logging.getLogger(__name__)
UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FINGERPRINT = re.compile(r"[0-9a-f]{12}")


def files_below(directory: Path, suffix: str = ".parquet") -> list[Path]:
    """Every file named ``*suffix`` below ``directory`` in path order; dot-files and dot-directories are skipped."""
    return sorted(
        path for path in directory.rglob(f"*{suffix}")
        if not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )


def map_shard(input_dir: Path, output_dir: Path, config: Config) -> dict:
    """Partial aggregates of every archived Parquet file in ``input_dir``, one cache entry per input file.

    Each file goes through ``pipeline.stages.features.hour_partials`` itself, over a storage rooted
    where both directories are visible, so the map writes exactly the cache files (window
    partials, and whatever else that step caches) the features stage would write.
    """

    if not input_dir.is_dir():
        raise InputError(f"--input-dir {input_dir} is not a directory", hint="point it at the Processing input LocalPath")
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.commonpath([input_dir, output_dir]))
    ctx = RunContext(LocalStorage(root), config, "map")
    fingerprint = features_fingerprint(ctx)
    flags, pack = flag_context(ctx), load_rule_pack(config)
    counts = {"files": 0, "events": 0, "partial_rows": 0, "fingerprint": fingerprint}
    for path in files_below(input_dir):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        directory = "/".join(part for part in (output_dir.relative_to(root).as_posix(), fingerprint,
                                               path.parent.relative_to(input_dir).as_posix()) if part not in ("", "."))
        partial, _ = hour_partials(ctx, flags, pack, path.relative_to(root).as_posix(), f"{directory}/{digest}{PARTIALS_SUFFIX}")
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
            hint="run the map step with the same features config and auditsift release, or pass --partials-dir <dir>/<fingerprint>",
        )
    return partials_dir


def reduce_shards(partials_dir: Path, output: Path, config: Config) -> dict:
    """Merge the partials below ``partials_dir`` and write the finalised feature table to ``output``."""
    if not partials_dir.is_dir():
        raise InputError(f"--partials-dir {partials_dir} is not a directory", hint="point it at the map step's output")
    target = LocalStorage(output.parent)
    fingerprint = features_fingerprint(RunContext(target, config, "reduce"))
    files = [path for path in files_below(partials_root(partials_dir, fingerprint), PARTIALS_SUFFIX) if is_partials_file(path.name)]
    merged = reduce_partials([partials_frame(read_cache(path.read_bytes()) for path in files)])
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
    (late CloudWatch delivery) and trains on the ``schedule.train_days`` before that, from the first archived
    event in them (``ranges.training_start``, as ``auditsift run``). The scored range comes from the clock, not
    from the data, so a run whose log delivery stalled
    finds nothing to score and fails loudly instead of rescoring yesterday.
    Returns ``(Ranges, plan dict)``.
    """

    config = ctx.config
    window = timedelta(minutes=config.features.window_minutes)
    settled = now.astimezone(UTC) - timedelta(minutes=config.archive.grace_minutes)
    score_to = EPOCH + (settled - EPOCH) // window * window
    score_from = score_to - timedelta(hours=24)
    ranges = Ranges(training_start(ctx, score_from), score_from, score_from, score_to)
    retrain, reason = retrain_due(ctx.read_state().get("model"), config, now)
    return ranges, {"now": iso(now), "retrain": retrain, "reason": reason, "ranges": ranges.as_dict()}


def plan_key(ctx: RunContext, plan_id: str) -> str:
    return f"state/cluster={safe_segment(ctx.cluster)}/plans/{safe_segment(plan_id)}.json"


SPEC_KINDS = ("training", "scoring")


def rcf_spec_key(ctx: RunContext, spec_id: str, kind: str) -> str:
    """Where the split sagemaker-rcf steps of run ``spec_id`` keep their spec (Step Functions reads it)."""
    assert kind in SPEC_KINDS
    return f"state/cluster={safe_segment(ctx.cluster)}/sagemaker/{safe_segment(spec_id)}/{kind}.json"


def require_rcf(ctx: RunContext) -> None:
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

    require_rcf(ctx)
    train, _ = training_rows(ctx)
    spec = build_detector(ctx).prepare_training(feature_matrix(train), list(FEATURE_NAMES), spec_id)
    key = rcf_spec_key(ctx, spec_id, "training")
    ctx.storage.write_json(key, spec)
    return {"spec": ctx.storage.uri(key), "rows": spec["rows"], "train_data": spec["train_data"], "digest": spec["digest"]}


def finish_rcf_training(ctx: RunContext, spec_id: str, training_job: str, model_name: str, transform_job: str) -> dict:
    """``run_train`` on the completed training job, model and calibration transform of run ``spec_id``."""
    from pipeline.aws.sagemaker_rcf import CompletedJobs, completed_jobs  # boto3: only the sagemaker-rcf steps need it

    require_rcf(ctx)
    jobs = CompletedJobs(training_spec=_read_spec(ctx, spec_id, "training"), training_job=training_job,
                         model_name=model_name, calibration_job=transform_job)
    with completed_jobs(jobs):
        return run_train(ctx)


def prepare_rcf_scoring(ctx: RunContext, spec_id: str) -> dict:
    """Stage the scaled scoring rows for the current model's batch transform and write the scoring spec."""

    require_rcf(ctx)
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
    from pipeline.aws.sagemaker_rcf import CompletedJobs, completed_jobs  # boto3: only the sagemaker-rcf steps need it

    require_rcf(ctx)
    with completed_jobs(CompletedJobs(scoring_spec=_read_spec(ctx, spec_id, "scoring"), scoring_job=transform_job)):
        return run_score(ctx)
