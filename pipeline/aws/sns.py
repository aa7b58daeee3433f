"""Amazon SNS: the run's summary (``pipeline.report.asff.summary_message``) published to one topic."""
from __future__ import annotations

from pipeline.aws import session as aws
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.report.asff import summary_message


def publish_summary(config: Config, findings: list[dict], run_result: dict, incidents: list[dict] | None = None) -> dict:
    topic = config.findings.sns.topic_arn
    if not topic:
        raise ConfigError("findings.sns.topic_arn is not set", hint="set it, or findings.sns.enabled: false")
    subject, message = summary_message(config, findings, run_result, incidents=incidents)
    client = aws.client("sns", config)
    response = aws.call(client.publish, topic, TopicArn=topic, Subject=subject, Message=message)
    return {"message_id": response["MessageId"], "topic_arn": topic}
