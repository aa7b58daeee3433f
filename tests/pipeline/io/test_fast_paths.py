"""The fast paths give exactly what the simple paths give: block normalisation == per-line
normalisation (rows, order, quarantine reasons, repairs), vectorised aggregates == a plain pandas
groupby, dictionary-encoded flag helpers == pandas comparisons, one-sort dedupe == two-sort dedupe,
finalise's sorted histories == recomputing each window's history from scratch."""
from __future__ import annotations

import gzip
import json
import random
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.addresses import AddressBook, load_threat_list
from features.aggregate import (
    COUNT_COLUMNS,
    ENTITY_COLUMNS,
    LONG_RUNNING_SUBRESOURCES,
    LONG_RUNNING_VERBS,
    PARTIAL_COLUMNS,
    SET_COLUMNS,
    SET_NAMES,
    empty_partials,
    partial_aggregates,
    reduce_partials,
)
from features.events import EVENT_IDENTITY, EVENT_SCHEMA
from features.flags import FLAG_NAMES, FlagContext, FlagInputs, _contains, _eq, _isin, _true, add_flags
from features.windows import BASELINE_INPUTS, FEATURE_NAMES, NOVELTY_SETS, SENSITIVE_FLAGS, finalise
from pipeline.io.readers import Quarantine, read_blocks, read_events
from pipeline.io.storage import InputRef, LocalStorage, resolve_inputs
from pipeline.stages.archive import archive_inputs, normalise_blocks, normalise_stream, read_archive
from pipeline.stages.features import events_frame
from pipeline.stages.hour_merge import dedupe_sorted
from tests.factory import CONTROL_MESSAGE, SHARED_FIXTURES, T0, envelope, event, events

CONTEXT = FlagContext(AddressBook([], load_threat_list("203.0.113.0/24\n")), frozenset({"eks:addon-manager"}))


