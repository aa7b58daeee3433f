"""CloudWatch Logs -> S3 archive: exact counts, exactly once across reruns, late events, edges, crashes."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from botocore.stub import Stubber

from pipeline.aws import cloudwatch
from pipeline.aws import session as aws_session
from pipeline.io.storage import open_storage
from pipeline.stages.archive import archive_from_cloudwatch, read_archive

pytestmark = pytest.mark.aws

GROUP = "/aws/eks/demo/cluster"
STREAM_A = "kube-apiserver-audit-5f3c0a1e9b2d4c7e8f6a1b2c3d4e5f60"
STREAM_B = "kube-apiserver-audit-0c9b8a7f6e5d4c3b2a19087f6e5d4c3b"
STREAM_AUTH = "authenticator-5f3c0a1e9b2d4c7e8f6a1b2c3d4e5f60"
AUTHENTICATOR_LINE = ('time="{time}" level=info msg="access granted" arn="arn:aws:iam::111122223333:role/eks-node" '
                      'client="127.0.0.1:47310" method=POST path=/authenticate '
                      'username="system:node:ip-10-0-1-23.ec2.internal"')


def ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def at_ms(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=value)


@pytest.fixture
def logs(make_config):
    client = aws_session.client("logs", make_config())
    client.create_log_group(logGroupName=GROUP)
    for stream in (STREAM_A, STREAM_B, STREAM_AUTH):
        client.create_log_stream(logGroupName=GROUP, logStreamName=stream)
    return client


@pytest.fixture
def workdir(bucket, make_config):
    return open_storage(f"s3://{bucket}/workdir", make_config())


def put(logs, stream: str, items: list[tuple[int, str]]) -> None:
    response = logs.put_log_events(logGroupName=GROUP, logStreamName=stream,
                                   logEvents=[{"timestamp": t, "message": m} for t, m in sorted(items, key=lambda i: i[0])])
    assert not response.get("rejectedLogEventsInfo"), response


def put_events(logs, stream: str, events: list[dict]) -> None:
    put(logs, stream, [(ms(datetime.fromisoformat(e["stageTimestamp"].replace("Z", "+00:00"))), json.dumps(e)) for e in events])


def archived(storage) -> pa.Table:
    tables = list(read_archive(storage, "demo"))
    return pa.concat_tables(tables) if tables else pa.table({"audit_id": pa.array([], pa.string())})


def run(storage, config, run_id: str, **window):
    return archive_from_cloudwatch(storage, GROUP, "demo", run_id, config, **window)


def test_round_trip_counts_reruns_and_late_events(logs, workdir, make_config, make_event):
    config = make_config(archive={"grace_minutes": 60})
    base = datetime.now(timezone.utc) - timedelta(minutes=40)
    a_events = [make_event(f"a-{i}", base + timedelta(seconds=i)) for i in range(4)]
    b_events = [make_event(f"b-{i}", base + timedelta(seconds=10 + i), verb="list", user="bob") for i in range(2)]
    redelivered = dict(a_events[0])
    put_events(logs, STREAM_A, a_events)
    cut = json.dumps(make_event("huge", base + timedelta(seconds=5), verb="create"))[:300] + "[Truncated...]"
    put(logs, STREAM_A, [(ms(base + timedelta(seconds=5)), cut)])
    put_events(logs, STREAM_B, b_events + [redelivered])
    put(logs, STREAM_AUTH, [(ms(base) + i, AUTHENTICATOR_LINE.format(time=base.isoformat())) for i in range(2)])

    first = run(workdir, config, "run-1")
    assert first.records_read == 7
    assert (first.events_added, first.duplicates) == (6, 1)
    assert first.quarantine.counts == {"cloudwatch_truncated": 1}
    assert first.quarantine.entries[0]["source"] == f"{GROUP}/{STREAM_A}"
    assert sorted(first.inputs) == [f"cloudwatch:{GROUP}/{STREAM_B}", f"cloudwatch:{GROUP}/{STREAM_A}"]
    table = archived(workdir)
    assert sorted(table["audit_id"].to_pylist()) == ["a-0", "a-1", "a-2", "a-3", "b-0", "b-1"]
    assert all(v is not None for v in table["cw_event_id"].to_pylist())
    checkpoint = workdir.read_json(cloudwatch.checkpoint_key("demo", GROUP))
    assert checkpoint["high_water_ms"] >= ms(base + timedelta(minutes=40)) - 60_000

    second = run(workdir, config, "run-2")
    assert (second.events_added, second.duplicates, second.records_read) == (0, 7, 7)
    assert len(archived(workdir)) == 6

    later = [make_event(f"late-{i}", datetime.now(timezone.utc) - timedelta(seconds=30 - i)) for i in range(2)]
    put_events(logs, STREAM_A, later)
    third = run(workdir, config, "run-3")
    assert (third.events_added, third.duplicates) == (2, 7)
    assert sorted(archived(workdir)["audit_id"].to_pylist()) == ["a-0", "a-1", "a-2", "a-3", "b-0", "b-1", "late-0", "late-1"]


def test_events_sharing_the_edge_millisecond_are_archived_exactly_once(logs, workdir, make_config, make_event):
    config = make_config()
    edge = ms(datetime.now(timezone.utc) - timedelta(minutes=5))
    when = at_ms(edge)
    put_events(logs, STREAM_A, [make_event("edge-1", when), make_event("edge-2", when)])
    put_events(logs, STREAM_B, [make_event("edge-3", when)])

    first = run(workdir, config, "run-1", end=at_ms(edge))
    assert first.events_added == 3
    assert workdir.read_json(cloudwatch.checkpoint_key("demo", GROUP))["high_water_ms"] == edge

    put_events(logs, STREAM_A, [make_event("edge-4", when), make_event("after-edge", at_ms(edge + 1))])
    put_events(logs, STREAM_B, [make_event("edge-5", when)])
    second = run(workdir, config, "run-2")
    assert (second.events_added, second.duplicates) == (3, 3)
    ids = archived(workdir)["audit_id"].to_pylist()
    assert sorted(ids) == ["after-edge", "edge-1", "edge-2", "edge-3", "edge-4", "edge-5"]


@pytest.fixture
def nine_events(logs, make_event):
    base = datetime.now(timezone.utc) - timedelta(minutes=20)
    put_events(logs, STREAM_A, [make_event(f"a-{i}", base + timedelta(seconds=i)) for i in range(5)])
    put_events(logs, STREAM_B, [make_event(f"b-{i}", base + timedelta(seconds=i)) for i in range(4)])


def test_run_killed_while_reading_is_reread_exactly_once(nine_events, workdir, make_config, monkeypatch):
    config = make_config()
    monkeypatch.setattr(cloudwatch, "PAGE_LIMIT", 2)
    real_pages = cloudwatch.filter_pages

    def dies_after_first_page(*args, **kwargs):
        pages = real_pages(*args, **kwargs)
        yield next(pages)
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(cloudwatch, "filter_pages", dies_after_first_page)
        with pytest.raises(KeyboardInterrupt):
            run(workdir, config, "killed")
    assert not workdir.exists(cloudwatch.checkpoint_key("demo", GROUP))
    assert len(archived(workdir)) == 0

    rerun = run(workdir, config, "rerun")
    assert (rerun.events_added, rerun.duplicates, rerun.records_read) == (9, 0, 9)
    assert sorted(archived(workdir)["audit_id"].to_pylist()) == sorted([f"a-{i}" for i in range(5)] + [f"b-{i}" for i in range(4)])
    assert workdir.list("staging") == []


def test_run_killed_after_merge_before_checkpoint_adds_nothing_twice(nine_events, workdir, make_config, monkeypatch):
    config = make_config()
    real_write_json = workdir.write_json

    def fail_on_checkpoint(key, value):
        if key.startswith("checkpoints/"):
            raise KeyboardInterrupt("killed before the checkpoint")
        real_write_json(key, value)

    with monkeypatch.context() as patch:
        patch.setattr(workdir, "write_json", fail_on_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            run(workdir, config, "killed")
    assert len(archived(workdir)) == 9
    rerun = run(workdir, config, "rerun")
    assert (rerun.events_added, rerun.duplicates) == (0, 9)
    assert len(archived(workdir)) == 9
    assert workdir.exists(cloudwatch.checkpoint_key("demo", GROUP))


def test_more_than_100_streams_are_read_in_batches_of_100(logs, workdir, make_config, make_event, client_events):
    calls = []
    client_events("before-parameter-build.cloudwatch-logs.FilterLogEvents", lambda params, **_: calls.append(params["logStreamNames"]))
    when = datetime.now(timezone.utc) - timedelta(minutes=10)
    for i in range(103):
        stream = f"kube-apiserver-audit-{i:032x}"
        logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
        put_events(logs, stream, [make_event(f"s-{i}", when)])
    result = run(workdir, make_config(), "many")
    assert result.events_added == 103
    assert [len(names) for names in calls] == [100, 5]
    assert not any(name.startswith("authenticator") for names in calls for name in names)


def test_filter_pages_continues_on_empty_pages_and_stops_on_a_repeated_token(make_config):
    logs = aws_session.client("logs", make_config())
    event = {"logStreamName": STREAM_A, "timestamp": 1, "message": "{}", "ingestionTime": 2, "eventId": "1"}
    with Stubber(logs) as stub:
        stub.add_response("filter_log_events", {"events": [event], "nextToken": "t1"})
        stub.add_response("filter_log_events", {"events": [], "nextToken": "t2"})
        stub.add_response("filter_log_events", {"events": [event | {"eventId": "2"}], "nextToken": "t2"})
        pages = list(cloudwatch.filter_pages(logs, GROUP, [STREAM_A], 0, 10))
        stub.assert_no_pending_responses()
    assert [len(p["events"]) for p in pages] == [1, 0, 1]


def test_window_defaults(make_config):
    now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    assert cloudwatch.resolve_window(None, 15, now=now) == (ms(now - timedelta(hours=24)), ms(now))
    checkpoint = {"high_water_ms": ms(now - timedelta(hours=1))}
    assert cloudwatch.resolve_window(checkpoint, 15, now=now) == (ms(now - timedelta(minutes=75)), ms(now))
    start = now - timedelta(days=2)
    assert cloudwatch.resolve_window(checkpoint, 15, start=start, now=now)[0] == ms(start)
    with pytest.raises(Exception, match="starts after it ends"):
        cloudwatch.resolve_window(None, 15, start=now, end=now - timedelta(seconds=1))


def test_high_water_mark_never_passes_the_run_start_nor_moves_back(logs, workdir, make_config):
    config = make_config()
    key = cloudwatch.checkpoint_key("demo", GROUP)
    before = datetime.now(timezone.utc)
    run(workdir, config, "future-end", end=before + timedelta(hours=1))
    high_water = workdir.read_json(key)["high_water_ms"]
    assert ms(before) <= high_water <= ms(datetime.now(timezone.utc))

    run(workdir, config, "backfill", start=before - timedelta(days=3), end=before - timedelta(days=2))
    assert workdir.read_json(key)["high_water_ms"] == high_water


def test_an_event_returned_twice_is_counted_once(nine_events, workdir, make_config, client_events):
    def repeat_first_event(parsed, **_):
        if parsed.get("events"):
            parsed["events"].append(dict(parsed["events"][0]))

    client_events("after-call.cloudwatch-logs.FilterLogEvents", repeat_first_event)
    result = run(workdir, make_config(), "overlap")
    assert (result.records_read, result.events_added, result.duplicates) == (10, 9, 1)
    assert result.events_normalised == 9, "dropped by CloudWatch event id before normalisation"
    assert len(archived(workdir)) == 9


def test_events_stamped_after_the_clock_are_quarantined_as_from_files(logs, workdir, make_config, make_event):
    """A message whose stageTimestamp is a year ahead or in year 9999, delivered now: quarantined as
    future_timestamp as the same line in a file is, and the events around it archived."""
    now = datetime.now(timezone.utc)
    good = [make_event(f"ok-{i}", now - timedelta(minutes=5, seconds=-i)) for i in range(3)]
    skewed = [make_event("ahead", now + timedelta(days=365)), make_event("year-9999", datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc))]
    put(logs, STREAM_A, [(ms(now - timedelta(minutes=5)) + i, json.dumps(e)) for i, e in enumerate(good + skewed)])
    result = run(workdir, make_config(), "run-1", now=now)
    assert result.quarantine.counts == {"future_timestamp": 2}
    assert sorted(archived(workdir)["audit_id"].to_pylist()) == ["ok-0", "ok-1", "ok-2"]
