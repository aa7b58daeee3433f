"""Every input format archives without loss; duplicates and bad lines are counted; re-archiving changes nothing."""
from __future__ import annotations

import gzip
import json
import types
from datetime import timedelta

import pyarrow as pa
import pytest

import features.events as events_module
from features.events import normalize_event
from pipeline.errors import StageError
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.stages.archive import archive_inputs, check_native_build, list_archive_hours, read_archive
from tests.factory import CONTROL_MESSAGE, SHARED_FIXTURES, T0, envelope, event, events, write_jsonl


def archive(tmp_path, *paths, run="r1"):
    storage = LocalStorage(tmp_path / "work")
    result = archive_inputs(storage, resolve_inputs([str(p) for p in paths]), "demo", run)
    return storage, result


def archived(storage) -> pa.Table:
    return pa.concat_tables(list(read_archive(storage, "demo")))


def test_jsonl_gz_archives_every_event_into_hour_partitions(tmp_path):
    items = events(150, step=timedelta(minutes=1))
    path = write_jsonl(tmp_path / "audit.jsonl.gz", items, gz=True)
    storage, result = archive(tmp_path, path)
    assert result.events_added == 150 and result.quarantine.total == 0
    hours = list_archive_hours(storage, "demo")
    assert [(d, h) for d, h, _ in hours] == [("2026-11-01", 9), ("2026-11-01", 10), ("2026-11-01", 11)]
    table = archived(storage)
    assert sorted(table["audit_id"].to_pylist()) == sorted(e["auditID"] for e in items)
    assert table["user"][0].as_py() == "alice@corp.example"
    assert table["arn"][0].as_py() == "arn:aws:sts::111122223333:assumed-role/EngineerRole/alice"


def test_eventlist_document_and_pretty_printed_event(tmp_path):
    items = events(3)
    (tmp_path / "list.json").write_text(json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}, indent=2))
    (tmp_path / "single.json").write_text(json.dumps(event(T0 + timedelta(hours=2), audit_id="single"), indent=1))
    storage, result = archive(tmp_path, tmp_path / "list.json", tmp_path / "single.json")
    assert result.events_added == 4
    assert "single" in archived(storage)["audit_id"].to_pylist()


def test_cloudwatch_export_lines(tmp_path):
    items = events(5)
    lines = [f"{e['stageTimestamp']} {json.dumps(e)}" for e in items]
    path = tmp_path / "000000.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    storage, result = archive(tmp_path, path)
    assert result.events_added == 5 and result.quarantine.total == 0


def test_firehose_object_with_several_gzip_members_and_a_control_message(tmp_path):
    first, second = events(4), events(3, start=T0 + timedelta(hours=1))
    members = [
        gzip.compress(json.dumps(envelope(first)).encode(), mtime=0),
        gzip.compress(json.dumps(CONTROL_MESSAGE).encode(), mtime=0),
        gzip.compress((json.dumps(envelope(second, first_id=100)) + json.dumps(envelope(first))).encode(), mtime=0),
    ]
    path = tmp_path / "firehose-1-2026-11-01-09-00-00-abc"
    path.write_bytes(b"".join(members))
    storage, result = archive(tmp_path, path)
    assert result.events_added == 7
    assert result.duplicates == 4, "Firehose redelivered the first envelope: deduplicated, counted"
    assert result.quarantine.skipped == {"control_message": 1}
    assert archived(storage)["cw_event_id"].null_count == 0


def test_large_firehose_object_of_envelopes_glued_without_newlines_keeps_every_event(tmp_path):
    """Firehose's default: one gzip member per record, no newline between envelopes. A 5 MB buffer
    holds thousands of them; the object is one 'line' far past max_line_bytes, split at `}{`."""
    items = events(6000, step=timedelta(seconds=1))
    tricky = [event(T0, audit_id="brace-in-a-string", userAgent="curl/8 }{ weird")]
    batches = [items[i:i + 50] for i in range(0, len(items), 50)]
    batches.insert(60, tricky)
    members = [gzip.compress(json.dumps(envelope(batch, first_id=1000 * n)).encode(), mtime=0) for n, batch in enumerate(batches)]
    path = tmp_path / "firehose-1-2026-11-01-09-00-00-big"
    path.write_bytes(b"".join(members))
    storage = LocalStorage(tmp_path / "work")
    result = archive_inputs(storage, resolve_inputs([str(path)]), "demo", "r1", max_line_bytes=1024 * 1024)
    assert result.quarantine.total == 0, result.quarantine.counts
    assert result.events_added == 6001
    assert "brace-in-a-string" in archived(storage)["audit_id"].to_pylist()


