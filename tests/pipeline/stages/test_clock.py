"""The run's clock and the workdir lock's age: what the scored day is and when a lock stops holding.

The scored day ends at the run's clock (`--now`, default the current time), never at the newest
event: one event stamped a year ahead, in year 9999 or exactly on an hour after the data used to
make the real day training data, stop every later run with an OverflowError, or leave the scored
day empty (issue 16). Events stamped after the clock plus `archive.future_skew_minutes` are
quarantined as `future_timestamp`; events before the retention (`schedule.train_days`) are archived
but never move a range. A lock expires after `storage.lock_expire_minutes` even when its pid exists,
and `auditsift unlock` says whose lock it removes.

Each test records a one-line ``result`` property for docs/reliability.md (`make reliability`).
"""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.context import RunContext
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.sample import sample_clock
from pipeline.stages.archive import archive_inputs, read_archive
from pipeline.stages.clock import iso
from pipeline.stages.ranges import resolve_ranges
from tests.e2e.test_hostile_inputs import built_once, sample_2d  # noqa: F401  (two days of sample logs, built once per session)
from tests.factory import T0, event, events, write_jsonl

UTC = timezone.utc
INTRUDER = "intruder@corp.example"


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def aws_auth_patch(day: datetime) -> dict:
    """The attack the scored day must still show: a stolen identity grants system:masters through aws-auth."""
    return event(day + timedelta(hours=14, minutes=3), audit_id="aws-auth-patch-1", verb="patch",
                 user={"username": INTRUDER, "groups": ["system:authenticated"]}, sourceIPs=["198.51.100.9"],
                 objectRef={"resource": "configmaps", "namespace": "kube-system", "name": "aws-auth", "apiVersion": "v1"},
                 requestURI="/api/v1/namespaces/kube-system/configmaps/aws-auth",
                 requestObject={"data": {"mapRoles": "- rolearn: arn:aws:iam::111122223333:role/x\n  groups: [system:masters]"}})


def run_day(sample: Path, extra: list[dict], root: Path, *flags: str) -> tuple[object, dict | None, list[dict]]:
    """`auditsift run` over the sample plus ``extra`` events: (CLI result, result object, findings)."""
    (root / "extra").mkdir(parents=True)
    write_jsonl(root / "extra" / "extra.jsonl", extra)
    result = cli("run", "--input", str(sample), "--input", str(root / "extra"), "--workdir", str(root / "work"), "--json", "--quiet",
                 *flags)
    if result.exit_code != 0:
        return result, None, []
    outcome = json.loads(result.stdout[result.stdout.index("{"):])
    findings = [json.loads(line) for line in (Path(outcome["report_dir"]) / "anomalies.jsonl").read_text().splitlines()]
    return result, outcome, findings


def intruder_flagged(findings: list[dict]) -> bool:
    return any(f["entity"] == INTRUDER and f["flagged"] and any(h["rule"] == "aws_auth_modified" for h in f["rule_hits"])
               for f in findings)


def quarantined(outcome: dict) -> dict:
    return json.loads((Path(outcome["report_dir"]) / "run.json").read_text())["counts"]["archive"]["quarantined_by_reason"]


# --------------------------------------------------------------------------- the scored day
SKEWED = [
    pytest.param(lambda end: [datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)], id="year-9999"),
    pytest.param(lambda end: [datetime(2027, 6, 1, 12, 34, tzinfo=UTC)], id="a-year-ahead"),
    pytest.param(lambda end: [end + timedelta(days=1), end], id="exactly-on-the-hour"),
]


@pytest.mark.slow
@pytest.mark.parametrize("stamps", SKEWED)
def test_one_skewed_timestamp_neither_stops_nor_blinds_the_daily_run(stamps, sample_2d, tmp_path, record_property):
    """A `get pods` stamped in year 9999, a year ahead, or exactly on an hour a day after the data, beside an
    aws-auth patch on the scored day: the run for the sample's clock exits 0, scores that day, flags the patch
    and quarantines the skewed event as future_timestamp (an event exactly at the clock is archived)."""
    end = sample_clock(sample_2d)
    odd = [event(moment, audit_id=f"skewed-{n}", verb="get") for n, moment in enumerate(stamps(end))]
    result, outcome, findings = run_day(sample_2d, [aws_auth_patch(end - timedelta(days=1)), *odd], tmp_path, "--now", iso(end))
    record_property("result", f"exit {result.exit_code}; scored {outcome and outcome['ranges']['score_from']}.."
                              f"{outcome and outcome['ranges']['score_to']}; aws-auth patch flagged: {intruder_flagged(findings)}; "
                              f"quarantined {outcome and quarantined(outcome)}")
    assert result.exit_code == 0, result.output
    assert outcome["ranges"]["score_from"] == iso(end - timedelta(days=1)) and outcome["ranges"]["score_to"] == iso(end)
    assert intruder_flagged(findings)
    future = [moment for moment in stamps(end) if moment > end + timedelta(minutes=15)]
    assert quarantined(outcome) == {"future_timestamp": len(future)}
    archived = {row["audit_id"] for table in read_archive(LocalStorage(tmp_path / "work"), "default", columns=["audit_id"])
                for row in table.to_pylist()}
    assert {f"skewed-{n}" for n, moment in enumerate(stamps(end)) if moment not in future} <= archived
    assert not {f"skewed-{n}" for n, moment in enumerate(stamps(end)) if moment in future} & archived


