"""Hostile input at the readers (issue 16): what a client can put in an audit event to stop, slow or
blind the archive. kube-apiserver logs a patch as the bytes the client sent, CloudWatch cuts events
over 256 KB and Firehose glues envelopes together, so each input below reaches the readers as it is.
Every one used to stop the run, take time or memory without bound, or lose the event; now the run
goes on, the work is linear and bounded, and the event is archived with what could be read."""
from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from datetime import timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from click.testing import CliRunner

from features.addresses import AddressBook
from features.events import EVENT_SCHEMA
from features.flags import FlagContext, add_flags
from features.novelty import add_history_flags
from pipeline.catalog import load_rule_pack
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.io import jsonscan, readers
from pipeline.io.readers import Quarantine, read_blocks, read_events
from pipeline.io.storage import InputRef, LocalStorage
from pipeline.stages.archive import normalise_blocks, normalise_stream, read_archive
from pipeline.stages.features import events_frame
from tests.e2e.test_hostile_inputs import GRANT_MASTERS, UNREADABLE_WRITER, built_once, full_run, hostile_input, sample_2d  # noqa: F401
from tests.factory import T0, apiserver_line, envelope, event, events
from tests.pipeline.io.test_fast_paths import block_decoder  # noqa: F401  (the block path with each decoder)

PACK = load_rule_pack(load_config())
BRACES_AGENT = "curl/8.5.0 }{ (glued?)"
AWS_AUTH_PATCH = {"verb": "patch", "level": "RequestResponse", "requestURI": "/api/v1/namespaces/kube-system/configmaps/aws-auth",
                  "objectRef": {"resource": "configmaps", "namespace": "kube-system", "name": "aws-auth", "apiVersion": "v1"},
                  "user": {"username": "mallory@corp.example", "groups": ["system:authenticated"]}, "sourceIPs": ["203.0.113.50"]}
# Bodies Go's decoder accepts and orjson refuses, each logged as the client sent it. With a `}{` in the
# user agent, the first three sent the line to the stdlib's concatenated-JSON reader, which raised.
UNREADABLE_BODIES = [
    pytest.param(GRANT_MASTERS + b',"x":' + b"[" * 1100 + b"]" * 1100 + b"}", BRACES_AGENT, id="nesting-1100-deep-RecursionError"),
    pytest.param(GRANT_MASTERS + b',"x":' + b"9" * 5000 + b"}", BRACES_AGENT, id="integer-of-5000-digits-ValueError"),
    pytest.param(b'{"data":{"\\ud800":"x"}}', BRACES_AGENT, id="lone-surrogate-in-a-merge-patch-UnicodeEncodeError"),
    pytest.param(GRANT_MASTERS + b',"x":1e400}', "kubectl/v1.29.2", id="number-1e400"),
    pytest.param(GRANT_MASTERS + b',"x":' + b'{"a":' * 1025 + b"1" + b"}" * 1025 + b"}", "kubectl/v1.29.2", id="nesting-1025-deep"),
]


def archive_cli(tmp_path: Path, files: dict[str, bytes], *options: str) -> tuple[dict, list[dict]]:
    """``auditsift archive`` over ``files``: its counts (exit 0 asserted) and the archived rows."""
    (tmp_path / "in").mkdir()
    for name, data in files.items():
        (tmp_path / "in" / name).write_bytes(data)
    result = CliRunner().invoke(main, ["archive", "--input", str(tmp_path / "in"), "--workdir", str(tmp_path / "work"), "--json",
                                       "--quiet", *options])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout[result.stdout.index("{"):])
    tables = list(read_archive(LocalStorage(tmp_path / "work"), "default"))
    return counts, pa.concat_tables(tables).to_pylist() if tables else []


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["audit_id"]: row for row in rows}


def rule_hits(rows: list[dict], rule: str) -> list[str]:
    """Audit IDs of archived rows that ``rule`` of the default pack fires on."""
    frame = add_history_flags(add_flags(events_frame(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)), FlagContext(AddressBook())), {})
    return frame["audit_id"][PACK.evaluate(frame)[rule].to_numpy()].tolist()


