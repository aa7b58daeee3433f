"""Seeded synthetic feature tables shaped like per-entity audit-log windows, with planted outliers.

Used by the detector tests (quality floors) and by ``training.benchmark``. Columns cycle
through three kinds, as the real feature table does:

- ``count_*``: request counts per verb/resource, Poisson around an entity's activity level
  (lognormal, so heavy-tailed) times a per-role profile (humans, service accounts,
  nodes) that leaves several columns sparse;
- ``distinct_*``: distinct namespaces/resources/agents, growing with log activity;
- ``ratio_*``: error or denial ratios in [0, 1].

Planted outliers are normal rows then altered:

- ``single``: one count column set far past anything normal (10x the column's normal
  maximum + 20), every other column untouched; ``outlier_feature`` names the column.
- ``combo``: a low-activity entity whose three chosen count columns each sit at that
  column's normal 99.5th percentile; no single value is out of range, the combination is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_ROLE_PROBS = (0.5, 0.35, 0.15)


@dataclass(frozen=True)
class SyntheticTable:
    X: np.ndarray
    feature_names: list[str]
    kind: np.ndarray
    outlier_feature: np.ndarray


def _names(n_features: int) -> list[str]:
    kinds = ["count"] * 5 + ["distinct", "ratio"]
    return [f"{kinds[j % 7]}_{j:02d}" for j in range(n_features)]


def _normal_rows(
    rng: np.random.Generator, n: int, names: list[str], profiles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    count_cols = [j for j, name in enumerate(names) if name.startswith("count")]
    activity = rng.lognormal(mean=3.0, sigma=1.5, size=n)
    role = rng.choice(len(_ROLE_PROBS), size=n, p=_ROLE_PROBS)
    X = np.empty((n, len(names)), dtype=np.float64)
    rates = activity[:, None] * profiles[role] * len(count_cols)
    X[:, count_cols] = rng.poisson(rates)
    for j, name in enumerate(names):
        if name.startswith("distinct"):
            X[:, j] = 1 + rng.poisson(0.8 * np.log1p(activity))
        elif name.startswith("ratio"):
            X[:, j] = rng.beta(1.0, 20.0, size=n)
    return X, activity


def audit_like(
    n_rows: int, n_features: int = 60, seed: int = 0, n_single: int = 0, n_combo: int = 0
) -> SyntheticTable:
    """``n_rows`` normal rows followed by ``n_single`` then ``n_combo`` planted outliers (needs >= 1 count column)."""
    rng = np.random.default_rng(seed)
    names = _names(n_features)
    count_cols = np.array([j for j, name in enumerate(names) if name.startswith("count")])
    profiles = rng.dirichlet(np.full(len(count_cols), 0.5), size=len(_ROLE_PROBS))
    normal, _ = _normal_rows(rng, n_rows, names, profiles)

    reference, ref_activity = _normal_rows(rng, max(n_rows, 5000), names, profiles)
    col_max = reference.max(axis=0)
    col_p995 = np.quantile(reference, 0.995, axis=0)

    single, _ = _normal_rows(rng, n_single, names, profiles)
    single_feature = rng.choice(count_cols, size=n_single)
    single[np.arange(n_single), single_feature] = 10 * col_max[single_feature] + 20

    quiet = reference[ref_activity < np.quantile(ref_activity, 0.3)]
    combo = quiet[rng.choice(len(quiet), size=n_combo)].copy()
    for row in combo:
        chosen = rng.choice(count_cols, size=3, replace=False)
        row[chosen] = np.ceil(col_p995[chosen])

    X = np.vstack([normal, single, combo])
    kind = np.array(["normal"] * n_rows + ["single"] * n_single + ["combo"] * n_combo)
    feature = np.concatenate([np.full(n_rows, -1), single_feature, np.full(n_combo, -1)]).astype(int)
    return SyntheticTable(X, names, kind, feature)
