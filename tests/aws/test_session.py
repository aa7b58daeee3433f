"""Clients, retries and error lines: throttling and 5xx are retried by botocore; the final failure names the call."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import boto3
import botocore.retries.bucket as bucket_module
import botocore.retries.standard as standard
import pytest
from botocore.awsrequest import AWSResponse

from pipeline.aws import cloudwatch
from pipeline.aws import session as aws_session
from pipeline.errors import AwsCallError, ConfigError
from pipeline.io.storage import open_storage
from pipeline.stages.archive import archive_from_cloudwatch

pytestmark = pytest.mark.aws

GROUP = "/aws/eks/demo/cluster"
STREAM = "kube-apiserver-audit-5f3c0a1e9b2d4c7e8f6a1b2c3d4e5f60"


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


def fault(status: int, code: str, message: str):
    """A before-send handler answering like the CloudWatch Logs JSON protocol does when it rejects a call."""
    body = json.dumps({"__type": code, "message": message}).encode()
    return AWSResponse("https://logs.us-east-1.amazonaws.com/", status,
                       {"x-amzn-RequestId": "0f0e0d0c", "Content-Type": "application/x-amz-json-1.1"}, _Body(body))


@pytest.fixture(autouse=True)
def no_retry_sleeps(monkeypatch):
    """Keep botocore's real retry decisions (attempt counting, retryable codes) but not its sleeps:
    the exponential backoff and the adaptive mode's token bucket wait after each throttle."""
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)
    monkeypatch.setattr(bucket_module.TokenBucket, "acquire", lambda self, amount=1, block=True: True)


@pytest.fixture
def group_with_events(make_config, make_event):
    logs = aws_session.client("logs", make_config())
    logs.create_log_group(logGroupName=GROUP)
    logs.create_log_stream(logGroupName=GROUP, logStreamName=STREAM)
    base = datetime.now(timezone.utc) - timedelta(minutes=10)
    events = [make_event(f"t-{i}", base + timedelta(seconds=i)) for i in range(3)]
    logs.put_log_events(logGroupName=GROUP, logStreamName=STREAM, logEvents=[
        {"timestamp": int((base + timedelta(seconds=i)).timestamp() * 1000), "message": json.dumps(e)} for i, e in enumerate(events)])


def test_throttling_and_5xx_are_retried_until_the_call_succeeds(group_with_events, bucket, make_config, client_events):
    config = make_config(aws={"max_attempts": 4})
    answers = [fault(400, "ThrottlingException", "Rate exceeded"), fault(503, "ServiceUnavailableException", "try again"),
               fault(400, "ThrottlingException", "Rate exceeded")]
    sent = []

    def flaky(**_):
        sent.append(1)
        return answers.pop(0) if answers else None

    client_events("before-send.cloudwatch-logs.FilterLogEvents", flaky)
    storage = open_storage(f"s3://{bucket}/wd", config)
    result = archive_from_cloudwatch(storage, GROUP, "demo", "run", config)
    assert len(sent) == 4
    assert result.events_added == 3


def test_final_throttling_names_the_call_and_the_attempts(group_with_events, bucket, make_config, client_events):
    config = make_config(aws={"max_attempts": 3})
    sent = []
    client_events("before-send.cloudwatch-logs.FilterLogEvents",
                  lambda **_: sent.append(1) or fault(400, "ThrottlingException", "Rate exceeded"))
    storage = open_storage(f"s3://{bucket}/wd", config)
    with pytest.raises(AwsCallError) as caught:
        archive_from_cloudwatch(storage, GROUP, "demo", "run", config)
    assert str(caught.value) == f"CloudWatchLogs.FilterLogEvents failed ({GROUP}): ThrottlingException: Rate exceeded"
    assert len(sent) == 3
    assert caught.value.hint == "still throttled after 3 attempts: run later or raise aws.max_attempts"
    assert not storage.exists(cloudwatch.checkpoint_key("demo", GROUP))


def test_access_denied_hint_names_the_iam_action(make_config, client_events):
    client_events("before-send.cloudwatch-logs.DescribeLogStreams",
                  lambda **_: fault(400, "AccessDeniedException", "User: arn:aws:sts::111122223333:assumed-role/x/y is not "
                                                                    "authorized to perform: logs:DescribeLogStreams"))
    with pytest.raises(AwsCallError) as caught:
        cloudwatch.list_audit_streams(aws_session.client("logs", make_config()), GROUP, "kube-apiserver-audit")
    assert str(caught.value).startswith(f"CloudWatchLogs.DescribeLogStreams failed ({GROUP}): AccessDeniedException: User:")
    assert "grant logs:DescribeLogStreams" in caught.value.hint


def test_missing_log_group_is_one_line(make_config):
    with pytest.raises(AwsCallError, match=r"^CloudWatchLogs.DescribeLogStreams failed \(/aws/eks/nope/cluster\): "
                                           r"ResourceNotFoundException"):
        cloudwatch.list_audit_streams(aws_session.client("logs", make_config()), "/aws/eks/nope/cluster", "kube-apiserver-audit")


def test_clients_use_adaptive_retries_and_configured_region(make_config):
    client = aws_session.client("sagemaker", make_config(aws={"region": "eu-west-1", "max_attempts": 7}))
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 7}
    assert aws_session.client("sagemaker", make_config(), region="ap-southeast-2").meta.region_name == "ap-southeast-2"


def test_unknown_profile_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match="AWS profile not found: nobody"):
        aws_session.client("s3", make_config(aws={"profile": "nobody"}))


def test_guard_fails_any_call_to_a_real_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    client = boto3.client("sts", region_name="us-east-1")
    with pytest.raises(pytest.fail.Exception, match="AWS tests must only talk to the moto server"):
        client.get_caller_identity()
