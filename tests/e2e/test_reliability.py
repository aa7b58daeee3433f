"""Reliability: bad input is counted and never costs a good event; bad configuration stops before
anything is written; concurrent runs never corrupt a workdir; S3 and SageMaker faults are retried
and a permanent one is a single line naming the call.

Each test records a one-line ``result`` property that ``scripts/reliability.py`` collects into the
table in docs/reliability.md.
"""
from __future__ import annotations

import gzip
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

import botocore.retries.bucket as retry_bucket
import botocore.retries.standard as retry_standard
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.awsrequest import AWSResponse
from click.testing import CliRunner

from pipeline.aws import session as aws_session
from pipeline.aws.s3 import S3Storage
from pipeline.cli import main
from pipeline.errors import AwsCallError, LockedError
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.stages.archive import archive_inputs, hour_digest, list_archive_hours, read_archive
from tests.aws.conftest import bucket, client_events, hermetic_aws, make_config, moto_url, sagemaker_detector  # noqa: F401  (moto server, fake credentials, guard)
from tests.e2e.test_crash_recovery import sample_3d  # noqa: F401  (three days of sample logs, built once per session)
from tests.factory import T0, envelope, event, events

BIN = Path(sys.executable).parent / "auditsift"
CLUSTER = "demo"


# --------------------------------------------------------------------------- helpers
def archive_dir(tmp_path: Path, files: dict[str, bytes], run_id: str = "r1"):
    """Write ``files`` into an input folder and archive the folder; returns (storage, result, rows)."""
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    for name, data in files.items():
        (inputs / name).write_bytes(data)
    storage = LocalStorage(tmp_path / "work")
    result = archive_inputs(storage, resolve_inputs([str(inputs)]), CLUSTER, run_id)
    tables = list(read_archive(storage, CLUSTER))
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    return storage, result, rows


def summary(result) -> str:
    """What the archive did with the input, in one line for the reliability table."""
    counts = result.as_dict()
    parts = [f"kept {counts['events_added']}"]
    for key in ("quarantined_by_reason", "salvaged_by_reason", "repaired", "skipped"):
        if counts[key]:
            parts.append(f"{key.split('_')[0]} " + ", ".join(f"{k}={v}" for k, v in counts[key].items()))
    if counts["duplicates"]:
        parts.append(f"duplicates {counts['duplicates']}")
    return "; ".join(parts)


