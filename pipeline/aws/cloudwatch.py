"""Archive EKS audit events straight from CloudWatch Logs (FilterLogEvents), exactly once.

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
identity column: ``pipeline.hour_merge``) and counts the rest as duplicates. Within one run the CloudWatch event id is deduplicated too.
The checkpoint (``checkpoints/cloudwatch/<cluster>/<log group>.json``) is written only
after the archive merge has completed, so a run killed at any point is simply
re-read by the next one.

The caller holds the workdir lock (``storage.lock()``) around this stage, as for
every stage that writes the archive.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

from pipeline.archive import ArchiveResult, archive_tables, normalise_stream, quarantine_future
from pipeline.aws import session as aws
from pipeline.errors import ConfigError
from pipeline.readers import Event, parse_cloudwatch_message
from pipeline.storage import Storage, safe_segment

log = logging.getLogger(__name__)
DEFAULT_LOOKBACK = timedelta(hours=24)
MAX_STREAMS_PER_CALL = 100
PAGE_LIMIT = 10_000


def checkpoint_key(cluster: str, log_group: str) -> str:
    """Workdir key of the checkpoint for one (cluster, log group) pair."""
    return f"checkpoints/cloudwatch/{safe_segment(cluster)}/{safe_segment(log_group.strip('/'))}.json"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _to_ms(moment: datetime) -> int:
    """Epoch milliseconds by integer arithmetic (float seconds * 1000 can land one ms early)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _iso(ms: int) -> str:
    return _from_ms(ms).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def resolve_window(checkpoint: dict | None, grace_minutes: int, start: datetime | None = None,
                   end: datetime | None = None, now: datetime | None = None) -> tuple[int, int]:
    """(start_ms, end_ms) of the next read; see the module docstring for the defaults."""
    end_ms = _to_ms(end) if end is not None else _to_ms(now or datetime.now(timezone.utc))
    if start is not None:
        start_ms = _to_ms(start)
    elif checkpoint and isinstance(checkpoint.get("high_water_ms"), int):
        start_ms = checkpoint["high_water_ms"] - grace_minutes * 60_000
    else:
        start_ms = end_ms - int(DEFAULT_LOOKBACK.total_seconds() * 1000)
    if start_ms > end_ms:
        raise ConfigError(f"CloudWatch window starts after it ends ({_iso(start_ms)} > {_iso(end_ms)})",
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


def archive_from_cloudwatch(storage: Storage, log_group: str, cluster: str, run_id: str, config,
                            start: datetime | None = None, end: datetime | None = None,
                            progress: Callable[[int], None] | None = None, now: datetime | None = None) -> ArchiveResult:
    """Read the audit streams of ``log_group`` over the window and merge them into the archive of ``cluster``.

    Returns the archive's counts; ``duplicates`` includes events dropped by CloudWatch
    event id within this run. A message is decoded as a line of a file is (``readers``):
    one cut off with ``[Truncated...]`` or holding a body that does not decode is salvaged,
    dated by its log event's timestamp if it lost its own, or quarantined (``cloudwatch_truncated``,
    ``invalid_json``) when it is not a usable event; non-audit streams are never read.
    ``progress`` receives the number of records consumed per chunk, like ``archive_inputs``. Events
    stamped after the run's clock (``now``, default the wall clock) plus ``archive.future_skew_minutes``
    are quarantined as ``future_timestamp``, as from files.
    """
    from pipeline.stages import future_limit

    key = checkpoint_key(cluster, log_group)
    checkpoint = storage.read_json_or(key, None)
    started_ms = _to_ms(datetime.now(timezone.utc))
    start_ms, end_ms = resolve_window(checkpoint, config.archive.grace_minutes, start, end, now=_from_ms(started_ms))
    logs = aws.client("logs", config)
    streams = list_audit_streams(logs, log_group, config.archive.audit_stream_prefix)
    log.info("reading %d audit streams of %s from %s to %s", len(streams), log_group, _iso(start_ms), _iso(end_ms))
    result = ArchiveResult(inputs=[f"cloudwatch:{log_group}/{name}" for name in streams])

    def events() -> Iterator[Event]:
        for first in range(0, len(streams), MAX_STREAMS_PER_CALL):
            batch = streams[first:first + MAX_STREAMS_PER_CALL]
            seen: set[str] = set()
            for page in filter_pages(logs, log_group, batch, start_ms, end_ms):
                for item in page.get("events", []):
                    event_id = item.get("eventId")
                    if event_id in seen:
                        result.records_read += 1
                        result.duplicates += 1
                        continue
                    seen.add(event_id)
                    source = f"{log_group}/{item.get('logStreamName', '?')}"
                    yield from parse_cloudwatch_message(item.get("message", ""), event_id, source, result.quarantine,
                                                        item.get("timestamp"))

    not_after = future_limit(config, now)

    def tables():
        for table, consumed in normalise_stream(events(), result.quarantine, log_group, config.archive.chunk_lines):
            result.records_read += consumed
            if progress:
                progress(consumed)
            yield quarantine_future(table, not_after, result.quarantine, log_group)

    archive_tables(storage, tables(), cluster, run_id, result, spill_rows=max(config.archive.chunk_lines * 10, 100_000))
    previous = checkpoint.get("high_water_ms", 0) if checkpoint else 0
    high_water = max(previous if isinstance(previous, int) else 0, min(end_ms, started_ms))
    storage.write_json(key, {
        "log_group": log_group,
        "cluster": cluster,
        "high_water_ms": high_water,
        "high_water": _iso(high_water),
        "last_window": {"start_ms": start_ms, "end_ms": end_ms, "start": _iso(start_ms), "end": _iso(end_ms)},
        "streams": len(streams),
        "run_id": run_id,
        "written_at": _iso(_to_ms(datetime.now(timezone.utc))),
        "counts": result.as_dict() | {"inputs": len(streams)},
    })
    return result
