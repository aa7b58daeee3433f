"""Training and scoring time ranges: the day ending at the run's clock and the training days before it."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.context import RunContext
from pipeline.errors import ConfigError, StageError
from pipeline.stages.archive import list_archive_hours
from pipeline.stages.clock import hour_start, iso, parse_iso, run_clock

log = logging.getLogger(__name__)
UTC = timezone.utc



# --------------------------------------------------------------------------- time ranges
@dataclass(frozen=True)
class Ranges:
    """Training and scoring ranges, half-open [from, to)."""

    train_from: datetime
    train_to: datetime
    score_from: datetime
    score_to: datetime

    def as_dict(self) -> dict:
        return {k: iso(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, value: dict) -> "Ranges":
        return cls(**{k: parse_iso(v) for k, v in value.items()})


def resolve_ranges(ctx: RunContext, train_from=None, train_to=None, score_from=None, score_to=None, now=None) -> Ranges:
    """Default: score the 24 hours of whole windows ending at the run's clock (``run_clock``: the last
    complete window before it), and train on the ``schedule.train_days`` before that, from the window of
    the first archived event inside them. Archived events before that retention, or after the clock,
    never move a range. A scored range without archived events is an error whose hint names the newest
    archived event and ``--now``."""
    window = timedelta(minutes=ctx.config.features.window_minutes)
    hours = list_archive_hours(ctx.storage, ctx.cluster)
    if not hours:
        raise StageError(f"the archive of cluster '{ctx.cluster}' is empty", hint="run `auditsift archive --input PATH` first")
    if score_to is None:
        score_to = _floor(run_clock(now), window)
    if score_from is None:
        score_from = score_to - timedelta(hours=24)
    if train_to is None:
        train_to = score_from
    if train_from is None:
        train_from = training_start(ctx, score_from, hours)
    if score_from < score_to and not any(overlaps(date, hour, score_from, score_to) for date, hour, _ in hours):
        raise StageError(f"no archived events in the scored range {iso(score_from)}..{iso(score_to)}",
                         hint=_clock_hint(ctx, hours, score_to, window))
    ranges = Ranges(train_from, train_to, score_from, score_to)
    if not (ranges.train_from < ranges.train_to <= ranges.score_from < ranges.score_to):
        raise ConfigError(
            f"time ranges out of order: train {iso(train_from)}..{iso(train_to)}, score {iso(score_from)}..{iso(score_to)}",
            hint="need --train-from < --train-to <= --score-from < --score-to, with data before the scored day",
        )
    return ranges


def training_start(ctx: RunContext, score_from: datetime, hours: list[tuple[str, int, str]] | None = None) -> datetime:
    """Where training starts for a scored range beginning at ``score_from``: the window of the first archived event
    in the ``schedule.train_days`` before it (a young archive trains, and warms up, from its first day), else the
    start of those days. ``auditsift run`` and a scheduled plan (``scaleout.plan_run``) both start here."""
    window = timedelta(minutes=ctx.config.features.window_minutes)
    retained = score_from - timedelta(days=ctx.config.schedule.train_days)
    hours = list_archive_hours(ctx.storage, ctx.cluster) if hours is None else hours
    return _floor(_earliest_since(ctx, hours, retained) or retained, window)


def _earliest_since(ctx: RunContext, hours: list[tuple[str, int, str]], start: datetime) -> datetime | None:
    """The first archived event time at or after ``start`` (None when there is none): what came before
    the retention never moves the training range."""
    for date, hour, key in hours:
        if hour_start(date, hour) > start - timedelta(hours=1):
            times = ctx.storage.read_parquet(key, columns=["time"])["time"]
            earliest = pc.min(times.filter(pc.greater_equal(times, pa.scalar(start, times.type)))).as_py()
            if earliest is not None:
                return earliest
    return None


def overlaps(date: str, hour: int, start: datetime, end: datetime) -> bool:
    """Whether archived hour (date, hour) overlaps [start, end); written so that no hour, not even
    9999-12-31 23:00, is ever added to (an hour later overflows datetime)."""
    begin = hour_start(date, hour)
    return start - timedelta(hours=1) < begin < end


def _clock_hint(ctx: RunContext, hours: list[tuple[str, int, str]], score_to: datetime, window: timedelta) -> str:
    """Where the archived data ends relative to the clock, and the ``--now`` that would score its last day."""
    before = [key for date, hour, key in hours if hour_start(date, hour) < score_to]
    if not before:
        first = pc.min(ctx.storage.read_parquet(hours[0][2], columns=["time"])["time"]).as_py()
        return f"the oldest archived event is at {iso(first)}, after the scored range; pass --now to score another day"
    newest = pc.max(ctx.storage.read_parquet(before[-1], columns=["time"])["time"]).as_py()
    return (f"the newest archived event before the run's clock is at {iso(newest)}; the scored day ends at the clock "
            f"(default: now): pass --now {iso(_floor(newest, window) + window)} to score the day it ends")


def _floor(moment: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // step) * step
