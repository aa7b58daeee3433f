"""Merging one hour's rows into its archive file, holding about ``merge_rows`` rows at a time.

An hour file holds one row per (audit_id, stage), sorted by (time, audit_id, stage). The rows
merged into it are the file's own followed by the hour's new parts in input order; of the copies of
an event, the earliest delivery wins (``dedupe_sorted``).

An hour of at most ``merge_rows`` rows is merged in memory, as one table (about 2.5 KB a row at the
peak: the parts, the sorted copy and the encoder's buffers). A busier hour (a cluster at 1,000
events a second writes 3.6 million an hour: some 9 GB that way) is merged from sorted runs:

- every staged part is sorted when it is staged (``sort_events``), so it is a run that can be read
  back a batch at a time; the hour's existing file is a run already;
- the runs are merged by time (``merge_runs``): rows earlier than every run's next unread row are
  sorted and deduplicated together and written as the next rows of the file, in row groups of
  ``merge_rows`` rows. Copies of an event with equal times always meet in one such step;
- copies with different times can be far apart, so before merging, a hash of every row's
  (audit_id, stage) finds the keys whose rows have more than one time, and the merge remembers the
  exact keys of just those rows (``LaterCopies``): the first emitted, the earliest, wins.

The rows and their order are those of the in-memory merge; an hour file of more than ``merge_rows``
rows is written in several row groups where the in-memory merge writes one, to a temporary file
rather than to memory. Besides about ``merge_rows`` rows, the merge holds one batch of
``RUN_BATCH_ROWS`` per run (a run is a staged part: one input chunk's rows of the hour) and 40
bytes per row of the hour while it looks for repeated keys.
"""
from __future__ import annotations

import io
import itertools
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.events import EVENT_SCHEMA, conform_events
from pipeline.storage import PARQUET_OPTIONS

MERGE_ROWS = 32_768
RUN_BATCH_ROWS = 1_024  # rows a sorted run is read back in: the merge holds one such batch per run


def sort_events(table: pa.Table) -> pa.Table:
    """Rows in the order ``dedupe_sorted`` ranks them, copies kept: a run for ``merge_runs``."""
    order = _dedupe_order(table)
    return table if not np.any(order[1:] < order[:-1]) else table.take(order)


def dedupe_sorted(table: pa.Table) -> pa.Table:
    """One row per (audit_id, stage): the earliest delivery wins (earliest time, then lowest
    CloudWatch id, then input order), output sorted by (time, audit_id, stage).

    Sorting by (time, audit_id, stage, cw_event_id) puts every key's winner first among its
    copies, so keeping first occurrences needs no second sort. One ``take`` builds the result,
    and none is needed when the rows already are in order without duplicates (the usual case: a
    stream arrives nearly sorted).
    """
    if len(table) == 0:
        return table
    order = _dedupe_order(table)
    ids = pc.dictionary_encode(table["audit_id"].combine_chunks()).indices.to_numpy()
    stage_codes = pc.dictionary_encode(table["stage"].combine_chunks())
    keys = ids.astype(np.int64) * max(len(stage_codes.dictionary), 1) + stage_codes.indices.to_numpy()
    _, first = np.unique(keys[order], return_index=True)
    keep = order[np.sort(first)]
    if len(keep) == len(table) and not np.any(keep[1:] < keep[:-1]):
        return table
    return table.take(keep)


def _dedupe_order(table: pa.Table) -> np.ndarray:
    """Row indices sorted by (time, audit_id, stage, cw_event_id missing last, cw_event_id, input order).

    Times rarely tie, so rows are ordered by an integer sort of the times and only runs of equal
    times are ordered by the text keys."""
    times = _times(table)
    order = np.argsort(times, kind="stable")
    ordered_times = times[order]
    tied = np.flatnonzero(ordered_times[1:] == ordered_times[:-1])
    if len(tied):
        audit_ids, stages, cw_ids = (table[name].to_pylist() for name in ("audit_id", "stage", "cw_event_id"))
        starts = tied[np.r_[True, np.diff(tied) > 1]]
        ends = tied[np.r_[np.diff(tied) > 1, True]] + 2
        for start, end in zip(starts, ends):
            order[start:end] = sorted(order[start:end], key=lambda i: (audit_ids[i], stages[i], cw_ids[i] is None, cw_ids[i] or ""))
    return order


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


def merge_in_memory(existing: bytes | None, incoming: Iterable[pa.Table]) -> MergedHour:
    """The hour file for ``existing`` (an hour file's bytes, or None) plus ``incoming``, merged as one table."""
    tables = [conform_events(pq.read_table(io.BytesIO(existing)))] if existing is not None else []
    merged = dedupe_sorted(pa.concat_tables(tables + [table.cast(EVENT_SCHEMA) for table in incoming]))
    sink = io.BytesIO()
    pq.write_table(merged.combine_chunks(), sink, **PARQUET_OPTIONS)  # one layout however the parts were buffered
    if not len(merged):
        return MergedHour(sink, 0, None, None)
    return MergedHour(sink, len(merged), _time_at(merged, 0), _time_at(merged, -1))


