"""Dedup drops only true copies; different events under one audit ID are all kept, counted and detected.

kube-apiserver logs the client's Audit-ID header as the auditID (issue 16). A dedup on (auditID,
stage) let a harmless `get pods` hide an aws-auth patch sent a minute later under the same ID: the
patch was dropped as a "duplicate" and nothing was flagged. Copies of one event (a Firehose object
delivered twice, the same event in an export file and in an envelope, a rerun) share every
``EVENT_IDENTITY`` column and are still dropped and counted as duplicates.
"""
from __future__ import annotations

import gzip
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from features.aggregate import partial_aggregates
from pipeline.cli import main
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.sample import sample_clock
from pipeline.stages.archive import archive_inputs, list_archive_hours, read_archive
from tests.factory import T0, envelope, event, write_jsonl
from tests.features.test_rules import PACK, flagged_frame
from tests.pipeline.stages.test_equivalence import archive_both

REUSED_ID = "7d0c5e52-3a57-4f7e-9a43-2b0c1f6e9d11"
MASTERS = "- userarn: arn:aws:iam::999988887777:user/contractor\n  username: contractor\n  groups:\n    - system:masters\n"


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def get_then_patch(at: datetime, audit_id: str = REUSED_ID, patch_id: str | None = None, **who) -> list[dict]:
    """The issue's attack: `get pods`, then a minute later an aws-auth patch mapping an outside IAM user into
    system:masters, both sent with the Audit-ID header set to ``audit_id`` (unless ``patch_id`` is given)."""
    get = event(at, audit_id=audit_id, verb="get", requestURI="/api/v1/namespaces/web/pods",
                objectRef={"resource": "pods", "namespace": "web", "apiVersion": "v1"},
                stageTimestamp=stamp(at + timedelta(milliseconds=11)), **who)
    later = at + timedelta(seconds=62)
    patch = event(later, audit_id=patch_id or audit_id, verb="patch", level="RequestResponse",
                  requestURI="/api/v1/namespaces/kube-system/configmaps/aws-auth",
                  objectRef={"resource": "configmaps", "namespace": "kube-system", "name": "aws-auth", "apiVersion": "v1"},
                  requestObject={"data": {"mapUsers": MASTERS}}, stageTimestamp=stamp(later + timedelta(milliseconds=18)), **who)
    return [get, patch]


def background(count: int, start: datetime = T0) -> list[dict]:
    return [event(start + timedelta(seconds=7 * i), audit_id=f"bg-{i:04d}", verb="list",
                  requestURI=f"/api/v1/namespaces/web/pods?limit={i}") for i in range(count)]


def archived(storage) -> pa.Table:
    return pa.concat_tables(list(read_archive(storage, "demo")))


def archive(storage, *paths, run="r1", **options):
    return archive_inputs(storage, resolve_inputs([str(p) for p in paths]), "demo", run, **options)


# --------------------------------------------------------------------------- the archive
def test_a_patch_under_the_audit_id_of_an_earlier_get_is_kept_and_counted_as_a_collision(tmp_path):
    attack = get_then_patch(T0 + timedelta(minutes=20))
    storage = LocalStorage(tmp_path / "work")
    result = archive(storage, write_jsonl(tmp_path / "audit.jsonl", background(30) + attack))
    assert (result.events_added, result.duplicates, result.audit_id_collisions) == (32, 0, 1)
    counts = result.as_dict()
    assert counts["audit_id_collisions"] == 1 and counts["duplicates"] == 0
    table = archived(storage)
    reused = table.filter(pc.equal(table["audit_id"], REUSED_ID))
    assert reused["verb"].to_pylist() == ["get", "patch"] and reused["grants_masters"].to_pylist() == [None, True]