@pytest.mark.parametrize("body,agent", UNREADABLE_BODIES)
def test_a_body_orjson_refuses_costs_the_body_facts_not_the_event_nor_the_run(body, agent, tmp_path, record_property):
    """An aws-auth patch whose body does not decode is archived with every field before and after the
    body, marked ``body_unreadable``, its body facts null; the run exits 0. No lone surrogate reaches Arrow."""
    good = events(3)
    line = apiserver_line(event(T0 + timedelta(minutes=5), audit_id="unreadable", userAgent=agent, **AWS_AUTH_PATCH), body)
    data = b"".join(json.dumps(e).encode() + b"\n" for e in good[:2]) + line + b"\n" + json.dumps(good[2]).encode() + b"\n"
    counts, rows = archive_cli(tmp_path, {"audit.jsonl": data})
    record_property("result", f"kept {counts['events_added']}; salvaged {counts['salvaged_by_reason']}; "
                              f"quarantined {counts['quarantined_by_reason']}")
    assert counts["quarantined_by_reason"] == {} and counts["salvaged_by_reason"] == {"body_unreadable": 1}
    row = by_id(rows)["unreadable"]
    assert {k: row[k] for k in ("salvage", "user", "verb", "resource", "namespace", "name", "source_ip", "user_agent", "code",
                                "decision")} == {
        "salvage": "body_unreadable", "user": "mallory@corp.example", "verb": "patch", "resource": "configmaps",
        "namespace": "kube-system", "name": "aws-auth", "source_ip": "203.0.113.50", "user_agent": agent, "code": 200,
        "decision": "allow"}
    assert row["configmap_keys"] is None and row["grants_masters"] is None
    assert row["time"].isoformat() == "2026-11-01T09:05:00+00:00"
    assert set(by_id(rows)) == {e["auditID"] for e in good} | {"unreadable"}
    assert rule_hits(rows, "sensitive_write_body_unreadable") == ["unreadable"]


