"""The train stage: build, fit, calibrate, save and load the configured detector; entity baselines."""
from __future__ import annotations

import logging
import tempfile
from datetime import timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from features.windows import FEATURE_NAMES, feature_matrix
from pipeline.context import RunContext
from pipeline.errors import StageError
from pipeline.io.storage import safe_segment
from pipeline.stages.clock import iso
from pipeline.stages.features import load_features
from pipeline.stages.ranges import Ranges
from training.calibration import calibrate
from training.registry import detector_class, load_detector, make_detector

log = logging.getLogger(__name__)
UTC = timezone.utc



# model.backend -> its section of ``config.model`` (the detector's hyperparameters; the threshold rule is common)
CONFIG_SECTIONS = {"iforest": "iforest", "rcf-local": "rcf_local", "sagemaker-rcf": "sagemaker"}


def detector_params(ctx: RunContext) -> dict:
    """The configured backend's parameters: those of its config section the detector takes, and the threshold rule."""
    model = ctx.config.model
    defaults = detector_class(model.backend).DEFAULT_PARAMS
    section = getattr(model, CONFIG_SECTIONS[model.backend]).model_dump()
    return {**{key: value for key, value in section.items() if key in defaults},
            "threshold_method": model.threshold.method, "threshold_q": model.threshold.quantile}


def detector_context(ctx: RunContext) -> dict:
    """What a service-backed detector needs besides its parameters (``training.registry``); local ones ignore it."""
    return {"config": ctx.config, "storage": ctx.storage, "cluster": ctx.cluster, "progress": ctx.notify}


def build_detector(ctx: RunContext):
    return make_detector(ctx.config.model.backend, detector_params(ctx), ctx.config.model.seed, **detector_context(ctx))


def training_rows(ctx: RunContext) -> tuple[pd.DataFrame, Ranges]:
    """The feature table's training rows (at least model.min_train_rows) and its ranges."""
    table, _, ranges = load_features(ctx)
    train = table[table["split"] == "train"]
    if len(train) < ctx.config.model.min_train_rows:
        raise StageError(
            f"only {len(train)} training rows (entity windows) before {iso(ranges.score_from)}; need {ctx.config.model.min_train_rows}",
            hint="archive more history or move --score-from later",
        )
    return train, ranges


def run_train(ctx: RunContext) -> dict:
    """Fit the configured detector on the training rows; save it with its manifest and the resolved config."""
    return fit_model(ctx)[0]


def fit_model(ctx: RunContext) -> tuple[dict, object]:
    """``run_train``, returning the fitted detector too: ``auditsift run`` scores with it (``load_model``) instead of
    restoring what it has just saved (a local model is refitted from its saved training rows on every load)."""
    with ctx.timed("train"):
        train, ranges = training_rows(ctx)
        detector = build_detector(ctx)
        matrix = feature_matrix(train)
        detector.fit(matrix, list(FEATURE_NAMES))
        train_scores = detector.score(matrix)
        calibration = group_calibration(train_scores, train["entity_group"].to_numpy(), train["entity_type"].to_numpy(),
                                        ctx.config.model.threshold)
        model_id = f"{safe_segment(ctx.run_id)}-{ctx.config.model.backend}"
        model_key = f"{ctx.cluster_key('models')}/{model_id}"
        manifest = save_detector(ctx, detector, model_key)
        baselines = entity_baselines(train, train_scores)
        ctx.storage.write_parquet(f"{model_key}/baselines.parquet", pa.Table.from_pandas(baselines, preserve_index=False))
        ctx.storage.write_json(f"{model_key}/config.json", ctx.config.resolved())
        info = {
            "id": model_id, "key": model_key, "backend": ctx.config.model.backend, "threshold": float(detector.threshold_),
            "threshold_method": ctx.config.model.threshold.method, "train_rows": int(len(train)),
            "train_score_median": float(manifest["training"]["score_stats"]["quantiles"]["0.5"]),
            "calibration": calibration,
            "trained_on": {"from": iso(ranges.train_from), "to": iso(ranges.train_to)},
        }
        ctx.storage.write_json(f"{model_key}/model.json", info)
        ctx.update_state("model", info)
    return info, detector


MIN_GROUP_ROWS = 100


def group_calibration(scores: np.ndarray, groups: np.ndarray, entity_types: np.ndarray, threshold) -> dict:
    """Median and threshold of the training scores per entity peer group (features.entities).

    A group with fewer than MIN_GROUP_ROWS training windows falls back to its entity
    type ("type:user", "type:source_ip"), then to all rows ("*"). The threshold rule is
    the configured one (quantile or mean+3std).
    """

    def stats(values: np.ndarray) -> dict:
        return {"median": float(np.median(values)), "threshold": float(calibrate(values, threshold.method, threshold.quantile)),
                "rows": int(values.size)}

    table = {"*": stats(scores)}
    for entity_type in sorted(set(entity_types)):
        values = scores[entity_types == entity_type]
        if values.size >= MIN_GROUP_ROWS:
            table[f"type:{entity_type}"] = stats(values)
    for group in sorted(set(groups)):
        values = scores[groups == group]
        if values.size >= MIN_GROUP_ROWS:
            table[group] = stats(values)
    return table


def save_detector(ctx: RunContext, detector, model_key: str) -> dict:
    """Save through a temporary directory, then copy every file into the workdir (local or S3)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model"
        manifest = detector.save(target)
        for path in sorted(target.iterdir()):
            ctx.storage.write_bytes(f"{model_key}/detector/{path.name}", path.read_bytes())
    return manifest


def load_model(ctx: RunContext, fitted=None):
    """The latest model of this cluster, verified (checksums) before anything is deserialised; ``fitted``: the
    detector this process has just fitted and saved as that model (``fit_model``), used as it is."""
    info = ctx.read_state().get("model")
    if not info:
        raise StageError(f"no trained model for cluster '{ctx.cluster}'", hint="run `auditsift train` first")
    if fitted is not None:
        return fitted, info, ctx.storage.read_parquet(f"{info['key']}/baselines.parquet").to_pandas()
    keys = ctx.storage.list(f"{info['key']}/detector/")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model"
        target.mkdir()
        for key in keys:
            (target / key.rsplit("/", 1)[1]).write_bytes(ctx.storage.read_bytes(key))
        detector = load_detector(target, **detector_context(ctx))
    baselines = ctx.storage.read_parquet(f"{info['key']}/baselines.parquet").to_pandas()
    return detector, info, baselines


def entity_baselines(train: pd.DataFrame, train_scores: np.ndarray) -> pd.DataFrame:
    """Per entity over its training windows: the median of every feature (the baseline reasons cite) and the
    highest model score (``max_score``: how unusual this entity already was); plus a row per entity type."""
    scored = train.assign(max_score=train_scores)
    per_entity = scored.groupby(["entity_type", "entity"]).agg(
        {**{name: "median" for name in FEATURE_NAMES}, "max_score": "max"}).reset_index()
    per_type = scored.groupby("entity_type")[list(FEATURE_NAMES)].median().reset_index()
    per_type.insert(1, "entity", None)
    return pd.concat([per_entity, per_type], ignore_index=True)
