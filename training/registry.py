"""Detector registry: build a detector by name, or load one from a verified model directory."""
from __future__ import annotations

import pathlib

from training.base import BaseDetector
from training.errors import ModelIntegrityError, UnknownDetectorError
from training.iforest import IsolationForestDetector
from training.manifest import read_manifest
from training.rcf import RandomCutForestDetector

DETECTORS: dict[str, type[BaseDetector]] = {
    IsolationForestDetector.name: IsolationForestDetector,
    RandomCutForestDetector.name: RandomCutForestDetector,
}


def make_detector(name: str, params: dict | None = None, seed: int = 0) -> BaseDetector:
    """A fresh, unfitted detector; ``params`` override the detector's ``DEFAULT_PARAMS`` (unknown keys are refused)."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise UnknownDetectorError(f"unknown detector {name!r}", f"use one of: {', '.join(DETECTORS)}") from None
    return cls(params, seed)


def load_detector(directory: pathlib.Path, expected_manifest_sha256: str | None = None) -> BaseDetector:
    """Load a model saved by ``Detector.save``: verify, then deserialise, then self-check.

    Every file's sha256 is checked against ``manifest.json`` before any of them is
    opened (``ModelIntegrityError`` on any difference); pass ``expected_manifest_sha256``
    (from ``training.manifest.manifest_sha256`` at save time) to also pin the manifest.
    Nothing is unpickled. After rebuilding, the model must reproduce the scores it gave
    its probe rows at save time, or loading fails rather than scoring differently.
    """
    directory = pathlib.Path(directory)
    manifest = read_manifest(directory, expected_manifest_sha256)
    name = manifest.get("detector")
    if name not in DETECTORS:
        raise ModelIntegrityError(f"{directory} holds a model for unknown detector {name!r}", f"known detectors: {', '.join(DETECTORS)}")
    try:
        detector = DETECTORS[name](manifest["params"], manifest["seed"])
        return detector._restore(directory, manifest)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelIntegrityError(f"manifest in {directory} is incomplete or malformed ({exc!r})", "retrain the model") from None
