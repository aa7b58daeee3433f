"""The same bytes give the same archived rows whether they are read from a local file, an S3 object or
CloudWatch Logs (issue 16: ``1e400`` in a body was archived from files and quarantined from
``--from-cloudwatch``). The hostile lines of tests/pipeline/io/test_readers_hostile.py go into a CloudWatch log
stream on the moto server; what CloudWatch stores (event ids, timestamps, messages) is written as the
Firehose object a subscription would deliver, to a file and to S3, and the three archives are compared."""
from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from pipeline.aws import session as aws_session
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.stages.archive import archive_from_cloudwatch, archive_inputs, read_archive
from tests.factory import envelope, events
from tests.pipeline.io.test_readers_hostile import HOSTILE_LINES

pytestmark = pytest.mark.aws

GROUP = "/aws/eks/demo/cluster"
STREAM = "kube-apiserver-audit-5f3c0a1e9b2d4c7e8f6a1b2c3d4e5f60"


def archived(storage: LocalStorage) -> list[dict]:
    return pa.concat_tables(read_archive(storage, "demo")).to_pylist()


def test_the_same_hostile_lines_give_the_same_rows_from_a_file_s3_and_cloudwatch(make_config, bucket, tmp_path):
    config = make_config()
    logs = aws_session.client("logs", config)
    logs.create_log_group(logGroupName=GROUP)
    logs.create_log_stream(logGroupName=GROUP, logStreamName=STREAM)
    base = int((datetime.now(timezone.utc) - timedelta(minutes=30)).timestamp() * 1000)
    messages = [json.dumps(e) for e in events(3)] + [line.decode("utf-8") for line in HOSTILE_LINES]
    response = logs.put_log_events(logGroupName=GROUP, logStreamName=STREAM,
                                   logEvents=[{"timestamp": base + i, "message": m} for i, m in enumerate(messages)])
    assert not response.get("rejectedLogEventsInfo"), response
    stored = logs.filter_log_events(logGroupName=GROUP)["events"]
    assert [item["message"] for item in stored] == messages
    firehose = envelope([item["message"] for item in stored], stream=STREAM, group=GROUP)
    for log_event, item in zip(firehose["logEvents"], stored):
        log_event.update(id=item["eventId"], timestamp=item["timestamp"])
    data = gzip.compress(json.dumps(firehose).encode(), mtime=0)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "firehose-1").write_bytes(data)
    aws_session.client("s3", config).put_object(Bucket=bucket, Key="firehose/2026/11/01/09/firehose-1", Body=data)

    results = {
        "file": archive_inputs(LocalStorage(tmp_path / "file"), resolve_inputs([str(tmp_path / "in")]), "demo", "r"),
        "s3": archive_inputs(LocalStorage(tmp_path / "s3"), resolve_inputs([f"s3://{bucket}/firehose/"], config), "demo", "r"),
        "cloudwatch": archive_from_cloudwatch(LocalStorage(tmp_path / "cloudwatch"), GROUP, "demo", "r", config),
    }
    rows = {source: archived(LocalStorage(tmp_path / source)) for source in results}
    assert rows["file"] == rows["s3"] == rows["cloudwatch"]
    assert len(rows["file"]) == len(messages) and all(row["cw_event_id"] for row in rows["file"])
    counts = {source: {k: result.as_dict()[k] for k in ("quarantined_by_reason", "salvaged_by_reason", "events_added")}
              for source, result in results.items()}
    assert counts["file"] == counts["s3"] == counts["cloudwatch"] == {
        "quarantined_by_reason": {}, "salvaged_by_reason": {"body_unreadable": 5, "truncated": 1, "value_unreadable": 1},
        "events_added": len(messages)}
