"""Fit/score timing of one detector on synthetic audit-like counts, for ``make bench``.

Run directly: ``python -m training.benchmark --rows 10000 100000 --features 60`` prints one
JSON object per (detector, rows).
"""
from __future__ import annotations

import argparse
import json
import time

from training.registry import DETECTORS, make_detector

# The detectors that run in this process (sagemaker-rcf trains through SageMaker jobs: not timed here).
LOCAL = [name for name in DETECTORS if DETECTORS[name].startswith("training.")]
from training.synthetic import audit_like


def time_detector(name: str, n_rows: int, n_features: int = 60, seed: int = 0, params: dict | None = None) -> dict:
    """Fit on ``n_rows`` synthetic rows, then score ``n_rows`` fresh rows of the same population.

    Wall-clock seconds; fit time includes scaling, training and scoring the training rows
    for calibration.
    """
    table = audit_like(2 * n_rows, n_features, seed=seed)
    detector = make_detector(name, params or {}, seed)
    started = time.perf_counter()
    detector.fit(table.X[:n_rows], table.feature_names)
    fitted = time.perf_counter()
    detector.score(table.X[n_rows:])
    scored = time.perf_counter()
    return {
        "detector": name,
        "rows": n_rows,
        "features": n_features,
        "fit_seconds": round(fitted - started, 3),
        "score_seconds": round(scored - fitted, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", nargs="+", default=LOCAL, choices=LOCAL)
    parser.add_argument("--rows", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--features", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.detectors:
        for rows in args.rows:
            print(json.dumps(time_detector(name, rows, args.features, args.seed)), flush=True)


if __name__ == "__main__":
    main()