def odd_lines() -> list[str]:
    """Every shape the per-line path treats specially, as JSON lines."""
    base = event(T0 + timedelta(minutes=5), audit_id="odd-base")
    pod = {"spec": {"hostPID": True, "containers": [{"image": "alpine", "securityContext": {"privileged": True}}],
                    "volumes": [{"hostPath": {"path": "/"}}]}}
    variants = [
        {"responseStatus": {"code": "403"}}, {"responseStatus": {"code": 200.0}}, {"responseStatus": {"code": True}},
        {"responseStatus": {"code": 10 ** 30}}, {"responseStatus": {"code": -1}}, {"sourceIPs": "198.51.100.7"},
        {"sourceIPs": ["", "10.0.0.1", ""]}, {"sourceIPs": ["198.51.100.1", "10.0.0.2"]}, {"sourceIPs": [None, "10.0.0.3"]},
        {"user": {"username": "x", "groups": ["a", None, 3]}}, {"user": {}}, {"user": None}, {"user": "alice"},
        {"user": {"username": "bob", "extra": {"arn": "arn:aws:iam::1:user/bob", "accessKeyId": [], "sessionName": [None]}}},
        {"user": {"username": 5}}, {"verb": 7}, {"kind": "EventList"}, {"kind": "Pod"}, {"apiVersion": "v1"},
        {"apiVersion": "audit.k8s.io/v1beta1"}, {"auditID": ""}, {"stageTimestamp": "", "timestamp": "2026-11-01T09:03:00Z"},
        {"stageTimestamp": None, "requestReceivedTimestamp": None}, {"stageTimestamp": "yesterday"}, {"stageTimestamp": 5},
        {"stage": ""}, {"annotations": {"audit.k8s.io/truncated": "true"}}, {"annotations": "x"}, {"objectRef": []},
        {"impersonatedUser": {"username": "system:admin"}}, {"impersonatedUser": "root"},
        {"verb": "create", "objectRef": {"resource": "pods", "namespace": "web", "name": "p"}, "requestObject": pod},
        {"verb": "create", "objectRef": {"resource": "secrets", "namespace": "web", "name": "s"},
         "requestObject": {"data": {"password": "c2VjcmV0"}, "stringData": {"token": "PLANTED"}}},
        {"verb": "get", "objectRef": {"resource": "pods", "namespace": "web"}, "requestObject": None},
        {"verb": "update", "objectRef": {"resource": "leases", "namespace": "kube-node-lease"}, "requestObject": {"spec": {}}},
        {"verb": "create", "objectRef": {"resource": "pods", "subresource": "exec", "namespace": "web", "name": "p"},
         "requestURI": "/api/v1/namespaces/web/pods/p/exec?command=sh&command=-c&command=id&container=app"},
        {"requestURI": "/api/v1/pods?x=\u00e9&y=\u0026"},
    ]
    lines = [json.dumps({**base, "auditID": f"odd-{i}", **variant}) for i, variant in enumerate(variants)]
    no_id = {k: v for k, v in base.items() if k != "auditID"}
    lines += [
        json.dumps(no_id), json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events(2)}),
        json.dumps(envelope(events(2, start=T0 + timedelta(hours=1)))), json.dumps(CONTROL_MESSAGE),
        json.dumps(base)[:150] + "[Truncated...]", "{not json", "[1, 2]", "3", "", "   ",
        f"{base['stageTimestamp']} {json.dumps({**base, 'auditID': 'exported'})}",
        json.dumps(base).replace('"verb": "list"', '"verb": "list", "verb": "get"'),
        json.dumps({**base, "auditID": "surrogate"}).replace('"web"', '"\\ud800"'),
        json.dumps({**base, "auditID": "tabbed"}).replace('"list"', '"li\tst"'),
        json.dumps(base) + json.dumps({**base, "auditID": "glued"}),
        "  " + json.dumps({**base, "auditID": "padded"}) + " \r",
    ]
    # What a C decoder could get wrong where msgspec does not: duplicated nested keys, escaped key
    # names, lone low surrogates, NUL characters, big numbers, deep nesting, edge codes, empty times.
    lines += [
        json.dumps({**base, "auditID": "dup-user"})[:-1] + ', "user": {"username": "a", "username": "b"}}',
        json.dumps({**base, "auditID": "dup-ref"}).replace('"objectRef": {', '"objectRef": {"resource": "x", '),
        json.dumps({**base, "auditID": "escaped-key"}).replace('"verb"', '"\\u0076erb"'),
        json.dumps({**base, "auditID": "low-surrogate"}).replace('"web"', '"\\udc00"'),
        json.dumps({**base, "auditID": "nul", "user": {"username": "a\u0000b", "groups": ["g\u0000"]}}),
        json.dumps({**base, "auditID": "big-skipped"})[:-1] + ', "n": -123456789012345678901234567890}',
        json.dumps({**base, "auditID": "deep-skipped"})[:-1] + ', "x": ' + "[" * 1100 + "]" * 1100 + "}",
        json.dumps({**base, "auditID": "openers-in-strings", "userAgent": "{[" * 600}),
    ]
    lines += [json.dumps({**base, "auditID": f"c-{i}", **variant}) for i, variant in enumerate([
        {"responseStatus": {"code": 999}}, {"responseStatus": {"code": 1000}}, {"responseStatus": {"code": -(2 ** 63)}},
        {"responseStatus": {"code": 2 ** 64 - 1}}, {"responseStatus": {"code": None}}, {"responseStatus": None},
        {"responseStatus": {"code": 0}}, {"user": {"username": "g", "groups": "system:masters"}}, {"user": {"extra": []}},
        {"user": {"username": "e", "extra": {"arn": 5}}}, {"user": {"username": "e", "extra": {"arn": [5]}}},
        {"user": {"username": "e", "extra": {"arn": [None, "x"], "sessionName": "s", "accessKeyId": ["AKIA1", "AKIA2"]}}},
        {"user": {"username": "e", "extra": None, "groups": None}}, {"user": {"username": None, "groups": []}},
        {"sourceIPs": ["10.0.0.9"]}, {"sourceIPs": []}, {"sourceIPs": None}, {"sourceIPs": [""]},
        {"kind": None, "apiVersion": None}, {"kind": "Event", "apiVersion": "audit.k8s.io/"},
        {"objectRef": {"resource": None}, "requestObject": {"spec": {}}}, {"objectRef": None, "requestObject": 1},
        {"objectRef": {"resource": "configmaps", "name": "aws-auth"}, "requestObject": None},
        {"annotations": {"audit.k8s.io/truncated": True}}, {"annotations": {"authorization.k8s.io/decision": None}},
        {"annotations": None}, {"impersonatedUser": None}, {"impersonatedUser": {"username": None}},
        {"stageTimestamp": "", "timestamp": "", "requestReceivedTimestamp": "", "p_event_time": ""},
        {"stageTimestamp": None, "timestamp": None, "requestReceivedTimestamp": "", "p_event_time": "2026-11-01T09:05:00Z"},
        {"verb": "get", "objectRef": {"resource": "pods", "subresource": "attach", "name": "p"},
         "requestURI": "/api/v1/namespaces/web/pods/p/attach?command=bash&stdin=true"},
        {"objectRef": {"resource": "pods", "subresource": "exec"}, "requestURI": None},
    ])]
    return lines


