"""The pipeline's stages: archive, features, train, score. Each runs alone on a workdir or in sequence.

Entry points (CLI, Step Functions tasks, cron) call these functions and nothing else;
the functions raise AuditsiftError subclasses with one-line messages.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.addresses import AddressBook, load_ip_ranges, load_threat_list
from features.aggregate import (
    AGGREGATE_COLUMNS, REQUEST_COLUMNS, combine_partials, combine_rule_partials, empty_partials, hit_counts, hour_requests,
    partial_table, partials_as_frame, reduce_tables,
)
from features.events import COLUMN_NAMES, EVENT_SCHEMA
from features.columns import MICROS, EventColumns, pandas_types
from features.flags import FlagContext, FlagInputs, flag_columns, flag_events
from features.novelty import no_history
from features.entities import entity_group
from features.rules import AggregateGroups, RuleError, RulePack
from features.windows import (
    FEATURE_NAMES, NOVELTY_SETS, SET_NAMES, feature_matrix, finalise,
)
from pipeline.archive import archive_inputs, hour_digest, list_archive_hours, manifest_key
from pipeline.config import Config, parse_yaml
from pipeline.context import RunContext
from pipeline.errors import ConfigError, StageError
from pipeline.readers import resolve_inputs
from pipeline.storage import parquet_bytes, safe_segment
from pipeline.workers import ordered_map, usable_cores

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
        retained = score_from - timedelta(days=ctx.config.schedule.train_days)
        train_from = _floor(_earliest_since(ctx, hours, retained) or retained, window)
    if score_from < score_to and not any(_overlaps(date, hour, score_from, score_to) for date, hour, _ in hours):
        raise StageError(f"no archived events in the scored range {iso(score_from)}..{iso(score_to)}",
                         hint=_clock_hint(ctx, hours, score_to, window))
    ranges = Ranges(train_from, train_to, score_from, score_to)
    if not (ranges.train_from < ranges.train_to <= ranges.score_from < ranges.score_to):
        raise ConfigError(
            f"time ranges out of order: train {iso(train_from)}..{iso(train_to)}, score {iso(score_from)}..{iso(score_to)}",
            hint="need --train-from < --train-to <= --score-from < --score-to, with data before the scored day",
        )
    return ranges


def _earliest_since(ctx: RunContext, hours: list[tuple[str, int, str]], start: datetime) -> datetime | None:
    """The first archived event time at or after ``start`` (None when there is none): what came before
    the retention never moves the training range."""
    for date, hour, key in hours:
        if _hour_start(date, hour) > start - timedelta(hours=1):
            times = ctx.storage.read_parquet(key, columns=["time"])["time"]
            earliest = pc.min(times.filter(pc.greater_equal(times, pa.scalar(start, times.type)))).as_py()
            if earliest is not None:
                return earliest
    return None


def _overlaps(date: str, hour: int, start: datetime, end: datetime) -> bool:
    """Whether archived hour (date, hour) overlaps [start, end); written so that no hour, not even
    9999-12-31 23:00, is ever added to (an hour later overflows datetime)."""
    begin = _hour_start(date, hour)
    return start - timedelta(hours=1) < begin < end


def _clock_hint(ctx: RunContext, hours: list[tuple[str, int, str]], score_to: datetime, window: timedelta) -> str:
    """Where the archived data ends relative to the clock, and the ``--now`` that would score its last day."""
    before = [key for date, hour, key in hours if _hour_start(date, hour) < score_to]
    if not before:
        first = pc.min(ctx.storage.read_parquet(hours[0][2], columns=["time"])["time"]).as_py()
        return f"the oldest archived event is at {iso(first)}, after the scored range; pass --now to score another day"
    newest = pc.max(ctx.storage.read_parquet(before[-1], columns=["time"])["time"]).as_py()
    return (f"the newest archived event before the run's clock is at {iso(newest)}; the scored day ends at the clock "
            f"(default: now): pass --now {iso(_floor(newest, window) + window)} to score the day it ends")


def _floor(moment: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // step) * step


# --------------------------------------------------------------------------- archive
def run_archive(ctx: RunContext, inputs: list[str], now: datetime | None = None) -> dict:
    """Archive every event of ``inputs`` into the workdir; returns the counts for run.json. Events stamped
    after the run's clock (``now``, default the wall clock) plus the skew are quarantined (``future_limit``)."""
    with ctx.timed("archive"):
        refs = resolve_inputs(inputs, ctx.config)
        if not refs:
            raise StageError(f"no input files found in {', '.join(inputs)}", hint="pass files, directories or globs of audit logs")
        handle = ctx.progress("archive (records)", None)
        result = archive_inputs(
            ctx.storage, refs, ctx.cluster, ctx.run_id, chunk_rows=ctx.config.archive.chunk_lines,
            max_line_bytes=ctx.config.archive.max_line_bytes, progress=handle.advance, workers=ctx.config.archive.workers,
            merge_rows=ctx.config.archive.merge_rows, not_after=future_limit(ctx.config, now),
            max_ratio=ctx.config.archive.max_decompression_ratio,
        )
        handle.close()
        write_quarantine(ctx, result.quarantine)
        counts = result.as_dict()
        ctx.update_state("archive", {"run_id": ctx.run_id, **{k: v for k, v in counts.items() if k != "inputs"}})
    return counts


