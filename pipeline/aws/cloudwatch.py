"""CloudWatch Logs for the archive: the audit streams of a log group, FilterLogEvents pages, the window and its checkpoint.

The archive stage reads them (``pipeline.stages.archive.archive_from_cloudwatch``), exactly once:

Window: ``[start, end]`` in epoch milliseconds, both ends inclusive as FilterLogEvents
treats them. ``end`` defaults to now. ``start`` defaults to the checkpoint's high-water
mark minus ``archive.grace_minutes`` (late deliveries with an older timestamp are
picked up), or, on a first run, to ``end`` minus ``DEFAULT_LOOKBACK`` (24 hours).
The high-water mark is the end of the last completed window (never later than the
moment that run started, never moving backwards), so a backfill with an explicit
old window does not rewind the schedule.

Exactly once: events re-read in the grace window, events that share a millisecond
at the window edge, Firehose-style redeliveries and events read again after a killed
run all reach the archive, whose merge keeps one row per event (its copies share every
identity column: ``pipeline.stages.hour_merge``) and counts the rest as duplicates. Within one run the CloudWatch event id is deduplicated too.
The checkpoint (``checkpoints/cloudwatch/<cluster>/<log group>.json``) is written only
after the archive merge has completed, so a run killed at any point is simply
re-read by the next one.

The caller holds the workdir lock (``storage.lock()``) around this stage, as for
every stage that writes the archive.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Iterator

from pipeline.aws import session as aws
from pipeline.errors import ConfigError
from pipeline.io.storage import safe_segment

log = logging.getLogger(__name__)
DEFAULT_LOOKBACK = timedelta(hours=24)
MAX_STREAMS_PER_CALL = 100
PAGE_LIMIT = 10_000


def checkpoint_key(cluster: str, log_group: str) -> str:
    """Workdir key of the checkpoint for one (cluster, log group) pair."""
    return f"checkpoints/cloudwatch/{safe_segment(cluster)}/{safe_segment(log_group.strip('/'))}.json"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds by integer arithmetic (float seconds * 1000 can land one ms early)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def iso_ms(ms: int) -> str:
    return from_ms(ms).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def resolve_window(checkpoint: dict | None, grace_minutes: int, start: datetime | None = None,
                   end: datetime | None = None, now: datetime | None = None) -> tuple[int, int]:
    """(start_ms, end_ms) of the next read; see the module docstring for the defaults."""
    end_ms = to_ms(end) if end is not None else to_ms(now or datetime.now(timezone.utc))
    if start is not None:
        start_ms = to_ms(start)
    elif checkpoint and isinstance(checkpoint.get("high_water_ms"), int):
        start_ms = checkpoint["high_water_ms"] - grace_minutes * 60_000
    else:
        start_ms = end_ms - int(DEFAULT_LOOKBACK.total_seconds() * 1000)
    if start_ms > end_ms:
        raise ConfigError(f"CloudWatch window starts after it ends ({iso_ms(start_ms)} > {iso_ms(end_ms)})",
                          hint="pass --start earlier than --end")
    return start_ms, end_ms


def list_audit_streams(logs, log_group: str, prefix: str) -> list[str]:
    """Names of the group's streams starting with ``prefix``, sorted.

    The prefix is sent as ``logStreamNamePrefix`` and applied again here: some
    implementations (moto) ignore it, and the group also holds authenticator,
    controller-manager and scheduler streams that must never be read as audit events.
    """
    names = []
    for page in aws.paginate(logs.describe_log_streams, log_group, logGroupName=log_group, logStreamNamePrefix=prefix):
        names.extend(s["logStreamName"] for s in page.get("logStreams", []) if s["logStreamName"].startswith(prefix))
    return sorted(set(names))


def filter_pages(logs, log_group: str, stream_names: list[str], start_ms: int, end_ms: int) -> Iterator[dict]:
    """FilterLogEvents pages for up to 100 streams over ``[start_ms, end_ms]``.

    Pages may be empty while a nextToken is still returned (CloudWatch searches in
    slices): keep paging until the token is absent. A token that repeats an earlier
    one ends the loop rather than spinning forever.
    """
    seen_tokens: set[str] = set()
    token = None
    while True:
        kwargs = {"logGroupName": log_group, "logStreamNames": stream_names, "startTime": start_ms,
                  "endTime": end_ms, "limit": PAGE_LIMIT}
        if token:
            kwargs["nextToken"] = token
        page = aws.call(logs.filter_log_events, log_group, **kwargs)
        yield page
        token = page.get("nextToken")
        if not token or token in seen_tokens:
            return
        seen_tokens.add(token)


def logs_client(config):
    return aws.client("logs", config)
