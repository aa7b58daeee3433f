"""Anomaly detectors behind one contract (see ``training.base``); no AWS, no ``pipeline`` imports."""
from training.base import Detector
from training.calibration import calibrate
from training.errors import (
    DetectorError,
    FeatureMismatchError,
    InvalidInputError,
    ModelIntegrityError,
    NotFittedError,
    UnknownDetectorError,
)
from training.registry import DETECTORS, load_detector, make_detector

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorError",
    "FeatureMismatchError",
    "InvalidInputError",
    "ModelIntegrityError",
    "NotFittedError",
    "UnknownDetectorError",
    "calibrate",
    "load_detector",
    "make_detector",
]
