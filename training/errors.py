"""Errors raised by the detectors: one line each, with a hint the user can act on.

``training`` must not import ``pipeline``, so these mirror ``pipeline.errors`` in shape
(``message``, ``hint``, ``exit_code``) without subclassing it; the CLI can map them.
``str(error)`` is the message and the hint on a single line.
"""
from __future__ import annotations


def _one_line(text: str) -> str:
    return " ".join(text.split())


class DetectorError(Exception):
    """Base class for detector errors a user can act on."""

    exit_code = 2

    def __init__(self, message: str, hint: str):
        self.message = _one_line(message)
        self.hint = _one_line(hint)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})"


class UnknownDetectorError(DetectorError):
    """A detector name or parameter that the registry does not know."""


class NotFittedError(DetectorError):
    """``score``/``explain``/``save`` called before ``fit``."""


class InvalidInputError(DetectorError):
    """A matrix that cannot be fitted or scored: wrong rank, no rows, NaN or infinite values."""


class FeatureMismatchError(DetectorError):
    """The feature table's columns differ from the ones the model was trained on."""


class ModelIntegrityError(DetectorError):
    """A saved model directory whose files do not match its manifest, or that cannot be rebuilt faithfully."""

    exit_code = 3
