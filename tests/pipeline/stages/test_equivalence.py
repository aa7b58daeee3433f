"""The performance paths of issue 6 give exactly what their references give.

- compiled rule conditions = ``DataFrame.eval`` (``_reference_condition``), on every rule's test
  events, the real-shaped fixtures, a sample hour and conditions built to hit NA and dtype corners;
- the numpy rule aggregation and ``rule_partials`` = the pandas groupby versions they replaced;
- the map step on the Arrow table (``flag_events``) = the same steps on the flagged DataFrame;
- the sorted-list robust z = numpy's median;
- the archive and features stages with worker processes = the same stages in one process, byte for byte.
"""
from __future__ import annotations

import gzip
import json
import math
import shutil
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import pipeline.stages.archive as archive_module
import pipeline.stages.features as stages
from features.aggregate import partial_aggregates
from features.flags import FlagInputs, add_flags, flag_events, frame_with_flags
from features.novelty import add_history_flags, no_history
from features.rules import (
    Aggregate,
    Rule,
    RuleError,
    _aggregate,
    _aggregate_reference,
    _Columns,
    _condition,
    _reference_condition,
    compile_condition,
)
from features.windows import _robust_z, _robust_z_numpy
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.errors import InputError
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.sample.generate import default_end
from pipeline.stages.archive import HourBuffer, archive_inputs, list_archive_hours
from pipeline.stages.ranges import resolve_ranges
from pipeline.stages.workers import ordered_map
from tests.factory import SHARED_FIXTURES, T0, event, events, write_jsonl
from tests.features.test_rules import CONTEXT, PACK, expand, flagged_frame

# the metadata every rule carries (features.rules): a test rule borrows a real rule's
ATTACK = {"finding_type": "TTPs/Discovery", "tactic": "TA0007", "technique": "T1613", "title_template": "{user} {acted} {resource}"}


# --------------------------------------------------------------------------- shared sample
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """One day of sample logs (two files, a bad line, duplicates across files), archived in one process."""
    from pipeline.sample import generate_sample

    root = tmp_path_factory.mktemp("equivalence")
    generate_sample(root / "data", days=2, seed=11, scale=0.05)
    (root / "data" / "labels.json").unlink()
    lines = (root / "data").glob("*.jsonl.gz")
    first = sorted(lines)[0]
    copies = gzip.decompress(first.read_bytes()).splitlines()[:300]
    extra = copies + [b'{"kind": "Event", "auditID": "broken"', b"not json at all", json.dumps(event(audit_id="dup-x")).encode()]
    (root / "data" / "zz-extra.jsonl.gz").write_bytes(gzip.compress(b"\n".join(extra) + b"\n", mtime=0))
    storage = LocalStorage(root / "work")
    archive_inputs(storage, resolve_inputs([str(root / "data")]), "default", "seq")
    return root, storage