def test_firehose_envelope_from_a_non_audit_stream_is_skipped_not_archived(tmp_path):
    path = tmp_path / "fh.gz"
    path.write_bytes(gzip.compress(json.dumps(envelope(events(2), stream="authenticator-0a1b2c")).encode(), mtime=0))
    _, result = archive(tmp_path, path)
    assert result.events_added == 0 and result.quarantine.skipped == {"non_audit_stream": 1}


def test_bad_lines_are_quarantined_with_reasons_and_good_ones_kept(tmp_path):
    good = events(6)
    lines = [json.dumps(good[0]), json.dumps(good[1])[:200] + "[Truncated...]", "{not json", json.dumps(good[2]),
             json.dumps([1, 2]), json.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "x"}),
             json.dumps({**good[3], "stageTimestamp": "yesterday", "requestReceivedTimestamp": None}),
             json.dumps(good[4]), json.dumps(good[5])]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe garbage \x00\n")
    storage, result = archive(tmp_path, path)
    assert result.events_added == 4, "good[0], good[2], good[4], good[5]"
    assert result.quarantine.counts == {
        "cloudwatch_truncated": 1, "invalid_json": 1, "not_an_object": 1, "missing_timestamp": 1, "bad_timestamp": 1, "not_utf8": 1,
    }
    quarantined = {e["reason"] for e in result.quarantine.entries}
    assert "cloudwatch_truncated" in quarantined


def test_duplicates_within_and_across_runs_are_dropped_and_rearchive_is_byte_identical(tmp_path):
    items = events(20)
    path = write_jsonl(tmp_path / "a.jsonl", items + items[:5])
    storage, first = archive(tmp_path, path)
    assert (first.events_added, first.duplicates) == (20, 5)
    hour_file = storage.local_path(list_archive_hours(storage, "demo")[0][2])
    before = hour_file.read_bytes()
    _, second = archive(tmp_path, path, run="r2")
    assert (second.events_added, second.duplicates) == (0, 25)
    assert hour_file.read_bytes() == before


def test_archive_written_before_a_column_was_added_stays_readable_and_mergeable(tmp_path):
    """Body facts gain columns over releases; an older hour file is read with the new columns null
    and new events merge into it without a rewrite of history."""
    import pyarrow.parquet as pq

    items = events(20)
    storage, _ = archive(tmp_path, write_jsonl(tmp_path / "a.jsonl", items[:10]))
    hour_file = storage.local_path(list_archive_hours(storage, "demo")[0][2])
    pq.write_table(pq.read_table(hour_file).drop_columns(["webhook_targets", "webhook_weakened"]), hour_file)
    _, result = archive(tmp_path, write_jsonl(tmp_path / "b.jsonl", items), run="r2")
    assert (result.events_added, result.duplicates) == (10, 10)
    table = archived(storage)
    assert len(table) == 20 and table["webhook_targets"].null_count == 20


def test_stages_of_one_request_are_kept_apart_but_each_only_once(tmp_path):
    started = event(audit_id="exec-1", stage="ResponseStarted", verb="create", responseStatus={"code": 101},
                    objectRef={"resource": "pods", "subresource": "exec", "namespace": "web", "name": "web-1"})
    complete = {**started, "stage": "ResponseComplete", "responseStatus": {"code": 200}}
    storage, result = archive(tmp_path, write_jsonl(tmp_path / "x.jsonl", [started, complete, started]))
    assert (result.events_added, result.duplicates) == (2, 1)
    assert sorted(archived(storage)["stage"].to_pylist()) == ["ResponseComplete", "ResponseStarted"]


