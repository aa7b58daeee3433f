"""Archive stage: inputs -> normalised events in hour-partitioned Parquet, exactly once.

Layout: ``archive/cluster=<c>/date=YYYY-MM-DD/hour=HH/part-0.parquet``, one row per
event, sorted by (time, auditID, stage). Events are streamed in bounded chunks: each chunk
is normalised into Arrow columns and spilled to a per-run staging area by hour; then each
touched hour is merged with what the archive already holds, copies of an event dropped, and
replaced atomically (``pipeline.stages.hour_merge``: in memory, or from sorted runs for an hour of
more than ``merge_rows`` rows). Re-running on the same input rewrites identical
bytes; a run killed at any point leaves either the old or the new hour file, and the
rerun's merge converges to the same archive.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import features.events as events_module
from features.events import (
    NATIVE_SOURCES,
    BadEvent,
    EventTableBuilder,
    SalvagedEvent,
    canonical_json,
    conform_events,
    native_build_matches,
    normalize_event,
    normalize_json_lines,
    rows_table,
)
from pipeline.context import RunContext
from pipeline.errors import StageError
from pipeline.io.readers import Event, LineBlock, Quarantine, parse_cloudwatch_message, read_blocks
from pipeline.io.storage import InputRef, Storage, resolve_inputs, safe_segment
from pipeline.stages.clock import future_limit
from pipeline.stages.hour_merge import MERGE_ROWS, RUN_BATCH_ROWS, merge_in_memory, merge_runs, sort_events
from pipeline.stages.workers import exit_with_parent, picklable, receive, start, stop, usable_cores, worker_context

log = logging.getLogger(__name__)
ARCHIVE_ROOT = "archive"
PART_NAME = "part-0.parquet"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def cluster_prefix(cluster: str) -> str:
    return f"{ARCHIVE_ROOT}/cluster={safe_segment(cluster)}"


def hour_key(cluster: str, date: str, hour: int) -> str:
    return f"{cluster_prefix(cluster)}/date={date}/hour={hour:02d}/{PART_NAME}"


@dataclass
class ArchiveResult:
    """What the archive stage saw.

    ``records_read`` counts decoded JSON values; each became an event (new or duplicate) or a
    quarantine entry. Lines that never decoded are quarantined too, so
    records_read + undecodable lines = everything read. ``duplicates`` are copies of events already
    held (redeliveries, reruns); ``audit_id_collisions`` are events added although another event
    of their hour has their auditID and stage (a client reused an Audit-ID): kept, not duplicates.
    A line that did not decode whole but was salvaged (``features.events.SalvagedEvent``) is a record
    read and an event, counted again in ``salvaged_by_reason`` by its marker.
    """

    inputs: list[str] = field(default_factory=list)
    records_read: int = 0
    events_normalised: int = 0
    duplicates: int = 0
    audit_id_collisions: int = 0
    events_added: int = 0
    hours_written: list[str] = field(default_factory=list)
    quarantine: Quarantine = field(default_factory=Quarantine)
    time_min: str | None = None
    time_max: str | None = None
    repaired: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "inputs": self.inputs,
            "records_read": self.records_read,
            "events": self.events_normalised,
            "duplicates": self.duplicates,
            "audit_id_collisions": self.audit_id_collisions,
            "events_added": self.events_added,
            "hours_written": len(self.hours_written),
            "quarantined": self.quarantine.total,
            "quarantined_by_reason": dict(sorted(self.quarantine.counts.items())),
            "salvaged": sum(self.quarantine.salvaged.values()),
            "salvaged_by_reason": dict(sorted(self.quarantine.salvaged.items())),
            "skipped": dict(sorted(self.quarantine.skipped.items())),
            "repaired": dict(sorted(self.repaired.items())),
            "time_min": self.time_min,
            "time_max": self.time_max,
        }


class HourBuffer:
    """Normalised tables waiting per hour; spills to staging when large so memory stays bounded.

    Every table added has an order key, its place in the input (a running count, or (file,
    chunk) when worker processes normalise the files and their tables arrive interleaved).
    Each hour's part of a table is sorted on arrival (``sort_events``), so that it is a run a
    busy hour's merge can read back a batch at a time (``runs``); ``take`` returns an hour's
    parts whole, in key order, which is the order one process reads them in.
    Staged parts are Arrow IPC files: LZ4 on a local disk (a quarter of Parquet's cost to write and
    read back, at 1.7 times zstd's size), zstd on S3, where bytes cost more than CPU. A part is written
    as one batch while this buffer has staged at most ``whole_rows`` rows of its hour (the in-memory
    merge's ``merge_rows``: such an hour is usually read back whole), and in batches of ``RUN_BATCH_ROWS``
    after that, which a busy hour's merge reads one at a time. Arrow compresses every buffer of every
    batch on its own: staging the 1M bench data in 1,024-row batches and reading it back took 2.14 CPU
    seconds in one process, whole parts 0.81. If a busy hour's merge does meet whole parts, they hold at
    most ``whole_rows`` rows per buffer that staged them. Staging is deleted at the end of the run.
    """

    def __init__(self, storage: Storage, staging: str, spill_rows: int, whole_rows: int = MERGE_ROWS):
        self.storage = storage
        self.staging = staging
        self.spill_rows = spill_rows
        self.whole_rows = whole_rows
        self.compression = "lz4" if storage.local_path(staging) is not None else "zstd"
        self.tables: dict[tuple[str, int], list[tuple[tuple, pa.Table]]] = defaultdict(list)
        self.rows_held = 0
        self.spilled: dict[tuple[str, int], list[tuple[str, list[StagedPart]]]] = defaultdict(list)
        self._staged_rows: dict[tuple[str, int], int] = defaultdict(int)
        self._added = 0

    def add(self, table: pa.Table, order: tuple | None = None) -> None:
        order = (self._added,) if order is None else order
        self._added += 1
        for key, part in split_by_hour(table):
            self.tables[key].append((order, sort_events(part)))
        self.rows_held += len(table)
        if self.rows_held >= self.spill_rows:
            self.spill()

    def spill(self) -> None:
        for (date, hour), parts in self.tables.items():
            index = len(self.spilled[(date, hour)])
            key = f"{self.staging}/date={date}/hour={hour:02d}/chunk-{index:05d}.arrow"
            batches = []
            for _, part in parts:
                self._staged_rows[(date, hour)] += len(part)
                batches.append(max(len(part), 1) if self._staged_rows[(date, hour)] <= self.whole_rows else RUN_BATCH_ROWS)
            data, layout = _staged_file(parts, batches, self.compression)
            _write_staged(self.storage, key, data)
            self.spilled[(date, hour)].append((key, layout))
        self.tables.clear()
        self.rows_held = 0

    def hours(self) -> list[tuple[str, int]]:
        return sorted(set(self.tables) | set(self.spilled))

    def rows(self, key: tuple[str, int]) -> int:
        """Rows buffered and staged for an hour."""
        staged = sum(part.rows for _, layout in self.spilled.get(key, []) for part in layout)
        return staged + sum(len(part) for _, part in self.tables.get(key, []))

    def take(self, key: tuple[str, int]) -> list[pa.Table]:
        """An hour's parts in order."""
        parts = []
        for staged, layout in self.spilled.get(key, []):
            with self._source(staged) as source:
                table = pa.ipc.open_file(source).read_all()
            offset = 0
            for part in layout:
                parts.append((part.order, table.slice(offset, part.rows)))
                offset += part.rows
        parts += self.tables.pop(key, [])
        parts.sort(key=lambda part: part[0])
        return [table for _, table in parts]

    def runs(self, key: tuple[str, int]) -> list[Iterator[pa.Table]]:
        """An hour's parts in order, each sorted and read a batch at a time."""
        runs = [(part.order, self._batches(staged, part)) for staged, layout in self.spilled.get(key, []) for part in layout]
        runs += [(order, _batches_of(table)) for order, table in self.tables.get(key, [])]
        runs.sort(key=lambda run: run[0])
        return [batches for _, batches in runs]

    def forget(self, key: tuple[str, int]) -> None:
        self.tables.pop(key, None)

    def _batches(self, staged: str, part: StagedPart) -> Iterator[pa.Table]:
        with self._source(staged) as source:
            reader = pa.ipc.open_file(source)
            for index in range(part.first_batch, part.first_batch + part.batches):
                yield pa.Table.from_batches([reader.get_batch(index)])

    def _source(self, staged: str):
        """A staged file to read from: opened on a local disk (read a batch at a time), else fetched whole."""
        path = self.storage.local_path(staged)
        return pa.OSFile(str(path)) if path is not None else pa.BufferReader(self.storage.read_bytes(staged))


def _batches_of(table: pa.Table) -> Iterator[pa.Table]:
    for first in range(0, len(table), RUN_BATCH_ROWS):
        yield table.slice(first, RUN_BATCH_ROWS)


@dataclass(frozen=True)
class StagedPart:
    """Where one part (an input table's rows of one hour) is in its staged file."""

    order: tuple
    rows: int
    first_batch: int
    batches: int


def _staged_file(parts: list[tuple[tuple, pa.Table]], batch_rows: list[int], compression: str) -> tuple[bytes, list[StagedPart]]:
    """Parts as one Arrow IPC file, each in batches of its ``batch_rows``, and where each part is."""
    sink, layout = pa.BufferOutputStream(), []
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_file(sink, parts[0][1].schema, options=options) as writer:
        for (order, part), rows in zip(parts, batch_rows):
            first = writer.stats.num_record_batches
            writer.write_table(part, max_chunksize=rows)
            layout.append(StagedPart(order, len(part), first, writer.stats.num_record_batches - first))
    return sink.getvalue().to_pybytes(), layout


def _write_staged(storage: Storage, key: str, data: bytes) -> None:
    """Staged parts need no fsync or atomic rename: staging is deleted at the end of the run, and a
    killed run's staging by the next run before it stages anything."""
    path = storage.local_path(key)
    if path is None:
        storage.write_bytes(key, data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def split_by_hour(table: pa.Table) -> Iterator[tuple[tuple[str, int], pa.Table]]:
    """Split a table of events into (date, hour) partitions by event time (UTC), rows in input order.

    Input arrives nearly in time order, so one stable sort by hour and zero-copy slices replace
    a filter per hour."""
    if len(table) == 0:
        return
    hours = pc.floor_temporal(table["time"], unit="hour").combine_chunks()
    keys = hours.cast(pa.int64()).to_numpy()
    if np.any(keys[1:] < keys[:-1]):
        order = np.argsort(keys, kind="stable")
        table, keys, hours = table.take(order), keys[order], hours.take(order)
    bounds = np.r_[0, np.flatnonzero(keys[1:] != keys[:-1]) + 1, len(keys)]
    for begin, end in zip(bounds[:-1], bounds[1:]):
        value = hours[int(begin)].as_py()
        yield (value.strftime("%Y-%m-%d"), value.hour), table.slice(begin, end - begin)


def normalise_stream(
    events: Iterable[Event], quarantine: Quarantine, source: str, chunk_rows: int, repairs: dict | None = None
) -> Iterator[tuple[pa.Table, int]]:
    """Normalise decoded events into Arrow tables of at most ``chunk_rows``; yields (table, records consumed).

    A record that decodes but is not a usable event is quarantined here with its reason.
    """
    yield from normalise_blocks(events, quarantine, source, chunk_rows, repairs)


def normalise_blocks(
    items: Iterable[LineBlock | Event], quarantine: Quarantine, source: str, chunk_rows: int, repairs: dict | None = None
) -> Iterator[tuple[pa.Table, int]]:
    """``normalise_stream`` over ``read_blocks`` output: each block of JSON texts is parsed and
    normalised column-wise at once (``normalize_json_lines``); the records it leaves go through
    the per-line path in their place, so the rows, their order, the quarantine reasons and the
    repair counts are those of ``normalise_stream(read_events(...))``. Tables hold about
    ``chunk_rows`` rows; a quarantined record is numbered by its input line.
    """
    builder = EventTableBuilder()
    consumed = 0
    for item in items:
        if isinstance(item, LineBlock):
            rows, positions = normalize_json_lines(item.lines, item.cw_ids, repairs)
            consumed += len(rows)
            if len(rows) < len(item):
                slow, slow_positions = [], []
                for index in np.setdiff1d(np.arange(len(item)), positions, assume_unique=True):
                    for value, cw_id in item.decode(index):
                        consumed += 1
                        row = _normalise_one(value, cw_id, quarantine, source, item.line_nos[index], repairs)
                        if row is not None:
                            slow.append(row)
                            slow_positions.append(index)
                if slow:
                    order = np.argsort(np.r_[positions, slow_positions], kind="stable")
                    rows = pa.concat_tables([rows, rows_table(slow)]).take(order)
            builder.extend(rows)
        else:
            consumed += 1
            row = _normalise_one(item[0], item[1], quarantine, source, consumed, repairs)
            if row is not None:
                builder.append(row)
        if len(builder) >= chunk_rows:
            yield _finish(builder, quarantine, source), consumed
            consumed = 0
    if len(builder) or consumed:
        yield _finish(builder, quarantine, source), consumed


def _normalise_one(value, cw_id, quarantine: Quarantine, source: str, line_no: int, repairs: dict | None) -> dict | None:
    """One decoded record as a row, or None after quarantining it with its reason."""
    try:
        return normalize_event(value, cw_id, repairs=repairs)
    except BadEvent as error:
        quarantine.add(error.reason, source, line_no, value.raw if isinstance(value, SalvagedEvent) else _sample(value))
        return None


def _finish(builder: EventTableBuilder, quarantine: Quarantine, source: str) -> pa.Table:
    table, bad = builder.build()
    for _ in bad:
        quarantine.add("bad_timestamp", source, 0, None)
    if table["salvage"].null_count < len(table):
        for item in pc.value_counts(table["salvage"].drop_null()).to_pylist():
            quarantine.salvage(item["values"], item["counts"])
    return table


def quarantine_future(table: pa.Table, not_after: datetime | None, quarantine: Quarantine, source: str) -> pa.Table:
    """``table`` without the events stamped later than ``not_after`` (the run's clock plus
    ``archive.future_skew_minutes``, ``pipeline.stages.clock.future_limit``), each quarantined as ``future_timestamp``.
    Archived, one such event would sit in the newest hour for good: a scheduler scoring "the latest day"
    would score its empty day, and an hour of year 9999 overflows every date computed after it.
    The API server stamps the times, not the client, so no request can choose to be dropped here."""
    if not_after is None or not len(table):
        return table
    late = pc.greater(table["time"], pa.scalar(not_after, type=table.schema.field("time").type))
    if not pc.any(late).as_py():
        return table
    limit = not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    for row in table.filter(late).select(["time", "audit_id", "stage", "user", "verb"]).to_pylist():
        quarantine.add("future_timestamp", source, 0, _sample({**row, "time": _iso(row["time"]), "limit": limit}))
    return table.filter(pc.invert(late))


def _sample(value) -> str:
    """The first 300 bytes of a quarantined value as JSON; one orjson will not write (nested deeper than 254, an
    integer over 64 bits) is written by ``canonical_json``, which does not recurse: repr() would, and abort the run."""
    try:
        return orjson.dumps(value)[:300].decode("utf-8", "replace")
    except TypeError:
        return canonical_json(value)[:300].decode("utf-8", "replace")


def archive_tables(
    storage: Storage, tables: Iterable[pa.Table], cluster: str, run_id: str, result: ArchiveResult, spill_rows: int = 500_000,
    merge_rows: int = MERGE_ROWS,
) -> ArchiveResult:
    """Merge normalised event tables into the archive, hour by hour, exactly once."""
    staging = f"staging/{safe_segment(run_id)}"
    storage.delete_prefix("staging/")
    buffer = HourBuffer(storage, staging, spill_rows, merge_rows)
    for item in tables:
        order, table = item if isinstance(item, tuple) else (None, item)
        if len(table):
            result.events_normalised += len(table)
            buffer.add(table, order)
    for date, hour in buffer.hours():
        _count_merge(result, merge_hour(storage, cluster, date, hour, buffer, merge_rows))
    storage.delete_prefix(staging)
    return result


@dataclass
class HourMerge:
    """What merging one hour's new rows into the archive did."""

    key: str
    added: int
    incoming: int
    collisions: int  # events added that share their (auditID, stage) with another event of the hour
    written: bool
    time_min: str | None
    time_max: str | None


def merge_hour(storage: Storage, cluster: str, date: str, hour: int, buffer: HourBuffer, merge_rows: int = MERGE_ROWS) -> HourMerge:
    """Merge an hour's buffered rows (in input order) with what the archive holds: drop copies, sort,
    and replace the hour file if anything was added. An hour of more than ``merge_rows`` rows is
    merged from its sorted runs, holding about ``merge_rows`` rows at a time (``pipeline.stages.hour_merge``)."""
    key = hour_key(cluster, date, hour)
    existing = storage.read_bytes(key) if storage.exists(key) else None
    before = pq.ParquetFile(io.BytesIO(existing)).metadata.num_rows if existing is not None else 0
    incoming_rows = buffer.rows((date, hour))
    if before + incoming_rows <= merge_rows:
        merged = merge_in_memory(existing, buffer.take((date, hour)))
    else:
        merged = merge_runs(existing, buffer.runs((date, hour)), merge_rows)
        buffer.forget((date, hour))
    with merged.content:
        added = merged.rows - before
        written = bool(added or existing is None)
        if written:
            write_hour(storage, key, merged.content, merged.rows)
        else:
            repair_manifest(storage, key, existing, before)
    low = high = None
    if merged.rows:
        low, high = (_iso(EPOCH + timedelta(microseconds=micros)) for micros in (merged.time_min, merged.time_max))
    return HourMerge(key, added, incoming_rows, merged.shared - merged.shared_before, written, low, high)


def _count_merge(result: ArchiveResult, merge: HourMerge) -> None:
    result.events_added += merge.added
    result.duplicates += merge.incoming - merge.added
    result.audit_id_collisions += merge.collisions
    if merge.written:
        result.hours_written.append(merge.key)
    if merge.time_min is not None:
        result.time_min = merge.time_min if result.time_min is None else min(result.time_min, merge.time_min)
        result.time_max = merge.time_max if result.time_max is None else max(result.time_max, merge.time_max)


def write_hour(storage: Storage, key: str, content: BinaryIO, rows: int) -> None:
    """Replace an hour's Parquet file with ``content`` (a seekable file), then its manifest (rows,
    sha256): the manifest is the commit marker readers and caches trust; a crash between the two
    leaves a stale digest that ``hour_digest`` detects and recomputes."""
    content.seek(0)
    digest = hashlib.file_digest(content, "sha256").hexdigest()
    content.seek(0)
    storage.write_stream(key, content)
    storage.write_json(manifest_key(key), {"rows": rows, "sha256": digest})


def manifest_key(hour_key_: str) -> str:
    return hour_key_.rsplit("/", 1)[0] + "/_manifest.json"


def repair_manifest(storage: Storage, key: str, data: bytes, rows: int) -> None:
    """Rewrite an hour's manifest if a crash left it missing or stale."""
    digest = hashlib.sha256(data).hexdigest()
    if storage.read_json_or(manifest_key(key), {}).get("sha256") != digest:
        storage.write_json(manifest_key(key), {"rows": rows, "sha256": digest})


def hour_digest(storage: Storage, key: str) -> str:
    """sha256 of an archived hour file: from its manifest, or computed when the manifest is missing."""
    manifest = storage.read_json_or(manifest_key(key), {})
    return manifest.get("sha256") or hashlib.sha256(storage.read_bytes(key)).hexdigest()


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def archive_inputs(storage: Storage, refs: list[InputRef], cluster: str, run_id: str, chunk_rows: int = 50_000,
                   max_line_bytes: int = 4 * 1024 * 1024, progress=None, workers: int = 1, merge_rows: int = MERGE_ROWS,
                   not_after: datetime | None = None, max_ratio: float | None = None) -> ArchiveResult:
    """Archive every event of ``refs`` (files or objects in any supported format); events stamped later
    than ``not_after`` are quarantined (``quarantine_future``). ``max_ratio`` stops reading a gzip input
    that decompresses to more than that many times its size (``readers.read_blocks``).

    With ``workers`` > 1, worker processes read, normalise and stage the input files, then merge
    the hours (``archive_in_workers``); the archive, the counts and the quarantine are the same
    as with one process."""
    result = ArchiveResult(inputs=[ref.name for ref in refs])
    count = worker_count(storage, refs, workers)
    with system_memory_pool():
        if count > 1:
            return archive_in_workers(storage, refs, cluster, run_id, result, chunk_rows, max_line_bytes, progress, count, merge_rows,
                                      not_after, max_ratio)
        return _archive_here(storage, refs, cluster, run_id, result, chunk_rows, max_line_bytes, progress, merge_rows, not_after,
                             max_ratio)


def _archive_here(storage: Storage, refs: list[InputRef], cluster: str, run_id: str, result: ArchiveResult, chunk_rows: int,
                  max_line_bytes: int, progress, merge_rows: int, not_after: datetime | None = None,
                  max_ratio: float | None = None) -> ArchiveResult:
    """``archive_inputs`` in this process."""

    def tables() -> Iterator[pa.Table]:
        for ref in refs:
            items = read_blocks(ref, result.quarantine, max_line_bytes, max_ratio=max_ratio)
            for table, consumed in normalise_blocks(items, result.quarantine, ref.name, chunk_rows, result.repaired):
                result.records_read += consumed
                if progress:
                    progress(consumed)
                yield quarantine_future(table, not_after, result.quarantine, ref.name)

    archive_tables(storage, tables(), cluster, run_id, result, spill_rows=max(chunk_rows * 10, 100_000), merge_rows=merge_rows)
    return result


@contextmanager
def system_memory_pool() -> Iterator[None]:
    """Arrow buffers from the C library's allocator while archiving, instead of pyarrow's default
    (mimalloc). The archive makes and drops tens of megabytes of buffers per 50,000-row chunk; on
    this workload the default pool measured slower and larger: archive phase at 1M events, worker CPU
    14.5-14.9 against 12.4-13.1 s, peak RSS 845-860 against 619-642 MB (docs/performance.md)."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


PARALLEL_MIN_BYTES = 16 << 20  # below this (about 80k events of gzip), starting workers costs more than it saves


def worker_count(storage: Storage, refs: list[InputRef], workers: int) -> int:
    """Worker processes worth starting: at most one per input, per usable core and per ``workers``;
    none for small inputs, for a workdir on S3 (workers stage every row) or when the inputs cannot
    be handed to another process (objects read through an S3 client)."""
    count = min(workers, len(refs), usable_cores())
    if count < 2 or sum(ref.size or 0 for ref in refs) < PARALLEL_MIN_BYTES or storage.local_path("staging") is None:
        return 1
    try:
        pickle.dumps((storage, refs))
    except Exception:
        return 1
    return count


def archive_in_workers(storage: Storage, refs: list[InputRef], cluster: str, run_id: str, result: ArchiveResult,
                       chunk_rows: int, max_line_bytes: int, progress, workers: int, merge_rows: int,
                       not_after: datetime | None = None, max_ratio: float | None = None) -> ArchiveResult:
    """``archive_tables`` over ``refs`` with the work done by ``workers`` processes, in two steps.

    1. Each worker takes the next unread file and normalises it exactly as one process does (with
       its own quarantine and repair counts); each normalised chunk is split by hour and staged at
       once (an ``HourBuffer`` that spills every chunk), each part keyed by (file, chunk). When no
       file is left, the worker reports where every hour's parts are. Each file's quarantine and
       repairs are merged here in file order, and a file that cannot be read raises its error once
       the files before it are done, as in one process.
    2. The workers merge the hours (``merge_hour``), each hour's parts sorted by (file, chunk):
       the rows, their order and so the hour files are those of one process. Each hour file is
       replaced atomically, as before, so a run killed here converges on rerun in the same way.

    Only counts and staging keys pass between processes. Memory: a worker holds one chunk
    (``chunk_rows``) while normalising and about ``merge_rows`` rows while merging; this process
    holds neither.
    """
    staging = f"staging/{safe_segment(run_id)}"
    storage.delete_prefix("staging/")
    context = worker_context()
    next_file = context.Value("i", 0)
    hours_queue, results = context.Queue(), context.Queue()
    processes = [context.Process(target=_archive_worker, name=f"auditsift-archive-{n}", daemon=True,
                                 args=(storage, refs, cluster, f"{staging}/worker={n}", chunk_rows,
                                       next_file, hours_queue, results, chunk_rows, max_line_bytes, merge_rows, os.getpid(),
                                       not_after, max_ratio))
                 for n in range(workers)]
    start(processes)
    try:
        finished: dict[int, tuple[Quarantine, dict] | BaseException] = {}
        staged: dict[tuple[str, int], list] = defaultdict(list)
        merged_files = reported = 0
        while merged_files < len(refs) or reported < workers:
            message = receive(results, processes, "archive worker")
            kind = message[0]
            if kind == "error" and message[1] is None:
                raise message[2]
            if kind == "read":
                _, rows, consumed = message
                result.records_read += consumed
                result.events_normalised += rows
                if progress:
                    progress(consumed)
            elif kind == "staged":
                for hour, parts in message[1].items():
                    staged[hour].extend(parts)
                reported += 1
            else:
                finished[message[1]] = message[2] if kind == "error" else (message[2], message[3])
                while merged_files in finished:
                    done = finished.pop(merged_files)
                    if isinstance(done, BaseException):
                        raise done
                    _merge_quarantine(result.quarantine, done[0])
                    for reason, count in done[1].items():
                        result.repaired[reason] = result.repaired.get(reason, 0) + count
                    merged_files += 1
        hours = sorted(staged)
        for index, (date, hour) in enumerate(hours):
            hours_queue.put((index, date, hour, staged[(date, hour)]))
        for _ in processes:
            hours_queue.put(None)
        merges: dict[int, HourMerge] = {}
        while len(merges) < len(hours):
            message = receive(results, processes, "archive worker")
            if message[0] == "error":
                raise message[2]
            if message[0] == "merged":
                merges[message[1]] = message[2]
        for index in range(len(hours)):
            _count_merge(result, merges[index])
    finally:
        stop(processes)
        hours_queue.cancel_join_thread()
    storage.delete_prefix(staging)
    return result


def _merge_quarantine(into: Quarantine, part: Quarantine) -> None:
    """Add one file's quarantine after the files before it, as if one Quarantine had seen them all."""
    for reason, count in part.counts.items():
        into.counts[reason] = into.counts.get(reason, 0) + count
    for reason, count in part.skipped.items():
        into.skipped[reason] = into.skipped.get(reason, 0) + count
    for marker, count in part.salvaged.items():
        into.salvage(marker, count)
    into.entries.extend(part.entries[:max(0, into.max_entries - len(into.entries))])


def _archive_worker(storage: Storage, refs: list[InputRef], cluster: str, staging: str, spill_rows: int, next_file, hours_queue,
                    results, chunk_rows: int, max_line_bytes: int, merge_rows: int, parent: int,
                    not_after: datetime | None = None, max_ratio: float | None = None) -> None:
    """Worker process of ``archive_in_workers``: normalise and stage files until none is left, then
    merge the hours it is given. An error is sent to the parent, which raises it."""
    exit_with_parent(parent)
    try:
        with system_memory_pool():
            _stage_files(storage, refs, cluster, staging, spill_rows, next_file, hours_queue, results, chunk_rows, max_line_bytes,
                         merge_rows, not_after, max_ratio)
    except Exception as error:
        results.put(("error", None, picklable(error)))


def _stage_files(storage: Storage, refs: list[InputRef], cluster: str, staging: str, spill_rows: int, next_file, hours_queue,
                 results, chunk_rows: int, max_line_bytes: int, merge_rows: int, not_after: datetime | None = None,
                 max_ratio: float | None = None) -> None:
    buffer = HourBuffer(storage, staging, spill_rows, merge_rows)
    while True:
        with next_file.get_lock():
            index = next_file.value
            next_file.value += 1
        if index >= len(refs):
            break
        ref, quarantine, repairs = refs[index], Quarantine(), {}
        try:
            items = read_blocks(ref, quarantine, max_line_bytes, max_ratio=max_ratio)
            for number, (table, consumed) in enumerate(normalise_blocks(items, quarantine, ref.name, chunk_rows, repairs)):
                table = quarantine_future(table, not_after, quarantine, ref.name)
                if len(table):
                    buffer.add(table, (index, number))
                results.put(("read", len(table), consumed))
        except Exception as error:  # raised by the parent in file order
            results.put(("error", index, picklable(error)))
            continue
        results.put(("done", index, quarantine, repairs))
    buffer.spill()
    results.put(("staged", dict(buffer.spilled)))
    while (task := hours_queue.get()) is not None:
        index, date, hour, parts = task
        buffer.spilled = {(date, hour): parts}
        results.put(("merged", index, merge_hour(storage, cluster, date, hour, buffer, merge_rows)))


def list_archive_hours(storage: Storage, cluster: str) -> list[tuple[str, int, str]]:
    """(date, hour, key) of every archived hour partition of ``cluster``, in time order."""
    found = []
    for key in storage.list(cluster_prefix(cluster) + "/"):
        if not key.endswith(PART_NAME):
            continue
        parts = dict(p.split("=", 1) for p in key.split("/") if "=" in p)
        found.append((parts["date"], int(parts["hour"]), key))
    return sorted(found)


def read_archive(storage: Storage, cluster: str, start: datetime | None = None, end: datetime | None = None,
                 columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Yield archived events hour by hour within [start, end)."""
    for date, hour, key in list_archive_hours(storage, cluster):
        hour_start = datetime.fromisoformat(f"{date}T{hour:02d}:00:00+00:00")
        if end is not None and hour_start >= end:
            continue
        if start is not None and hour_start.timestamp() + 3600 <= start.timestamp():
            continue
        table = storage.read_parquet(key, columns=columns)
        if columns is None:
            table = conform_events(table)
        if start is not None or end is not None:
            mask = None
            if start is not None:
                mask = pc.greater_equal(table["time"], pa.scalar(start, type=table.schema.field("time").type))
            if end is not None:
                upper = pc.less(table["time"], pa.scalar(end, type=table.schema.field("time").type))
                mask = upper if mask is None else pc.and_(mask, upper)
            table = table.filter(mask)
        yield table


# --------------------------------------------------------------------------- the archive stage
def check_native_build() -> None:
    """Refuse a checkout whose C decoder was built from other sources than its features/_native/ (fastnorm.c changed
    since `make install`): it would archive by the old decoding rules."""
    paths = [Path(events_module.__file__).parent / "_native" / name for name in NATIVE_SOURCES]
    sources = [path.read_bytes() for path in paths] if all(path.exists() for path in paths) else None
    if events_module._fastnorm is not None and not native_build_matches(events_module._fastnorm, sources):
        raise StageError("features._fastnorm was built from other sources than features/_native/",
                         hint="run `make install` to rebuild it, or set AUDITSIFT_NO_NATIVE=1 to archive with the msgspec decoder")


def run_archive(ctx: RunContext, inputs: list[str], now: datetime | None = None) -> dict:
    """Archive every event of ``inputs`` into the workdir; returns the counts for run.json. Events stamped
    after the run's clock (``now``, default the wall clock) plus the skew are quarantined (``future_limit``)."""
    check_native_build()
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
    from pipeline.aws import cloudwatch as cw  # boto3 loads only when a log group is read

    key = cw.checkpoint_key(cluster, log_group)
    checkpoint = storage.read_json_or(key, None)
    started_ms = cw.to_ms(datetime.now(timezone.utc))
    start_ms, end_ms = cw.resolve_window(checkpoint, config.archive.grace_minutes, start, end, now=cw.from_ms(started_ms))
    logs = cw.logs_client(config)
    streams = cw.list_audit_streams(logs, log_group, config.archive.audit_stream_prefix)
    log.info("reading %d audit streams of %s from %s to %s", len(streams), log_group, cw.iso_ms(start_ms), cw.iso_ms(end_ms))
    result = ArchiveResult(inputs=[f"cloudwatch:{log_group}/{name}" for name in streams])

    def events() -> Iterator[Event]:
        for first in range(0, len(streams), cw.MAX_STREAMS_PER_CALL):
            batch = streams[first:first + cw.MAX_STREAMS_PER_CALL]
            seen: set[str] = set()
            for page in cw.filter_pages(logs, log_group, batch, start_ms, end_ms):
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
        "high_water": cw.iso_ms(high_water),
        "last_window": {"start_ms": start_ms, "end_ms": end_ms, "start": cw.iso_ms(start_ms), "end": cw.iso_ms(end_ms)},
        "streams": len(streams),
        "run_id": run_id,
        "written_at": cw.iso_ms(cw.to_ms(datetime.now(timezone.utc))),
        "counts": result.as_dict() | {"inputs": len(streams)},
    })
    return result


def archive_cloudwatch(ctx: RunContext, log_group: str, now: datetime | None = None, start: datetime | None = None,
                       end: datetime | None = None) -> dict:
    """The archive stage over a CloudWatch Logs group (``archive_from_cloudwatch``): its quarantine and state
    written as ``run_archive`` writes them; returns the counts."""
    result = archive_from_cloudwatch(ctx.storage, log_group, ctx.cluster, ctx.run_id, ctx.config, start=start, end=end, now=now)
    write_quarantine(ctx, result.quarantine)
    counts = result.as_dict()
    ctx.update_state("archive", {"run_id": ctx.run_id, **{k: v for k, v in counts.items() if k != "inputs"}})
    return counts
