"""Merging one hour's rows into its archive file, holding about ``merge_rows`` rows at a time.

An hour file holds one row per event, sorted by (time, audit_id, stage). An event is its
``features.events.EVENT_IDENTITY``: two rows are copies of one event (a Firehose redelivery, the same
event read from an export and from CloudWatch, a rerun) when every identity column is equal, the
time included. Rows that share an audit_id and stage but differ elsewhere are different events (a
client chose the Audit-ID header) and are all kept. The rows merged into a file are the file's own
followed by the hour's new parts in input order; of the copies of an event, the earliest delivery
wins (lowest CloudWatch id, then input order: ``dedupe_sorted``).

An hour of at most ``merge_rows`` rows is merged in memory, as one table (about 2.5 KB a row at the
peak: the parts, the sorted copy and the encoder's buffers). A busier hour (a cluster at 1,000
events a second writes 3.6 million an hour: some 9 GB that way) is merged from sorted runs:

- every staged part is sorted when it is staged (``sort_events``), so it is a run that can be read
  back a batch at a time; the hour's existing file is a run already;
- the runs are merged by time (``merge_runs``): rows earlier than every run's next unread row are
  sorted and deduplicated together and written as the next rows of the file, in row groups of
  ``merge_rows`` rows. Copies of an event share their time, so they always meet in one such step.

The rows and their order are those of the in-memory merge; an hour file of more than ``merge_rows``
rows is written in several row groups where the in-memory merge writes one, to a temporary file
rather than to memory. Besides about ``merge_rows`` rows, the merge holds one batch of
``RUN_BATCH_ROWS`` per run (a run is a staged part: one input chunk's rows of the hour) and 8 bytes
per row of the hour to count the audit IDs events share (``shared_keys``).
"""
from __future__ import annotations

import io
import itertools
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.events import EVENT_IDENTITY, EVENT_SCHEMA, conform_events
from pipeline.io.storage import PARQUET_OPTIONS

MERGE_ROWS = 32_768
# Hour files keep min/max statistics for the event times only: Athena and DuckDB skip files and row groups by
# time, while the min and max of strings (usernames, URIs) span the alphabet in any busy hour and cost a third
# of the write (8 of 26 ms for an 11,000-event hour).
ARCHIVE_PARQUET_OPTIONS = {**PARQUET_OPTIONS, "write_statistics": ["time", "received_time"]}
RUN_BATCH_ROWS = 1_024  # rows a sorted run is read back in: the merge holds one such batch per run
# Equal times are ordered by the rest of the event's identity, audit_id and stage first.
TIE_COLUMNS = ("audit_id", "stage") + tuple(name for name in EVENT_IDENTITY if name not in ("audit_id", "stage", "time"))


def sort_events(table: pa.Table) -> pa.Table:
    """Rows in the order ``dedupe_sorted`` ranks them, copies kept: a run for ``merge_runs``."""
    order, _ = _ranked(table)
    return table if not np.any(order[1:] < order[:-1]) else table.take(order)


def dedupe_sorted(table: pa.Table) -> pa.Table:
    """One row per event (``EVENT_IDENTITY``): of its copies, the earliest delivery wins (lowest
    CloudWatch id, missing last, then input order); output sorted by (time, audit_id, stage, the rest
    of the identity).

    Sorting puts an event's copies next to each other, its winner first, so dropping every row equal
    to the one before needs no second sort. One ``take`` builds the result, and none is needed when
    the rows already are in order without copies (the usual case: a stream arrives nearly sorted).
    """
    if len(table) == 0:
        return table
    order, copies = _ranked(table)
    if not copies.any() and not np.any(order[1:] < order[:-1]):
        return table
    return table.take(order[~copies])