def sample_hours(storage, count=6):
    keys = [key for _, _, key in list_archive_hours(storage, "default")]
    frames = []
    for key in keys[:: max(1, len(keys) // count)]:
        frame = stages.events_frame(storage.read_parquet(key))
        frames.append(add_history_flags(add_flags(frame, CONTEXT), {}))
    return frames


def rule_frames():
    frames = [flagged_frame(expand(test), test.history) for rule in PACK.rules for test in rule.tests]
    if SHARED_FIXTURES.exists():
        for path in sorted(SHARED_FIXTURES.glob("*.json")):
            raw = json.loads(path.read_text())
            raw.setdefault("user", {"username": "unknown-user", "groups": []})
            frames.append(flagged_frame([raw]))
    return frames


def reference_evaluate(pack, frame: pd.DataFrame) -> pd.DataFrame:
    """``RulePack.evaluate`` as it was: DataFrame.eval per rule and the pandas groupby aggregation."""
    managed = frame["managed_identity"].to_numpy(dtype=bool)
    hits = {}
    for rule in pack.active:
        matched = _reference_condition(rule, frame) & (True if rule.applies_to_allowlisted else ~managed)
        if rule.aggregate is not None and matched.any():
            matched = _aggregate_reference(rule.aggregate, frame, matched)
        hits[rule.id] = matched
    return pd.DataFrame(hits, index=frame.index)


# --------------------------------------------------------------------------- rules
def test_every_rule_of_the_pack_compiles():
    assert all(compile_condition(rule.condition) is not None for rule in PACK.rules)


def test_compiled_conditions_equal_dataframe_eval(sample):
    _, storage = sample
    frames = rule_frames() + sample_hours(storage)
    assert len(frames) > 100
    for frame in frames:
        columns = _Columns(frame)
        for rule in PACK.rules:
            compiled = compile_condition(rule.condition)(columns)  # raises if outside the subset: it must not
            reference = _reference_condition(rule, frame)
            assert compiled.dtype == reference.dtype and np.array_equal(compiled, reference), rule.id
        pd.testing.assert_frame_equal(PACK.evaluate(frame), reference_evaluate(PACK, frame))


CORNER_FRAME = pd.DataFrame({
    "allowed": [True, False, True, False, True, False],
    "read": [True, True, False, False, True, False],
    "code": pd.array([101, None, 403, 200, None, 401], dtype="Int32"),
    "namespace": pd.Series(["kube-system", None, "web", "kube-system", None, "x"], dtype="str"),
    "verb": pd.Series(["get", "list", None, "create", "get", "watch"], dtype="str"),
    "request_uri": pd.Series(["/api/v1/secrets", None, "/apis/x", "/healthz", "/api", ""], dtype="str"),
    "user": pd.Series(["a", "b", None, "d", "e", "f"], dtype="str"),
    "impersonated_user": pd.Series(["a", None, None, "x", "e", None], dtype="str"),
    "time": pd.to_datetime(["2026-11-01T00:00:00Z"] * 6, utc=True),
    "weight": [0.5, np.nan, 1.5, 2.0, np.nan, 3.0],
    "n": np.arange(6, dtype=np.int64),
    "maybe": pd.array([True, None, False, True, None, False], dtype="boolean"),
})
COMPILED_CORNERS = [
    "allowed or code == 101", "not (code == 101)", "not code >= 400 and read", "code != 403", "code > 200 or (code < 300 and not read)",
    "-1 < code", "namespace == 'kube-system'", "namespace != 'kube-system'", "'kube-system' == namespace", "verb in ['get', 'list']",
    "verb not in ('get',)", "code in [401, 403]", "code not in [401]", "request_uri.str.startswith('/api', na=False)",
    "request_uri.str.contains('secrets', regex=False, na=False) and not read", "user == impersonated_user",
    "user != impersonated_user or allowed", "not not allowed", "~allowed and code == 200", "weight > 1", "weight != 2.0",
    "n >= 3 and allowed", "maybe", "not maybe", "maybe or allowed", "maybe and not read", "request_uri.str.fullmatch('/api', na=False)",
    "namespace < 'web'", "(allowed or read) and not (maybe or code == 403)",
]
REFERENCE_ONLY = ["allowed & read", "code == 101 | allowed", "time > '2026-10-31'", "1 < n < 4", "n + 1 > 2",
                  "request_uri.str.len() > 3", "namespace.isna()", "@allowed", "allowed and True"]


@pytest.mark.parametrize("condition", COMPILED_CORNERS)
def test_compiled_corner_conditions_equal_dataframe_eval(condition):
    rule = Rule(id="corner_case", title="t", severity="low", rationale="r", condition=condition, **ATTACK,
                tests=[{"event": {}}])
    compiled = compile_condition(condition)
    assert compiled is not None
    reference = _reference_condition(rule, CORNER_FRAME)
    assert np.array_equal(compiled(_Columns(CORNER_FRAME)), reference), (condition, reference)


ARROW_CORNERS = [c for c in COMPILED_CORNERS if not any(name in c for name in ("weight", "n >=", "maybe"))] + [
    "code == '101'", "namespace == 101", "verb in ['get', 1]", "code in [401, 403.0]", "code < 3000000000", "code <= 403 and allowed",
    "101 != code", "request_uri.str.endswith('s', na=False)",
    "request_uri.str.startswith('/api')", "not request_uri.str.endswith('x', na=False)", "verb not in ['get', 'list']",
    "impersonated_user == 'a' or namespace != 'web'",
]


BY_VALUE = {"allowed or code == 101", "not (code == 101)", "code != 403", "-1 < code", "namespace == 'kube-system'",
            "'kube-system' == namespace", "verb in ['get', 'list']", "verb not in ('get',)", "code in [401, 403]",
            "code not in [401]", "request_uri.str.startswith('/api', na=False)", "101 != code", "code <= 403 and allowed",
            "request_uri.str.endswith('s', na=False)", "impersonated_user == 'a' or namespace != 'web'"}


@pytest.mark.parametrize("dictionary", [False, True])
@pytest.mark.parametrize("condition", ARROW_CORNERS)
def test_compiled_conditions_on_arrow_columns_equal_dataframe_eval(condition, dictionary):
    """On the map step's FlagInputs, comparisons of text and Int32 event columns with constants test each
    distinct value once (``_by_value``) instead of converting the column to pandas: same answers, NA
    included, for plain and dictionary-encoded text; anything else still goes through pandas."""
    text = ("namespace", "verb", "request_uri", "user", "impersonated_user")
    table = pa.table({"code": pa.array([None if pd.isna(v) else int(v) for v in CORNER_FRAME["code"]], pa.int32()), "time": pa.array(CORNER_FRAME["time"]),
                      **{name: pa.array([None if pd.isna(v) else v for v in CORNER_FRAME[name]], pa.string()) for name in text}})
    if dictionary:
        table = pa.table({name: column.dictionary_encode() if name in text else column
                          for name, column in zip(table.column_names, table.columns)})
    inputs = FlagInputs(table)
    inputs.flags.update({"allowed": CORNER_FRAME["allowed"].to_numpy(), "read": CORNER_FRAME["read"].to_numpy()})
    rule = Rule(id="corner_case", title="t", severity="low", rationale="r", condition=condition, **ATTACK, tests=[{"event": {}}])
    compiled = compile_condition(condition)
    assert compiled is not None
    reference = _reference_condition(rule, CORNER_FRAME)
    columns = _Columns(inputs)
    assert np.array_equal(compiled(columns), reference), (condition, reference)
    if condition in BY_VALUE:
        assert not columns._series, condition  # no column went through pandas


@pytest.mark.parametrize("condition", REFERENCE_ONLY)
def test_conditions_outside_the_compiled_subset_are_left_to_pandas(condition):
    rule = Rule(id="corner_case", title="t", severity="low", rationale="r", condition=condition, **ATTACK, tests=[{"event": {}}])
    compiled = compile_condition(condition)
    try:
        reference = _reference_condition(rule, CORNER_FRAME)
    except RuleError:
        with pytest.raises(RuleError):
            _condition(rule, CORNER_FRAME, compiled)
        return
    assert np.array_equal(_condition(rule, CORNER_FRAME, compiled), reference)


def test_a_broken_condition_still_raises_the_rule_error():
    rule = Rule(id="broken_one", title="t", severity="low", rationale="r", condition="allowed and no_such_flag", **ATTACK, tests=[{"event": {}}])
    with pytest.raises(RuleError, match="broken_one"):
        _condition(rule, CORNER_FRAME, compile_condition(rule.condition))


def test_numpy_aggregation_equals_the_groupby(sample):
    _, storage = sample
    rng = np.random.default_rng(6)
    checked = 0
    for frame in sample_hours(storage, count=4):
        for by in ("user", "source_ip"):
            for window, minimum, distinct in ((1, 1, None), (30, 2, None), (60, 3, "name"), (15, 2, "verb"), (60, 2, "namespace")):
                for share in (0.02, 0.3, 1.0):
                    matched = rng.random(len(frame)) < share
                    if not matched.any():
                        continue
                    rule = Aggregate(by=by, window_minutes=window, min=minimum, distinct=distinct)
                    assert np.array_equal(_aggregate(rule, frame, matched), _aggregate_reference(rule, frame, matched))
                    checked += 1
    assert checked > 100


def reference_rule_partials(pack, events, window_minutes, entity_types):
    """``rule_partials`` as it was: a pandas groupby per entity type, melted."""
    hits = pack.evaluate(add_history_flags(events, {}))
    fired = [c for c in hits.columns if hits[c].any()]
    frames = []
    window = events["time"].dt.floor(f"{window_minutes}min")
    for entity_type in entity_types if fired else ():
        frame = pd.concat([events[[entity_type]].rename(columns={entity_type: "entity"}), window.rename("window_start"),
                           hits[fired].astype("int64")], axis=1).dropna(subset=["entity"])
        long = frame.groupby(["entity", "window_start"], sort=True)[fired].sum().reset_index().melt(
            id_vars=["entity", "window_start"], var_name="rule", value_name="count")
        frames.append(long[long["count"] > 0].assign(entity_type=entity_type))
    return pd.concat(frames, ignore_index=True)[["entity_type", "entity", "window_start", "rule", "count"]] if frames else None


def test_rule_partials_equal_the_groupby(sample):
    _, storage = sample
    frames = sample_hours(storage) + [flagged_frame(expand(test)) for rule in PACK.rules[:8] for test in rule.tests]
    for frame in frames:
        for window in (60, 15):
            got = stages.rules_frame([stages.rule_partials(PACK, frame, window, ("user", "source_ip"))])
            want = reference_rule_partials(PACK, frame, window, ("user", "source_ip"))
            if want is None:
                assert got.empty
                continue
            pd.testing.assert_frame_equal(got, want)
            assert pa.Table.from_pandas(got, preserve_index=False).equals(pa.Table.from_pandas(want, preserve_index=False))


def test_arrow_map_step_equals_the_dataframe_path(sample):
    """The features stage flags, aggregates and evaluates rules on the archived Arrow table
    (features.columns, one dictionary encoding per column); the DataFrame path (add_flags, as
    scoring uses it) gives the same flags, partials, rule hits and rule partials, and a condition
    outside the compiled subset still gets pandas' answer."""
    _, storage = sample
    keys = [key for _, _, key in list_archive_hours(storage, "default")]
    types = ("user", "source_ip")
    outside = PACK.rules[0].model_copy(update={"condition": "allowed & (code == 200) & ~health_check"})
    for key in keys[:: max(1, len(keys) // 6)]:
        table = storage.read_parquet(key)
        frame = add_flags(stages.events_frame(table), CONTEXT)
        inputs = flag_events(table, CONTEXT)
        pd.testing.assert_frame_equal(frame_with_flags(inputs), frame)
        for window in (60, 15):
            pd.testing.assert_frame_equal(partial_aggregates(inputs, window, types), partial_aggregates(frame, window, types))
            got = stages.rules_frame([stages.rule_partials(PACK, inputs, window, types)])
            want = reference_rule_partials(PACK, frame, window, types)
            assert got.empty if want is None else got.equals(want)
        pd.testing.assert_frame_equal(pd.DataFrame(PACK.hits(inputs, no_history(len(table)))),
                                      reference_evaluate(PACK, add_history_flags(frame, {})))
        assert np.array_equal(_condition(outside, inputs, compile_condition(outside.condition)), _reference_condition(outside, frame))


@pytest.mark.parametrize("small", [256, 0])
def test_event_columns_of_dictionaries_equal_those_of_plain_columns(small, monkeypatch):
    """``EventColumns`` takes a file's dictionary as it is when its values are distinct and renumbers one that
    repeats a value (checked as a set, or, for a large dictionary, by encoding it); codes, values and missing
    rows are those of the plain column, whatever the nulls and offsets."""
    import features.columns
    from features.columns import EventColumns

    monkeypatch.setattr(features.columns, "SMALL_DICTIONARY", small)

    plain = pa.array(["b", None, "a", "b", None, "c", "a", "é", None], pa.string())
    repeated = pa.DictionaryArray.from_arrays(pa.array([0, None, 1, 2, None, 3, 1, 4, None], pa.int32()),
                                              pa.array(["b", "a", "b", "c", "é"]))
    code = pa.array([200, None, 403, 200, None, 101, 200, 404, None], pa.int32())
    for offset in (0, 1, 4):
        columns = {"distinct": plain.dictionary_encode()[offset:], "repeated": repeated[offset:], "plain": plain[offset:], "code": code[offset:]}
        got = EventColumns(pa.table(columns))
        for name in ("distinct", "repeated", "plain"):
            codes, values = got.encoded(name)
            assert [values[c] for c in codes] == plain[offset:].to_pylist() and values[-1] is None
            assert len(set(values[:-1])) == len(values) - 1  # distinct values, one code each
            assert np.array_equal(got.missing(name), plain[offset:].is_null().to_numpy(zero_copy_only=False))
        codes, values = got.encoded("code")
        assert [values[c] for c in codes] == code[offset:].to_pylist()
        assert np.array_equal(got.missing("code"), code[offset:].is_null().to_numpy(zero_copy_only=False))


def test_map_step_reads_the_listed_columns_from_the_file_as_it_does_from_the_whole_table(sample):
    """The features stage reads only ``map_columns`` of an archived hour, text columns as the file's
    dictionaries; the partials and rule hits equal those of the whole table, also for a file written
    before some of those columns existed (they read as nulls), and the step reads every listed column."""
    import io

    import pyarrow.parquet as pq

    from features.events import conform_events

    _, storage = sample
    types = ("user", "source_ip")
    columns = stages.map_columns(PACK, types)
    assert len(columns) < len(stages.COLUMN_NAMES) and "stage" in columns and "received_time" in columns
    for key in [key for _, _, key in list_archive_hours(storage, "default")][:6]:
        table, data = storage.read_parquet(key), storage.read_bytes(key)
        read = stages.read_hour_events(data, columns)
        assert read.column_names == columns and pa.types.is_dictionary(read.schema.field("user").type)
        want = stages.map_hour(table, CONTEXT, PACK, 60, types)
        got = stages.map_hour(read, CONTEXT, PACK, 60, types)
        assert got[0].equals(want[0]) and got[1].equals(want[1])
        older = io.BytesIO()
        pq.write_table(table.drop_columns(["webhook_targets", "received_time"]), older)
        conformed = conform_events(table.drop_columns(["webhook_targets", "received_time"]))
        got = stages.map_hour(stages.read_hour_events(older.getvalue(), columns), CONTEXT, PACK, 60, types)
        want = stages.map_hour(conformed, CONTEXT, PACK, 60, types)
        assert got[0].equals(want[0]) and got[1].equals(want[1])
    inputs = flag_events(read, CONTEXT)
    stages.partial_table(inputs, 60, types)
    stages.rule_partials(PACK, inputs, 60, types)
    assert inputs.read <= set(columns) and set(columns) - inputs.read <= {"received_time"}


def test_robust_z_equals_numpy_median():
    rng = np.random.default_rng(2)
    for trial in range(20_000):
        size = int(rng.integers(1, 100))
        samples = (np.log1p(rng.integers(0, 60, size)) if trial % 2 else rng.normal(size=size)).tolist()
        value = float(samples[0] + rng.normal())
        fast, reference = _robust_z(value, samples), _robust_z_numpy(value, samples)
        assert fast == reference or (math.isnan(fast) and math.isnan(reference))


# --------------------------------------------------------------------------- archive
def test_hour_buffer_returns_parts_in_input_order_whatever_the_arrival_and_spills(tmp_path):
    storage = LocalStorage(tmp_path)
    rows = [event(T0 + timedelta(minutes=7 * i), audit_id=f"id-{i:03d}") for i in range(60)]
    from features.events import EventTableBuilder, normalize_event

    def table(items):
        builder = EventTableBuilder()
        for item in items:
            builder.append(normalize_event(item))
        return builder.build()[0]

    chunks = [table(rows[i:i + 7]) for i in range(0, 60, 7)]
    orders = [(i // 3, i % 3) for i in range(len(chunks))]
    shuffled = list(np.random.default_rng(1).permutation(len(chunks)))
    buffer = HourBuffer(storage, "staging/t", spill_rows=10)
    for index in shuffled:
        buffer.add(chunks[index], orders[index])
    single = HourBuffer(storage, "staging/u", spill_rows=10_000)
    for chunk in chunks:
        single.add(chunk)
    assert buffer.hours() == single.hours() and any(buffer.spilled.values())
    for hour in single.hours():
        assert pa.concat_tables(buffer.take(hour)).equals(pa.concat_tables(single.take(hour)))


def archive_both(tmp_path, monkeypatch, inputs, runs=1):
    """Archive ``inputs`` (a list per run) with 1 and with 2 workers; returns both outcomes."""
    monkeypatch.setattr(archive_module, "PARALLEL_MIN_BYTES", 0)
    outcomes = []
    for workers in (1, 2):
        storage = LocalStorage(tmp_path / f"work-{workers}")
        results = []
        for run in range(runs):
            refs = resolve_inputs([str(p) for p in inputs[run]])
            assert archive_module.worker_count(storage, refs, workers) == min(workers, len(refs))
            result = archive_inputs(storage, refs, "demo", f"run-{run}", chunk_rows=1000, workers=workers)
            results.append((result.as_dict(), result.quarantine.entries))
        files = {key: storage.read_bytes(key) for key in storage.list("archive/")}
        outcomes.append((results, files, storage.list("staging/")))
    return outcomes


def test_archive_with_workers_equals_one_process(tmp_path, monkeypatch, sample):
    root, _ = sample
    inputs = sorted((root / "data").glob("*.jsonl.gz"))
    late = write_jsonl(tmp_path / "late.jsonl", events(40, start=T0 + timedelta(days=1)) + ["{bad", ""]
                       + events(5, start=T0 + timedelta(days=1)))
    (single, parallel) = archive_both(tmp_path, monkeypatch, [[inputs[0], inputs[-1]], inputs + [late]], runs=2)
    assert single[0] == parallel[0]
    assert single[1] == parallel[1] and len(single[1]) > 40
    assert not single[2] and not parallel[2]
    first, second = single[0]
    assert first[0]["quarantined"] and first[0]["duplicates"] > 0 and first[1] and second[0]["duplicates"] > 300


def test_archive_with_workers_raises_the_first_unreadable_input(tmp_path, monkeypatch, sample):
    root, _ = sample
    monkeypatch.setattr(archive_module, "PARALLEL_MIN_BYTES", 0)
    for workers in (1, 2):
        data = tmp_path / f"data-{workers}"
        shutil.copytree(root / "data", data)
        refs = resolve_inputs([str(data)])
        (data / refs[1].name.rsplit("/", 1)[1]).unlink()
        storage = LocalStorage(tmp_path / f"work-{workers}")
        with pytest.raises(InputError, match="cannot open .*" + refs[1].name.rsplit("/", 1)[1]):
            archive_inputs(storage, refs, "demo", "r", workers=workers)
        assert not storage.list("archive/")


# --------------------------------------------------------------------------- features
def test_features_with_workers_equal_one_process(tmp_path, monkeypatch, sample):
    _, storage = sample
    monkeypatch.setattr(stages, "MIN_ROWS_PER_WORKER", 1)
    outputs = []
    for workers in (1, 2):
        work = tmp_path / f"work-{workers}"
        shutil.copytree(storage.root / "archive", work / "archive")
        config = load_config()
        config = config.model_copy(update={"features": config.features.model_copy(update={"workers": workers})})
        ctx = RunContext(LocalStorage(work), config, "same-run")
        counts = stages.run_features(ctx, resolve_ranges(ctx, now=default_end(11)))
        outputs.append((counts, {key: ctx.storage.read_bytes(key) for key in ctx.storage.list("features/")}))
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1].keys() == outputs[1][1].keys() and outputs[0][1] == outputs[1][1]


def test_hours_concatenated_as_arrow_reduce_like_frames_per_hour_even_beside_an_empty_hour(sample):
    """``partials_frame`` converts all hours at once. An hour with no partials has null-typed set
    columns; first in line, its types and pandas metadata must not change how the others read."""
    from features.aggregate import empty_partials, reduce_partials

    _, storage = sample
    keys = [key for _, _, key in list_archive_hours(storage, "default")][:4]
    hours = [stages.map_hour(storage.read_parquet(key), CONTEXT, PACK, 60, ("user", "source_ip")) for key in keys]
    empty = pa.Table.from_pandas(empty_partials(), preserve_index=False)
    assert pa.types.is_null(empty.schema.field("namespaces").type)
    one_by_one = reduce_partials([stages.partials_frame([partial]) for partial, _ in hours])
    at_once = reduce_partials([stages.partials_frame([empty] + [partial for partial, _ in hours])])
    assert len(at_once) > 50
    pd.testing.assert_frame_equal(at_once, one_by_one)
    rules = stages.rules_frame(hits for _, hits in hours)
    assert len(rules) == sum(hits.num_rows for _, hits in hours) and list(rules.columns) == hours[0][1].column_names


# --------------------------------------------------------------------------- ordered_map
def _square_unless_seven(state, item):
    if item == 7:
        raise ValueError("seven")
    return state + item * item


def test_ordered_map_yields_in_order_and_raises_in_order():
    assert list(ordered_map(_square_unless_seven, range(7), 2, setup=int, setup_args=(100,))) == [100 + i * i for i in range(7)]
    seen = []
    with pytest.raises(ValueError, match="seven"):
        for value in ordered_map(_square_unless_seven, range(12), 2, setup=int, setup_args=(0,), in_flight=3):
            seen.append(value)
    assert seen == [i * i for i in range(7)]


# --------------------------------------------------------------------------- a killed parallel archive
KILLED_ARCHIVE = """
import sys
import pipeline.stages.archive as archive
from pipeline.io.storage import LocalStorage, resolve_inputs
archive.PARALLEL_MIN_BYTES = 0
archive.archive_inputs(LocalStorage(sys.argv[2]), resolve_inputs([sys.argv[1]]), "demo", "killed", chunk_rows=1000, workers=2)
"""


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["staging", "merging"])
def test_a_killed_parallel_archive_leaves_no_workers_and_the_rerun_converges(tmp_path, sample, phase):
    """SIGKILL the archive process while its workers stage the inputs, or while they merge hours: the
    workers die with it, and a rerun (one process) gives the archive an uninterrupted run gives."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    root, _ = sample
    data = root / "data"
    baseline = LocalStorage(tmp_path / "baseline")
    archive_inputs(baseline, resolve_inputs([str(data)]), "demo", "base")
    work = tmp_path / "work"
    process = subprocess.Popen([sys.executable, "-c", KILLED_ARCHIVE, str(data), str(work)])
    deadline = time.monotonic() + 300
    staged = lambda: any((work / "staging").rglob("*.arrow")) if (work / "staging").exists() else False  # noqa: E731
    written = lambda: any((work / "archive").rglob("part-0.parquet")) if (work / "archive").exists() else False  # noqa: E731
    while not (staged() if phase == "staging" else written()):
        assert process.poll() is None, "finished before the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    workers = psutil.Process(process.pid).children(recursive=True)  # the fork server and the workers it forked
    assert len(workers) >= 3, "the archive runs in worker processes"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "workers outlived the killed archive"
    storage = LocalStorage(work)
    archive_inputs(storage, resolve_inputs([str(data)]), "demo", "rerun")
    assert not storage.list("staging/")
    files = {key: storage.read_bytes(key) for key in storage.list("archive/")}
    assert files == {key: baseline.read_bytes(key) for key in baseline.list("archive/")}