def test_brace_pairs_in_a_user_agent_and_an_annotation_are_no_value_boundary(tmp_path, record_property):
    """``}{`` inside strings is no boundary between glued values: events glued with no newline (as JSON
    lines and as Firehose envelopes) keep their user agent and annotation whole, even when the line
    needs salvaging (a lone surrogate in the body)."""
    reason = 'RBAC: allowed by ClusterRoleBinding "ops}{admin" of ClusterRole "cluster-admin"'
    annotations = {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": reason}

    def line(audit_id: str) -> bytes:
        item = event(T0, audit_id=audit_id, userAgent=BRACES_AGENT + '"}{', annotations=annotations, **AWS_AUTH_PATCH)
        return apiserver_line(item, b'{"data":{"\\ud800":"x"}}')

    glued = line("glued-line") + json.dumps(event(audit_id="after-glued-line")).encode()
    messages = [line("glued-message").decode(), json.dumps(event(audit_id="after-glued-message"))]
    firehose = json.dumps(envelope(messages)).encode() + json.dumps(envelope([event(audit_id="second-envelope")], first_id=9)).encode()
    counts, rows = archive_cli(tmp_path, {"a.jsonl": glued + b"\n", "firehose-1": gzip.compress(firehose, mtime=0)})
    rows = by_id(rows)
    record_property("result", f"kept {len(rows)} of 5; user agent and reason whole: "
                              f"{all(rows.get(a, {}).get('authz_reason') == reason for a in ('glued-line', 'glued-message'))}")
    assert counts["quarantined_by_reason"] == {}
    assert set(rows) == {"glued-line", "after-glued-line", "glued-message", "after-glued-message", "second-envelope"}
    for audit_id in ("glued-line", "glued-message"):
        assert (rows[audit_id]["user_agent"], rows[audit_id]["authz_reason"], rows[audit_id]["salvage"]) == (
            BRACES_AGENT + '"}{', reason, "body_unreadable")


CUT_FORMATS = [
    pytest.param("firehose", "2026-11-01T09:10:00.123000+00:00", id="firehose-envelope-time"),
    pytest.param("export", "2026-11-01T09:10:00.456000+00:00", id="export-line-time-prefix"),
]


def cut_aws_auth_patch(audit_id: str) -> str:
    """The aws-auth patch with a 300 KB user agent, as CloudWatch stores it: cut at 256 KB, ``[Truncated...]``
    appended. Everything after the user agent is lost: objectRef, response status, body, timestamps."""
    item = event(T0 + timedelta(minutes=10), audit_id=audit_id, userAgent="kubectl/" + "A" * 300_000, **AWS_AUTH_PATCH)
    line = apiserver_line(item, GRANT_MASTERS + b"}")
    return line[: 256 * 1024 - 26 - len(b"[Truncated...]")].decode() + "[Truncated...]"  # 26: CloudWatch's per-event overhead


@pytest.mark.parametrize("form,log_time", CUT_FORMATS)
def test_an_event_cut_at_256_kb_is_salvaged_and_dated_by_its_log_event(form, log_time, tmp_path, record_property):
    """The 300 KB user agent: the cut event is archived ``truncated``, dated by its CloudWatch log event
    (the envelope's timestamp, the export line's prefix), its objectRef taken from the request URI as the
    API server does, and the aws-auth write is flagged though its body and response are lost."""
    message = cut_aws_auth_patch("cut")
    if form == "firehose":
        wrapped = envelope([event(audit_id="good"), message])
        wrapped["logEvents"][1]["timestamp"] = 1_793_524_200_123  # 2026-11-01T09:10:00.123Z
        files = {"firehose-1": gzip.compress(json.dumps(wrapped).encode(), mtime=0)}
    else:
        text = f"2026-11-01T09:00:00.000Z {json.dumps(event(audit_id='good'))}\n2026-11-01T09:10:00.456Z {message}\n"
        files = {"000000.gz": gzip.compress(text.encode(), mtime=0)}
    counts, rows = archive_cli(tmp_path, files)
    record_property("result", f"salvaged {counts['salvaged_by_reason']}, quarantined {counts['quarantined_by_reason']}; "
                              f"time {by_id(rows).get('cut', {}).get('time')}; flagged: {rule_hits(rows, 'sensitive_write_body_unreadable')}")
    assert counts["quarantined_by_reason"] == {} and counts["salvaged_by_reason"] == {"truncated": 1}
    row = by_id(rows)["cut"]
    assert row["time"].isoformat() == log_time and row["received_time"] is None
    assert {k: row[k] for k in ("salvage", "user", "verb", "resource", "namespace", "name", "source_ip", "user_agent", "code")} == {
        "salvage": "truncated", "user": "mallory@corp.example", "verb": "patch", "resource": "configmaps", "namespace": "kube-system",
        "name": "aws-auth", "source_ip": "203.0.113.50", "user_agent": None, "code": None}
    assert rule_hits(rows, "sensitive_write_body_unreadable") == ["cut"]


def test_a_cut_event_with_no_time_at_all_is_quarantined(tmp_path, record_property):
    """Policy: a plain JSON line carries no log record time, and the cut took the event's own timestamps;
    an event that cannot be placed in time is quarantined under its decode reason, its sample redacted."""
    counts, rows = archive_cli(tmp_path, {"audit.jsonl": (json.dumps(event(audit_id="good")) + "\n" + cut_aws_auth_patch("cut") + "\n").encode()})
    record_property("result", f"quarantined {counts['quarantined_by_reason']}, salvaged {counts.get('salvaged')}")
    assert counts["quarantined_by_reason"] == {"cloudwatch_truncated": 1} and counts["salvaged"] == 0
    assert set(by_id(rows)) == {"good"}


class WorkExceeded(AssertionError):
    """More bytes decoded or scanned than the test's budget: the reading is not linear."""


def test_envelopes_glued_around_a_240_kb_user_agent_of_brace_pairs_are_read_in_linear_work(tmp_path, monkeypatch, record_property):
    """Envelopes glued around a 240 KB user agent of ``}{`` pairs are read in one pass: the bytes handed to
    orjson plus the bytes the scanner looks at stay within 4x the input (a budget, not a timing: it fails at
    the first call over it). Issue 16: one such event in a 1,000-event envelope glued to the next (past the
    2 MB block, so the glued-value splitter reads it) took 209 s, the parse retried from the envelope's start
    at every ``}{``."""
    items = [event(T0 + timedelta(seconds=i), audit_id=f"a-{i:04d}") for i in range(1000)]
    items[500]["userAgent"] = "}{" * (120 * 1024)
    data = json.dumps(envelope(items)).encode() + json.dumps(envelope(events(1000, start=T0 + timedelta(hours=1)), first_id=5000)).encode()
    path = tmp_path / "firehose-glued"
    path.write_bytes(data)
    budget = {"work": 0, "limit": 4 * len(data)}

    def spend(amount: int) -> None:
        budget["work"] += amount
        if budget["work"] > budget["limit"]:
            raise WorkExceeded(f"{budget['work']:,} bytes decoded or scanned for {len(data):,} bytes of input")

    class CountingOrjson:
        JSONDecodeError = orjson.JSONDecodeError

        @staticmethod
        def loads(text):
            spend(len(text))
            return orjson.loads(text)

    scan = jsonscan.ValueScanner.end

    def counted_scan(self, blanked, pos=0):
        before = self.scanned
        end = scan(self, blanked, pos)
        spend(self.scanned - before)
        return end

    monkeypatch.setattr(readers, "orjson", CountingOrjson)
    monkeypatch.setattr(jsonscan, "orjson", CountingOrjson)
    monkeypatch.setattr(jsonscan.ValueScanner, "end", counted_scan)
    quarantine = Quarantine()
    decoded = [value for value, _ in read_events(InputRef(str(path), lambda: open(path, "rb"), len(data)), quarantine)]
    record_property("result", f"{budget['work'] / len(data):.2f}x the input decoded or scanned")
    assert len(decoded) == 2000 and quarantine.counts == {}
    assert decoded[500]["userAgent"] == "}{" * (120 * 1024)


@pytest.mark.parametrize("read_bytes", [7, 4096])
def test_glued_envelopes_give_the_same_events_whatever_pieces_they_are_read_in(read_bytes, tmp_path, monkeypatch, record_property):
    """A long newline-free run of envelopes read a few bytes at a time (escapes, ``}{`` and quotes split
    across pieces) gives every event, and an envelope over ``max_line_bytes`` in the middle is one
    ``line_too_long`` without costing the envelopes after it."""
    batches = [[event(T0 + timedelta(minutes=b, seconds=i), audit_id=f"b{b}-{i}", userAgent='x}{\\"}{\\' * i) for i in range(3)]
               for b in range(6)]
    batches[3][0]["userAgent"] = "}{" * 40_000
    data = b"".join(json.dumps(envelope(batch, first_id=100 * b)).encode() for b, batch in enumerate(batches))
    path = tmp_path / "firehose-glued"
    path.write_bytes(data)
    monkeypatch.setattr(readers, "LINE_READ_BYTES", read_bytes)
    quarantine = Quarantine()
    ref = InputRef(str(path), lambda: open(path, "rb"), len(data))
    decoded = [value for value, _ in read_events(ref, quarantine, max_line_bytes=64 << 10)]
    record_property("result", f"{len(decoded)} of 15 events; quarantined {quarantine.counts}")
    assert decoded == [e for b, batch in enumerate(batches) if b != 3 for e in batch]
    assert quarantine.counts == {"line_too_long": 1} and quarantine.entries[0]["sample"].startswith('{"messageType"')


def long_line_gzip(path: Path, line_bytes: int) -> Path:
    """A gzip holding an event, one JSON line of ``line_bytes`` (a user agent of one repeated letter: a few
    hundred KB compressed), and an event after it; written a megabyte at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as out:
        out.write(compressor.compress(json.dumps(event(audit_id="before")).encode() + b"\n" + b'{"kind":"Event","userAgent":"'))
        for _ in range(line_bytes >> 20):
            out.write(compressor.compress(b"a" * (1 << 20)))
        out.write(compressor.compress(b'"}\n' + json.dumps(event(audit_id="after")).encode() + b"\n"))
        out.write(compressor.flush())
    return path


def test_a_400_mb_line_is_skipped_holding_at_most_max_line_bytes(tmp_path, record_property):
    """A 400 MB line in a 400 KB gzip is one ``line_too_long`` entry (its first bytes as the sample, its
    length counted), the line after it is read, and the reader's peak allocation (tracemalloc) stays a few
    times ``max_line_bytes``, not the line. Issue 16: it took 79 s and 837 MB, recopied every 2 MB."""
    path = long_line_gzip(tmp_path / "long.jsonl.gz", 400 << 20)
    ref = InputRef(str(path), lambda: open(path, "rb"), path.stat().st_size)
    quarantine = Quarantine()
    tracemalloc.start()
    try:
        decoded = [value["auditID"] for value, _ in read_events(ref, quarantine, max_line_bytes=4 << 20)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    record_property("result", f"{path.stat().st_size >> 10} KB gzip, 400 MB line: peak {peak / 2**20:.1f} MB traced")
    assert decoded == ["before", "after"]
    assert quarantine.counts == {"line_too_long": 1}
    (entry,) = quarantine.entries
    assert entry["sample"].startswith('{"kind":"Event","userAgent":"aaa') and entry["bytes"] == (400 << 20) + len('{"kind":"Event","userAgent":"') + 2
    assert peak < 3 * (4 << 20), f"peak {peak:,} bytes"


def test_a_gzip_bomb_stops_being_read_and_what_came_before_is_kept(tmp_path, record_property):
    """A member that decompresses to 1,000 times its size (zeros) after a member of events: reading stops
    once the input passes ``archive.max_decompression_ratio`` (250) times its size, counted as
    ``decompression_ratio``; the events before it are archived and the run exits 0."""
    before, after = events(50), events(50, start=T0 + timedelta(hours=1))
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"".join(bomb.compress(b"\0" * (1 << 20)) for _ in range(256)) + bomb.flush()
    data = (gzip.compress(b"".join(json.dumps(e).encode() + b"\n" for e in before), mtime=0) + zeros
            + gzip.compress(b"".join(json.dumps(e).encode() + b"\n" for e in after), mtime=0))
    counts, rows = archive_cli(tmp_path, {"audit.jsonl.gz": data})
    record_property("result", f"{len(data) >> 10} KB gzip of 256 MB: quarantined {counts['quarantined_by_reason']}")
    assert counts["quarantined_by_reason"] == {"decompression_ratio": 1, "line_too_long": 1}
    assert sorted(by_id(rows)) == sorted(e["auditID"] for e in before)


def test_events_pretty_printed_in_a_row_are_salvaged_one_by_one(tmp_path, record_property):
    """``jq .`` output (events one after another, over many lines) with a body 1,100 levels deep is read one
    event at a time and that one salvaged; it used to go to the stdlib's concatenated-JSON reader and raise
    RecursionError."""
    good = events(2)
    deep = apiserver_line(event(T0, audit_id="deep", **AWS_AUTH_PATCH), b'{"x":' + b"[" * 1100 + b"]" * 1100 + b"}")
    text = json.dumps(good[0], indent=2).encode() + b"\n" + deep + b"\n" + json.dumps(good[1], indent=2).encode() + b"\n"
    counts, rows = archive_cli(tmp_path, {"events.json": text})
    record_property("result", f"kept {counts['events_added']}; salvaged {counts['salvaged_by_reason']}")
    assert counts["quarantined_by_reason"] == {} and counts["salvaged_by_reason"] == {"body_unreadable": 1}
    assert set(by_id(rows)) == {good[0]["auditID"], "deep", good[1]["auditID"]}


HOSTILE_LINES = [apiserver_line(event(T0 + timedelta(seconds=i), audit_id=f"hostile-{i}", userAgent=agent, **AWS_AUTH_PATCH), body)
                 for i, (body, agent) in enumerate(p.values for p in UNREADABLE_BODIES)] + [
    apiserver_line(event(T0, audit_id="crd-1e400", verb="patch", objectRef={"resource": "widgets", "namespace": "a", "name": "w"}),
                   b'{"spec":{"size":1e400}}'),
    json.dumps(event(T0, audit_id="agent-surrogate")).encode().replace(b"kubectl/", b"\\udc80kubectl/"),
    cut_aws_auth_patch("cut").encode(),
]


def three_ways(lines: list[bytes], tmp_path: Path, name: str = "lines") -> tuple[tuple[list[dict], dict], ...]:
    """(rows, quarantine counts) of ``lines`` read from a file by the block path (the decoder ``block_decoder``
    chose, per-line fallback), by the per-line path, and as FilterLogEvents messages with a log time."""
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    ref = InputRef(str(path), lambda: open(path, "rb"), path.stat().st_size)
    blocks, per_line, messages = Quarantine(), Quarantine(), Quarantine()
    decoded = (value for line in lines for value in readers.parse_cloudwatch_message(line.decode("utf-8", "surrogatepass"), None, "cw",
                                                                                        messages, 1_793_524_200_000))
    tables = (list(normalise_blocks(read_blocks(ref, blocks), blocks, "f", 1000)), list(normalise_stream(read_events(ref, per_line), per_line, "f", 1000)),
              list(normalise_stream(decoded, messages, "cw", 1000)))
    return tuple((pa.concat_tables(t for t, _ in found).to_pylist() if found else [], dict(into.counts))
                 for found, into in zip(tables, (blocks, per_line, messages)))


def test_block_path_cloudwatch_messages_and_per_line_path_give_the_same_rows(block_decoder, tmp_path, record_property):
    """The same bytes, the same rows: each hostile line read from a file by the block path (native or
    msgspec decoder, per-line fallback), by the per-line path, and as a FilterLogEvents message
    (``parse_cloudwatch_message``, used to quarantine what files archived, such as 1e400 in a body no
    fact is read from)."""
    (by_block, blocks), (by_line, lines), (by_message, messages) = three_ways(HOSTILE_LINES, tmp_path)
    record_property("result", f"{len(HOSTILE_LINES)} lines: {len(by_block)} rows by block, {len(by_line)} per line, "
                              f"{len(by_message)} as messages (the cut one dated by its log event)")
    assert by_block == by_line == [row for row in by_message if row["audit_id"] != "cut"]
    salvage = {row["audit_id"]: row["salvage"] for row in by_message}
    assert salvage == {**{f"hostile-{i}": "body_unreadable" for i in range(len(UNREADABLE_BODIES))}, "crd-1e400": None,
                       "agent-surrogate": "value_unreadable", "cut": "truncated"}
    assert blocks == lines == {"cloudwatch_truncated": 1}, "a cut line in a file has no log time"
    assert messages == {} and by_message[-1]["time"].isoformat() == "2026-11-01T09:10:00+00:00"


def without_verb(**override) -> dict:
    raw = event(T0, **override)
    del raw["verb"]
    return raw


# Lines whose only damage is a number beyond a double, each also holding a duplicated key the archive reads (an
# earlier decoy value, then the real one), and the same lines without the decoy. The C decoder leaves a
# duplicated key to the per-line path; orjson refuses 1e400 there, so the line is read field by field.
UNREAD_1E400 = [
    apiserver_line(without_verb(audit_id="no-verb"))[:-1] + b',"n":1e400}',  # as the shared EKS fixtures (exports without a verb)
    apiserver_line(without_verb(audit_id="no-verb-negative"))[:-1] + b',"n":-1e400}',
    apiserver_line(event(T0, audit_id="with-verb"))[:-1] + b',"n":1e400}',
    apiserver_line(event(T0, audit_id="aws-auth", **AWS_AUTH_PATCH), GRANT_MASTERS + b',"x":1e400}'),
    apiserver_line({key: value for key, value in without_verb(audit_id="no-time").items() if not key.endswith("Timestamp")})[:-1]
    + b',"n":1e400}',
    # Broken structure is damage kube-apiserver never writes: read field by field, and quarantined without a verb.
    apiserver_line(without_verb(audit_id="doubled-comma"))[:-1] + b',,"n":1e400}',
]
DECOYS = {"user": b'{"username":"decoy"}', "auditID": b'"decoy"'}


@pytest.mark.parametrize("key", sorted(DECOYS))
def test_a_duplicated_key_and_a_number_beyond_a_double_in_an_unread_field_change_nothing(key, block_decoder, tmp_path,
                                                                                      record_property):
    """Found by ``python -m tests.features.native_fuzz --count 100000 --seed 1000``: a line without a verb holding
    a duplicated key and 1e400 was archived by msgspec's block path and quarantined as invalid_json after the C
    decoder, the per-line path and CloudWatch (salvage needs a verb). A line whose damage is confined to fields
    the archive never reads is now decided as a whole one: the same rows and the same quarantine reason as the
    line without the duplicate, through every decoder and source, and the last value of a duplicated key wins
    (as in orjson, msgspec and Go's encoding/json)."""
    field = b'"' + key.encode() + b'":'
    doubled = [line.replace(field, field + DECOYS[key] + b"," + field, 1) for line in UNREAD_1E400]
    results = three_ways(doubled, tmp_path, "doubled"), three_ways(UNREAD_1E400, tmp_path, "single")
    (rows, counts), _, _ = results[0]
    record_property("result", f"{len(rows)} rows, quarantined {counts} through each path, with and without the duplicate")
    assert all(result == results[0][0] for result in (*results[0], *results[1]))
    firehose = tmp_path / "firehose.gz"  # as S3 holds it: the lines as the messages of a gzip envelope
    firehose.write_bytes(gzip.compress(json.dumps(envelope([line.decode() for line in doubled])).encode()))
    into = Quarantine()
    ref = InputRef(str(firehose), lambda: open(firehose, "rb"), firehose.stat().st_size)
    from_s3 = pa.concat_tables(t for t, _ in normalise_blocks(read_blocks(ref, into), into, "s3", 1000)).drop_columns("cw_event_id")
    assert from_s3.to_pylist() == [{k: v for k, v in row.items() if k != "cw_event_id"} for row in rows] and into.counts == counts
    assert {row["audit_id"]: (row["verb"], row["user"], row["salvage"]) for row in rows} == {
        "no-verb": (None, "alice@corp.example", None), "no-verb-negative": (None, "alice@corp.example", None),
        "with-verb": ("list", "alice@corp.example", None), "aws-auth": ("patch", "mallory@corp.example", "body_unreadable")}
    assert counts == {"missing_timestamp": 1, "invalid_json": 1}


@pytest.mark.slow
def test_the_unreadable_aws_auth_patch_is_flagged_end_to_end(full_run, record_property):
    """Through ``auditsift run`` (the shared hostile-input run): the issue's aws-auth patch granting
    system:masters, once with a 1e400 body and once cut at 256 KB by a 300 KB user agent, is archived,
    flagged high (and critical, for the one whose response says it succeeded), and counted as salvaged
    in run.json and the report."""
    (finding,) = [f for f in full_run["findings"] if f["entity_type"] == "user" and f["entity"] == UNREADABLE_WRITER]
    hits = {hit["rule"]: hit["count"] for hit in finding["rule_hits"]}
    record_property("result", f"rank {finding['rank']}, flagged {finding['flagged']}; rules {hits}")
    assert finding["flagged"] and finding["rank"] <= 20
    assert hits["sensitive_write_body_unreadable"] == 2 and hits["aws_auth_modified"] == 1
    assert {"unreadable-1e400", "unreadable-cut"} <= set(finding["audit_ids"])
    run = json.loads((full_run["report"] / "run.json").read_text())
    assert run["counts"]["archive"]["salvaged_by_reason"] == {"body_unreadable": 1, "truncated": 1}
    assert "2 salvaged (body\\_unreadable: 1, truncated: 1)" in full_run["md"]
