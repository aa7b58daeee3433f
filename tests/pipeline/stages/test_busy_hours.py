"""An hour busier than ``features.batch_rows`` is mapped and scored in batches, with the same results as
the whole hour at once: window partials, rule hits (thresholds counted over the whole hour), one row per
request whose stages straddle batches, history flags, event scores, evidence and top events.

The busy hour is built from realistic events (tests/factory.py): controllers, nodes and people at work,
long-running watches and exec sessions, and every threshold rule's attack spread over the hour, plus a
group one event short of its threshold. It is archived with a small ``archive.merge_rows``, so its file
holds several row groups, as a real busy hour's does.
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import features.aggregate as aggregate
import pipeline.stages.features as stages
from features.aggregate import REQUEST_COLUMNS, hour_requests, request_rows
from features.flags import add_flags, flag_events
from features.novelty import HISTORY_FLAG_NAMES, add_history_flags, history_flags, history_score, no_history, python_values
from features.rules import AggregateGroups
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.report.pivots import EVIDENCE_COLUMNS
from pipeline.stages.archive import archive_inputs, list_archive_hours
from pipeline.stages.ranges import Ranges
from pipeline.stages.score import INTERESTING_FLAGS, MAX_AUDIT_IDS, REQUEST_KEY, score_events
from tests.factory import T0, event, write_jsonl
from tests.features.test_rules import CONTEXT, PACK

TYPES = ("user", "source_ip")
PEOPLE = [
    ({"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]}, "10.0.1.10", "kube-controller-manager/v1.29.2"),
    ({"username": "system:node:ip-10-0-3-7.ec2.internal", "groups": ["system:nodes"]}, "10.0.3.7", "kubelet/v1.29.2 (linux/amd64) kubernetes/4b8e819"),
    ({"username": "alice@corp.example", "groups": ["engineers"]}, "10.0.12.34", "kubectl/v1.29.2 (darwin/arm64) kubernetes/4b8e819"),
    ({"username": "bob@corp.example", "groups": ["engineers"]}, "10.0.12.35", "kubectl/v1.28.1 (linux/amd64) kubernetes/abc1234"),
    ({"username": "system:serviceaccount:ci:deployer", "groups": ["system:serviceaccounts"]}, "10.0.7.20", "argocd-application-controller/v2.9.3"),
]


def stamp(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def request(at, audit_id: str, stages_=("RequestReceived", "ResponseComplete"), gap=timedelta(milliseconds=5), **override) -> list[dict]:
    """One request's audit events, one per stage, ``gap`` apart (received at ``at``)."""
    return [event(at + index * gap, audit_id=audit_id, stage=stage, requestReceivedTimestamp=stamp(at), **override)
            for index, stage in enumerate(stages_)]


def person(index: int) -> dict:
    user, address, agent = PEOPLE[index % len(PEOPLE)]
    return {"user": user, "sourceIPs": [address], "userAgent": agent}


def refused(code: int) -> dict:
    return {"responseStatus": {"code": code}, "annotations": {"authorization.k8s.io/decision": "forbid"} if code == 403 else {}}