def test_redelivered_objects_and_exported_copies_are_duplicates_and_a_rerun_adds_nothing(tmp_path):
    """The same Firehose object read twice (two keys), the same events in a gzip export with hostile strings in
    the columns that identify them, and a rerun: copies are dropped and counted; the reused ID is still two events."""
    hostile = event(T0 + timedelta(minutes=40), audit_id="hostile-1", verb="get", userAgent='kubectl }{"a":1}{ \u2028\x1b[31m',
                    requestURI="/api/v1/namespaces/web/pods/%7D%7B?x=%22}{&y=\u00e9", user={"username": "m\u00e9l\u00e1nie\u202e@corp.example"},
                    objectRef={"resource": "pods", "namespace": "web", "name": "}{\u00e9"})
    items = background(20) + get_then_patch(T0 + timedelta(minutes=20)) + [hostile]
    firehose = [json.dumps(envelope(items[:12], first_id=1)), json.dumps(envelope(items[12:], first_id=13))]
    first = tmp_path / "firehose" / "2026" / "11" / "01" / "09" / "audit-1-2026-11-01-09-00-00-abc.gz"
    first.parent.mkdir(parents=True)
    first.write_bytes(gzip.compress("".join(firehose).encode(), mtime=0))
    shutil.copy(first, first.with_name("audit-1-2026-11-01-09-05-00-def.gz"))  # the same object again under a new key
    export = write_jsonl(tmp_path / "export.jsonl.gz", items[::2], gz=True)
    storage = LocalStorage(tmp_path / "work")
    result = archive(storage, tmp_path / "firehose", export)
    assert (result.records_read, result.events_added) == (2 * 23 + 12, 23)
    assert (result.duplicates, result.audit_id_collisions) == (23 + 12, 1)
    hour = storage.local_path(list_archive_hours(storage, "demo")[0][2])
    before = hour.read_bytes()
    again = archive(storage, tmp_path / "firehose", export, run="r2")
    assert (again.events_added, again.duplicates, again.audit_id_collisions) == (0, 58, 0)
    assert hour.read_bytes() == before
    assert len(archived(storage)) == 23 and archived(storage)["cw_event_id"].null_count == 0, "the first delivery's copy wins"


def test_an_archive_written_by_the_previous_release_gets_the_dropped_event_back_and_nothing_twice(tmp_path):
    """The previous release kept (auditID, stage) once: its hour file holds the get and not the patch. A rerun
    over the same input adds the patch only. Its rows lack the body facts a later release extracts (simulated by
    a file without two body-fact columns): copies compare on envelope columns, so they are still copies."""
    earlier_patch = get_then_patch(T0 + timedelta(minutes=5), audit_id="c0ffee00-0000-4000-8000-000000000001")[1]
    items = background(20) + [earlier_patch] + get_then_patch(T0 + timedelta(minutes=20))
    storage = LocalStorage(tmp_path / "work")
    archive(storage, write_jsonl(tmp_path / "previous.jsonl", items[:-1]))
    hour = storage.local_path(list_archive_hours(storage, "demo")[0][2])
    pq.write_table(pq.read_table(hour).drop_columns(["grants_masters", "configmap_keys"]), hour)
    result = archive(storage, write_jsonl(tmp_path / "audit.jsonl", items), run="r2")
    assert (result.events_added, result.duplicates, result.audit_id_collisions) == (1, 22, 1)
    table = archived(storage)
    assert len(table) == 23 and table.filter(pc.equal(table["verb"], "patch"))["grants_masters"].to_pylist() == [None, True]


def test_a_different_event_at_the_same_microsecond_is_not_a_copy(tmp_path):
    """An attacker cannot choose the server's timestamps; even two requests stamped alike to the microsecond
    under one ID are two events when who sent them, from where, or what they asked differs."""
    base = event(T0, audit_id=REUSED_ID, verb="get", requestURI="/api/v1/namespaces/web/pods")
    others = [
        {**base, "verb": "patch", "requestURI": "/api/v1/namespaces/kube-system/configmaps/aws-auth",
         "objectRef": {"resource": "configmaps", "namespace": "kube-system", "name": "aws-auth"}},
        {**base, "user": {"username": "bob@corp.example", "groups": ["system:authenticated"]}},
        {**base, "sourceIPs": ["10.0.99.1"]},
        {**base, "responseStatus": {"code": 403}},
    ]
    storage = LocalStorage(tmp_path / "work")
    result = archive(storage, write_jsonl(tmp_path / "a.jsonl", [base] + others + [base]))
    assert (result.events_added, result.duplicates, result.audit_id_collisions) == (5, 1, 4)