def lines(*items) -> bytes:
    return b"".join((item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n" for item in items)


def export_line(item: dict | bytes) -> bytes:
    text = item if isinstance(item, bytes) else json.dumps(item).encode()
    return b"2026-11-01T09:00:00.000Z " + text


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> bytes): what "nothing written" is checked against."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def first_error(result, tmp_path: Path) -> str:
    """The exit code and the error line, with the test's temporary directory elided (for the table)."""
    line = next(line for line in result.stderr.splitlines() if line.lower().startswith("error"))
    return f"exit {result.exit_code}: {line.replace(str(tmp_path) + '/', '')}"


# --------------------------------------------------------------------------- 1. bad input
@dataclass
class BadInput:
    """Input files, the good (audit_id, stage) keys that must each be archived exactly once, and the counts."""

    files: dict[str, bytes]
    good: list[tuple[str, str]]
    quarantined: dict[str, int] = field(default_factory=dict)
    salvaged: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    check: Callable[[dict], None] | None = None


def keys(items: list[dict]) -> list[tuple[str, str]]:
    return [(e["auditID"], e.get("stage", "ResponseComplete")) for e in items]


def cloudwatch_truncated_in_envelope() -> BadInput:
    good = events(3)
    cut = json.dumps(event(audit_id="big"))[:180] + "[Truncated...]"
    data = gzip.compress(json.dumps(envelope([good[0], cut, good[1], good[2]])).encode(), mtime=0)
    return BadInput({"firehose-1": data}, keys(good), {"cloudwatch_truncated": 1})


def cloudwatch_truncated_export_line() -> BadInput:
    good = events(3)
    cut = json.dumps(event(audit_id="big")).encode()[:200] + b"[Truncated...]"
    data = lines(export_line(good[0]), export_line(cut), export_line(good[1]), export_line(good[2]))
    return BadInput({"000000.gz": gzip.compress(data, mtime=0)}, keys(good), {"cloudwatch_truncated": 1})


def cloudwatch_truncated_first_line() -> BadInput:
    good = events(20)
    cut = json.dumps(event(audit_id="big")).encode()[:200] + b"[Truncated...]"
    return BadInput({"audit.jsonl": lines(cut, *good)}, keys(good), {"cloudwatch_truncated": 1})


def damaged_first_line() -> BadInput:
    good = events(20)
    return BadInput({"audit.jsonl": lines(b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"cut', *good)}, keys(good),
                    {"invalid_json": 1})


def array_first_line_then_a_bad_line() -> BadInput:
    good = events(5)
    return BadInput({"audit.jsonl": lines([1, 2], good[0], b"{not json", *good[1:])}, keys(good),
                    {"not_an_object": 1, "invalid_json": 1})


def garbage_first_line_starting_with_a_bracket() -> BadInput:
    good = events(5)
    return BadInput({"audit.jsonl": lines(b"[2026-11-01 09:00:00] audit export started", *good)}, keys(good), {"invalid_json": 1})


def two_damaged_first_lines() -> BadInput:
    good = events(5)
    return BadInput({"audit.jsonl": lines(b'{"kind":"Event","auditID":"cut', b"garbage", *good)}, keys(good), {"invalid_json": 2})


def lines_that_open_a_document_then_json_lines() -> BadInput:
    """First lines a pretty-printed document could start with: the file is read as one, does not parse, and is JSON lines after all."""
    good = events(6)
    files = {"a.jsonl": lines(b"[", *good[:2], b"{not json", good[2]),
             "b.jsonl": lines(b'{"kind":"Event","auditID":"cut",', b"garbage", *good[3:])}
    return BadInput(files, keys(good), {"invalid_json": 4})


def pretty_printed_document_cut_short() -> BadInput:
    good = events(2)
    document = json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events(3, start=T0 + timedelta(hours=3))}, indent=2)
    return BadInput({"a-list.json": document[: len(document) // 2].encode(), "b.jsonl": lines(*good)}, keys(good), {"invalid_json": 1})


def body_stripped_with_truncated_annotation() -> BadInput:
    good = events(2)
    stripped = event(audit_id="stripped", verb="create", level="RequestResponse",
                     objectRef={"resource": "configmaps", "namespace": "web", "name": "bundle"},
                     annotations={"audit.k8s.io/truncated": "true", "authorization.k8s.io/decision": "allow"})

    def check(rows: dict) -> None:
        assert rows[("stripped", "ResponseComplete")]["truncated"] is True
        assert rows[keys(good)[0]]["truncated"] is False

    return BadInput({"audit.jsonl": lines(good[0], stripped, good[1])}, keys(good) + [("stripped", "ResponseComplete")], check=check)


def invalid_json() -> BadInput:
    good = events(2)
    bad = [b'{"kind":"Event","auditID":"x"', b"{'auditID': 'single-quotes'}", b'{"auditID":"x",}', b"NaN", b"{not json}"]
    return BadInput({"audit.jsonl": lines(good[0], *bad, good[1])}, keys(good), {"invalid_json": len(bad)})


def non_utf8() -> BadInput:
    """Bytes that are not UTF-8 in a user agent cost that field (salvaged, ``value_unreadable``); in the
    username, the event (who acted is unknown)."""
    good = events(2)
    latin1 = json.dumps(event(audit_id="latin1", userAgent="café/1.0"), ensure_ascii=False).encode("latin-1")
    raw_ff = json.dumps(event(audit_id="ff", userAgent="kubectl")).encode().replace(b"kubectl", b"kube\xff\xfectl")
    user = json.dumps(event(audit_id="user-ff", user={"username": "zoë"}), ensure_ascii=False).encode("latin-1")
    both = json.dumps(event(audit_id="both", userAgent="café", user={"username": "zoë"}), ensure_ascii=False).encode("latin-1")

    def check(rows: dict) -> None:
        for audit_id in ("latin1", "ff"):
            row = rows[(audit_id, "ResponseComplete")]
            assert (row["salvage"], row["user_agent"], row["user"]) == ("value_unreadable", None, "alice@corp.example")

    return BadInput({"audit.jsonl": lines(good[0], latin1, raw_ff, user, both, good[1])},
                    keys(good) + [("latin1", "ResponseComplete"), ("ff", "ResponseComplete")], {"not_utf8": 2},
                    salvaged={"value_unreadable": 2}, check=check)


def line_of_5_mb() -> BadInput:
    good = events(2)
    huge = event(audit_id="huge", verb="create", objectRef={"resource": "configmaps", "namespace": "web", "name": "blob"},
                 requestObject={"data": {"blob": "x" * (5 << 20)}})
    return BadInput({"audit.jsonl": lines(good[0], huge, good[1])}, keys(good), {"line_too_long": 1})


def empty_files() -> BadInput:
    good = events(2)
    files = {"a-empty.jsonl": b"", "b-blank.jsonl": b"\n  \n\t\n", "c-empty.jsonl.gz": gzip.compress(b"", mtime=0),
             "d-good.jsonl": lines(*good)}
    return BadInput(files, keys(good), skipped={"empty_input": 3})


GARBAGE = random.Random(7).randbytes(20_000)


def binary_garbage_file() -> BadInput:
    good = events(2)
    reasons = Counter("invalid_json" if line.isascii() or _utf8(line) else "not_utf8" for line in GARBAGE.split(b"\n") if line.strip())
    return BadInput({"garbage.bin.log": GARBAGE, "good.jsonl": lines(*good)}, keys(good), dict(reasons))


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def firehose_last_member_cut() -> BadInput:
    batches = [events(5, start=T0 + timedelta(minutes=10 * i)) for i in range(20)]
    members = [gzip.compress(json.dumps(envelope(b, first_id=100 * i)).encode(), mtime=0) for i, b in enumerate(batches)]
    data = b"".join(members[:-1]) + members[-1][: len(members[-1]) // 2]
    return BadInput({"firehose-1": data}, [k for b in batches[:-1] for k in keys(b)], {"gzip_damaged": 1})


def gzip_member_with_corrupt_deflate_data() -> BadInput:
    good, lost = events(200), events(200, start=T0 + timedelta(hours=2))
    second = gzip.compress(lines(*lost), mtime=0)
    data = gzip.compress(lines(*good), mtime=0) + second[:10] + b"\xff" * 64 + second[74:]
    return BadInput({"audit.jsonl.gz": data}, keys(good), {"gzip_damaged": 1})


def not_an_object() -> BadInput:
    good = events(2)
    return BadInput({"audit.jsonl": lines(good[0], "text", 42, None, True, [], [1, 2], good[1])}, keys(good), {"not_an_object": 6})


def wrong_types() -> BadInput:
    good = events(2)
    odd = [
        event(audit_id="code-text", responseStatus={"code": "Forbidden"}),
        event(audit_id="user-null", user=None),
        event(audit_id="user-text", user="alice"),
        event(audit_id="groups-text", user={"username": "bob", "groups": "system:masters"}),
        event(audit_id="ips-mixed", sourceIPs=[None, 5, "", "192.0.2.7"]),
        event(audit_id="fields-odd", stage=5, verb=["get"], requestURI={"a": 1}, objectRef=["pods"], annotations="x"),
    ]

    def check(rows: dict) -> None:
        assert rows[("code-text", "ResponseComplete")]["code"] is None
        assert rows[("user-null", "ResponseComplete")]["user"] is None
        assert rows[("user-text", "ResponseComplete")]["user"] is None
        assert rows[("groups-text", "ResponseComplete")]["groups"] == []
        assert rows[("ips-mixed", "ResponseComplete")]["source_ip"] == "192.0.2.7"
        odd_row = rows[("fields-odd", "5")]
        assert (odd_row["verb"], odd_row["request_uri"], odd_row["resource"]) == (None, None, None)

    return BadInput({"audit.jsonl": lines(good[0], *odd, good[1])},
                    keys(good) + [(e["auditID"], str(e["stage"])) for e in odd],
                    repaired={"code_as_string": 1, "user_missing": 2}, check=check)


def audit_v1beta1() -> BadInput:
    old = event(audit_id="beta", apiVersion="audit.k8s.io/v1beta1")
    for name in ("stageTimestamp", "requestReceivedTimestamp"):
        old.pop(name)
    old["timestamp"] = "2026-11-01T09:30:00Z"

    def check(rows: dict) -> None:
        assert rows[("beta", "ResponseComplete")]["time"].isoformat() == "2026-11-01T09:30:00+00:00"

    good = events(2)
    return BadInput({"audit.jsonl": lines(good[0], old, good[1])}, keys(good) + [("beta", "ResponseComplete")], check=check)


def unknown_fields() -> BadInput:
    extra = event(audit_id="extra", newTopLevel={"nested": [1, {"x": None}]}, user={"username": "carol", "futureField": 1},
                  objectRef={"resource": "pods", "namespace": "web", "uid": "u", "resourceVersion": "7"})

    def check(rows: dict) -> None:
        assert rows[("extra", "ResponseComplete")]["user"] == "carol"

    return BadInput({"audit.jsonl": lines(extra)}, [("extra", "ResponseComplete")], check=check)


def duplicates_across_formats() -> BadInput:
    good = events(4)
    started = event(audit_id=good[0]["auditID"], stage="ResponseStarted")
    files = {
        "a.jsonl": lines(*good, started),
        "b.jsonl.gz": gzip.compress(lines(*good), mtime=0),
        "c-firehose": gzip.compress(json.dumps(envelope(good)).encode() + json.dumps(envelope(good)).encode(), mtime=0),
    }
    return BadInput(files, keys(good) + [(started["auditID"], "ResponseStarted")], duplicates=4 * 3)


def nul_bytes() -> BadInput:
    good = events(3)
    escaped = event(audit_id="escaped-nul", userAgent="kube\u0000ctl")
    files = {"a.jsonl": lines(good[0], b"\x00" * 64 + json.dumps(event(audit_id="nul-prefixed")).encode(), escaped, good[1]),
             "b.jsonl": lines(good[2]) + b"\x00" * 4096}

    def check(rows: dict) -> None:
        assert rows[("escaped-nul", "ResponseComplete")]["user_agent"] == "kube\x00ctl"

    return BadInput(files, keys(good) + [("escaped-nul", "ResponseComplete")], {"invalid_json": 2}, check=check)


def deeply_nested_array() -> BadInput:
    good = events(2)
    return BadInput({"audit.jsonl": lines(good[0], b"[" * 100_000 + b"]" * 100_000, good[1])}, keys(good), {"invalid_json": 1})


def deeply_nested_body() -> BadInput:
    """orjson stops at 1,024 levels; the event is read field by field, and a field it never reads loses nothing."""
    good = events(2)
    body = json.dumps(event(audit_id="deep")).encode()[:-1] + b', "spec": ' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}"

    def check(rows: dict) -> None:
        assert rows[("deep", "ResponseComplete")]["salvage"] is None

    return BadInput({"audit.jsonl": lines(good[0], body, good[1])}, keys(good) + [("deep", "ResponseComplete")], check=check)


def huge_numbers() -> BadInput:
    numbers = {"big-int": 10**30, "int64-max-plus-1": 2**63, "float": 200.0, "negative": -1}
    odd = [event(audit_id=name, responseStatus={"code": value}) for name, value in numbers.items()]
    overflow = json.dumps(event(audit_id="overflow")).encode()[:-1] + b', "size": 1e999999}'

    def check(rows: dict) -> None:
        assert all(rows[(name, "ResponseComplete")]["code"] is None for name in numbers)

    return BadInput({"audit.jsonl": lines(*odd, overflow)}, keys(odd) + [("overflow", "ResponseComplete")], check=check)


def timestamps_out_of_range() -> BadInput:
    good = events(1)
    far = event(audit_id="year-9999", stageTimestamp="9999-12-31T23:59:59.999999Z")
    beyond = event(audit_id="year-10000", stageTimestamp="10000-01-01T00:00:00Z")
    numeric = event(audit_id="epoch-number", stageTimestamp=1_790_000_000, requestReceivedTimestamp=None)
    return BadInput({"audit.jsonl": lines(good[0], far, beyond, numeric)}, keys(good) + [("year-9999", "ResponseComplete")],
                    {"bad_timestamp": 1, "missing_timestamp": 1})


def utf8_bom() -> BadInput:
    good = events(6)
    bom = b"\xef\xbb\xbf"
    files = {"a.jsonl": bom + lines(*good[:2]), "b.jsonl.gz": gzip.compress(bom + lines(*good[2:4]), mtime=0),
             "c.json": bom + json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": good[4:]}, indent=2).encode()}
    return BadInput(files, keys(good))


def _bug(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


BAD_INPUTS = [
    pytest.param(cloudwatch_truncated_in_envelope, id="cloudwatch-truncated-message-in-firehose-envelope"),
    pytest.param(cloudwatch_truncated_export_line, id="cloudwatch-truncated-export-line"),
    pytest.param(cloudwatch_truncated_first_line, id="cloudwatch-truncated-first-line-of-jsonl"),
    pytest.param(damaged_first_line, id="damaged-first-line-of-jsonl"),
    pytest.param(array_first_line_then_a_bad_line, id="array-first-line-then-a-bad-line"),
    pytest.param(garbage_first_line_starting_with_a_bracket, id="garbage-first-line-starting-with-["),
    pytest.param(two_damaged_first_lines, id="two-damaged-first-lines"),
    pytest.param(lines_that_open_a_document_then_json_lines, id="first-lines-opening-a-document-then-json-lines"),
    pytest.param(pretty_printed_document_cut_short, id="pretty-printed-eventlist-cut-short"),
    pytest.param(body_stripped_with_truncated_annotation, id="body-stripped-audit.k8s.io/truncated"),
    pytest.param(invalid_json, id="invalid-json-lines"),
    pytest.param(non_utf8, id="non-utf8-bytes"),
    pytest.param(line_of_5_mb, id="line-of-5-MB"),
    pytest.param(empty_files, id="empty-blank-and-empty-gzip-files"),
    pytest.param(binary_garbage_file, id="binary-garbage-file"),
    pytest.param(firehose_last_member_cut, id="firehose-object-last-gzip-member-cut"),
    pytest.param(gzip_member_with_corrupt_deflate_data, id="gzip-member-with-corrupt-deflate-data"),
    pytest.param(not_an_object, id="json-that-is-not-an-object"),
    pytest.param(wrong_types, id="wrong-types-code-user-groups-ips"),
    pytest.param(audit_v1beta1, id="audit.k8s.io/v1beta1-event"),
    pytest.param(unknown_fields, id="unknown-extra-fields"),
    pytest.param(duplicates_across_formats, id="duplicates-across-jsonl-gzip-firehose"),
    pytest.param(nul_bytes, id="nul-bytes"),
    pytest.param(deeply_nested_array, id="deeply-nested-json-line"),
    pytest.param(deeply_nested_body, id="event-with-2000-deep-body"),
    pytest.param(huge_numbers, id="huge-numbers"),
    pytest.param(timestamps_out_of_range, id="timestamps-out-of-range"),
    pytest.param(utf8_bom, id="utf8-byte-order-mark"),
]


@pytest.mark.parametrize("make", BAD_INPUTS)
def test_bad_input_is_counted_by_reason_and_every_good_event_archived_once(make, tmp_path, record_property):
    """Each kind of bad input lands in one quarantine (or repair/skip) bucket with the right count,
    and the good events around it are each archived exactly once."""
    case = make()
    _, result, rows = archive_dir(tmp_path, case.files)
    record_property("result", summary(result))
    counts = result.as_dict()
    assert counts["quarantined_by_reason"] == case.quarantined
    assert counts["salvaged_by_reason"] == case.salvaged
    assert counts["repaired"] == case.repaired
    assert counts["skipped"] == case.skipped
    assert counts["duplicates"] == case.duplicates
    archived = Counter((r["audit_id"], r["stage"]) for r in rows)
    assert archived == Counter(case.good), "every good event exactly once, nothing else"
    if case.check:
        case.check({(r["audit_id"], r["stage"]): r for r in rows})


# --------------------------------------------------------------------------- 3. bad configuration and arguments
RULE_PACK_WITH_BAD_RULE = "rules:\n  - id: X\n    title: bad id\n"
BAD_CONFIGS = [
    pytest.param("features:\n  windw_minutes: 30\n", "unknown key 'features.windw_minutes'", id="unknown-config-key"),
    pytest.param("features:\n  window_minutes: sixty\n", "'features.window_minutes': Input should be a valid integer",
                 id="wrong-type"),
    pytest.param("features:\n  window_minutes: 7\n", "'features.window_minutes': Value error, must divide a day evenly",
                 id="window-minutes-not-dividing-a-day"),
    pytest.param("model:\n  backend: tensorflow\n", "'model.backend': Input should be 'iforest', 'rcf-local' or 'sagemaker-rcf'",
                 id="unknown-backend-in-config"),
    pytest.param("cluster: ../prod\n", "'cluster': Value error, must be letters, digits", id="path-like-cluster-name"),
]


@pytest.fixture
def small_input(tmp_path) -> Path:
    path = tmp_path / "input" / "audit.jsonl"
    path.parent.mkdir()
    path.write_bytes(lines(*events(30, step=timedelta(minutes=5))))
    return path


@pytest.fixture
def used_workdir(tmp_path, small_input) -> Path:
    """A workdir that already holds an archive: a failed command must leave every file in it as it was."""
    workdir = tmp_path / "work"
    assert cli("archive", "--input", str(small_input), "--workdir", str(workdir), "--quiet").exit_code == 0
    return workdir


def assert_one_line_error(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.stderr
    errors = [line for line in text.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, text
    for part in expected:
        assert part in errors[0], text


@pytest.mark.parametrize("config_text, expected", BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_key_exit_2_nothing_written(config_text, expected, tmp_path, small_input, used_workdir,
                                                                      record_property):
    """A config mistake stops every command before it touches the workdir, with one line naming the key and what is allowed."""
    (tmp_path / "bad.yaml").write_text(config_text)
    before = snapshot(used_workdir)
    result = cli("run", "--input", str(small_input), "--workdir", str(used_workdir), "--config", str(tmp_path / "bad.yaml"), "--quiet")
    record_property("result", first_error(result, tmp_path))
    assert_one_line_error(result, expected)
    assert snapshot(used_workdir) == before


def test_rule_pack_with_a_bad_rule_is_one_line_naming_the_rule(tmp_path, small_input, record_property):
    """A rule pack that fails validation is one line naming the file, the rule and the field."""
    (tmp_path / "pack.yaml").write_text(RULE_PACK_WITH_BAD_RULE)
    (tmp_path / "config.yaml").write_text("rules:\n  pack: pack.yaml\n")
    result = cli("catalog", "--config", str(tmp_path / "config.yaml"))
    record_property("result", first_error(result, tmp_path))
    assert_one_line_error(result, "rule X: 'id': Value error, must be lower_snake_case")


def test_run_with_a_bad_rule_pack_writes_nothing(tmp_path, small_input, used_workdir, record_property):
    """`auditsift run` with an invalid rule pack must fail before archiving (exit 2, workdir unchanged)."""
    (tmp_path / "pack.yaml").write_text(RULE_PACK_WITH_BAD_RULE)
    (tmp_path / "config.yaml").write_text("rules:\n  pack: pack.yaml\n")
    extra = tmp_path / "more.jsonl"
    extra.write_bytes(lines(*events(5, start=T0 + timedelta(days=1))))
    before = snapshot(used_workdir)
    result = cli("run", "--input", str(extra), "--workdir", str(used_workdir), "--config", str(tmp_path / "config.yaml"), "--quiet")
    after = snapshot(used_workdir)
    changed = sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
    record_property("result", f"exit {result.exit_code}; {len(changed)} files written first, e.g. {changed[0] if changed else None}")
    assert_one_line_error(result, "rule X")
    assert changed == []


BAD_ARGUMENTS = [
    pytest.param(["run", "--score-from", "yesterday"], "--score-from: 'yesterday' is not an ISO 8601 time", id="bad-iso-time-flag"),
    pytest.param(["features", "--train-to", "2026-13-01"], "--train-to: '2026-13-01' is not an ISO 8601 time", id="bad-iso-time-month-13"),
    pytest.param(["run", "--backend", "tensorflow"], "Invalid value for '--backend': 'tensorflow' is not one of 'iforest', 'rcf-local', 'sagemaker-rcf'",
                 id="unknown-backend-flag"),
    pytest.param(["archive", "--input", "/nonexistent/audit-*.gz"], "input not found: /nonexistent/audit-*.gz", id="missing-input-path"),
    pytest.param(["archive"], "give either --input or --from-cloudwatch", id="archive-without-input"),
]


@pytest.mark.parametrize("args, expected", BAD_ARGUMENTS)
def test_bad_argument_is_one_line_naming_the_flag_exit_2_nothing_written(args, expected, small_input, used_workdir, record_property):
    """A bad flag value or a missing input exits 2 with one line naming the flag; no file in the workdir changes."""
    if args[0] == "run" and "--input" not in args:
        args = [*args, "--input", str(small_input)]
    before = snapshot(used_workdir)
    result = cli(*args, "--workdir", str(used_workdir), "--quiet")
    record_property("result", first_error(result, used_workdir.parent))
    assert_one_line_error(result, expected)
    assert snapshot(used_workdir) == before


def test_bad_time_flag_does_not_create_the_workdir(tmp_path, small_input, record_property):
    """A typo in a flag must not leave a new, empty workdir behind."""
    result = cli("run", "--input", str(small_input), "--workdir", str(tmp_path / "new-work"), "--score-from", "yesterday", "--quiet")
    record_property("result", f"exit {result.exit_code}; workdir created: {(tmp_path / 'new-work').exists()}")
    assert result.exit_code == 2
    assert not (tmp_path / "new-work").exists()


def test_error_output_is_exactly_two_lines_however_long_the_hint(tmp_path, record_property, monkeypatch):
    """Schedulers and log parsers read `error: ...` and `hint: ...` as two whole lines, whatever the terminal width."""
    monkeypatch.setenv("COLUMNS", "80")
    (tmp_path / "pack.yaml").write_text(RULE_PACK_WITH_BAD_RULE)
    (tmp_path / "config.yaml").write_text("rules:\n  pack: pack.yaml\n")
    result = cli("catalog", "--config", str(tmp_path / "config.yaml"))
    record_property("result", f"{len(result.stderr.splitlines())} lines")
    assert [line.split(":", 1)[0] for line in result.stderr.splitlines()] == ["error", "hint"]


# --------------------------------------------------------------------------- 5. concurrency
def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN), *args, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited before the condition held: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def assert_archive_consistent(workdir: Path, expected_keys: set[tuple[str, str]]) -> None:
    """Complete and valid: every hour file parses, matches its manifest, rows are unique, no staging, no lock."""
    storage = LocalStorage(workdir)
    seen = Counter()
    for _, _, key in list_archive_hours(storage, CLUSTER):
        table = pq.read_table(workdir / key)
        manifest = storage.read_json(key.rsplit("/", 1)[0] + "/_manifest.json")
        assert manifest["rows"] == len(table) and manifest["sha256"] == hour_digest(storage, key)
        seen.update(zip(table["audit_id"].to_pylist(), table["stage"].to_pylist()))
    assert set(seen) == expected_keys and max(seen.values()) == 1
    assert not storage.list("staging/") and not storage.exists("locks/run.lock")
    assert storage.read_json(f"state/cluster={CLUSTER}/latest.json")["archive"]["events_added"] >= 1


@pytest.mark.slow
def test_second_run_on_a_busy_workdir_exits_75_or_waits_and_state_stays_valid(sample_3d, tmp_path, record_property):
    """While one archive holds the workdir, `--wait-lock 0` exits 75 naming the holder and writes nothing;
    `--wait-lock 300` waits its turn and then succeeds; the first run's output is complete and valid."""
    second_items = events(50, start=T0 + timedelta(days=30))
    (tmp_path / "second.jsonl").write_bytes(lines(*second_items))
    workdir = tmp_path / "work"
    common = ["--workdir", str(workdir), "--cluster", CLUSTER]
    first = start("archive", "--input", str(sample_3d), *common)
    wait_for(lambda: (workdir / "locks" / "run.lock").exists(), first)
    first.send_signal(signal.SIGSTOP)  # the holder pauses, lock held, however slowly the contenders start on a loaded machine
    try:
        refused = start("archive", "--input", str(tmp_path / "second.jsonl"), *common, "--wait-lock", "0")
        waiting = start("archive", "--input", str(tmp_path / "second.jsonl"), *common, "--wait-lock", "300")
        refused_err = refused.communicate(timeout=120)[1]
        assert waiting.poll() is None, "the contender with --wait-lock 300 did not wait for the held lock"
    finally:
        first.send_signal(signal.SIGCONT)
    first_out = first.communicate(timeout=300)
    first_done = time.monotonic()
    waiting_out = waiting.communicate(timeout=300)
    waited_done = time.monotonic()
    record_property("result", f"--wait-lock 0: exit {refused.returncode}, one line naming host and pid; "
                              f"--wait-lock 300: exit {waiting.returncode} after the first finished; archive valid")
    assert first.returncode == 0, first_out
    assert refused.returncode == 75, refused_err
    assert refused_err.splitlines()[0] == (f"error: workdir {workdir} is locked by another run "
                                           f"(host {socket.gethostname()}, pid {first.pid})")
    assert refused_err.splitlines()[1].startswith("hint: wait for it to finish")
    assert waiting.returncode == 0, waiting_out
    assert waited_done >= first_done
    sample_keys = set()
    for table in read_archive(LocalStorage(workdir), CLUSTER, end=T0 + timedelta(days=29)):
        sample_keys.update(zip(table["audit_id"].to_pylist(), table["stage"].to_pylist()))
    assert len(sample_keys) > 30_000
    assert_archive_consistent(workdir, sample_keys | set(keys(second_items)))


def test_lock_left_by_a_dead_process_is_taken_over(small_input, tmp_path, record_property):
    """A run killed with SIGKILL leaves its lock; the next run on the same host sees the pid is gone and proceeds."""
    workdir = tmp_path / "work"
    write_lock(workdir, {"host": socket.gethostname(), "pid": dead_pid(), "token": "t", "since": 0})
    result = cli("archive", "--input", str(small_input), "--workdir", str(workdir), "--cluster", CLUSTER, "--quiet")
    record_property("result", f"exit {result.exit_code}, lock released: {not (workdir / 'locks' / 'run.lock').exists()}")
    assert result.exit_code == 0, result.output
    assert not (workdir / "locks" / "run.lock").exists()


@pytest.mark.parametrize("since_hours_ago, exit_code", [(1, 75), (7, 0)], ids=["recent-lock-from-another-host", "6h-old-lock-from-another-host"])
def test_lock_from_another_host_is_respected_until_stale(since_hours_ago, exit_code, small_input, tmp_path, record_property):
    """A lock held from another host (its pid cannot be checked) blocks until it is older than 6 hours."""
    workdir = tmp_path / "work"
    write_lock(workdir, {"host": "ip-10-0-1-2.other-host", "pid": 4242, "token": "t", "since": time.time() - since_hours_ago * 3600})
    result = cli("archive", "--input", str(small_input), "--workdir", str(workdir), "--quiet")
    record_property("result", f"exit {result.exit_code}")
    assert result.exit_code == exit_code, result.output
    if exit_code:
        assert "locked by another run (host ip-10-0-1-2.other-host, pid 4242)" in result.stderr


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(workdir: Path, holder: dict | None) -> None:
    (workdir / "locks").mkdir(parents=True, exist_ok=True)
    (workdir / "locks" / "run.lock").write_bytes(json.dumps(holder).encode() if holder is not None else b"")


def test_lock_file_caught_mid_creation_means_locked_not_a_crash(small_input, tmp_path, record_property):
    """LocalStorage.create_exclusive creates the lock file and then writes its owner; a second run that
    reads it in between sees an empty file. That is a held lock (exit 75), not an internal error."""
    workdir = tmp_path / "work"
    write_lock(workdir, None)
    result = cli("archive", "--input", str(small_input), "--workdir", str(workdir), "--quiet")
    record_property("result", f"exit {result.exit_code}: {result.stderr.splitlines()[0][:80]}")
    assert result.exit_code == 75, result.stderr


class RacingStorage(LocalStorage):
    """Two runs that both judged the dead run's lock stale; the second removes it only after the first
    has created its own (a barrier and an event force that interleaving)."""

    def __init__(self, root, barrier: threading.Barrier, created: threading.Event, deletes: list):
        super().__init__(root)
        self.barrier, self.created, self.deletes = barrier, created, deletes
        self.raced = False

    def read_json_or(self, key, default):
        value = super().read_json_or(key, default)
        if key == "locks/run.lock" and not self.raced:
            self.raced = True
            self.barrier.wait()
        return value

    def delete(self, key):
        if key == "locks/run.lock":
            self.deletes.append(self)
            if self.deletes[0] is not self:
                self.created.wait(timeout=5)
        super().delete(key)

    def create_exclusive(self, key, data):
        made = super().create_exclusive(key, data)
        if made and key == "locks/run.lock":
            self.created.set()
        return made


def test_two_runs_taking_over_the_same_stale_lock_never_both_hold_it(tmp_path, record_property):
    """After a crash, two runs that start together must not both take over the dead run's lock."""
    workdir = tmp_path / "work"
    write_lock(workdir, {"host": socket.gethostname(), "pid": dead_pid(), "token": "t", "since": 0})
    barrier, created, deletes = threading.Barrier(2, timeout=10), threading.Event(), []
    inside, most = [], [0]
    guard = threading.Lock()

    def run() -> None:
        try:
            with RacingStorage(workdir, barrier, created, deletes).lock(wait_seconds=0):
                with guard:
                    inside.append(1)
                    most[0] = max(most[0], len(inside))
                time.sleep(0.3)
                with guard:
                    inside.pop()
        except LockedError:
            pass

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record_property("result", f"{most[0]} runs held the lock at once")
    assert most[0] == 1


# --------------------------------------------------------------------------- 6. S3 and SageMaker faults
class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


def s3_fault(status: int, code: str, message: str) -> AWSResponse:
    """An S3 error response as S3 sends it (XML body), for a before-send handler to return."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>4442587FB7D0A2F9</RequestId></Error>").encode()
    return AWSResponse("https://auditsift-test.s3.amazonaws.com/", status, {"Content-Type": "application/xml"}, _Body(body))


def json_fault(status: int, code: str, message: str) -> AWSResponse:
    body = json.dumps({"__type": code, "message": message}).encode()
    return AWSResponse("https://api.sagemaker.us-east-1.amazonaws.com/", status, {"Content-Type": "application/x-amz-json-1.1"}, _Body(body))


@pytest.fixture
def no_retry_sleeps(monkeypatch):
    """botocore's real retry decisions without its backoff sleeps and adaptive-mode token waits."""
    monkeypatch.setattr(retry_standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)
    monkeypatch.setattr(retry_bucket.TokenBucket, "acquire", lambda self, amount=1, block=True: True)


def faulty_puts(client_events, answer: Callable[[int, str], AWSResponse | None]) -> list[str]:
    """Route every S3 PutObject through ``answer(n, key)``; returns the keys of all attempts, in order."""
    attempts: list[str] = []

    def handler(request, **_):
        key = unquote(request.url.split("?", 1)[0].split("/", 4)[-1])
        attempts.append(key)
        return answer(len(attempts), key)

    client_events("before-send.s3.PutObject", handler)
    return attempts


def s3_archive_keys(storage: S3Storage) -> dict[str, bytes]:
    return {key: storage.read_bytes(key) for key in storage.list("archive/") if key.endswith(".parquet")}


@pytest.fixture
def s3_case(tmp_path, make_config):
    """Input spanning six hours, a config with 3 attempts per call, and the hour files of a fault-free local archive."""
    items = events(120, step=timedelta(minutes=3))
    (tmp_path / "audit.jsonl").write_bytes(lines(*items))
    (tmp_path / "aws.yaml").write_text(f"cluster: {CLUSTER}\naws:\n  max_attempts: 3\n")
    local = LocalStorage(tmp_path / "local")
    archive_inputs(local, resolve_inputs([str(tmp_path / "audit.jsonl")]), CLUSTER, "r0")
    expected = {k: local.read_bytes(k) for k in local.list("archive/") if k.endswith(".parquet")}
    return tmp_path, expected


@pytest.mark.aws
def test_s3_slowdown_and_5xx_during_archive_are_retried(s3_case, bucket, client_events, no_retry_sleeps, make_config, record_property):
    """SlowDown (503) and InternalError (500) on PutObject are retried; the archive in S3 equals a fault-free one."""
    tmp_path, expected = s3_case
    faults = {1: s3_fault(503, "SlowDown", "Please reduce your request rate."), 2: s3_fault(500, "InternalError", "We encountered an internal error."),
              4: s3_fault(503, "SlowDown", "Please reduce your request rate."), 5: s3_fault(503, "ServiceUnavailable", "Reduce your request rate.")}
    attempts = faulty_puts(client_events, lambda n, key: faults.get(n))
    result = cli("archive", "--input", str(tmp_path / "audit.jsonl"), "--workdir", f"s3://{bucket}/wd", "--config", str(tmp_path / "aws.yaml"),
                 "--quiet")
    record_property("result", f"exit {result.exit_code} after {len(faults)} faulted PutObject attempts of {len(attempts)}")
    assert result.exit_code == 0, result.output
    assert s3_archive_keys(S3Storage(f"s3://{bucket}/wd", make_config())) == expected


@pytest.mark.aws
def test_permanent_s3_failure_is_one_line_naming_the_call_and_a_rerun_converges(s3_case, bucket, client_events, no_retry_sleeps,
                                                                                make_config, record_property):
    """When the third hour's PutObject fails on every attempt, the run exits 4 with one line naming
    S3.PutObject and the object; after S3 recovers, a rerun produces the fault-free archive."""
    tmp_path, expected = s3_case
    failing = sorted(expected)[2]
    broken = {"on": True}
    attempts = faulty_puts(client_events, lambda n, key: s3_fault(500, "InternalError", "We encountered an internal error. Please try again.")
                           if broken["on"] and key == f"wd/{failing}" else None)
    args = ["archive", "--input", str(tmp_path / "audit.jsonl"), "--workdir", f"s3://{bucket}/wd", "--config", str(tmp_path / "aws.yaml"),
            "--quiet"]
    result = cli(*args)
    lines_out = result.stderr.splitlines()
    record_property("result", f"exit {result.exit_code}: {lines_out[0]}; rerun after recovery: identical archive")
    assert result.exit_code == 4
    assert lines_out[0] == (f"error: S3.PutObject failed (s3://{bucket}/wd/{failing}): InternalError: "
                            "We encountered an internal error. Please try again.")
    assert lines_out[1].startswith("hint: ") and len(lines_out) == 2
    assert attempts.count(f"wd/{failing}") == 3, "aws.max_attempts attempts, then the error"
    storage = S3Storage(f"s3://{bucket}/wd", make_config())
    assert not storage.exists("locks/run.lock"), "the failed run released its lock"
    broken["on"] = False
    assert cli(*args).exit_code == 0
    assert s3_archive_keys(storage) == expected


@pytest.fixture
def training_job(make_config, bucket):
    """A training job known to (moto's) SageMaker and a detector that waits on it."""
    config = make_config(aws={"max_attempts": 3}, model={"sagemaker": {"role_arn": "arn:aws:iam::111122223333:role/sm", "poll_seconds": 0}})
    name = "auditsift-demo-20261101000000-0123abcd"
    aws_session.client("sagemaker", config).create_training_job(
        TrainingJobName=name, RoleArn="arn:aws:iam::111122223333:role/sm",
        AlgorithmSpecification={"TrainingImage": "382416733822.dkr.ecr.us-east-1.amazonaws.com/randomcutforest:1", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": f"s3://{bucket}/wd/models"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        StoppingCondition={"MaxRuntimeInSeconds": 600})
    return sagemaker_detector(config, S3Storage(f"s3://{bucket}/wd", config)), name


@pytest.mark.aws
def test_sagemaker_throttling_is_retried_and_a_permanent_one_names_the_call(training_job, client_events, no_retry_sleeps, record_property):
    """DescribeTrainingJob throttled twice then answered: the wait succeeds; throttled on every attempt:
    one line naming SageMaker.DescribeTrainingJob and the job."""
    detector, name = training_job
    answers = [json_fault(400, "ThrottlingException", "Rate exceeded"), json_fault(503, "ServiceUnavailable", "try again")]
    permanent = {"on": False}
    client_events("before-send.sagemaker.DescribeTrainingJob",
                  lambda **_: json_fault(400, "ThrottlingException", "Rate exceeded") if permanent["on"] else (answers.pop(0) if answers else None))
    assert detector.wait("training", name)["TrainingJobStatus"] == "Completed"
    permanent["on"] = True
    with pytest.raises(AwsCallError) as caught:
        detector.wait("training", name)
    record_property("result", f"recovered after 2 faults; permanent: {caught.value}")
    assert str(caught.value) == f"SageMaker.DescribeTrainingJob failed ({name}): ThrottlingException: Rate exceeded"
    assert caught.value.hint == "still throttled after 3 attempts: run later or raise aws.max_attempts"

