"""The run's clock and the time text of the CLI and the state files: every stage reads time through these."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import lru_cache

from pipeline.config import Config
from pipeline.errors import ConfigError

UTC = timezone.utc


@lru_cache(maxsize=65_536)
def iso(moment: datetime) -> str:
    """A time as ISO 8601 UTC to the second. Cached: the score stage formats the same few window starts and ends
    for every record (20 us each, several seconds for 300,000 identities' windows)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str, flag: str = "time") -> datetime:
    """Parse an ISO 8601 time; a naive time is UTC. One-line error naming the flag."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ConfigError(f"{flag}: {text!r} is not an ISO 8601 time", hint="e.g. 2026-11-01T00:00:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def run_clock(now: datetime | None = None) -> datetime:
    """The moment a run is for: ``--now`` when given (tests, reruns, backfills), else the wall clock.
    The scored day ends at its last whole window and the archive's future filter starts after it
    (``future_limit``); nothing in the data moves either."""
    return (now or datetime.now(UTC)).astimezone(UTC)


def future_limit(config: Config, now: datetime | None = None) -> datetime:
    """Events stamped later than this are quarantined as ``future_timestamp``: the run's clock plus
    ``archive.future_skew_minutes`` (API servers' clocks drift a little ahead of this host's)."""
    return run_clock(now) + timedelta(minutes=config.archive.future_skew_minutes)


def hour_start(date: str, hour: int) -> datetime:
    return datetime.fromisoformat(f"{date}T{hour:02d}:00:00+00:00")