@pytest.mark.slow
def test_an_archive_already_holding_year_9999_scores_the_day(sample_2d, tmp_path, record_property):
    """An archive that took a year-9999 event before the future filter existed (every later run raised
    OverflowError): the next run for the sample's clock exits 0 and flags the aws-auth patch."""
    end = sample_clock(sample_2d)
    (tmp_path / "old").mkdir()
    write_jsonl(tmp_path / "old" / "old.jsonl", [event(datetime(9999, 12, 31, 23, 59, tzinfo=UTC), audit_id="year-9999")])
    archive_inputs(LocalStorage(tmp_path / "work"), resolve_inputs([str(tmp_path / "old")]), "default", "older-release")
    result, outcome, findings = run_day(sample_2d, [aws_auth_patch(end - timedelta(days=1))], tmp_path, "--now", iso(end))
    record_property("result", f"exit {result.exit_code}; aws-auth patch flagged: {intruder_flagged(findings)}")
    assert result.exit_code == 0, result.output
    assert outcome["ranges"]["score_to"] == iso(end) and intruder_flagged(findings)


@pytest.mark.slow
def test_events_before_the_retention_are_archived_but_never_move_the_ranges(sample_2d, tmp_path, record_property):
    """Events stamped 60 days and 50 years before the scored day are archived, but training starts at the
    sample's first window as it would without them (retention schedule.train_days: 14)."""
    end = sample_clock(sample_2d)
    ancient = [event(end - timedelta(days=60), audit_id="ancient-60d"), event(datetime(1976, 7, 4, tzinfo=UTC), audit_id="ancient-1976")]
    result, outcome, findings = run_day(sample_2d, [aws_auth_patch(end - timedelta(days=1)), *ancient], tmp_path, "--now", iso(end))
    archived = {row["audit_id"] for table in read_archive(LocalStorage(tmp_path / "work"), "default", columns=["audit_id"])
                for row in table.to_pylist()}
    record_property("result", f"exit {result.exit_code}; ranges {outcome and outcome['ranges']}; archived: "
                              f"{sorted(archived & {'ancient-60d', 'ancient-1976'})}")
    assert result.exit_code == 0, result.output
    assert {"ancient-60d", "ancient-1976"} <= archived
    assert outcome["ranges"] == {"train_from": iso(end - timedelta(days=2)), "train_to": iso(end - timedelta(days=1)),
                                 "score_from": iso(end - timedelta(days=1)), "score_to": iso(end)}
    assert intruder_flagged(findings)


def test_a_scored_day_without_data_is_one_line_naming_the_newest_event_and_now(tmp_path, record_property):
    """`auditsift features` on an archive that ends before the clock's day: exit 2, one error line, a hint naming
    the newest archived event and the --now that scores the day it ends; nothing is written."""
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "audit.jsonl", events(60, step=timedelta(minutes=1)))
    assert cli("archive", "--input", str(tmp_path / "in"), "--workdir", str(tmp_path / "work"), "--quiet").exit_code == 0
    before = sorted(p for p in (tmp_path / "work").rglob("*") if p.is_file())
    result = cli("features", "--workdir", str(tmp_path / "work"), "--quiet")
    record_property("result", f"exit {result.exit_code}: {result.stderr.strip().splitlines()[-1][:120]}")
    assert result.exit_code == 2, result.output
    error, hint = result.stderr.strip().splitlines()
    assert error.startswith("error: no archived events in the scored range ")
    assert iso(T0 + timedelta(minutes=59)) in hint and "--now 2026-11-01T10:00:00Z" in hint
    assert sorted(p for p in (tmp_path / "work").rglob("*") if p.is_file()) == before


def test_the_default_clock_is_the_last_complete_window_before_now(tmp_path):
    """Without --now the scored day ends at the current time floored to the window (the last complete hour)."""
    storage = LocalStorage(tmp_path / "work")
    now = datetime.now(UTC)
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "audit.jsonl", events(3, start=now - timedelta(hours=2)) + [event(now - timedelta(days=3))])
    archive_inputs(storage, resolve_inputs([str(tmp_path / "in")]), "default", "r1")
    ranges = resolve_ranges(RunContext(storage, parse_config({}), "r2"))
    hours = {now.replace(minute=0, second=0, microsecond=0), datetime.now(UTC).replace(minute=0, second=0, microsecond=0)}
    assert ranges.score_to in hours and ranges.score_from == ranges.score_to - timedelta(hours=24)