def merge_runs(existing: bytes | None, runs: list[Iterable[pa.Table]], keys: Iterable[pa.Table], merge_rows: int) -> MergedHour:
    """``merge_in_memory``'s rows from sorted runs, written in row groups of ``merge_rows`` rows to a
    temporary file (in ``TMPDIR``).

    ``runs`` are the incoming parts in input order, each sorted by ``sort_events`` and given as
    batches; ``keys`` gives the time, audit_id and stage of every incoming row, in any grouping."""
    existing_file = pq.ParquetFile(io.BytesIO(existing)) if existing is not None else None
    if existing_file is not None:
        existing_keys = existing_file.iter_batches(65_536, columns=["time", "audit_id", "stage"])
        keys = itertools.chain((pa.Table.from_batches([batch]) for batch in existing_keys), keys)
        runs = [(conform_events(pa.Table.from_batches([batch])) for batch in existing_file.iter_batches(RUN_BATCH_ROWS))] + runs
    later_copies = LaterCopies(keys)
    sink = tempfile.TemporaryFile(prefix="auditsift-hour-")  # the file, too, grows with the hour
    try:
        groups = _RowGroups(pq.ParquetWriter(sink, EVENT_SCHEMA, **PARQUET_OPTIONS), merge_rows)
        for table in _merged(runs, merge_rows):
            groups.add(later_copies.drop(table))
        groups.close()
    except BaseException:
        sink.close()
        raise
    return MergedHour(sink, groups.rows, groups.time_min, groups.time_max)


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


class LaterCopies:
    """Drops the copies of an event that ``merge_runs`` meets after its first (earliest) one.

    Copies with equal times are deduplicated within one step of the merge; this needs to know only
    the keys whose rows carry different times. Those are found from (hash, time) of every row; a
    hash shared by rows of several times marks candidates, whose exact keys are then remembered."""

    def __init__(self, keys: Iterable[pa.Table]):
        hashes, times = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
        for table in keys:
            hashes.append(key_hashes(table))
            times.append(_times(table))
        hashes, times = np.concatenate(hashes), np.concatenate(times)
        order = np.argsort(hashes, kind="stable")
        hashes, times = hashes[order], times[order]
        del order
        same_key = hashes[1:] == hashes[:-1]
        self.candidates = np.unique(hashes[1:][same_key & (times[1:] != times[:-1])])
        self.seen = set()

    def drop(self, table: pa.Table) -> pa.Table:
        """``table`` (sorted, one row per key) without the keys already met."""
        if not len(self.candidates):
            return table
        maybe = np.flatnonzero(np.isin(key_hashes(table), self.candidates))
        if not len(maybe):
            return table
        keys = zip(table["audit_id"].take(maybe).to_pylist(), table["stage"].take(maybe).to_pylist())
        later = []
        for row, key in zip(maybe, keys):
            if key in self.seen:
                later.append(row)
            self.seen.add(key)
        if not later:
            return table
        keep = np.ones(len(table), dtype=bool)
        keep[later] = False
        return table.filter(pa.array(keep))


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

    def take_before(self, boundary: int) -> pa.Table:
        cut = int(np.searchsorted(self.times, boundary, side="left"))
        taken, self.held, self.times = self.held.slice(0, cut), self.held.slice(cut), self.times[cut:]
        return taken


def _as_events(table: pa.Table) -> pa.Table:
    return table if table.schema.equals(EVENT_SCHEMA) else table.cast(EVENT_SCHEMA)


def _merged(runs: list[Iterable[pa.Table]], merge_rows: int) -> Iterator[pa.Table]:
    """The rows of sorted runs, deduplicated where times are equal, in (time, audit_id, stage) order.

    Rows earlier than the last held time of every run not yet read to the end can come from no
    later batch, so they are deduplicated and sorted together (runs in input order, so ties go to
    the earlier input) and emitted; then the runs holding that time read on. Equal times are
    emitted together. Each run reads as many batches at once as keeps all of them near ``merge_rows`` rows."""
    per_read = max(1, merge_rows // (max(len(runs), 1) * RUN_BATCH_ROWS))
    runs = [_Run(batches, per_read) for batches in runs]
    reading = [run for run in runs if run.read_more()]
    while reading:
        boundary = min(int(run.times[-1]) for run in reading)
        ready = [part for part in (run.take_before(boundary) for run in runs) if len(part)]
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
