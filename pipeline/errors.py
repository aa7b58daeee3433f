"""Domain errors. Each carries a one-line message and a hint; the CLI prints both and exits non-zero."""
from __future__ import annotations


class AuditsiftError(Exception):
    """Base class for errors a user can act on. ``exit_code`` tells schedulers what kind it was."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(AuditsiftError):
    """Bad configuration or arguments: nothing has been written."""


class InputError(AuditsiftError):
    """An input path or object that cannot be read at all (bad lines are quarantined instead)."""


class StorageError(AuditsiftError):
    """The workdir cannot be read or written."""

    exit_code = 3


class LockedError(AuditsiftError):
    """Another run holds the workdir's lock."""

    exit_code = 75


class StageError(AuditsiftError):
    """A stage cannot proceed (e.g. no archived events in the requested range)."""


class AwsCallError(AuditsiftError):
    """An AWS call failed after retries; the message names the call and the reason."""

    exit_code = 4