def busy_hour() -> list[dict]:
    rows = []
    for i in range(1500):  # the cluster at work: reads by controllers, nodes and people
        resource = ("pods", "configmaps", "services", "endpoints")[i % 4]
        rows += request(T0 + timedelta(seconds=2.4 * i), f"bg-{i:05d}", verb=("get", "list")[i % 2],
                        objectRef={"resource": resource, "namespace": ("web", "shop", "kube-system")[i % 3]},
                        requestURI=f"/api/v1/namespaces/web/{resource}", **person(i))
    for i in range(20):  # watches: started, and complete twenty minutes later, so their stages straddle batches
        rows += request(T0 + timedelta(seconds=50 + 120 * i), f"watch-{i:03d}", ("ResponseStarted", "ResponseComplete"),
                        gap=timedelta(minutes=20), verb="watch", objectRef={"resource": "pods"}, requestURI="/api/v1/pods?watch=true",
                        **person(i))
    for i in range(3):  # shells opened in pods for ten minutes
        rows += request(T0 + timedelta(minutes=5 + 15 * i), f"exec-{i}", ("ResponseStarted", "ResponseComplete"), gap=timedelta(minutes=10),
                        verb="create", objectRef={"resource": "pods", "namespace": "web", "name": f"api-{i}", "subresource": "exec"},
                        requestURI=f"/api/v1/namespaces/web/pods/api-{i}/exec?command=sh", **person(2))
    sweep = {"user": {"username": "mallory@corp.example", "groups": ["engineers"]}, "sourceIPs": ["10.0.12.99"], "verb": "get"}
    for i in range(16):  # a secrets sweep: 16 distinct Secrets in 27 minutes (threshold 15 in 30)
        rows += request(T0 + timedelta(minutes=2, seconds=100 * i), f"sweep-{i:02d}", **sweep,
                        objectRef={"resource": "secrets", "namespace": "web", "name": f"s-{i}"}, requestURI=f"/api/v1/namespaces/web/secrets/s-{i}")
    almost = {**sweep, "user": {"username": "carol@corp.example", "groups": ["engineers"]}}
    for i in range(14):  # one Secret short of a sweep
        rows += request(T0 + timedelta(minutes=31, seconds=100 * i), f"almost-{i:02d}", **almost,
                        objectRef={"resource": "secrets", "namespace": "web", "name": f"s-{i}"}, requestURI=f"/api/v1/namespaces/web/secrets/s-{i}")
    for i in range(20):  # refused Secret reads: 20 in 13 minutes (threshold 20 in 15)
        rows += request(T0 + timedelta(minutes=31, seconds=40 * i), f"eve-{i:02d}", user={"username": "eve@corp.example", "groups": []},
                        sourceIPs=["10.0.12.66"], verb="get", objectRef={"resource": "secrets", "namespace": "shop", "name": f"k-{i}"},
                        requestURI=f"/api/v1/namespaces/shop/secrets/k-{i}", **refused(403))
    for i in range(4):  # refused on four resource types over the hour
        rows += request(T0 + timedelta(minutes=3 + 14 * i), f"probe-{i}", user={"username": "probe@corp.example", "groups": []},
                        sourceIPs=["10.0.12.77"], verb="list", objectRef={"resource": f"r{i}"}, requestURI=f"/api/v1/r{i}", **refused(403))
    for i in range(10):  # refused /api calls from one internet address
        rows += request(T0 + timedelta(minutes=3, seconds=150 * i), f"public-{i:02d}", user={"username": "system:anonymous", "groups": []},
                        sourceIPs=["203.0.113.9"], verb="list", objectRef={"resource": "pods", "namespace": f"n{i}"},
                        requestURI=f"/api/v1/namespaces/n{i}/pods", **refused(403))
    for minute, verb in ((4, "get"), (57, "delete")):  # one Audit-ID sent with two different requests, an hour's batches apart
        rows += request(T0 + timedelta(minutes=minute), "reused-id", user={"username": "dave@corp.example", "groups": []},
                        sourceIPs=["10.0.12.88"], verb=verb, objectRef={"resource": "configmaps", "namespace": "kube-system", "name": "aws-auth"},
                        requestURI="/api/v1/namespaces/kube-system/configmaps/aws-auth")
    for i in range(50):  # failed authentication from one address: 50 in 9 minutes (threshold 50 in 10)
        rows += request(T0 + timedelta(minutes=50, seconds=10 * i), f"stuffing-{i:02d}", user={}, sourceIPs=["203.0.113.77"], verb="get",
                        requestURI=f"/api/v1/namespaces/default/secrets/s{i}", objectRef={}, **refused(401))
    scripted = {"user": {"username": "system:serviceaccount:shop:cart", "groups": ["system:serviceaccounts"]},
                "sourceIPs": ["10.0.40.12"], "userAgent": "curl/8.5.0", "verb": "get"}
    for i in range(3):  # a few Secrets read with curl, six minutes apart (3 distinct in one 30-minute window)
        rows += request(T0 + timedelta(minutes=10 + 6 * i), f"curl-{i}", **scripted,
                        objectRef={"resource": "secrets", "namespace": "shop", "name": f"db-{i}"}, requestURI=f"/api/v1/namespaces/shop/secrets/db-{i}")
    for i, resource in enumerate(("namespaces", "nodes", "clusterroles")):  # the cluster mapped by hand within a minute
        rows += request(T0 + timedelta(minutes=44, seconds=15 * i), f"map-{i}", **{**scripted, "verb": "list"},
                        objectRef={"resource": resource}, requestURI=f"/api/v1/{resource}")
    return rows