def fixture_lines() -> list[str]:
    if not SHARED_FIXTURES.exists():
        return []
    return [json.dumps(json.loads(p.read_text())) for p in sorted(SHARED_FIXTURES.glob("*.json"))]


@pytest.fixture(params=["native", "msgspec"])
def block_decoder(request, monkeypatch) -> str:
    """Block-path tests run with each decoder: the compiled one (features._fastnorm) and msgspec's."""
    import features.events as events_module

    if request.param == "native":
        assert events_module._fastnorm is not None, "features._fastnorm is not built: install with a C compiler (setup.py)"
    else:
        monkeypatch.setattr(events_module, "_fastnorm", None)
    return request.param


def both_paths(path, block_bytes: int):
    """(tables, consumed, quarantine, repairs) of the block path and of the per-line path."""
    ref = resolve_inputs([str(path)])[0]
    results = []
    for fast in (True, False):
        quarantine, repairs = Quarantine(), {}
        if fast:
            chunks = normalise_blocks(read_blocks(ref, quarantine, block_bytes=block_bytes), quarantine, ref.name, 7, repairs)
        else:
            chunks = normalise_stream(read_events(ref, quarantine), quarantine, ref.name, 7, repairs)
        chunks = list(chunks)
        results.append((pa.concat_tables([t for t, _ in chunks] or [EVENT_SCHEMA.empty_table()]), sum(c for _, c in chunks), quarantine, repairs))
    return results


def assert_same(fast, slow) -> None:
    assert fast[0].equals(slow[0])
    assert fast[1] == slow[1]
    assert fast[2].counts == slow[2].counts and fast[2].skipped == slow[2].skipped
    assert sorted((e["reason"], e["sample"]) for e in fast[2].entries) == sorted((e["reason"], e["sample"]) for e in slow[2].entries)
    assert fast[3] == slow[3]


@pytest.mark.parametrize("block_bytes", [1 << 22, 3000])
@pytest.mark.parametrize("gz", [False, True])
def test_block_path_equals_per_line_path_on_mixed_input(tmp_path, block_decoder, block_bytes, gz):
    good = [json.dumps(e) for e in events(300, step=timedelta(seconds=20))]
    lines = good + odd_lines() * 2 + fixture_lines()
    random.Random(7).shuffle(lines)
    data = ("\n".join(lines) + "\n").encode() + b"\xff\xfe not utf-8 \x00\n" + json.dumps(good[0]).encode()
    path = tmp_path / ("mixed.jsonl.gz" if gz else "mixed.jsonl")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    fast, slow = both_paths(path, block_bytes)
    assert len(fast[0]) > 300 and fast[2].total > 5 and fast[3]
    assert_same(fast, slow)