def test_repairs_and_attribution(tmp_path):
    odd = event(audit_id="odd", sourceIPs="203.0.113.5", responseStatus={"code": "403"})
    forwarded = event(audit_id="fwd", sourceIPs=["198.51.100.77", "10.0.4.4"])
    failed_login = event(audit_id="401", user={}, responseStatus={"code": 401}, sourceIPs=["203.0.113.9"])
    no_user = {k: v for k, v in event(audit_id="nouser").items() if k != "user"}
    storage, result = archive(tmp_path, write_jsonl(tmp_path / "x.jsonl", [odd, forwarded, failed_login, no_user]))
    assert result.repaired == {"code_as_string": 1, "source_ips_as_string": 1, "user_missing": 1}
    rows = {r["audit_id"]: r for r in archived(storage).to_pylist()}
    assert rows["401"]["user"] is None and rows["401"]["source_ip"] == "203.0.113.9", "failed logins are kept"
    assert rows["odd"]["source_ip"] == "203.0.113.5" and rows["odd"]["code"] == 403
    assert rows["fwd"]["source_ip"] == "10.0.4.4", "the connection address, not the client-set X-Forwarded-For"
    assert rows["fwd"]["claimed_ip"] == "198.51.100.77"


def test_secret_values_never_reach_the_archive(tmp_path):
    planted = "hunter2-PLANTED-SECRET-VALUE"
    secret = event(audit_id="s1", verb="create", objectRef={"resource": "secrets", "namespace": "web", "name": "db"},
                   requestObject={"kind": "Secret", "data": {"password": planted}, "stringData": {"token": planted}})
    config_map = event(audit_id="c1", verb="update", objectRef={"resource": "configmaps", "namespace": "web", "name": "app"},
                       requestObject={"data": {"aws_secret_access_key": planted, "mode": "prod"}})
    storage, _ = archive(tmp_path, write_jsonl(tmp_path / "x.jsonl", [secret, config_map]))
    for path in (tmp_path / "work").rglob("*"):
        if path.is_file():
            assert planted.encode() not in path.read_bytes(), path
    rows = {r["audit_id"]: r for r in archived(storage).to_pylist()}
    assert rows["c1"]["configmap_credentials"] is True and rows["c1"]["configmap_keys"] == "aws_secret_access_key,mode"


def test_truncated_gzip_keeps_the_events_before_the_cut(tmp_path):
    data = gzip.compress("".join(json.dumps(e) + "\n" for e in events(400)).encode(), mtime=0)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    _, result = archive(tmp_path, path)
    assert 0 < result.events_added < 400
    assert result.quarantine.counts.get("gzip_damaged") == 1


def test_empty_file_is_counted_not_fatal(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    _, result = archive(tmp_path, tmp_path / "empty.jsonl")
    assert result.events_added == 0 and result.quarantine.skipped == {"empty_input": 1}


@pytest.mark.skipif(not SHARED_FIXTURES.exists(), reason="shared fixtures not mounted")
def test_real_shaped_fixtures_all_decode_and_normalise():
    """The 188 Panther EKS test events: every one decodes; every one with a user normalises (hand-written
    events lack timestamps, so a default stands in); the archive path counts the rest by reason."""
    refs = resolve_inputs([str(SHARED_FIXTURES)])
    from pipeline.io.readers import Quarantine, read_events

    quarantine = Quarantine()
    decoded = [value for ref in refs for value, _ in read_events(ref, quarantine)]
    assert len(decoded) == 188 and quarantine.total == 0
    normalised = [normalize_event(v, default_time="2026-11-01T00:00:00Z") for v in decoded if isinstance(v.get("user"), dict)]
    assert len(normalised) == sum(1 for v in decoded if isinstance(v.get("user"), dict))
    exec_rows = [r for r in normalised if r["subresource"] == "exec"]
    assert exec_rows and all(r["verb"] == "create" for r in exec_rows)


def test_a_decoder_built_from_other_sources_stops_the_archive_with_a_hint(monkeypatch):
    """fastnorm.c changed since `make install`: archiving with the old build would decode by the old rules."""
    check_native_build()  # this checkout's build, or none
    monkeypatch.setattr(events_module, "_fastnorm", types.SimpleNamespace(SOURCE_SHA256="0" * 64))
    with pytest.raises(StageError, match="built from other sources") as caught:
        check_native_build()
    assert "make install" in caught.value.hint