@pytest.fixture(scope="module")
def hour(tmp_path_factory):
    """The busy hour archived with merge_rows 1,000: (storage, archive key, the file's bytes)."""
    root = tmp_path_factory.mktemp("busy")
    write_jsonl(root / "busy.jsonl", busy_hour())
    storage = LocalStorage(root / "work")
    archive_inputs(storage, resolve_inputs([str(root / "busy.jsonl")]), "default", "busy", merge_rows=1_000)
    (key,) = [key for _, _, key in list_archive_hours(storage, "default")]
    data = storage.read_bytes(key)
    assert pq.read_metadata(pa.BufferReader(data)).num_row_groups > 3
    return storage, key, data


def straddling_requests(data: bytes, batch_rows: int) -> int:
    """Requests with rows in more than one of the hour's batches."""
    batches: dict[str, set] = defaultdict(set)
    for number, batch in enumerate(stages.hour_batches(data, ["audit_id"], batch_rows)):
        for audit_id in batch["audit_id"].to_pylist():
            batches[audit_id].add(number)
    return sum(len(found) > 1 for found in batches.values())


@pytest.mark.parametrize("batch_rows", [700, 1_000, 2_500])
def test_an_hour_mapped_in_batches_equals_the_whole_hour(hour, batch_rows):
    _, _, data = hour
    assert straddling_requests(data, batch_rows) >= 5, "watches and exec sessions cut by batch boundaries"
    whole = stages.map_hour_file(data, CONTEXT, PACK, 60, TYPES)
    batched = stages.map_hour_file(data, CONTEXT, PACK, 60, TYPES, batch_rows)
    assert batched[0].equals(whole[0]) and batched[1].equals(whole[1])
    hits = {(r["entity"], r["rule"]): r["count"] for r in whole[1].to_pylist()}  # events: two stages a request
    assert hits[("mallory@corp.example", "secrets_sweep")] == 32
    assert ("carol@corp.example", "secrets_sweep") not in hits
    assert hits[("eve@corp.example", "denied_secret_burst")] == 40
    assert hits[("probe@corp.example", "forbidden_enumeration")] == 8
    assert hits[("203.0.113.9", "public_403_burst")] == 20
    assert hits[("203.0.113.77", "unauthenticated_burst")] == 100
    assert hits[("dave@corp.example", "audit_id_reused")] == 4, "an Audit-ID reused across batches is judged over the hour"
    requests = {r["entity"]: r["n"] for r in whole[0].to_pylist() if r["entity_type"] == "user"}
    assert requests["mallory@corp.example"] == 16, "a request counts once, its RequestReceived row yielding to its other stage"
    assert requests["dave@corp.example"] == 2, "two requests under one Audit-ID both count"


def test_requests_of_an_hour_read_in_batches_are_those_of_the_whole_hour(hour):
    _, _, data = hour
    whole = stages.flag_events(stages.read_hour_events(data, stages.map_columns(PACK, TYPES)), CONTEXT)
    rows, reused = hour_requests(lambda: stages.hour_batches(data, list(REQUEST_COLUMNS), 1_000), 60)
    assert np.array_equal(rows, request_rows(stages.read_hour_events(data, list(REQUEST_COLUMNS)), 60))
    assert np.array_equal(reused, whole.flags["audit_id_reused"]) and reused.sum() == 4, "two requests sent under one Audit-ID"


def _batches(*ids_per_batch):
    tables = [pa.table({"audit_id": ids, "received_time": pa.array([0] * len(ids), pa.timestamp("us", tz="UTC")), "user": ["alice"] * len(ids),
                        "source_ip": ["10.0.12.34"] * len(ids), "verb": ["get"] * len(ids), "request_uri": ["/api/v1/pods"] * len(ids),
                        "stage": ["ResponseComplete"] * len(ids), "time": pa.array([0] * len(ids), pa.timestamp("us", tz="UTC")),
                        "subresource": pa.nulls(len(ids), pa.string())}) for ids in ids_per_batch]
    return lambda: iter(tables)


def test_requests_sharing_a_hash_are_found_within_and_across_batches(monkeypatch):
    monkeypatch.setattr(aggregate, "_id_hash", lambda value: hash(value and value[0]))
    assert hour_requests(_batches(["a1", "a2"], ["b1"]), 60) is None, "two requests of one batch"
    assert hour_requests(_batches(["a1", "b1"], ["a2", "c1"]), 60) is None, "two requests of two batches"
    rows, reused = hour_requests(_batches(["a1", "b1"], ["a1", "c1"]), 60)
    assert list(rows) == [0, 1, 3] and not reused.any(), "one request's rows in two batches count once"