def _ranked(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row indices sorted by (time, ``TIE_COLUMNS``, cw_event_id, input order), missing values last, and
    for each position whether its row is a copy of the row before it (the same ``EVENT_IDENTITY``).

    Copies share their time, and times rarely tie, so rows are ordered by an integer sort of the
    times and only the rows of equal times are ranked by their values (Arrow's dense rank, so
    equal values get equal ranks and values compare as they sort) and compared."""
    times = _times(table)
    order = np.argsort(times, kind="stable")
    copies = np.zeros(len(order), dtype=bool)
    ordered_times = times[order]
    tied = np.flatnonzero(ordered_times[1:] == ordered_times[:-1])
    if not len(tied):
        return order, copies
    tied = np.unique(np.r_[tied, tied + 1])  # positions whose time another row has
    rows = order[tied]
    ranks = [pc.rank(table[name].take(rows), "ascending", tiebreaker="dense").to_numpy() for name in TIE_COLUMNS + ("cw_event_id",)]
    group = np.cumsum(np.r_[True, ordered_times[tied[1:]] != ordered_times[tied[:-1]]])  # one number per run of equal times
    within = np.lexsort([np.arange(len(rows))] + ranks[::-1] + [group])  # stable: input order last
    order[tied] = rows[within]
    identity = np.column_stack([group] + ranks[:-1])[within]
    copies[tied[1:]] = (identity[1:] == identity[:-1]).all(axis=1)
    return order, copies


def _times(table: pa.Table) -> np.ndarray:
    return table["time"].combine_chunks().cast(pa.int64()).to_numpy()


def _time_at(table: pa.Table, row: int) -> int:
    """One row's time in microseconds since the epoch (the table is sorted: row 0 and -1 are its range)."""
    return table["time"][row].value


@dataclass
class MergedHour:
    """A merged hour file (``content``, a seekable file at its end) and what it holds."""

    content: BinaryIO
    rows: int
    time_min: int | None  # microseconds since the epoch
    time_max: int | None
    shared: int = 0  # rows whose (audit_id, stage) an earlier, different event of the hour has (``shared_keys``)
    shared_before: int = 0  # the same of the hour file merged into


def merge_in_memory(existing: bytes | None, incoming: Iterable[pa.Table]) -> MergedHour:
    """The hour file for ``existing`` (an hour file's bytes, or None) plus ``incoming``, merged as one table."""
    tables = [conform_events(pq.read_table(io.BytesIO(existing)))] if existing is not None else []
    before = shared_keys(lambda: tables)
    merged = dedupe_sorted(pa.concat_tables(tables + [table.cast(EVENT_SCHEMA) for table in incoming]))
    sink = io.BytesIO()
    pq.write_table(merged.combine_chunks(), sink, **ARCHIVE_PARQUET_OPTIONS)  # one layout however the parts were buffered
    if not len(merged):
        return MergedHour(sink, 0, None, None)
    return MergedHour(sink, len(merged), _time_at(merged, 0), _time_at(merged, -1), shared_keys(lambda: [merged]), before)


def merge_runs(existing: bytes | None, runs: list[Iterable[pa.Table]], merge_rows: int) -> MergedHour:
    """``merge_in_memory``'s rows from sorted runs, written in row groups of ``merge_rows`` rows to a
    temporary file (in ``TMPDIR``).

    ``runs`` are the incoming parts in input order, each sorted by ``sort_events`` and given as
    batches."""
    existing_file = pq.ParquetFile(io.BytesIO(existing)) if existing is not None else None
    before = 0
    if existing_file is not None:
        before = shared_keys(lambda: _key_batches(existing_file))
        runs = [(conform_events(pa.Table.from_batches([batch])) for batch in existing_file.iter_batches(RUN_BATCH_ROWS))] + runs
    sink = tempfile.TemporaryFile(prefix="auditsift-hour-")  # the file, too, grows with the hour
    try:
        groups = _RowGroups(pq.ParquetWriter(sink, EVENT_SCHEMA, **ARCHIVE_PARQUET_OPTIONS), merge_rows)
        for table in _merged(runs, merge_rows):
            groups.add(table)
        groups.close()
        written = pq.ParquetFile(sink)
        shared = shared_keys(lambda: _key_batches(written))
        sink.seek(0, io.SEEK_END)
    except BaseException:
        sink.close()
        raise
    return MergedHour(sink, groups.rows, groups.time_min, groups.time_max, shared, before)


def _key_batches(file: pq.ParquetFile) -> Iterator[pa.Table]:
    for batch in file.iter_batches(65_536, columns=["audit_id", "stage"]):
        yield pa.Table.from_batches([batch])


def shared_keys(tables: Callable[[], Iterable[pa.Table]]) -> int:
    """How many rows of ``tables()`` (an hour's rows, any grouping, read twice) share their (audit_id, stage)
    with another row: rows minus distinct keys. In an hour file every row is a different event, so
    this counts the events a client hid behind an audit ID already used, which a merge on (audit_id,
    stage) alone would have dropped as duplicates.

    A hash of every key finds the hashes met more than once, then only the rows with those hashes are
    compared exactly: 8 bytes a row and the shared keys are held, never the hour's keys."""
    hashes = [np.empty(0, dtype=np.int64)] + [key_hashes(table) for table in tables()]
    hashes = np.sort(np.concatenate(hashes))
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    if not len(repeated):
        return 0
    counts: Counter = Counter()
    for table in tables():
        rows = np.flatnonzero(np.isin(key_hashes(table), repeated))
        counts.update(zip(table["audit_id"].take(rows).to_pylist(), table["stage"].take(rows).to_pylist()))
    return sum(count - 1 for count in counts.values())


def key_hashes(table: pa.Table) -> np.ndarray:
    """A hash of every row's (audit_id, stage) from Python's string hash. Equal keys, equal hashes
    within one process (string hashes are salted per process, so they are never stored); unequal
    keys may collide, so a hash only ever selects rows for an exact comparison. Slices of 65,536
    rows bound the text objects alive at once."""
    hashes = np.empty(len(table), dtype=np.int64)
    for start in range(0, len(table), 65_536):
        part = table.slice(start, 65_536)
        stages = pc.dictionary_encode(part["stage"].combine_chunks())
        stage_hashes = np.array([hash(stage) for stage in stages.dictionary.to_pylist()] + [0], dtype=np.int64)
        id_hashes = np.fromiter(map(hash, part["audit_id"].to_pylist()), dtype=np.int64, count=len(part))
        with np.errstate(over="ignore"):
            stage_part = stage_hashes[stages.indices.fill_null(-1).to_numpy()] * np.int64(-0x61C8864680B583EB)
        hashes[start:start + len(part)] = id_hashes ^ stage_part
    return hashes


class _Run:
    """A sorted run read ``per_read`` batches at a time; ``held`` is what has been read and not yet emitted."""

    def __init__(self, batches: Iterable[pa.Table], per_read: int):
        self.batches = iter(batches)
        self.per_read = per_read
        self.held = EVENT_SCHEMA.empty_table()
        self.times = np.empty(0, dtype=np.int64)

    def read_more(self) -> bool:
        read = [_as_events(batch) for batch in itertools.islice(self.batches, self.per_read)]
        if not read:
            return False
        self.held = pa.concat_tables([self.held, *read])
        self.times = np.concatenate([self.times, *map(_times, read)])
        return True

    def take_before(self, boundary: int) -> pa.Table | None:
        """The held rows earlier than ``boundary``, None when there are none. Most runs of a busy hour hold none at
        any step (each covers its own minute or so of the hour), and slicing the 84 columns of a table that gives
        nothing cost 0.1 ms a run a step: 23 of the 39 s a 3.5-million-event hour of 71 runs took to merge."""
        if not len(self.times) or self.times[0] >= boundary:
            return None
        cut = int(np.searchsorted(self.times, boundary, side="left"))
        taken, self.held, self.times = self.held.slice(0, cut), self.held.slice(cut), self.times[cut:]
        return taken


def _as_events(table: pa.Table) -> pa.Table:
    return table if table.schema.equals(EVENT_SCHEMA) else table.cast(EVENT_SCHEMA)


def _merged(runs: list[Iterable[pa.Table]], merge_rows: int) -> Iterator[pa.Table]:
    """The rows of sorted runs, one per event, in ``dedupe_sorted``'s order (time first).

    Rows earlier than the last held time of every run not yet read to the end can come from no
    later batch, so they are deduplicated and sorted together (runs in input order, so ties go to
    the earlier input) and emitted; then the runs holding that time read on. Equal times are
    emitted together. Each run reads as many batches at once as keeps all of them near ``merge_rows`` rows."""
    per_read = max(1, merge_rows // (max(len(runs), 1) * RUN_BATCH_ROWS))
    runs = [_Run(batches, per_read) for batches in runs]
    reading = [run for run in runs if run.read_more()]
    while reading:
        boundary = min(int(run.times[-1]) for run in reading)
        ready = [part for part in (run.take_before(boundary) for run in runs) if part is not None]
        if ready:
            yield dedupe_sorted(pa.concat_tables(ready))
        reading = [run for run in reading if int(run.times[-1]) > boundary or run.read_more()]
    rest = [run.held for run in runs if len(run.held)]
    if rest:
        yield dedupe_sorted(pa.concat_tables(rest))


class _RowGroups:
    """Sorted tables written to a Parquet file in row groups of exactly ``size`` rows (the last fewer),
    so the file's layout depends on its rows only, not on how they were emitted."""

    def __init__(self, writer: pq.ParquetWriter, size: int):
        self.writer, self.size = writer, size
        self.pending: list[pa.Table] = []
        self.pending_rows = self.rows = 0
        self.time_min = self.time_max = None

    def add(self, table: pa.Table) -> None:
        if not len(table):
            return
        if self.time_min is None:
            self.time_min = _time_at(table, 0)
        self.time_max = _time_at(table, -1)
        self.pending.append(table)
        self.pending_rows += len(table)
        self.rows += len(table)
        while self.pending_rows >= self.size:
            self._write(self.size)

    def _write(self, rows: int) -> None:
        pending = pa.concat_tables(self.pending)
        self.writer.write_table(pending.slice(0, rows).combine_chunks(), row_group_size=rows)
        rest = pending.slice(rows)
        self.pending, self.pending_rows = [rest], len(rest)

    def close(self) -> None:
        if self.pending_rows:
            self._write(self.pending_rows)
        self.writer.close()