def test_firehose_envelopes_take_the_block_path_with_their_event_ids(tmp_path, block_decoder):
    items = events(40) + [{"kind": "Event"}, "{broken"]
    path = tmp_path / "firehose"
    path.write_bytes(gzip.compress(
        (json.dumps(envelope(items)) + "\n" + json.dumps(CONTROL_MESSAGE) + "\n" + json.dumps(envelope(events(3), first_id=900))).encode(),
        mtime=0))
    fast, slow = both_paths(path, 1 << 22)
    assert_same(fast, slow)
    assert fast[0]["cw_event_id"].null_count == 0 and len(fast[0]) == 43


def test_mutated_lines_take_the_same_path(tmp_path, block_decoder):
    """Random byte damage to real-shaped lines: whatever the per-line path does, the block path does too."""
    rng = random.Random(11)
    seeds = [json.dumps(e) for e in events(5)] + odd_lines()[:12] + fixture_lines()[:20]
    lines = []
    for _ in range(400):
        line = bytearray(rng.choice(seeds).encode())
        for _ in range(rng.randint(1, 3)):
            line[rng.randrange(len(line))] = rng.choice(b'{}[]":,0 \\aZ\x00\xc3')
        lines.append(bytes(line))
    path = tmp_path / "mutated.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    fast, slow = both_paths(path, 5000)
    assert_same(fast, slow)


def test_secret_values_never_reach_the_block_path_output(tmp_path, block_decoder):
    lines = odd_lines()
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(lines) + "\n")
    storage = LocalStorage(tmp_path / "work")
    archive_inputs(storage, resolve_inputs([str(path)]), "demo", "r1")
    for file in (tmp_path / "work").rglob("*"):
        if file.is_file():
            assert b"PLANTED" not in file.read_bytes() and b"c2VjcmV0" not in file.read_bytes()
    rows = {r["audit_id"]: r for r in pa.concat_tables(list(read_archive(storage, "demo"))).to_pylist()}
    privileged = next(r for r in rows.values() if r["resource"] == "pods" and r["verb"] == "create" and r["subresource"] is None)
    assert privileged["pod_privileged"] is True and privileged["pod_host_paths"] == "/"


# --------------------------------------------------------------------------- aggregates
def reference_partial_aggregates(events: pd.DataFrame, window_minutes: int, entity_types) -> pd.DataFrame:
    """The plain pandas groupby the vectorised map step replaced."""
    if "stage" in events and not events.empty:
        keep = events["stage"].ne("RequestReceived") | ~events["audit_id"].duplicated(keep=False)
        long_running = events["verb"].isin(LONG_RUNNING_VERBS) | events["subresource"].isin(LONG_RUNNING_SUBRESOURCES)
        received_earlier = events["received_time"].dt.floor(f"{window_minutes}min") < events["time"].dt.floor(f"{window_minutes}min")
        keep &= ~(events["stage"].eq("ResponseComplete") & long_running & received_earlier.fillna(False))
        events = events[keep.fillna(True).to_numpy(dtype=bool)]
        events = events[~events.duplicated(subset=["audit_id"], keep="first").to_numpy()]
    if events.empty:
        return empty_partials()
    uri_path = events["request_uri"].fillna("").str.split("?", n=1).str[0]
    derived = pd.DataFrame({
        "window_start": events["time"].dt.floor(f"{window_minutes}min"),
        "object_key": (events["resource"].fillna("") + "/" + events["namespace"].fillna("") + "/"
                       + events["name"].fillna("")).where(events["name"].notna(), None),
        "uri_path": uri_path,
        "verb_resource": events["verb"].fillna("") + " " + events["resource"].fillna(uri_path),
        "namespace": events["namespace"], "resource": events["resource"], "user_agent": events["user_agent"],
        "ua_family": events["ua_family"], "time": events["time"],
    })
    flags = events[list(FLAG_NAMES)].astype(np.int64)
    frames = []
    for entity_type in entity_types:
        peer = events["source_ip" if entity_type == "user" else "user"]
        frame = pd.concat([derived.assign(entity=events[ENTITY_COLUMNS[entity_type]], peer=peer), flags], axis=1)
        frame = frame[frame["entity"].notna().to_numpy()]
        if frame.empty:
            continue
        grouped = frame.groupby(["entity", "window_start"], sort=True, observed=True)
        counts = grouped[list(FLAG_NAMES)].sum()
        counts.columns = [f"n_{c}" for c in counts.columns]
        counts.insert(0, "n", grouped.size())
        counts["first_time"] = grouped["time"].min()
        counts["last_time"] = grouped["time"].max()
        for set_name, (source, flag) in SET_COLUMNS.items():
            rows = frame if flag is None else frame[frame[flag].to_numpy(dtype=bool)]
            pairs = rows[["entity", "window_start", source]].dropna().drop_duplicates()
            lists = pairs.groupby(["entity", "window_start"], sort=True)[source].agg(lambda s: sorted(s))
            counts[set_name] = lists.reindex(counts.index)
            counts[set_name] = counts[set_name].map(lambda v: v if isinstance(v, list) else [])
        counts = counts.reset_index()
        counts.insert(0, "entity_type", entity_type)
        frames.append(counts)
    if not frames:
        return empty_partials()
    return pd.concat(frames, ignore_index=True)[PARTIAL_COLUMNS]