def test_a_shared_hash_whose_rows_differ_only_by_a_missing_value_is_a_collision(monkeypatch):
    """Every value's first hash is alike, so the request of batch 1 and that of batch 2 share it; they differ only in
    that the second has no username, and must not be taken for one request's two stages (the check hash tells)."""
    monkeypatch.setattr(aggregate, "_id_hash", lambda value: 7)
    first, second = _batches(["a1"], ["a1"])()
    tables = [first, second.set_column(2, "user", pa.nulls(1, pa.string()))]
    assert hour_requests(lambda: iter(tables), 60) is None
    assert hour_requests(_batches(["a1"], ["a1"]), 60) is not None, "the same request in two batches"


def test_an_hour_whose_requests_share_a_hash_is_mapped_whole(hour, monkeypatch):
    _, _, data = hour
    whole = stages.map_hour_file(data, CONTEXT, PACK, 60, TYPES)
    monkeypatch.setattr(aggregate, "_id_hash", lambda value: hash(value and value[:3]))
    assert hour_requests(lambda: stages.hour_batches(data, list(REQUEST_COLUMNS), 1_000), 60) is None
    batched = stages.map_hour_file(data, CONTEXT, PACK, 60, TYPES, 1_000)
    assert batched[0].equals(whole[0]) and batched[1].equals(whole[1])


@pytest.mark.parametrize("as_frame", [False, True])
def test_threshold_rules_count_their_groups_over_every_batch(hour, as_frame):
    _, _, data = hour
    table = pq.read_table(pa.BufferReader(data)) if as_frame else stages.read_hour_events(data, stages.map_columns(PACK, TYPES))
    starts = range(0, len(table), 900)
    reused = flag_events(table, CONTEXT).flags["audit_id_reused"]

    def view(piece, start):  # the events as the rules read them, with no history (as the features map does)
        if as_frame:
            return add_history_flags(add_flags(stages.events_frame(piece), CONTEXT), {}), None
        return flag_events(piece, CONTEXT, {"audit_id_reused": reused[start:start + len(piece)]}), no_history(len(piece))

    groups = AggregateGroups(PACK)
    for start in starts:
        groups.add(*view(table.slice(start, 900), start))
    whole = PACK.hits(*view(table, 0))
    parts = [PACK.hits(*view(table.slice(start, 900), start), groups=groups) for start in starts]
    thresholds = [rule.id for rule in PACK.active if rule.aggregate is not None]
    assert [rule for rule in thresholds if not whole[rule].any()] == ["permission_checks", "escalation_rights_probed"]
    for rule in PACK.active:
        if as_frame and rule.id == "audit_id_reused":
            continue  # judged over the events at hand: a DataFrame piece has no hour to take it from
        assert np.array_equal(np.concatenate([part[rule.id] for part in parts]), whole[rule.id]), rule.id


def history_of(users: dict[str, dict]) -> dict:
    return {("user", name): SimpleNamespace(**{k: set(v) for k, v in sets.items()}) for name, sets in users.items()}


KNOWN = {
    "alice@corp.example": {"peers": ["10.0.12.34"], "user_agents": ["kubectl/v1.29.2 (darwin/arm64) kubernetes/4b8e819"],
                           "ua_families": ["kubectl"], "verb_resources": ["get pods", "list configmaps"]},
    "bob@corp.example": {"peers": ["10.0.99.1"], "user_agents": [], "ua_families": ["curl"], "verb_resources": ["get /api/v1/namespaces/web/pods"]},
    "mallory@corp.example": {"peers": ["10.0.12.99"], "user_agents": [], "ua_families": [], "verb_resources": []},
}


def test_history_flags_of_columns_equal_those_judged_event_by_event(hour):
    _, _, data = hour
    table = stages.read_hour_events(data, stages.map_columns(PACK, TYPES))
    known = history_of(KNOWN)
    want = add_history_flags(add_flags(stages.events_frame(pq.read_table(pa.BufferReader(data))), CONTEXT), known)
    got = history_flags(flag_events(table, CONTEXT), known)
    for name in HISTORY_FLAG_NAMES:
        assert np.array_equal(got[name], want[name].to_numpy(dtype=bool)), name
        assert got[name].any(), name


# --------------------------------------------------------------------------- the score stage
def context(storage, batch_rows: int = 262_144) -> RunContext:
    """A run context whose ``features.batch_rows`` may be below the key's minimum (to read row groups in slices)."""
    config = load_config()
    return RunContext(storage, config.model_copy(update={"features": config.features.model_copy(update={"batch_rows": batch_rows})}), "test")


