"""A busy hour merged from sorted runs holds the rows the in-memory merge holds, in the same order.

The runs path (``merge_runs``) exists so a worker merging a 3.6-million-event hour holds about
``merge_rows`` rows, not the hour. It must lose and duplicate nothing the in-memory merge would
not: copies of an event, copies of rows the archive already holds, CloudWatch ids deciding which
copy wins, ties of time across batches, and different events sharing an audit ID (at the same
time, and far apart in the hour), which are all kept and counted alike.
"""
from __future__ import annotations

import io
import json
import random
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.events import EventTableBuilder, normalize_event
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.stages import archive, hour_merge
from pipeline.stages.archive import archive_inputs, list_archive_hours
from pipeline.stages.hour_merge import merge_in_memory, merge_runs, sort_events
from tests.factory import T0, envelope, event


def _table(raw: list[tuple[dict, str | None]]) -> pa.Table:
    builder = EventTableBuilder()
    for item, cw_id in raw:
        builder.append(normalize_event(item, cw_id))
    return builder.build()[0]


def busy_hour_parts(seed: int, parts: int = 6, rows: int = 120) -> list[pa.Table]:
    """An hour's input parts full of awkward rows: events at a few distinct times so many rows tie,
    audit IDs that different events share (at equal and unequal times), and copies of the events
    within and across parts, some with CloudWatch ids."""
    rng = random.Random(seed)
    pool = []
    for _ in range(150):
        moment = T0 + timedelta(seconds=rng.choice([0, 1, 1, 2, 5, 30, 31, 59, 600, 3599]))
        pool.append(event(moment, audit_id=f"id-{rng.randint(0, 90):03d}", stage=rng.choice(["ResponseComplete", "ResponseStarted"]),
                          verb=rng.choice(["get", "list", "watch"])))
    return [_table([(rng.choice(pool), rng.choice([None, None, f"cw-{rng.randint(0, 5)}"])) for _ in range(rows)])
            for _ in range(parts)]


def _runs(parts: list[pa.Table], batch: int) -> list[list[pa.Table]]:
    return [[run.slice(start, batch) for start in range(0, len(run), batch)] for run in map(sort_events, parts)]


def _bytes(merged) -> bytes:
    merged.content.seek(0)
    return merged.content.read()


def _read(merged) -> pa.Table:
    return pq.read_table(io.BytesIO(_bytes(merged)))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_runs_merge_keeps_exactly_the_in_memory_rows_in_order(seed, batch):
    parts = busy_hour_parts(seed)
    expected = merge_in_memory(None, parts)
    merged = merge_runs(None, _runs(parts, batch), merge_rows=50)
    assert _read(merged).equals(_read(expected))
    assert (merged.rows, merged.time_min, merged.time_max, merged.shared) == (expected.rows, expected.time_min, expected.time_max, expected.shared)
    assert expected.rows < sum(map(len, parts))  # the hour really had copies to drop
    assert expected.shared > 0  # and different events sharing audit IDs, all kept


@pytest.mark.parametrize("seed", range(4))
def test_runs_that_each_cover_their_own_minutes_merge_like_the_in_memory_hour(seed):
    """A busy hour's runs are its input chunks, each a stretch of consecutive minutes: at any step most runs hold
    nothing before the boundary. Adjacent stretches share a second (a tie across runs) and some copies."""
    rng = random.Random(seed)
    rows = []
    for second in range(0, 3600, 9):
        moment = T0 + timedelta(seconds=second)
        rows += [(event(moment, audit_id=f"id-{second}-{n}", verb=rng.choice(["get", "list"])), None) for n in range(rng.randint(1, 3))]
    stretches = [rows[start:start + 97] for start in range(0, len(rows), 97)]
    parts = [_table(stretch + rng.sample(stretches[index - 1], 3) if index else stretch) for index, stretch in enumerate(stretches)]
    expected = merge_in_memory(None, parts)
    merged = merge_runs(None, _runs(parts, 16), merge_rows=64)
    assert _read(merged).equals(_read(expected)) and expected.rows == len(rows) < sum(map(len, parts))


@pytest.mark.parametrize("seed", range(4))
def test_runs_merge_into_an_existing_hour_file(seed):
    earlier, later = busy_hour_parts(seed, parts=3), busy_hour_parts(seed + 100, parts=3)
    existing = _bytes(merge_in_memory(None, earlier))
    expected = merge_in_memory(existing, later)
    merged = merge_runs(existing, _runs(later, 5), merge_rows=40)
    assert _read(merged).equals(_read(expected))
    assert (merged.shared, merged.shared_before) == (expected.shared, expected.shared_before) and expected.shared_before > 0


def test_an_audit_id_reused_far_apart_in_the_hour_keeps_both_events():
    """A client reused an Audit-ID 45 minutes later: two events, in different runs and merge steps."""
    first = _table([(event(T0 + timedelta(minutes=50), audit_id="reused", verb="delete"), None)]
                   + [(event(T0 + timedelta(seconds=s), audit_id=f"filler-{s}"), None) for s in range(40)])
    second = _table([(event(T0 + timedelta(minutes=5), audit_id="reused", verb="get"), None)])
    merged = merge_runs(None, _runs([first, second], 3), merge_rows=10)
    table = _read(merged)
    reused = table.filter(pa.compute.equal(table["audit_id"], "reused"))
    assert reused["verb"].to_pylist() == ["get", "delete"] and len(table) == 42 and merged.shared == 1
    assert table.equals(_read(merge_in_memory(None, [first, second])))


