"""The one detector registry: build a detector by name, or load one from a verified model directory.

Each entry names its class as ``module:Class``, imported when that detector is first built or loaded, so
a detector backed by a service (``sagemaker-rcf``, in ``pipeline.aws``) is registered here without
training/ importing the pipeline or boto3. Every entry is a ``training.base.BaseDetector``: the one
contract. ``context`` (keyword arguments) is what a service-backed detector needs besides its parameters
(the configuration, the workdir storage, the cluster, a progress callback); local detectors take none and
ignore it.
"""
from __future__ import annotations

import importlib
import pathlib

from training.base import BaseDetector
from training.errors import ModelIntegrityError, UnknownDetectorError
from training.manifest import read_manifest

DETECTORS: dict[str, str] = {
    "iforest": "training.iforest:IsolationForestDetector",
    "rcf-local": "training.rcf:RandomCutForestDetector",
    "sagemaker-rcf": "pipeline.aws.sagemaker_rcf:SageMakerRcf",
}


def detector_class(name: str) -> type[BaseDetector]:
    """The class registered as ``name`` (imported on first use)."""
    try:
        module, _, attribute = DETECTORS[name].partition(":")
    except KeyError:
        raise UnknownDetectorError(f"unknown detector {name!r}", f"use one of: {', '.join(DETECTORS)}") from None
    cls = getattr(importlib.import_module(module), attribute)
    assert issubclass(cls, BaseDetector) and cls.name == name, f"{DETECTORS[name]} is not the {name!r} detector"
    return cls


def make_detector(name: str, params: dict | None = None, seed: int = 0, **context) -> BaseDetector:
    """A fresh, unfitted detector; ``params`` override the detector's ``DEFAULT_PARAMS`` (unknown keys are refused)."""
    return detector_class(name).build(params, seed, **context)


def load_detector(directory: pathlib.Path, expected_manifest_sha256: str | None = None, **context) -> BaseDetector:
    """Load a model saved by ``BaseDetector.save``: verify, then deserialise, then self-check.

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
        detector = detector_class(name).build(manifest["params"], manifest["seed"], **context)
        return detector._restore(directory, manifest)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelIntegrityError(f"manifest in {directory} is incomplete or malformed ({exc!r})", "retrain the model") from None