def records_and_history(storage):
    """Scored records of the busy hour with seeded model parts, and a history for three identities."""
    partials = stages.partials_frame([stages.map_hour_file(storage.read_bytes(key), CONTEXT, PACK, 60, TYPES)[0]
                                      for _, _, key in list_archive_hours(storage, "default")])
    records = partials[["entity_type", "entity", "window_start"]].copy()
    records["window_start"] = pd.to_datetime(records["window_start"], utc=True)
    records["model_part"] = np.round(np.random.default_rng(7).uniform(0, 2, len(records)), 2)
    history = pd.DataFrame([{"entity_type": "user", "entity": name, **{k: set(v) for k, v in sets.items()}} for name, sets in KNOWN.items()])
    return records, history


RANGES = Ranges(T0 - timedelta(days=1), T0, T0, T0 + timedelta(hours=1))


def reference_score_events(storage, records, history, weights):
    """The score stage's pass over an hour as it was written on pandas frames (before issue 16): the definition."""
    model_part = {(r.entity_type, r.entity, r.window_start): r.model_part for r in records.itertuples(index=False)}
    seen = {(r.entity_type, r.entity): r for r in history.itertuples(index=False)}
    record_hits, rule_totals, candidates, top = defaultdict(Counter), Counter(), [], []
    for _, _, key in list_archive_hours(storage, "default"):
        events = add_history_flags(add_flags(stages.events_frame(storage.read_parquet(key)), CONTEXT), seen)
        hits = PACK.evaluate(events)
        events["window_start"] = events["time"].dt.floor("60min")
        severity = np.zeros(len(events))
        why = [[] for _ in range(len(events))]
        for rule_id in hits.columns:
            column = hits[rule_id].to_numpy(dtype=bool)
            if column.any():
                rule_totals[rule_id] += int(column.sum())
                severity += column * weights.get(PACK.severity(rule_id), 0.0)
                for index in np.flatnonzero(column):
                    why[index].append(f"rule:{rule_id}")
        interesting = events[list(INTERESTING_FLAGS)].to_numpy(dtype=bool)
        starts = events["window_start"].to_numpy(dtype=object)
        user_part = [model_part.get(("user", u, w), 0.0) for u, w in zip(python_values(events["user"]), starts)]
        ip_part = [model_part.get(("source_ip", i, w), 0.0) for i, w in zip(python_values(events["source_ip"]), starts)]
        events["event_score"] = np.maximum(user_part, ip_part) + severity + history_score(events) + 0.2 * interesting.any(axis=1)
        for index, flags_hit in enumerate(interesting):
            why[index].extend(name for name, hit in zip(INTERESTING_FLAGS, flags_hit) if hit)
        for name in HISTORY_FLAG_NAMES:
            for index in np.flatnonzero(events[name].to_numpy(dtype=bool)):
                why[index].append(name)
        events["why"] = why
        for entity_type in TYPES:
            fired = [c for c in hits.columns if hits[c].any()]
            sums = pd.concat([events[[entity_type, "window_start"]], hits[fired].astype(int)], axis=1).groupby([entity_type, "window_start"]).sum()
            for (entity, start), row in sums.iterrows():
                for rule_id, count in row.items():
                    if count:
                        record_hits[(entity_type, entity, start)][rule_id] += int(count)
            best = events.sort_values(["event_score", "time", "audit_id"], ascending=[False, True, True], kind="stable")
            best = best.groupby([entity_type, "window_start"], sort=False).head(MAX_AUDIT_IDS)
            candidates.append(best.assign(entity_type=entity_type, entity=best[entity_type]))
        for row in reference_rows(events.nlargest(500, "event_score")):
            top.append((row["score"], row["audit_id"], row["stage"], row["time"], -len(top) - 1, row))
    evidence = pd.concat(candidates).sort_values(["event_score", "time", "audit_id"], ascending=[False, True, True], kind="stable")
    evidence = evidence.groupby(["entity_type", "entity", "window_start"], sort=False).head(MAX_AUDIT_IDS)
    grouped = defaultdict(list)
    for key, row in zip(zip(evidence["entity_type"], evidence["entity"], evidence["window_start"]), reference_rows(evidence)):
        grouped[key].append(row)
    top = [item[5] for item in sorted(heapq.nlargest(500, top, key=lambda i: i[:5]), key=lambda i: (-i[0], i[1], i[2], i[3], -i[4]))]
    requests = defaultdict(list)
    for key, request in zip(zip(evidence["entity_type"], evidence["entity"], evidence["window_start"]),
                            zip(*(python_values(evidence[name]) for name in REQUEST_KEY))):
        requests[key].append(request)
    return record_hits, rule_totals, dict(grouped), top, dict(requests)


