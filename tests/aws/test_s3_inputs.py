"""``archive --input s3://...``: Firehose and CreateExportTask objects read from S3, counted exactly."""
from __future__ import annotations

import gzip
import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ReadTimeoutError

from pipeline.aws import session as aws_session
from pipeline.aws.s3 import _ObjectStream, list_s3_inputs
from pipeline.errors import AwsCallError, InputError
from pipeline.io.readers import Quarantine, read_events
from pipeline.io.storage import InputRef, open_storage, resolve_inputs
from pipeline.stages.archive import archive_inputs

pytestmark = pytest.mark.aws

GROUP = "/aws/eks/demo/cluster"
STREAM_A = "kube-apiserver-audit-5f3c0a1e9b2d4c7e8f6a1b2c3d4e5f60"
STREAM_B = "kube-apiserver-audit-0c9b8a7f6e5d4c3b2a19087f6e5d4c3b"
BASE = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)


def envelope(stream: str, log_events: list[tuple[str, dict | str]], message_type: str = "DATA_MESSAGE") -> bytes:
    """A CloudWatch Logs subscription envelope as Firehose delivers it (before gzip)."""
    events = [
        {"id": event_id, "timestamp": int(BASE.timestamp() * 1000) + i,
         "message": message if isinstance(message, str) else json.dumps(message)}
        for i, (event_id, message) in enumerate(log_events)
    ]
    body = {"messageType": message_type, "owner": "111122223333", "logGroup": GROUP, "logStream": stream,
            "subscriptionFilters": ["auditsift-to-firehose"], "logEvents": events}
    if message_type == "CONTROL_MESSAGE":
        body.update(owner="CloudwatchLogs", logGroup="", logStream="", subscriptionFilters=[],
                    logEvents=[{"id": "", "timestamp": events[0]["timestamp"],
                                "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}])
    return json.dumps(body, separators=(",", ":")).encode()


def cw_id(n: int) -> str:
    return f"{37000000000000000000000000000000000000000000000000000000 + n}"


@pytest.fixture
def s3(make_config, bucket):
    return aws_session.client("s3", make_config())


def test_firehose_objects(s3, bucket, make_config, make_event, tmp_path):
    ev = [make_event(f"fh-{i}", BASE + timedelta(seconds=i)) for i in range(6)]
    truncated = json.dumps(make_event("huge", BASE, verb="create"))[:200] + "[Truncated...]"
    member_1 = envelope(STREAM_A, [(cw_id(1), ev[0]), (cw_id(2), ev[1]), (cw_id(3), ev[2])]) + envelope(
        "", [("", "")], "CONTROL_MESSAGE")
    member_2 = envelope(STREAM_B, [(cw_id(4), ev[3]), (cw_id(1), ev[0])]) + envelope(
        "authenticator-5f3c0a1e9b2d4c7e8f6a1b2c3d4e5f60", [(cw_id(9), 'time="2026-03-01T10:00:00Z" level=info msg="access granted"')])
    first = gzip.compress(member_1) + gzip.compress(member_2)
    second = gzip.compress(envelope(STREAM_A, [(cw_id(5), ev[4]), (cw_id(6), ev[5]), (cw_id(7), truncated)]) + b"\n")
    s3.put_object(Bucket=bucket, Key="firehose/2026/03/01/10/", Body=b"")
    s3.put_object(Bucket=bucket, Key="firehose/2026/03/01/10/eks-audit-1-2026-03-01-10-00-00-7c1f", Body=first)
    s3.put_object(Bucket=bucket, Key="firehose/2026/03/01/10/eks-audit-1-2026-03-01-10-05-00-9ad2", Body=second)

    refs = resolve_inputs([f"s3://{bucket}/firehose/"], make_config())
    assert [r.name for r in refs] == [f"s3://{bucket}/firehose/2026/03/01/10/eks-audit-1-2026-03-01-10-00-00-7c1f",
                                      f"s3://{bucket}/firehose/2026/03/01/10/eks-audit-1-2026-03-01-10-05-00-9ad2"]
    assert refs[0].size == len(first)
    storage = open_storage(f"s3://{bucket}/workdir", make_config())
    result = archive_inputs(storage, refs, "demo", "run-1")
    assert result.records_read == 7
    assert (result.events_added, result.duplicates) == (6, 1)
    assert result.quarantine.counts == {"cloudwatch_truncated": 1}
    assert result.quarantine.skipped == {"control_message": 1, "non_audit_stream": 1}

    again = archive_inputs(storage, resolve_inputs([f"s3://{bucket}/firehose/"], make_config()), "demo", "run-2")
    assert (again.events_added, again.duplicates) == (0, 7)


def test_export_task_objects(s3, bucket, make_config, make_event):
    def export_lines(events: list[dict | str]) -> bytes:
        lines = []
        for i, event in enumerate(events):
            stamp = (BASE + timedelta(milliseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            lines.append(f"{stamp} {event if isinstance(event, str) else json.dumps(event)}")
        return gzip.compress(("\n".join(lines) + "\n").encode())

    ev = [make_event(f"ex-{i}", BASE + timedelta(minutes=i * 30)) for i in range(4)]
    truncated = json.dumps(make_event("huge", BASE))[:180] + "[Truncated...]"
    task = "6f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8"
    s3.put_object(Bucket=bucket, Key="exports/aws-logs-write-test", Body=b"Permission Check Successful")
    s3.put_object(Bucket=bucket, Key=f"exports/{task}/{STREAM_A}/000000.gz", Body=export_lines(ev[:3]))
    s3.put_object(Bucket=bucket, Key=f"exports/{task}/{STREAM_B}/000000.gz", Body=export_lines([ev[3], truncated]))

    refs = list_s3_inputs(f"s3://{bucket}/exports/", make_config())
    assert [r.name.rsplit("/", 2)[-2] for r in refs] == sorted([STREAM_A, STREAM_B])
    storage = open_storage(f"s3://{bucket}/workdir", make_config())
    result = archive_inputs(storage, refs, "demo", "run-1")
    assert (result.records_read, result.events_added, result.duplicates) == (4, 4, 0)
    assert result.quarantine.counts == {"cloudwatch_truncated": 1}
    assert len(result.hours_written) == 2


def test_streamed_object_supports_partial_reads(s3, bucket, make_config):
    payload = bytes(range(256)) * 1000
    s3.put_object(Bucket=bucket, Key="raw/blob.bin", Body=payload)
    (ref,) = list_s3_inputs(f"s3://{bucket}/raw/blob.bin", make_config())
    with ref.open() as stream:
        assert stream.read(2) == payload[:2]
        assert stream.read(10) == payload[2:12]
        assert stream.read() == payload[12:]


def test_empty_prefix_is_an_input_error(bucket, make_config):
    with pytest.raises(InputError, match=f"no input objects below s3://{bucket}/nothing/"):
        list_s3_inputs(f"s3://{bucket}/nothing/", make_config())


def test_network_failure_mid_object_aborts_instead_of_counting_damaged_gzip(make_config):
    class DyingBody:
        def __init__(self):
            self.data = io.BytesIO(gzip.compress(b'{"a": 1}\n' * 1000)[:50])

        def read(self, n=-1):
            chunk = self.data.read(n)
            if not chunk:
                raise ReadTimeoutError(endpoint_url="https://s3.us-east-1.amazonaws.com/bucket/key")
            return chunk

        def close(self):
            pass

    s3 = aws_session.client("s3", make_config())
    ref = InputRef("s3://bucket/key", lambda: io.BufferedReader(_ObjectStream(DyingBody(), s3.get_object, "s3://bucket/key")))
    quarantine = Quarantine()
    with pytest.raises(AwsCallError, match=r"^S3.GetObject failed \(s3://bucket/key\): ReadTimeoutError"):
        list(read_events(ref, quarantine))
    assert quarantine.total == 0