@pytest.fixture(scope="module")
def sample_hours(tmp_path_factory):
    """A day of realistic sample logs with its attacks, archived: one flagged frame per hour."""
    from pipeline.sample import generate_sample

    root = tmp_path_factory.mktemp("sample")
    generate_sample(root / "data", days=1, seed=5, scale=0.05)
    storage = LocalStorage(root / "work")
    archive_inputs(storage, resolve_inputs([str(root / "data")]), "demo", "r1")
    return [add_flags(events_frame(table), CONTEXT) for table in read_archive(storage, "demo")]


@pytest.mark.parametrize("window", [60, 15])
def test_fast_aggregate_equals_reference_on_sample_hours(sample_hours, window):
    assert sum(len(h) for h in sample_hours) > 1000
    for hour in sample_hours:
        pd.testing.assert_frame_equal(partial_aggregates(hour, window, ["user", "source_ip"]),
                                      reference_partial_aggregates(hour, window, ["user", "source_ip"]))


def test_fast_aggregate_equals_reference_with_gaps_and_repeated_stages():
    started = event(T0, audit_id="exec-1", stage="ResponseStarted", verb="create", responseStatus={"code": 101},
                    objectRef={"resource": "pods", "subresource": "exec", "namespace": "web", "name": "w"})
    raw = events(30, step=timedelta(minutes=7)) + [
        started, {**started, "stage": "ResponseComplete"}, {**started, "auditID": "rr", "stage": "RequestReceived"},
        event(T0, audit_id="anon", user={}, sourceIPs=["203.0.113.9"], responseStatus={"code": 401}),
        event(T0, audit_id="noip", sourceIPs=[], objectRef={"resource": "secrets", "namespace": "kube-system", "name": "x"}),
        event(T0, audit_id="nouri", requestURI=None, objectRef={}),
    ]
    from features.events import EventTableBuilder, normalize_event

    builder = EventTableBuilder()
    for item in raw:
        builder.append(normalize_event(item))
    table, _ = builder.build()
    frame = add_flags(events_frame(table), CONTEXT)
    for types in (["user", "source_ip"], ["source_ip"]):
        pd.testing.assert_frame_equal(partial_aggregates(frame, 60, types), reference_partial_aggregates(frame, 60, types))
    pd.testing.assert_frame_equal(partial_aggregates(frame.iloc[:0], 60, ["user"]), empty_partials())