def test_busy_hour_file_is_written_in_row_groups_of_merge_rows():
    parts = busy_hour_parts(1, parts=10, rows=200)
    merged = merge_runs(None, _runs(parts, 16), merge_rows=60)
    layout = pq.ParquetFile(io.BytesIO(_bytes(merged))).metadata
    sizes = [layout.row_group(i).num_rows for i in range(layout.num_row_groups)]
    assert sizes[:-1] == [60] * (len(sizes) - 1) and 0 < sizes[-1] <= 60 and sum(sizes) == merged.rows


def test_runs_merge_of_an_hour_under_merge_rows_is_byte_identical_to_in_memory():
    parts = busy_hour_parts(2)
    assert _bytes(merge_runs(None, _runs(parts, 9), merge_rows=100_000)) == _bytes(merge_in_memory(None, parts))


def test_staged_parts_are_whole_until_the_hour_passes_merge_rows_then_in_run_batches(tmp_path, monkeypatch):
    """A buffer stages a part as one batch while it has staged at most ``whole_rows`` rows of the part's hour
    (that hour is usually merged whole), and in ``RUN_BATCH_ROWS`` batches after; a busy hour's merge reads
    both kinds of run and keeps exactly the in-memory merge's rows."""
    monkeypatch.setattr(archive, "RUN_BATCH_ROWS", 16)
    parts = busy_hour_parts(3, parts=6, rows=120)
    buffer = archive.HourBuffer(LocalStorage(tmp_path), "staging/t", spill_rows=1, whole_rows=250)
    for part in parts:
        buffer.add(part)
    (hour, staged), = buffer.spilled.items()
    layout = [part for _, layout in staged for part in layout]
    assert [part.batches for part in layout] == [1, 1, 8, 8, 8, 8]  # 120 and 240 rows whole, then 120-row parts in 16s
    merged = merge_runs(None, buffer.runs(hour), merge_rows=50)
    assert _read(merged).equals(_read(merge_in_memory(None, parts)))


def _write_inputs(path, seed: int) -> None:
    """Two days of CloudWatch-shaped deliveries with re-delivered envelopes and a plain-JSON copy."""
    rng = random.Random(seed)
    raw = [event(T0 + timedelta(seconds=rng.randint(0, 7200)), audit_id=f"a{i}", verb=rng.choice(["get", "list", "create"]))
           for i in range(2_500)]
    raw += [event(T0 + timedelta(seconds=rng.randint(0, 7200)), audit_id=f"a{rng.randint(0, 2_499)}", verb="patch")
            for _ in range(300)]  # other events reusing audit ids
    lines = [json.dumps(envelope(raw[i:i + 400], first_id=i)) for i in range(0, len(raw), 400)]
    lines += [json.dumps(envelope(raw[800:1600], first_id=800))]  # a re-delivery
    lines += [json.dumps(item) for item in raw[::7]]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("workers", [1, 2])
def test_archive_with_small_merge_rows_matches_the_in_memory_archive(tmp_path, monkeypatch, workers):
    """Whole runs, first into an empty archive and then again over it: every hour file holds the
    same rows whichever merge was used, and the counts agree."""
    monkeypatch.setattr(archive, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(archive, "RUN_BATCH_ROWS", 50)
    monkeypatch.setattr(hour_merge, "RUN_BATCH_ROWS", 50)
    for name, seed in (("first.jsonl", 1), ("second.jsonl", 2)):
        _write_inputs(tmp_path / name, seed)
    results = {}
    for label, merge_rows in (("memory", 1_000_000), ("runs", 300)):
        storage = LocalStorage(tmp_path / label)
        counts = []
        for run, name in enumerate(["first.jsonl", "second.jsonl"]):
            refs = resolve_inputs([str(tmp_path / name)])
            result = archive_inputs(storage, refs, "c", f"r{run}", chunk_rows=700, workers=workers, merge_rows=merge_rows)
            counts.append((result.events_added, result.duplicates, result.audit_id_collisions, result.time_min, result.time_max,
                           len(result.hours_written)))
        hours = list_archive_hours(storage, "c")
        results[label] = (counts, [(d, h, storage.read_parquet(key)) for d, h, key in hours], storage, hours)
    memory, runs = results["memory"], results["runs"]
    assert memory[0] == runs[0] and memory[0][0][1] > 0 and memory[0][0][2] > 0  # same counts, with copies and collisions
    assert [h[:2] for h in memory[1]] == [h[:2] for h in runs[1]]
    for (_, _, expected), (_, _, table) in zip(memory[1], runs[1]):
        assert table.equals(expected)
    storage, hours = runs[2], runs[3]
    assert any(pq.ParquetFile(storage.local_path(key)).metadata.num_row_groups > 1 for *_, key in hours)