def test_collisions_give_byte_identical_archives_with_one_and_two_workers(tmp_path, monkeypatch):
    """A reused ID split across input files (read by different workers), copies across files, two runs."""
    items = background(300) + get_then_patch(T0 + timedelta(minutes=20)) + get_then_patch(T0 + timedelta(minutes=58), "id-2")
    items += get_then_patch(T0 + timedelta(minutes=59, seconds=30), "id-3")  # the patch falls in the next hour
    first = write_jsonl(tmp_path / "a.jsonl", items[::2])
    second = write_jsonl(tmp_path / "b.jsonl", items[1::2] + items[:50])
    single, parallel = archive_both(tmp_path, monkeypatch, [[first], [first, second]], runs=2)
    assert single[0] == parallel[0] and single[1] == parallel[1]
    runs = [counts for counts, _ in single[0]]
    assert [(c["events_added"], c["duplicates"], c["audit_id_collisions"]) for c in runs] == [(153, 0, 0), (153, 203, 2)]


def test_the_exec_sessions_query_lists_two_sessions_opened_under_one_audit_id(tmp_path):
    import duckdb

    from pipeline.config import parse_config
    from pipeline.deploy.athena import example_queries

    sessions = []
    for minute, command in ((5, "id"), (25, "cat /var/run/secrets/kubernetes.io/serviceaccount/token")):
        started = event(T0 + timedelta(minutes=minute), audit_id=REUSED_ID, verb="create", stage="ResponseStarted",
                        requestURI=f"/api/v1/namespaces/web/pods/web-1/exec?command={command.replace(' ', '+')}",
                        objectRef={"resource": "pods", "subresource": "exec", "namespace": "web", "name": "web-1"},
                        responseStatus={"code": 101})
        sessions += [started, {**started, "stage": "ResponseComplete", "stageTimestamp": stamp(T0 + timedelta(minutes=minute + 3))}]
    storage = LocalStorage(tmp_path / "work")
    archive(storage, write_jsonl(tmp_path / "exec.jsonl", sessions))
    table = f"read_parquet('{tmp_path}/work/archive/**/*.parquet', hive_partitioning = true)"
    sql = example_queries(parse_config({"cluster": "demo"}), table=table, date_from="2026-11-01", date_to="2026-11-01")["exec_sessions"]
    rows = duckdb.connect().execute(sql).fetchall()
    assert [(row[0], row[6]) for row in rows] == [(REUSED_ID, "id"), (REUSED_ID, "cat /var/run/secrets/kubernetes.io/serviceaccount/token")]


# --------------------------------------------------------------------------- features and the rule
def test_each_request_counts_once_and_requests_sharing_an_id_both_count():
    exec_started = event(T0 + timedelta(minutes=5), audit_id="exec-1", verb="create", stage="ResponseStarted",
                         requestURI="/api/v1/namespaces/web/pods/web-1/exec?command=sh", responseStatus={"code": 101},
                         objectRef={"resource": "pods", "subresource": "exec", "namespace": "web", "name": "web-1"})
    exec_complete = {**exec_started, "stage": "ResponseComplete", "stageTimestamp": stamp(T0 + timedelta(minutes=9))}
    received = event(T0 + timedelta(minutes=10), audit_id="list-1", verb="list", stage="RequestReceived")
    complete = {**received, "stage": "ResponseComplete", "stageTimestamp": stamp(T0 + timedelta(minutes=10, milliseconds=30))}
    events = flagged_frame([exec_started, exec_complete, received, complete] + get_then_patch(T0 + timedelta(minutes=20)))
    users = partial_aggregates(events, 60, ["user"])
    assert users[["n", "n_write", "n_aws_auth_write", "n_audit_id_reused", "n_exec"]].to_dict("records") == [
        {"n": 4, "n_write": 2, "n_aws_auth_write": 1, "n_audit_id_reused": 2, "n_exec": 1}]
    assert events["audit_id_reused"].tolist() == [False, False, False, False, True, True]


def test_the_reuse_rule_fires_on_both_requests_and_not_on_copies_or_stages():
    attack = get_then_patch(T0)
    hits = PACK.evaluate(flagged_frame(attack + [attack[0]]))
    assert hits["audit_id_reused"].tolist() == [True, True, True] and hits["aws_auth_modified"].tolist() == [False, True, False]
    copies_and_stages = [attack[0], attack[0], {**attack[0], "stage": "RequestReceived"}]
    assert not PACK.evaluate(flagged_frame(copies_and_stages))["audit_id_reused"].any()