def numbered(groups: dict) -> list:
    """Every group's items in key order, each replaced by the order of its first appearance: equal where equal."""
    first: dict = {}
    return [first.setdefault(item, len(first)) for key in sorted(groups) for item in groups[key]]


def reference_rows(frame: pd.DataFrame) -> list[dict]:
    rows = []
    for record in frame[list(EVIDENCE_COLUMNS) + ["event_score", "why"]].to_dict("records"):
        record["time"] = record["time"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record["code"] = None if pd.isna(record["code"]) else int(record["code"])
        record["score"] = round(float(record.pop("event_score")), 4)
        rows.append({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()})
    return rows


@pytest.mark.parametrize(("batch_rows", "workers"), [(262_144, 1), (1_000, 1), (700, 1), (700, 2)])
def test_score_pass_equals_the_pandas_pass_it_replaced(hour, batch_rows, workers, monkeypatch):
    """Also with the pass in worker processes (``workers`` 2: the hour scored by a worker's copy and merged back)."""
    import pipeline.stages.score as score_stage

    monkeypatch.setattr(score_stage, "hour_workers", lambda ctx, keys: workers)
    storage, _, _ = hour
    records, history = records_and_history(storage)
    weights = load_config().scoring.severity_weights
    record_hits, rule_totals, evidence, top, requests = reference_score_events(storage, records, history, weights)
    got = score_events(context(storage, batch_rows), PACK, records, history, RANGES, weights)
    assert got["record_hits"] == record_hits and got["rule_totals"] == rule_totals
    assert got["events"] == sum(len(storage.read_parquet(key)) for _, _, key in list_archive_hours(storage, "default"))
    keys = set(zip(records["entity_type"], records["entity"], records["window_start"]))
    assert got["evidence"].rows(keys) == {key: rows for key, rows in evidence.items() if key in keys}
    assert got["evidence"].audit_ids() == {key: [row["audit_id"] for row in rows] for key, rows in evidence.items()}
    assert got["top_events"] == top
    assert numbered(got["evidence"].requests()) == numbered(requests), "evidence requests (an Audit-ID's two requests apart)"
    assert rule_totals["secrets_sweep"] == 32 and record_hits[("user", "mallory@corp.example", pd.Timestamp(T0))]["secrets_sweep"] == 32


def test_the_score_pass_reads_what_the_features_map_judged_over_a_busy_hour(hour, tmp_path, monkeypatch):
    """The features map caches a busy hour's requests (which row counts each request, reused Audit-IDs) beside its
    partials; the score pass takes them from there instead of judging the hour again (10 s for 3.5 million
    events), with the same results. An hour the map did not cache is judged as before."""
    import shutil

    import pipeline.stages.score as score_stage

    storage, _, _ = hour
    work = LocalStorage(tmp_path / "work")
    shutil.copytree(storage.root, work.root, dirs_exist_ok=True)
    ctx = context(work, 700)
    records, history = records_and_history(work)
    weights = load_config().scoring.severity_weights
    judged_here = score_events(ctx, PACK, records, history, RANGES, weights)

    fingerprint = stages.features_fingerprint(ctx)
    for date, hour_of_day, key in list_archive_hours(work, "default"):
        cache_key = stages.partial_key(ctx, fingerprint, date, hour_of_day, key)
        stages.hour_partials(ctx, CONTEXT, PACK, key, cache_key)
        assert stages.cached_requests(ctx, cache_key) is not None, "a busy hour's requests are cached with its partials"
    monkeypatch.setattr(score_stage, "hour_workers", lambda ctx, keys: 1)
    monkeypatch.setattr(stages, "hour_requests", lambda *args: pytest.fail("the busy hour was judged again"))
    from_cache = score_events(ctx, PACK, records, history, RANGES, weights)
    assert from_cache["record_hits"] == judged_here["record_hits"] and from_cache["top_events"] == judged_here["top_events"]
    keys = set(zip(records["entity_type"], records["entity"], records["window_start"]))
    assert from_cache["evidence"].rows(keys) == judged_here["evidence"].rows(keys)
    assert numbered(from_cache["evidence"].requests()) == numbered(judged_here["evidence"].requests())