def test_request_whose_stages_straddle_an_hour_counts_once():
    """An exec session started at 09:59 and ended at 10:02 is one request: the hour partials of
    09:00 and 10:00 reduce to one exec in the 09:00 window, whichever hour is mapped first."""
    from features.events import EventTableBuilder, normalize_event

    exec_ref = {"resource": "pods", "subresource": "exec", "namespace": "web", "name": "w"}
    received = "2026-11-01T09:59:30.000000Z"
    started = event(T0, audit_id="exec-x", stage="ResponseStarted", verb="create", responseStatus={"code": 101},
                    objectRef=exec_ref, requestReceivedTimestamp=received, stageTimestamp="2026-11-01T09:59:31.000000Z")
    complete = {**started, "stage": "ResponseComplete", "stageTimestamp": "2026-11-01T10:02:00.000000Z"}
    hours = []
    for item in (started, complete):
        builder = EventTableBuilder()
        builder.append(normalize_event(item))
        table, _ = builder.build()
        hours.append(partial_aggregates(add_flags(events_frame(table), CONTEXT), 60, ["user"]))
    merged = reduce_partials(reversed(hours))
    assert merged["n_exec"].sum() == 1 and merged["n"].sum() == 1
    assert merged.loc[merged["n"] == 1, "window_start"].dt.hour.tolist() == [9]


# --------------------------------------------------------------------------- flags and dedupe
@pytest.mark.parametrize("seed", range(5))
def test_flag_helpers_equal_pandas_comparisons(seed):
    rng = random.Random(seed)
    words = ["get", "list", "", "system:node:a", "GET", "x,/proc", None]
    frame = pd.DataFrame({
        "s": pd.array([rng.choice(words) for _ in range(50)], dtype="str"),
        "code": pd.array([rng.choice([200, 401, None, 503]) for _ in range(50)], dtype="Int32"),
        "b": pd.Series([rng.choice([True, False, None]) for _ in range(50)], dtype=object),
    })
    d = FlagInputs(frame)
    assert (_eq(d, "s", "get") == (frame["s"] == "get").fillna(False).to_numpy(dtype=bool)).all()
    assert (_isin(d, "s", ("get", "list")) == frame["s"].isin(("get", "list")).to_numpy(dtype=bool)).all()
    assert (_contains(d, "s", r"^system:|^$") == frame["s"].fillna("").str.contains(r"^system:|^$").to_numpy(dtype=bool)).all()
    assert (_eq(d, "code", 401) == (frame["code"] == 401).fillna(False).to_numpy(dtype=bool)).all()
    assert (_true(d, "b") == frame["b"].fillna(False).to_numpy(dtype=bool)).all()


def reference_dedupe(table: pa.Table) -> pa.Table:
    """One row per EVENT_IDENTITY, row by row in Python: of each event's copies the one with the lowest
    CloudWatch id (missing last), then the first read; sorted by time, audit_id, stage, then the rest."""
    columns = ["time", "audit_id", "stage"] + [c for c in EVENT_IDENTITY if c not in ("time", "audit_id", "stage")]
    rows = table.to_pylist()
    winners: dict[tuple, int] = {}
    for index, row in enumerate(rows):
        key = tuple(row[c] for c in columns)
        best = winners.get(key)
        if best is None or (row["cw_event_id"] is None, row["cw_event_id"] or "") < (rows[best]["cw_event_id"] is None, rows[best]["cw_event_id"] or ""):
            winners[key] = index
    ordered = sorted(winners.values(), key=lambda i: tuple((rows[i][c] is None, rows[i][c]) for c in columns))
    return table.take(ordered)


def test_one_sort_dedupe_equals_row_by_row_dedupe(tmp_path):
    rng = random.Random(3)
    raw = []
    for i in range(400):
        moment = T0 + timedelta(seconds=rng.randint(0, 50))
        raw.append(event(moment, audit_id=f"a{rng.randint(0, 120)}", stage=rng.choice(["ResponseComplete", "ResponseStarted"]),
                         verb=rng.choice(["get", "list"]), sourceIPs=[rng.choice(["10.0.1.2", "10.0.3.4"])]))
    lines = [json.dumps(envelope(raw[:200], first_id=rng.randint(1, 9))), json.dumps(envelope(raw[100:], first_id=5))]
    lines += [json.dumps(e) for e in raw[::3]]
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ref = InputRef(str(path), lambda: open(path, "rb"))
    quarantine = Quarantine()
    table = pa.concat_tables([t for t, _ in normalise_blocks(read_blocks(ref, quarantine), quarantine, "x", 10_000)])
    assert dedupe_sorted(table).equals(reference_dedupe(table))


