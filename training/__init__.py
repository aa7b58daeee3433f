"""Anomaly detectors behind one contract (``training.base.BaseDetector``) and one registry (``training.registry``);
no AWS, no ``pipeline`` imports."""
from training.base import BaseDetector
from training.calibration import calibrate
from training.errors import (
    DetectorError,
    FeatureMismatchError,
    InvalidInputError,
    ModelIntegrityError,
    NotFittedError,
    UnknownDetectorError,
)
from training.registry import DETECTORS, detector_class, load_detector, make_detector

__all__ = [
    "DETECTORS",
    "BaseDetector",
    "DetectorError",
    "FeatureMismatchError",
    "InvalidInputError",
    "ModelIntegrityError",
    "NotFittedError",
    "UnknownDetectorError",
    "calibrate",
    "detector_class",
    "load_detector",
    "make_detector",
]
