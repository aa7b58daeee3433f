"""The detector contract and the behaviour every detector shares.

Contract (PyOD-style): ``fit(X, feature_names)`` learns scaling, model and threshold;
``score(X)`` returns one float per row, higher = more anomalous, and never changes the
model; ``explain(X)`` returns an (n, d) per-feature contribution matrix (or ``None``);
a row is anomalous when ``score > threshold_``; ``save(directory)`` writes a
self-verifying model directory that ``training.registry.load_detector`` reads back.
Fitted attributes end in ``_``.

Inputs are raw feature values (unscaled): the detector owns its scaling
(``training.scaling``) and applies it exactly once, inside ``transform``. ``score``,
``explain`` and ``transform`` also accept a pandas DataFrame, whose columns are checked
against ``feature_names_`` by name and reordered; a bare ndarray is checked only by
width, so it must already be in ``feature_names_`` order.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from training.calibration import METHODS, calibrate, score_stats
from training.errors import (
    DetectorError,
    FeatureMismatchError,
    InvalidInputError,
    ModelIntegrityError,
    NotFittedError,
    UnknownDetectorError,
)
from training.manifest import library_versions, write_manifest
from training.scaling import SCALINGS, Scaler

PROBE_FILE = "probe.npy"
PROBE_ROWS = 64
COMMON_PARAMS: dict[str, Any] = {"scaling": "robust", "threshold_method": "quantile", "threshold_q": 0.99}
"""Parameters every detector takes: ``scaling`` (``training.scaling``: how raw counts are scaled before the
model sees them), ``threshold_method`` and ``threshold_q`` (``training.calibration``: the rule that turns the
training scores into the threshold above which a row is anomalous; default the 0.99 training-score quantile,
because heavy-tailed counts give right-skewed training scores; the measurements behind that default are in
docs/performance.md, "Threshold rule")."""



def _bad_columns(X: np.ndarray, names: list[str]) -> list[str]:
    bad = np.flatnonzero(~np.isfinite(X).all(axis=0))
    return [names[j] if j < len(names) else f"#{j}" for j in bad[:5]]


class BaseDetector(ABC):
    """Scaling, validation, calibration, self-check and persistence around a subclass's model.

    Subclasses set ``name`` and ``DEFAULT_PARAMS`` and implement ``_fit_scaled`` (returns
    the calibration scores), ``_score_scaled``, ``_explain_scaled``, ``_save_model``,
    ``_load_model`` and ``_fit_info``, all on already-scaled matrices.
    """

    name: ClassVar[str]
    DEFAULT_PARAMS: ClassVar[dict[str, Any]]

    def __init__(self, params: dict | None = None, seed: int = 0):
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.DEFAULT_PARAMS))
        if unknown:
            raise UnknownDetectorError(
                f"unknown parameter(s) {unknown} for detector {self.name!r}",
                f"valid parameters: {', '.join(sorted(self.DEFAULT_PARAMS))}",
            )
        self.params = {**self.DEFAULT_PARAMS, **params}
        if self.params["scaling"] not in SCALINGS:
            raise UnknownDetectorError(f"unknown scaling {self.params['scaling']!r}", f"use one of: {', '.join(SCALINGS)}")
        if self.params["threshold_method"] not in METHODS:
            raise UnknownDetectorError(
                f"unknown threshold_method {self.params['threshold_method']!r}", f"use one of: {', '.join(METHODS)}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}", "pass e.g. seed=7")
        self.seed = int(seed)

    @classmethod
    def build(cls, params: dict | None = None, seed: int = 0, **context) -> "BaseDetector":
        """A fresh detector (``training.registry.make_detector`` and ``load_detector`` call this). ``context`` is what
        a service-backed detector needs (configuration, storage, cluster, progress); a local one ignores it."""
        return cls(params, seed)

    def fit(self, X: np.ndarray, feature_names: list[str]) -> "BaseDetector":
        """Fit scaler, model and threshold on the training rows; returns ``self``.

        Needs at least one row of finite values. Degenerate inputs are allowed:

        - a constant column scales to 0; iforest cannot split on it, so it ignores that
          column at scoring, while rcf-local scores any new value in it as anomalous
          (outside every tree's bounding box) and attributes the score to it;
        - a single training row gives a threshold equal to that row's score; iforest then
          scores every row the same (0.5) and flags nothing, rcf-local scores every row
          that differs from it higher and flags it.
        """
        names = [str(n) for n in feature_names]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise FeatureMismatchError(f"duplicate feature names {dupes}", "give every feature column a unique name")
        if hasattr(X, "columns"):
            if [str(c) for c in X.columns] != names:
                raise FeatureMismatchError("DataFrame columns differ from feature_names", "pass feature_names=list(df.columns)")
            X = X.to_numpy()
        X = self._matrix(X, names)
        if X.shape[0] == 0:
            raise InvalidInputError("cannot fit on an empty feature table", "check the training window selects at least one entity")
        self.feature_names_ = names
        self.scaler_ = Scaler.fit(X, self.params["scaling"])
        Z = self.scaler_.transform(X)
        train_scores = self._fit_scaled(Z)
        self.n_train_rows_ = int(X.shape[0])
        self.threshold_method_ = self.params["threshold_method"]
        self.threshold_ = calibrate(train_scores, self.threshold_method_, self.params["threshold_q"])
        self.train_score_stats_ = score_stats(train_scores)
        self.probe_ = np.ascontiguousarray(Z[:PROBE_ROWS])
        return self

    def check_feature_names(self, names: list[str]) -> None:
        """Raise ``FeatureMismatchError`` naming missing/extra columns unless ``names`` is the trained set."""
        self._require_fitted()
        names = [str(n) for n in names]
        expected = set(self.feature_names_)
        missing = [n for n in self.feature_names_ if n not in names]
        extra = [n for n in names if n not in expected]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if missing or extra or dupes:
            detail = ", ".join(
                f"{label} {cols}" for label, cols in (("missing", missing), ("extra", extra), ("duplicated", dupes)) if cols
            )
            raise FeatureMismatchError(
                f"feature table columns differ from the model's: {detail}",
                "build features with the feature set the model was trained on, or retrain",
            )

    def transform(self, X) -> np.ndarray:
        """Validated, scaled float64 copy of ``X``: exactly what the model sees (for exporting to other backends)."""
        self._require_fitted()
        if hasattr(X, "columns"):
            self.check_feature_names(list(X.columns))
            X = X[self.feature_names_].to_numpy()
        X = self._matrix(X, self.feature_names_)
        if X.shape[1] != len(self.feature_names_):
            raise FeatureMismatchError(
                f"feature matrix has {X.shape[1]} columns, the model was trained on {len(self.feature_names_)}",
                "pass a DataFrame with named columns, or columns in manifest feature_names order",
            )
        return self.scaler_.transform(X)

    def score(self, X) -> np.ndarray:
        """Anomaly score per row, shape (n,), higher = more anomalous; deterministic and read-only."""
        Z = self.transform(X)
        if Z.shape[0] == 0:
            return np.empty(0)
        return self._score_scaled(Z)

    def explain(self, X) -> np.ndarray | None:
        """Per-feature contribution to each row's score, shape (n, d); see the subclass for its meaning."""
        Z = self.transform(X)
        if Z.shape[0] == 0:
            return np.empty((0, Z.shape[1]))
        return self._explain_scaled(Z)

    def save(self, directory: pathlib.Path) -> dict:
        """Write the model into ``directory`` (must be absent or empty) atomically; return the manifest.

        Files are written to a sibling temporary directory and renamed into place, so a
        crash never leaves a half-written model. Same data and seed give identical bytes.
        """
        self._require_fitted()
        directory = pathlib.Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise DetectorError(f"model directory {directory} already exists and is not empty", "save to a new directory, or remove the old model first")
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            np.save(staging / PROBE_FILE, self.probe_, allow_pickle=False)
            self._save_model(staging)
            manifest = write_manifest(staging, self._manifest_body())
            staging.chmod(0o755)
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest

    def _manifest_body(self) -> dict:
        threshold = {"method": self.threshold_method_, "value": self.threshold_}
        if self.threshold_method_ == "quantile":
            threshold["q"] = self.params["threshold_q"]
        return {
            "detector": self.name,
            "params": self.params,
            "seed": self.seed,
            "feature_names": self.feature_names_,
            "scaler": self.scaler_.to_dict(),
            "threshold": threshold,
            "training": {"rows": self.n_train_rows_, **self._fit_info(), "score_stats": self.train_score_stats_},
            "self_check": {"file": PROBE_FILE, "scores": self._score_scaled(self.probe_).tolist()},
            "library_versions": library_versions(),
        }

    def _restore(self, directory: pathlib.Path, manifest: dict) -> "BaseDetector":
        """Rebuild fitted state from a verified directory, then prove it scores the probe rows as at save time."""
        self.feature_names_ = list(manifest["feature_names"])
        self.scaler_ = Scaler.from_dict(manifest["scaler"])
        self.threshold_method_ = manifest["threshold"]["method"]
        self.threshold_ = float(manifest["threshold"]["value"])
        self.n_train_rows_ = int(manifest["training"]["rows"])
        self.train_score_stats_ = manifest["training"]["score_stats"]
        self.probe_ = np.load(directory / PROBE_FILE, allow_pickle=False)
        self._load_model(directory, manifest)
        expected = np.asarray(manifest["self_check"]["scores"], dtype=np.float64)
        if not np.allclose(self._score_scaled(self.probe_), expected, rtol=1e-9, atol=0.0):
            saved = manifest.get("library_versions", {})
            now = library_versions()
            changed = sorted(k for k in now if saved.get(k) != now[k])
            raise ModelIntegrityError(
                f"the rebuilt {self.name} model does not reproduce its saved scores (libraries changed: {changed or 'none'})",
                "retrain the model with the installed libraries",
            )
        return self

    def _require_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(f"{self.name} detector is not fitted", "call fit(X, feature_names) or load_detector(directory) first")

    @staticmethod
    def _matrix(X, names: list[str]) -> np.ndarray:
        try:
            X = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidInputError("feature matrix is not numeric", "encode every feature as a number") from None
        if X.ndim != 2:
            raise InvalidInputError(f"feature matrix must be 2-D (rows x features), got {X.ndim}-D", "reshape to (n_rows, n_features)")
        if X.shape[1] == 0:
            raise InvalidInputError("feature matrix has no columns", "pass at least one feature")
        if not np.isfinite(X).all():
            raise InvalidInputError(
                f"feature matrix has NaN or infinite values in columns {_bad_columns(X, names)}",
                "fill missing features (e.g. 0 for counts) before fitting or scoring",
            )
        return X

    @abstractmethod
    def _fit_scaled(self, Z: np.ndarray) -> np.ndarray:
        """Fit the model on scaled rows; return the training scores to calibrate the threshold on."""

    @abstractmethod
    def _score_scaled(self, Z: np.ndarray) -> np.ndarray:
        """Scores of scaled rows, without changing the model."""

    @abstractmethod
    def _explain_scaled(self, Z: np.ndarray) -> np.ndarray | None:
        """Per-feature contributions for scaled rows."""

    @abstractmethod
    def _save_model(self, directory: pathlib.Path) -> None:
        """Write the model's own files (never pickles) into ``directory``."""

    @abstractmethod
    def _load_model(self, directory: pathlib.Path, manifest: dict) -> None:
        """Rebuild the model from files already verified against ``manifest``."""

    @abstractmethod
    def _fit_info(self) -> dict:
        """Detector-specific training facts for the manifest (e.g. rows actually fitted)."""