def test_future_filter_applies_with_archive_workers(tmp_path, monkeypatch):
    """Files normalised by worker processes are filtered as in one process: same rows, same quarantine."""
    import pipeline.stages.archive as archive

    monkeypatch.setattr(archive, "PARALLEL_MIN_BYTES", 0)
    (tmp_path / "in").mkdir()
    for n in range(3):
        write_jsonl(tmp_path / "in" / f"audit-{n}.jsonl", events(20, start=T0 + timedelta(hours=n))
                    + [event(T0 + timedelta(days=400 + n), audit_id=f"ahead-{n}")])
    results = {}
    for workers in (1, 2):
        storage = LocalStorage(tmp_path / f"work-{workers}")
        result = archive_inputs(storage, resolve_inputs([str(tmp_path / "in")]), "default", "r", workers=workers,
                                not_after=T0 + timedelta(days=1))
        rows = pa.concat_tables(read_archive(storage, "default")).to_pylist()
        results[workers] = (result.quarantine.counts, [e["sample"] for e in result.quarantine.entries], rows)
    assert results[1] == results[2]
    assert results[1][0] == {"future_timestamp": 3} and len(results[1][2]) == 60


# --------------------------------------------------------------------------- locks
def write_lock(workdir: Path, holder: dict) -> Path:
    path = workdir / "locks" / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(holder))
    return path


def living_pid_lock(hours_ago: float) -> dict:
    """A lock whose pid is running on this host: after a reboot or in a container, another process's pid."""
    return {"host": socket.gethostname(), "pid": os.getppid(), "token": "t", "since": time.time() - hours_ago * 3600}


@pytest.mark.parametrize("hours_ago, exit_code", [(1, 75), (7, 0)], ids=["1h-old-lock-of-a-living-pid", "7h-old-lock-of-a-living-pid"])
def test_a_lock_held_by_a_reused_pid_expires(hours_ago, exit_code, tmp_path, record_property):
    """A lock on this host whose pid is running (a reused pid) holds for storage.lock_expire_minutes (6 hours) and
    is taken over after; before that, the error's hint says how old it is and how to remove it."""
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "audit.jsonl", events(5))
    write_lock(tmp_path / "work", living_pid_lock(hours_ago))
    result = cli("archive", "--input", str(tmp_path / "in"), "--workdir", str(tmp_path / "work"), "--quiet")
    record_property("result", f"exit {result.exit_code}")
    assert result.exit_code == exit_code, result.output
    if exit_code:
        assert "taken 1h 00m ago, expires after 6h 00m" in result.stderr and "auditsift unlock --workdir" in result.stderr


def test_lock_expiry_is_configurable(tmp_path, record_property):
    """storage.lock_expire_minutes: 30 lets a run take over a 1-hour-old lock of a living pid."""
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "audit.jsonl", events(5))
    (tmp_path / "config.yaml").write_text("storage:\n  lock_expire_minutes: 30\n")
    write_lock(tmp_path / "work", living_pid_lock(1))
    result = cli("archive", "--input", str(tmp_path / "in"), "--workdir", str(tmp_path / "work"), "--config",
                 str(tmp_path / "config.yaml"), "--quiet")
    record_property("result", f"exit {result.exit_code}")
    assert result.exit_code == 0, result.output


def test_unlock_says_whose_lock_it_removes_and_refuses_a_fresh_one_without_force(tmp_path, record_property):
    """`auditsift unlock`: a fresh lock of a living pid is refused (exit 75, naming host, pid and age) and kept;
    --force removes it saying whose it was; an expired one goes without --force; no lock is a plain message."""
    workdir = tmp_path / "work"
    lock = write_lock(workdir, living_pid_lock(0.25))
    refused = cli("unlock", "--workdir", str(workdir))
    forced = cli("unlock", "--workdir", str(workdir), "--force")
    write_lock(workdir, {"host": "ip-10-0-1-2.other-host", "pid": 4242, "token": "t", "since": time.time() - 8 * 3600})
    expired = cli("unlock", "--workdir", str(workdir))
    none = cli("unlock", "--workdir", str(workdir))
    record_property("result", f"fresh: exit {refused.exit_code}; --force: exit {forced.exit_code}; "
                              f"8h old: exit {expired.exit_code}; none: exit {none.exit_code}")
    host = socket.gethostname()
    assert refused.exit_code == 75 and f"(host {host}, pid {os.getppid()}, taken 15m" in refused.stderr
    assert "lock not removed" in refused.stderr and "--force" in refused.stderr.splitlines()[-1]
    assert forced.exit_code == 0 and f"removed the lock of workdir {workdir}: host {host}, pid {os.getppid()}, taken 15m" in forced.stderr
    assert "removed with --force" in forced.stderr
    assert expired.exit_code == 0 and "host ip-10-0-1-2.other-host, pid 4242, taken 8h 00m ago" in expired.stderr
    assert "older than storage.lock_expire_minutes (6h 00m)" in expired.stderr
    assert none.exit_code == 0 and "is not locked" in none.stderr and not lock.exists()


def test_sagemaker_training_cannot_outlive_the_lock():
    """The in-process sagemaker-rcf backend holds the lock while SageMaker trains: a lock that expires first is
    refused at load, naming both keys."""
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="storage.lock_expire_minutes must be longer than model.sagemaker.max_runtime_seconds"):
        parse_config({"storage": {"lock_expire_minutes": 30}, "model": {"backend": "sagemaker-rcf"}})
