"""Threshold calibration: turn the training-score distribution into one cut-off.

A row is flagged when its score is strictly greater than the threshold. The rule and
its value are written to the model manifest, so a report can say why a row was flagged.
"""
from __future__ import annotations

import math

import numpy as np

from training.errors import InvalidInputError

METHODS = ("mean+3std", "quantile")
STAT_QUANTILES = (0.5, 0.9, 0.99, 0.995, 0.999)


def calibrate(train_scores: np.ndarray, method: str = "mean+3std", q: float = 0.995) -> float:
    """Return the anomaly threshold for scores computed on the training rows.

    ``"mean+3std"``: mean + 3 * standard deviation (population std, ddof=0). This is the
    rule SageMaker's Random Cut Forest documentation gives for turning scores into
    anomaly labels; it adapts to the score scale of any detector but assumes the bulk of
    the training scores is roughly bell-shaped, so with a long right tail it flags less
    than a quantile would.

    ``"quantile"``: the ``q`` quantile of the training scores (linear interpolation), so
    about ``1 - q`` of rows like the training data get flagged whatever the score's
    shape. ``q`` is ignored by ``"mean+3std"``.

    With a single training row (or identical scores) both rules return that score, and
    since flagging is strict (``score > threshold``) nothing like the training data is
    flagged.
    """
    scores = np.asarray(train_scores, dtype=np.float64).ravel()
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise InvalidInputError(
            "cannot calibrate a threshold: training scores are empty or not finite",
            "fit on at least one row of finite feature values",
        )
    if method == "mean+3std":
        return float(scores.mean() + 3.0 * scores.std())
    if method == "quantile":
        if not 0.0 < q < 1.0 or math.isnan(q):
            raise InvalidInputError(f"threshold quantile q={q} is outside (0, 1)", "use e.g. q=0.995")
        return float(np.quantile(scores, q))
    raise InvalidInputError(
        f"unknown threshold method {method!r}", f"use one of: {', '.join(METHODS)}"
    )


def score_stats(scores: np.ndarray) -> dict:
    """Summary of the training scores for the manifest: count, mean, std, min, max and quantiles."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return {
        "count": int(scores.size),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "min": float(scores.min()),
        "max": float(scores.max()),
        "quantiles": {str(q): float(np.quantile(scores, q)) for q in STAT_QUANTILES},
    }