# --------------------------------------------------------------------------- the whole run
@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict, datetime]:
    """Three days of sample logs; the most active human user's first `get` of the last day, whose identity,
    address and client the planted requests use; and 14:20 on the last day (in the scored range)."""
    from pipeline.sample import generate_sample

    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, days=3, seed=5, scale=0.1)
    last = sorted(out.glob("audit-*.jsonl.gz"))[-1]
    lines = [json.loads(line) for line in gzip.open(last, "rt")]
    humans = [item for item in lines if "@" in (item["user"].get("username") or "") and item["verb"] == "get"]
    busiest = max({h["user"]["username"] for h in humans}, key=lambda u: sum(h["user"]["username"] == u for h in humans))
    template = next(h for h in humans if h["user"]["username"] == busiest)
    day = datetime.fromisoformat(lines[-1]["stageTimestamp"].replace("Z", "+00:00")).replace(hour=14, minute=20, second=5, microsecond=0)
    return out, {"user": template["user"], "sourceIPs": template["sourceIPs"], "userAgent": template["userAgent"]}, day


def run_pipeline(tmp_path: Path, *inputs: Path) -> tuple[dict, list[dict], LocalStorage]:
    workdir = tmp_path / "work"
    clock = sample_clock(inputs[0]).strftime("%Y-%m-%dT%H:%M:%SZ")
    args = ["run", "--workdir", str(workdir), "--json", "--quiet", "--now", clock] + [arg for path in inputs for arg in ("--input", str(path))]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    report = Path(summary["report_dir"])
    run = json.loads((report / "run.json").read_text())
    run["report_md"] = (report / "report.md").read_text()
    return run, [json.loads(line) for line in (report / "anomalies.jsonl").read_text().splitlines()], LocalStorage(workdir)


def finding(findings: list[dict], entity: str, hour: datetime) -> dict:
    start = hour.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    return next(f for f in findings if f["entity"] == entity and f["window_start"] == start)


@pytest.mark.slow
def test_run_archives_both_requests_of_a_reused_audit_id_and_flags_the_patch(sample, tmp_path):
    data, who, at = sample
    run, findings, storage = run_pipeline(tmp_path, data, write_jsonl(tmp_path / "attack.jsonl", get_then_patch(at, **who)))
    assert run["counts"]["archive"]["audit_id_collisions"] == 1 and run["counts"]["archive"]["duplicates"] == 0
    assert "0 duplicates dropped, 1 kept under a reused audit ID" in run["report_md"]
    held = pa.concat_tables(list(read_archive(storage, "default", at, at + timedelta(minutes=5))))
    assert sorted(held.filter(pc.equal(held["audit_id"], REUSED_ID))["verb"].to_pylist()) == ["get", "patch"]
    for entity in (who["user"]["username"], who["sourceIPs"][-1]):
        record = finding(findings, entity, at)
        rules = {hit["rule"]: hit["severity"] for hit in record["rule_hits"]}
        assert record["flagged"] and rules["aws_auth_modified"] == "critical" and rules["audit_id_reused"] == "high"


@pytest.mark.slow
def test_run_over_redelivered_firehose_objects_counts_copies_and_scores_requests_that_tie(sample, tmp_path):
    """The same Firehose object delivered twice and exported once more: duplicates, nothing added twice. In it,
    the same aws-auth patch sent twice, four seconds apart, under one Audit-ID in the first scored hour: two
    events that score exactly alike and top that hour (ranking the top events compared their rows and failed:
    TypeError), both flagged."""
    data, who, at = sample
    first_hour = at.replace(hour=0)
    twice = [get_then_patch(first_hour + timedelta(seconds=s), **who)[1] for s in (0, 4)]
    items = twice + [event(first_hour + timedelta(seconds=10 + i), verb="list", requestURI=f"/api/v1/namespaces/web/pods?limit={i}",
                           **who) for i in range(8)]
    objects = tmp_path / "firehose"
    objects.mkdir()
    for name in ("audit-1-2026-11-01-00-20-00-abc.gz", "audit-1-2026-11-01-00-25-00-def.gz"):
        (objects / name).write_bytes(gzip.compress(json.dumps(envelope(items, first_id=7)).encode(), mtime=0))
    export = write_jsonl(tmp_path / "export.jsonl", items)
    run, findings, _ = run_pipeline(tmp_path, data, objects, export)
    counts = run["counts"]["archive"]
    assert (counts["duplicates"], counts["audit_id_collisions"], counts["events_added"]) == (20, 1, counts["events"] - 20)
    record = finding(findings, who["user"]["username"], first_hour)
    hits = {hit["rule"]: hit["count"] for hit in record["rule_hits"]}
    assert record["flagged"] and hits["aws_auth_modified"] == 2 and hits["audit_id_reused"] == 2