# --------------------------------------------------------------------------- finalise
def tricky_partials(seed: int, nan: bool) -> pd.DataFrame:
    """Entities with 1 to 40 windows (histories too short for a baseline, even and odd lengths),
    small counts full of ties, repeated set values and, with ``nan``, missing request counts (which
    switch finalise to numpy's median)."""
    rng = np.random.default_rng(seed)
    keys = [("user" if e % 2 else "source_ip", f"e{e}", T0 + timedelta(hours=int(h)))
            for e, windows in enumerate((1, 2, 3, 4, 5, 8, 40)) for h in rng.choice(24 * 10, windows, replace=False)]
    frame = pd.DataFrame(keys, columns=["entity_type", "entity", "window_start"])
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True).astype("datetime64[us, UTC]")
    for column in COUNT_COLUMNS:
        frame[column] = rng.integers(0, 4, len(frame)) * (rng.random(len(frame)) < 0.3)
    frame["n"] = rng.integers(1, 6, len(frame))
    frame["first_time"] = frame["last_time"] = frame["window_start"]
    for name in SET_NAMES:
        frame[name] = [sorted(rng.choice(list("abcdef"), int(rng.integers(0, 4)))) for _ in range(len(frame))]
    if nan:
        frame["n"] = frame["n"].astype(float).mask(frame["entity"].isin(["e4", "e5"]) & (rng.random(len(frame)) < 0.4))
    return frame.sample(frac=1, random_state=seed)[PARTIAL_COLUMNS]


def reference_history_columns(table: pd.DataFrame) -> pd.DataFrame:
    """finalise's history columns by definition: each row of its (time-ordered) output against the
    entity's earlier rows, with numpy's median."""
    def robust_z(value, samples):
        median = np.median(samples)
        z = (value - median) / max(np.median(np.abs(np.asarray(samples) - median)) * 1.4826, 0.25)
        return 0.0 if np.isnan(z) else float(np.clip(z, -20.0, 20.0))

    baselines = {name: fn(table).to_numpy(dtype=float) for name, fn in BASELINE_INPUTS.items()}
    hours = table["window_start"].dt.hour.to_numpy()
    rows = []
    for row in range(len(table)):
        before = np.flatnonzero((table["entity_type"].to_numpy()[:row] == table["entity_type"].iloc[row])
                                & (table["entity"].to_numpy()[:row] == table["entity"].iloc[row]))
        out = {f"novel_{name}": float(sum(v not in {s for r in before for s in table[name].iloc[r]} for v in table[name].iloc[row]))
               for name in NOVELTY_SETS}
        out["entity_is_new"] = len(before) == 0
        out["novel_sensitive"] = float(len(before) and sum(table[f"n_{f}"].iloc[row] > 0 and (table[f"n_{f}"].iloc[before] == 0).all()
                                                         for f in SENSITIVE_FLAGS))
        out["is_off_hours"] = len(before) >= 3 and hours[row] not in hours[before]
        for name, values in baselines.items():
            out[f"z_{name}"] = robust_z(values[row], values[before].tolist()) if len(before) >= 3 else 0.0
        rows.append(out)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_finalise_equals_per_row_recomputation(seed, nan):
    table = finalise(tricky_partials(seed, nan), 60)
    reference = reference_history_columns(table)
    assert (reference["z_requests"] != 0).sum() > 20 and (reference["z_denials"] != 0).sum() > 5
    pd.testing.assert_frame_equal(table[list(reference.columns)], reference, check_exact=True)
    assert finalise(tricky_partials(seed, nan).iloc[:0], 60)[list(FEATURE_NAMES)].empty