def write_quarantine(ctx: RunContext, quarantine) -> None:
    if quarantine.entries:
        key = f"{ctx.cluster_key('quarantine')}/{safe_segment(ctx.run_id)}.jsonl"
        ctx.storage.write_bytes(key, b"".join(orjson.dumps(e) + b"\n" for e in quarantine.entries))


# --------------------------------------------------------------------------- features
def flag_context(ctx: RunContext) -> FlagContext:
    """Address intelligence and the allow-list, loaded once per run from the configured files."""
    cfg = ctx.config.features
    aws_nets, threat_nets = [], []
    if cfg.ip_ranges_file:
        aws_nets = load_ip_ranges(_read_config_file(cfg.ip_ranges_file, "features.ip_ranges_file"))
    if cfg.threat_list_file:
        try:
            threat_nets = load_threat_list(_read_config_file(cfg.threat_list_file, "features.threat_list_file").decode())
        except ValueError as error:
            raise ConfigError(f"features.threat_list_file: {error}", hint="one address or CIDR per line") from None
    return FlagContext(AddressBook(aws_nets, threat_nets), frozenset(ctx.config.rules.allow_identities))


def _read_config_file(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path}: {error.strerror}", hint="point it at an existing file") from None


def features_fingerprint(ctx: RunContext) -> str:
    """Partials depend on the feature code's window and the address intelligence: cache per fingerprint."""
    cfg = ctx.config.features
    material = orjson.dumps({
        "window": cfg.window_minutes, "entities": list(cfg.entity_types),
        "ip_ranges": _file_digest(cfg.ip_ranges_file), "threats": _file_digest(cfg.threat_list_file),
        "allow": sorted(ctx.config.rules.allow_identities), "rules": _file_digest(str(ctx.config.rules_pack_path())),
        "disabled": sorted(ctx.config.rules.disabled), "schema": 5,
    }, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(material).hexdigest()[:12]


def _file_digest(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).exists() else None


def events_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow events to pandas with nullable columns kept nullable (code stays Int32, not float)."""
    return table.to_pandas(types_mapper=pandas_types)


RULES_SUFFIX = ".rules.parquet"


def rules_cache_key(cache_key: str) -> str:
    """Where an hour's rule-hit partials are cached: beside its window partials."""
    return cache_key.removesuffix(".parquet") + RULES_SUFFIX


def is_cached(ctx: RunContext, cache_key: str) -> bool:
    return ctx.storage.exists(cache_key) and ctx.storage.exists(rules_cache_key(cache_key))


def hour_partials(ctx: RunContext, flags: FlagContext, pack: RulePack, archive_key: str, cache_key: str) -> tuple[pa.Table, pa.Table]:
    """Map step for one archived hour, cached under the hour file's digest: its window partials and
    rule hits as Arrow tables (``partials_frame`` and ``rules_frame`` turn many hours into frames at once)."""
    if is_cached(ctx, cache_key):
        return ctx.storage.read_parquet(cache_key), ctx.storage.read_parquet(rules_cache_key(cache_key))
    cfg = ctx.config.features
    tables = map_hour_file(ctx.storage.read_bytes(archive_key), flags, pack, cfg.window_minutes, cfg.entity_types, cfg.batch_rows)
    write_cached(ctx, cache_key, encode_partials(tables))
    return tables


def map_hour_file(data: bytes, flags: FlagContext, pack: RulePack, window_minutes: int, entity_types,
                  batch_rows: int | None = None) -> tuple[pa.Table, pa.Table]:
    """``map_hour`` of an archived hour file's bytes, of which only the ``map_columns`` are read. An hour of more
    than ``batch_rows`` events is mapped in batches of that many to the same tables, holding one batch at a time
    (``BusyHour``); the groups of the rules with aggregate thresholds (``AggregateGroups``) are counted over every
    batch first."""
    columns = map_columns(pack, entity_types)
    hour = busy_hour(data, window_minutes, batch_rows)
    if hour is None:
        return map_hour(read_hour_events(data, columns), flags, pack, window_minutes, entity_types)
    groups = AggregateGroups(pack)
    for batch, _, judged in hour.batches(columns):
        events = flag_events(batch, flags, judged)
        groups.add(events, no_history(events.rows))
    partials, hits = [], []
    for batch, counted, judged in hour.batches(columns):
        events = flag_events(batch, flags, judged)
        partials.append(partial_table(events, window_minutes, entity_types, np.flatnonzero(counted)))
        hits.append(rule_partials(pack, events, window_minutes, entity_types, groups))
    return combine_partials(partials, entity_types), combine_rule_partials(hits, entity_types, [rule.id for rule in pack.active])


@dataclass
class BusyHour:
    """An archived hour of more than ``batch_rows`` events, read ``batch_rows`` at a time (``hour_batches``), with
    what is judged over the whole hour (``features.aggregate.hour_requests``): per event, whether it is the row
    its request counts in (``request_rows``) and the ``audit_id_reused`` flag."""

    data: bytes
    batch_rows: int
    counted: np.ndarray
    reused: np.ndarray

    def batches(self, columns: list[str]) -> Iterator[tuple[pa.Table, np.ndarray, dict[str, np.ndarray]]]:
        """(batch, which of its rows count their request, its flags judged over the hour) for each batch, in order."""
        offset = 0
        for batch in hour_batches(self.data, columns, self.batch_rows):
            end = offset + len(batch)
            yield batch, self.counted[offset:end], {"audit_id_reused": self.reused[offset:end]}
            offset = end


def busy_hour(data: bytes, window_minutes: int, batch_rows: int | None) -> BusyHour | None:
    """The hour file ``data`` as a ``BusyHour`` when it holds more than ``batch_rows`` events; None when it does not,
    or when two of its requests or auditIDs share a hash (``hour_requests``): then it is read at once."""
    rows = pq.read_metadata(pa.BufferReader(data)).num_rows
    if batch_rows is None or rows <= batch_rows:
        return None
    judged = hour_requests(lambda: hour_batches(data, list(REQUEST_COLUMNS), batch_rows), window_minutes)
    if judged is None:
        return None
    counted = np.zeros(rows, dtype=bool)
    counted[judged[0]] = True
    return BusyHour(data, batch_rows, counted, judged[1])


def map_columns(pack: RulePack, entity_types) -> list[str]:
    """The event columns ``map_hour`` reads, in archive order: the flags' (traced from their registry), the
    aggregates' (features.aggregate), the rule pack's and the entities' (``rule_partials``)."""
    wanted = flag_columns() | AGGREGATE_COLUMNS | pack.event_columns | {"time", *entity_types}
    return [name for name in COLUMN_NAMES if name in wanted]


def read_hour_events(data: bytes, columns: list[str]) -> pa.Table:
    """The named columns of an archived hour file, in that order. Text columns are read as the file's
    dictionaries (features.columns encodes every column it reads anyway); a column the file predates
    reads as nulls of its EVENT_SCHEMA type, as features.events.conform_events fills it."""
    file, read = _hour_file(data, columns)
    # The bytes wrapped without a copy (not a Python file object), and no thread pool: an hour's columns decode in
    # a few ms, and the stage's workers already keep the cores busy.
    return _with_absent(file.read(columns=read, use_threads=False), columns)


def hour_batches(data: bytes, columns: list[str], batch_rows: int, wanted: set[int] | None = None) -> Iterator[pa.Table]:
    """``read_hour_events`` in tables of at most ``batch_rows`` rows, in row order: the whole hour at once when it
    holds no more (every hour of an ordinary day). A busier hour's file holds row groups of ``archive.merge_rows``
    rows; consecutive ones are read together up to ``batch_rows``, and a larger one in slices. ``wanted``: the
    numbers of the batches to read, in order; the others are not read (all are when None)."""
    file, read = _hour_file(data, columns)
    number = -1
    for groups, slices in _batch_plan(file.metadata, batch_rows):
        if slices is None:
            number += 1
            if wanted is None or number in wanted:
                yield _with_absent(file.read_row_groups(groups, columns=read, use_threads=False), columns)
            continue
        numbers = range(number + 1, number + 1 + slices)
        number += slices
        if wanted is None or not wanted.isdisjoint(numbers):
            for sliced, batch in zip(numbers, file.iter_batches(batch_size=batch_rows, row_groups=groups, columns=read, use_threads=False)):
                if wanted is None or sliced in wanted:
                    yield _with_absent(pa.Table.from_batches([batch]), columns)


def _batch_plan(metadata: pq.FileMetaData, batch_rows: int) -> Iterator[tuple[list[int], int | None]]:
    """``hour_batches``' batches: (row groups, None) read together, or (one row group, the number of slices it is read in)."""
    group, groups = 0, metadata.num_row_groups
    if metadata.num_rows <= batch_rows:
        yield list(range(groups)), None
        return
    while group < groups:
        rows = metadata.row_group(group).num_rows
        if rows > batch_rows:
            yield [group], -(-rows // batch_rows)
            group += 1
            continue
        end, rows = group, 0
        while end < groups and rows + metadata.row_group(end).num_rows <= batch_rows:
            rows += metadata.row_group(end).num_rows
            end += 1
        yield list(range(group, end)), None
        group = end


def _hour_file(data: bytes, columns: list[str]) -> tuple[pq.ParquetFile, list[str]]:
    """An archived hour file opened with its text columns read as dictionaries, and which of ``columns`` it holds."""
    metadata = pq.read_metadata(pa.BufferReader(data))
    present = set(metadata.schema.names)
    texts = [name for name in columns if name in present and EVENT_SCHEMA.field(name).type == pa.string()]
    return pq.ParquetFile(pa.BufferReader(data), metadata=metadata, read_dictionary=texts), [name for name in columns if name in present]


def _with_absent(table: pa.Table, columns: list[str]) -> pa.Table:
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(EVENT_SCHEMA.field(name), pa.nulls(len(table), EVENT_SCHEMA.field(name).type))
    return table.select(columns)


def map_hour(table: pa.Table, flags: FlagContext, pack: RulePack, window_minutes: int, entity_types) -> tuple[pa.Table, pa.Table]:
    """One archived hour's window partials and rule hit counts as Arrow tables (no I/O). ``table`` holds at
    least the ``map_columns`` (``read_hour_events`` reads just those); only they are selected, so a column
    read without being listed fails here rather than reading as nulls. Flags, aggregates and rules read the
    Arrow columns through one dictionary encoding each (features.columns), never a DataFrame of the hour;
    both tables are built from arrays."""
    events = flag_events(table.select(map_columns(pack, entity_types)), flags)
    return partial_table(events, window_minutes, entity_types), rule_partials(pack, events, window_minutes, entity_types)


def encode_partials(tables: tuple[pa.Table, pa.Table]) -> tuple[bytes, bytes]:
    """An hour's cache files as bytes: (window partials, rule hits). Worker processes encode their
    own hours, so this process only writes bytes. An hour's partials are a few hundred rows of some
    seventy columns: without dictionary pages they are as small and cost less to write and read."""
    return parquet_bytes(tables[0], dictionary=False), parquet_bytes(tables[1], dictionary=False)


def write_cached(ctx: RunContext, cache_key: str, encoded: tuple[bytes, bytes]) -> None:
    partial_bytes, rules_bytes = encoded
    ctx.storage.write_bytes(rules_cache_key(cache_key), rules_bytes)
    ctx.storage.write_bytes(cache_key, partial_bytes)


MIN_ROWS_PER_WORKER = 100_000  # a worker costs 1-2 s of CPU to start (imports); an hour costs 30-90 ms to map and encode


def map_hours(ctx: RunContext, flags: FlagContext, pack: RulePack, keys: list[tuple[str, str]]) -> Iterator[tuple[pa.Table, pa.Table]]:
    """``hour_partials`` for every (archive key, cache key), in order. Hours not cached yet are mapped
    by ``features.workers`` processes when they hold enough events (``MIN_ROWS_PER_WORKER`` per
    worker, from the hour manifests); the workers read the hours (``_hour_file_source``), this process
    writes the caches and yields the results in hour order, so everything downstream is unchanged."""
    cfg = ctx.config.features
    todo = [(archive_key, cache_key) for archive_key, cache_key in keys if not is_cached(ctx, cache_key)]
    workers = min(cfg.workers, usable_cores(), len(todo))
    if workers > 1:
        rows = sum(ctx.storage.read_json_or(manifest_key(archive_key), {}).get("rows", 100_000) for archive_key, _ in todo)
        workers = min(workers, rows // MIN_ROWS_PER_WORKER)
    if workers < 2:
        for archive_key, cache_key in keys:
            yield hour_partials(ctx, flags, pack, archive_key, cache_key)
        return
    pending = {cache_key for _, cache_key in todo}
    computed = ordered_map(_map_hour_bytes, (_hour_file_source(ctx, a) for a, c in keys if c in pending), workers,
                           setup=_map_hour_setup, setup_args=(flags, pack, cfg.window_minutes, tuple(cfg.entity_types), cfg.batch_rows),
                           name="auditsift-features")
    try:
        for archive_key, cache_key in keys:
            if cache_key not in pending:
                yield hour_partials(ctx, flags, pack, archive_key, cache_key)
                continue
            streams, encoded = next(computed)
            write_cached(ctx, cache_key, encoded)
            yield tuple(pa.ipc.open_stream(stream).read_all() for stream in streams)
    finally:
        computed.close()


def _map_hour_setup(flags: FlagContext, pack: RulePack, window_minutes: int, entity_types: tuple, batch_rows: int) -> tuple:
    return flags, pack, window_minutes, entity_types, batch_rows


def _hour_file_source(ctx: RunContext, archive_key: str) -> str | bytes:
    """What a worker maps an archived hour from: the file's path when the workdir is local (the worker reads it, so
    a busy hour's file is neither held here nor pickled through the queue: 150 MB for 3.85M events), else its bytes."""
    path = ctx.storage.local_path(archive_key)
    return str(path) if path is not None else ctx.storage.read_bytes(archive_key)


def _map_hour_bytes(state: tuple, source: str | bytes) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """Worker side of ``map_hours``: an archived hour file (its path or bytes, ``_hour_file_source``) to its
    (partials, rule hits) tables, as Arrow IPC streams, and their cache files' bytes. An hour's tables cost 1.9 ms
    to pickle and 1.2 ms to unpickle (seventy-odd columns, each its own pickled arrays); as IPC streams 0.2 and 0.3 ms."""
    tables = map_hour_file(Path(source).read_bytes() if isinstance(source, str) else source, *state)
    return tuple(_ipc_stream(table) for table in tables), encode_partials(tables)


def _ipc_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def partials_frame(tables: Iterable[pa.Table]) -> pd.DataFrame:
    """Window partials of many hours (cache files or ``map_hour`` output) as one frame for
    ``reduce_partials``: one concatenation and one conversion, where a frame per hour cost
    16 ms an hour in pandas overhead. Set columns become lists."""
    tables = list(tables)
    return partials_as_frame(_concat(tables)) if tables else empty_partials()


def rules_frame(tables: Iterable[pa.Table]) -> pd.DataFrame:
    """Rule hits of many hours as one frame."""
    return _concat(tables).to_pandas()


def _concat(tables: Iterable[pa.Table]) -> pa.Table:
    """Hours' tables as one. A cache file written from a DataFrame by an older release may carry null-typed
    columns for an hour with no rows (no values to type them), so types are unified."""
    return pa.concat_tables(list(tables), promote_options="default")


def partial_key(ctx: RunContext, fingerprint: str, date: str, hour: int, archive_key: str) -> str:
    """Cache key of an hour's partials: changes when the features config or the archived hour changes."""
    digest = hour_digest(ctx.storage, archive_key)[:16]
    return f"{ctx.cluster_key('features')}/partials/{fingerprint}/date={date}/hour={hour:02d}/{digest}.parquet"


def run_features(ctx: RunContext, ranges: Ranges) -> dict:
    """Feature table for [train_from, score_to): map per archived hour (cached), reduce, finalise."""
    with ctx.timed("features"):
        fingerprint = features_fingerprint(ctx)
        flags = flag_context(ctx)
        hours = [
            (d, h, k) for d, h, k in list_archive_hours(ctx.storage, ctx.cluster) if _overlaps(d, h, ranges.train_from, ranges.score_to)
        ]
        if not hours:
            raise StageError("no archived events in the requested ranges", hint="check --train-from/--score-to against `auditsift archive` output")
        pack = load_rule_pack(ctx.config)
        handle = ctx.progress("features (hours)", len(hours))
        partials, rules = [], []
        for partial, hits in map_hours(ctx, flags, pack, [(k, partial_key(ctx, fingerprint, d, h, k)) for d, h, k in hours]):
            partials.append(partial)
            rules.append(hits)
            handle.advance()
        handle.close()
        rules = rules_frame(rules)
        merged = reduce_tables(partials)
        del partials  # the hours' tables: as large again as the reduced frame with many identities
        merged = merged[(merged["window_start"] >= pd.Timestamp(ranges.train_from)) & (merged["window_start"] < pd.Timestamp(ranges.score_to))]
        table = finalise(merged.reset_index(drop=True), ctx.config.features.window_minutes)
        table["split"] = np.where(table["window_start"] >= pd.Timestamp(ranges.score_from), "score",
                                  np.where(table["window_start"] >= pd.Timestamp(warmup_end(ranges)), "train", "warmup"))
        table["entity_group"] = [entity_group(t, e, flags.addresses) for t, e in zip(table["entity_type"], table["entity"])]
        history = entity_history(merged[merged["window_start"] < pd.Timestamp(ranges.score_from)])
        base = f"{ctx.cluster_key('features')}/runs/{safe_segment(ctx.run_id)}"
        ctx.storage.write_parquet(f"{base}/features.parquet", pa.Table.from_pandas(table.drop(columns=list(SET_NAMES)), preserve_index=False))
        ctx.storage.write_parquet(f"{base}/history.parquet", pa.Table.from_pandas(history, preserve_index=False))
        trained = rules[(rules["window_start"] >= pd.Timestamp(ranges.train_from)) & (rules["window_start"] < pd.Timestamp(ranges.score_from))]
        ctx.storage.write_parquet(f"{base}/rule_history.parquet", pa.Table.from_pandas(rule_history(trained), preserve_index=False))
        counts = {
            "rows": int(len(table)), "train_rows": int((table["split"] == "train").sum()),
            "score_rows": int((table["split"] == "score").sum()), "hours": len(hours),
            "entities": int(table[["entity_type", "entity"]].drop_duplicates().shape[0]),
        }
        ctx.update_state("features", {"run_id": ctx.run_id, "key": base, "ranges": ranges.as_dict(), **counts})
    return counts


WARMUP = timedelta(hours=24)


def warmup_end(ranges: Ranges) -> datetime:
    """Training windows before this only seed the entities' histories: in the first day every
    entity looks new, and training on that would teach the model that novelty is normal.
    At most half the training range is spent this way."""
    return ranges.train_from + min(WARMUP, (ranges.train_to - ranges.train_from) / 2)


def _hour_start(date: str, hour: int) -> datetime:
    return datetime.fromisoformat(f"{date}T{hour:02d}:00:00+00:00")


def entity_history(train_partials: pd.DataFrame) -> pd.DataFrame:
    """What each entity did in the training range: the sets event-level novelty is judged against."""
    if train_partials.empty:
        return pd.DataFrame({"entity_type": [], "entity": [], **{n: [] for n in NOVELTY_SETS}, "windows": []})
    grouped = train_partials.groupby(["entity_type", "entity"], sort=True)
    history = grouped.size().rename("windows").to_frame()
    for name in NOVELTY_SETS:
        history[name] = grouped[name].agg(lambda lists: sorted(set().union(*map(set, lists))))
    return history.reset_index()


def load_features(ctx: RunContext) -> tuple[pd.DataFrame, pd.DataFrame, Ranges]:
    state = ctx.read_state().get("features")
    if not state:
        raise StageError("no feature table in this workdir", hint="run `auditsift features` first")
    table = ctx.storage.read_parquet(f"{state['key']}/features.parquet").to_pandas()
    history = partials_from_history(ctx.storage.read_parquet(f"{state['key']}/history.parquet"))
    return table, history, Ranges.from_dict(state["ranges"])


def partials_from_history(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    for name in NOVELTY_SETS:
        frame[name] = frame[name].map(lambda v: set(v) if v is not None else set())
    return frame


def load_rule_pack(config: Config) -> RulePack:
    """The rule pack named in the config (default configs/rules.yaml), validated at load."""
    path = config.rules_pack_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"rules.pack: cannot read {path}: {error.strerror}", hint="point rules.pack at a rule YAML file") from None
    data = parse_yaml(text, path)
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'rules' list", hint="see configs/rules.yaml")
    try:
        return RulePack.from_dicts(data["rules"], config.rules.disabled, str(path))
    except RuleError as error:
        raise ConfigError(str(error), hint="fix the rule pack; every rule needs id, title, severity, rationale, condition, tests") from None


RULE_PARTIAL_SCHEMA = pa.schema([("entity_type", pa.large_string()), ("entity", pa.large_string()), ("window_start", MICROS),
                                 ("rule", pa.large_string()), ("count", pa.int64())])


def rule_partials(pack: RulePack, events: pd.DataFrame | FlagInputs, window_minutes: int, entity_types,
                  groups: AggregateGroups | None = None) -> pa.Table:
    """Rule hit counts per (entity_type, entity, window_start, rule): which rules each entity triggers, and when,
    as an Arrow table of ``RULE_PARTIAL_SCHEMA`` (``rules_frame`` makes frames of them).
    ``events`` is a flagged DataFrame or the FlagInputs of ``flag_events``. History flags are all False here
    (no history is judged in the map step), so rules that need them never count as an entity's routine.
    ``groups``: for a batch of an hour, the aggregate rules' groups over the whole hour (``RulePack.hits``)."""
    columns = events if isinstance(events, EventColumns) else EventColumns(events)
    hits = pack.hits(events, no_history(columns.rows), groups)
    fired = [rule for rule, matched in hits.items() if matched.any()]
    batches = []
    if fired:
        # Grouped by integer codes (entity, window), numbered in sorted order; rows come out as
        # groupby(sort=True).sum().melt() gave them: rule by rule, groups in order, zero counts dropped.
        step = window_minutes * 60_000_000
        windows, window_codes = np.unique(columns.micros("time") // step * step, return_inverse=True)
        rule_names = pa.array(fired, pa.large_string())
        for entity_type in entity_types:
            entity_codes, entities = columns.ranked(entity_type)
            rows = np.flatnonzero(entity_codes >= 0)
            groups, sums = hit_counts(entity_codes[rows] * max(len(windows), 1) + window_codes[rows], [hits[rule][rows] for rule in fired])
            rule_index, group_index = np.nonzero(sums.T > 0)
            picked = groups[group_index]
            batches.append(pa.record_batch([
                pa.array(np.full(len(picked), entity_type, dtype=object), pa.large_string()),
                pa.array(entities[picked // max(len(windows), 1)], pa.large_string()),
                pa.array(windows[picked % max(len(windows), 1)], MICROS),
                rule_names.take(rule_index), sums[group_index, rule_index],
            ], schema=RULE_PARTIAL_SCHEMA))
    return pa.Table.from_batches(batches, schema=RULE_PARTIAL_SCHEMA)


def rule_history(rules: pd.DataFrame) -> pd.DataFrame:
    """Per entity and rule: in how many training windows the entity triggered it (its routine)."""
    if rules.empty:
        return pd.DataFrame({"entity_type": [], "entity": [], "rule": [], "windows": []})
    return rules.groupby(["entity_type", "entity", "rule"]).size().rename("windows").reset_index()


def load_rule_history(ctx: RunContext) -> dict[tuple[str, str, str], int]:
    state = ctx.read_state().get("features") or {}
    key = f"{state.get('key')}/rule_history.parquet"
    if not state or not ctx.storage.exists(key):
        return {}
    table = ctx.storage.read_parquet(key).to_pandas()
    return {(t, e, r): int(w) for t, e, r, w in zip(table["entity_type"], table["entity"], table["rule"], table["windows"])}


# --------------------------------------------------------------------------- train
def detector_params(ctx: RunContext) -> dict:
    model = ctx.config.model
    common = {"threshold_method": model.threshold.method, "threshold_q": model.threshold.quantile}
    if model.backend == "iforest":
        return {**model.iforest.model_dump(), **common}
    if model.backend == "rcf-local":
        return {**model.rcf_local.model_dump(), **common}
    return common


def build_detector(ctx: RunContext):
    backend = ctx.config.model.backend
    if backend == "sagemaker-rcf":
        from pipeline.aws.sagemaker_rcf import SageMakerRcf

        return SageMakerRcf.from_config(ctx.config, ctx.storage, cluster=ctx.cluster, progress=ctx.notify)
    from training.registry import make_detector

    return make_detector(backend, detector_params(ctx), ctx.config.model.seed)


def training_rows(ctx: RunContext) -> tuple[pd.DataFrame, Ranges]:
    """The feature table's training rows (at least model.min_train_rows) and its ranges."""
    table, _, ranges = load_features(ctx)
    train = table[table["split"] == "train"]
    if len(train) < ctx.config.model.min_train_rows:
        raise StageError(
            f"only {len(train)} training rows (entity windows) before {iso(ranges.score_from)}; need {ctx.config.model.min_train_rows}",
            hint="archive more history or move --score-from later",
        )
    return train, ranges


def run_train(ctx: RunContext) -> dict:
    """Fit the configured detector on the training rows; save it with its manifest and the resolved config."""
    return fit_model(ctx)[0]


def fit_model(ctx: RunContext) -> tuple[dict, object]:
    """``run_train``, returning the fitted detector too: ``auditsift run`` scores with it (``load_model``) instead of
    restoring what it has just saved (a local model is refitted from its saved training rows on every load)."""
    with ctx.timed("train"):
        train, ranges = training_rows(ctx)
        detector = build_detector(ctx)
        matrix = feature_matrix(train)
        detector.fit(matrix, list(FEATURE_NAMES))
        train_scores = detector.score(matrix)
        calibration = group_calibration(train_scores, train["entity_group"].to_numpy(), train["entity_type"].to_numpy(),
                                        ctx.config.model.threshold)
        model_id = f"{safe_segment(ctx.run_id)}-{ctx.config.model.backend}"
        model_key = f"{ctx.cluster_key('models')}/{model_id}"
        manifest = save_detector(ctx, detector, model_key)
        baselines = entity_baselines(train, train_scores)
        ctx.storage.write_parquet(f"{model_key}/baselines.parquet", pa.Table.from_pandas(baselines, preserve_index=False))
        ctx.storage.write_json(f"{model_key}/config.json", ctx.config.resolved())
        info = {
            "id": model_id, "key": model_key, "backend": ctx.config.model.backend, "threshold": float(detector.threshold_),
            "threshold_method": ctx.config.model.threshold.method, "train_rows": int(len(train)),
            "train_score_median": float(manifest["training"]["score_stats"]["quantiles"]["0.5"]),
            "calibration": calibration,
            "trained_on": {"from": iso(ranges.train_from), "to": iso(ranges.train_to)},
        }
        ctx.storage.write_json(f"{model_key}/model.json", info)
        ctx.update_state("model", info)
    return info, detector


MIN_GROUP_ROWS = 100


def group_calibration(scores: np.ndarray, groups: np.ndarray, entity_types: np.ndarray, threshold) -> dict:
    """Median and threshold of the training scores per entity peer group (features.entities).

    A group with fewer than MIN_GROUP_ROWS training windows falls back to its entity
    type ("type:user", "type:source_ip"), then to all rows ("*"). The threshold rule is
    the configured one (quantile or mean+3std).
    """
    from training.calibration import calibrate

    def stats(values: np.ndarray) -> dict:
        return {"median": float(np.median(values)), "threshold": float(calibrate(values, threshold.method, threshold.quantile)),
                "rows": int(values.size)}

    table = {"*": stats(scores)}
    for entity_type in sorted(set(entity_types)):
        values = scores[entity_types == entity_type]
        if values.size >= MIN_GROUP_ROWS:
            table[f"type:{entity_type}"] = stats(values)
    for group in sorted(set(groups)):
        values = scores[groups == group]
        if values.size >= MIN_GROUP_ROWS:
            table[group] = stats(values)
    return table


def save_detector(ctx: RunContext, detector, model_key: str) -> dict:
    """Save through a temporary directory, then copy every file into the workdir (local or S3)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model"
        manifest = detector.save(target)
        for path in sorted(target.iterdir()):
            ctx.storage.write_bytes(f"{model_key}/detector/{path.name}", path.read_bytes())
    return manifest


def load_model(ctx: RunContext, fitted=None):
    """The latest model of this cluster, verified (checksums) before anything is deserialised; ``fitted``: the
    detector this process has just fitted and saved as that model (``fit_model``), used as it is."""
    info = ctx.read_state().get("model")
    if not info:
        raise StageError(f"no trained model for cluster '{ctx.cluster}'", hint="run `auditsift train` first")
    if fitted is not None:
        return fitted, info, ctx.storage.read_parquet(f"{info['key']}/baselines.parquet").to_pandas()
    keys = ctx.storage.list(f"{info['key']}/detector/")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model"
        target.mkdir()
        for key in keys:
            (target / key.rsplit("/", 1)[1]).write_bytes(ctx.storage.read_bytes(key))
        if info["backend"] == "sagemaker-rcf":
            from pipeline.aws.sagemaker_rcf import SageMakerRcf

            detector = SageMakerRcf.load(target, ctx.config, ctx.storage, progress=ctx.notify)
        else:
            from training.registry import load_detector

            detector = load_detector(target)
    baselines = ctx.storage.read_parquet(f"{info['key']}/baselines.parquet").to_pandas()
    return detector, info, baselines


def entity_baselines(train: pd.DataFrame, train_scores: np.ndarray) -> pd.DataFrame:
    """Per entity over its training windows: the median of every feature (the baseline reasons cite) and the
    highest model score (``max_score``: how unusual this entity already was); plus a row per entity type."""
    scored = train.assign(max_score=train_scores)
    per_entity = scored.groupby(["entity_type", "entity"]).agg(
        {**{name: "median" for name in FEATURE_NAMES}, "max_score": "max"}).reset_index()
    per_type = scored.groupby("entity_type")[list(FEATURE_NAMES)].median().reset_index()
    per_type.insert(1, "entity", None)
    return pd.concat([per_entity, per_type], ignore_index=True)
