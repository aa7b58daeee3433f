"""Flagged incidents reach Security Hub as valid ASFF, one per incident with its findings related (idempotently), and
SNS as a short summary, against moto."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import botocore.session
import pytest
import yaml
from click.testing import CliRunner

from pipeline.aws import session as aws_session
from pipeline.catalog import load_rule_pack
from pipeline.cli.export import export_command
from pipeline.config import load_config
from pipeline.errors import AwsCallError
from pipeline.io.storage import LocalStorage
from pipeline.report.asff import (
    DESCRIPTION_MAX,
    MAX_RELATED,
    TITLE_MAX,
    asff_finding,
    exportable,
    exportable_incidents,
    incident_asff,
    severity_label,
)
from pipeline.report.incidents import group_incidents
from pipeline.stages.export import export_findings
from tests.aws.conftest import ACCOUNT, REGION, client_events, hermetic_aws, make_config, moto_url  # noqa: F401

PACK = load_rule_pack(load_config()).by_id()
RUN = {"run_id": "20261108T061500Z-abc123", "report": "s3://audit-bucket/auditsift/reports/cluster=demo/r/report.html",
       "ranges": {"score_from": "2026-11-07T05:00:00Z", "score_to": "2026-11-08T05:00:00Z"}}


def finding(rank: int, *, flagged=True, suppressed=False, score=2.0, model_part=1.5, hits=(), entity=None,
            entity_type="user") -> dict:
    """A record shaped like pipeline.stages.score writes to findings.json."""
    start = datetime(2026, 11, 7, tzinfo=timezone.utc) + timedelta(hours=rank % 24)
    return {
        "rank": rank, "finding_id": f"{rank:020x}", "entity_type": entity_type,
        "entity": entity or f"user-{rank}@corp.example", "window_start": f"{start:%Y-%m-%dT%H:%M:%SZ}",
        "window_end": f"{start + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
        "score": score, "flagged": flagged, "model_score": 0.7, "model_part": model_part, "rule_part": 0.0,
        "rule_hits": [{"rule": hit[0], "severity": hit[1], "count": 2, "routine": len(hit) > 2, "weight": 1.0} for hit in hits],
        "reasons": [{"feature": "secret_reads", "value": 12, "baseline": 0, "contribution": 0.4, "why": "credential theft"}],
        "event_count": 40, "audit_ids": [], "suppressed": suppressed,
    }


def run_findings() -> list[dict]:
    """230 records: 150 flagged and exportable, 10 suppressed (scoring clears their flag), the rest unflagged."""
    records = [finding(i, hits=[("secrets_sweep", "high")] if i % 3 == 0 else []) for i in range(1, 151)]
    records += [finding(i, flagged=False, suppressed=True) for i in range(151, 161)]
    records += [finding(i, flagged=False, score=0.2, model_part=0.2) for i in range(161, 231)]
    return records


def run_incidents(findings: list[dict] | None = None) -> list[dict]:
    """The incidents the score stage would write for ``findings`` (default ``run_findings()``), without an events index:
    one per flagged or suppressed finding here, each user being its only window. Their findings are alike, so they are
    kept apart from campaigns (tests/pipeline/report/test_incidents.py) to make many incidents."""
    findings = findings or run_findings()
    return [incident.to_record() for incident in group_incidents(findings, campaign_min=len(findings) + 1)]


def hub_config(make_config, **extra):
    return make_config(findings={"securityhub": {"enabled": True, **extra}})


def all_hub_findings(config) -> list[dict]:
    client = aws_session.client("securityhub", config)
    return [item for page in client.get_paginator("get_findings").paginate() for item in page["Findings"]]


def test_flagged_findings_are_imported_in_batches_of_100_and_a_rerun_updates_them(make_config, client_events):
    config = hub_config(make_config)
    batches = []
    client_events("before-parameter-build.securityhub.BatchImportFindings", lambda params, **_: batches.append(params["Findings"]))

    first = export_findings(config, run_findings(), run_incidents(), RUN)
    second = export_findings(config, run_findings(), run_incidents(), RUN)

    assert [len(batch) for batch in batches] == [100, 50, 100, 50]
    assert first["securityhub"] == second["securityhub"] == {
        "selected": 150, "imported": 150, "batches": 2,
        "product_arn": f"arn:aws:securityhub:{REGION}:{ACCOUNT}:product/{ACCOUNT}/default"}
    stored = all_hub_findings(config)
    assert len(stored) == 150
    assert {f["Id"] for f in stored} == {f"demo/{i['incident_id']}" for i in run_incidents() if i["flagged"]}
    assert {r["Id"] for f in stored for r in f["RelatedFindings"]} == {f"demo/{rank:020x}" for rank in range(1, 151)}
    assert {f["AwsAccountId"] for f in stored} == {ACCOUNT}
    assert batches[0][0]["Id"] == batches[2][0]["Id"] and batches[0][0]["UpdatedAt"] <= batches[2][0]["UpdatedAt"]


def test_min_score_and_suppression_decide_what_is_exported():
    records = run_findings() + [finding(999, score=0.9)]
    assert len(exportable(records, 0.0)) == 151
    assert [f["rank"] for f in exportable(records, 1.0)] == list(range(1, 151))


def test_every_exported_finding_is_valid_asff_with_log_text_cut_and_flattened():
    hostile = "evil\n<script>alert(1)</script>\x1b[31m" + "x" * 2000
    record = finding(7, entity=hostile, hits=[("aws_auth_modified", "critical"), ("secrets_sweep", "high")])
    asff = asff_finding(record, rules=PACK, cluster="demo", region=REGION, account=ACCOUNT, product="arn:aws:securityhub:x",
                        updated_at="2026-11-08T06:20:00.000000Z", run_result=RUN)
    model = botocore.session.get_session().get_service_model("securityhub").shape_for("AwsSecurityFinding")
    assert set(model.required_members) <= set(asff)
    assert set(asff) <= set(model.members)
    assert len(asff["Title"]) <= TITLE_MAX and len(asff["Description"]) <= DESCRIPTION_MAX
    assert all(len(v) <= 2048 and len(k) <= 128 for k, v in asff["ProductFields"].items())
    assert not any(c in asff["Title"] + asff["ProductFields"]["auditsift/entity"] for c in "\n\x1b")
    assert "<script>" in asff["Title"], "log-derived text is kept as plain data, not rendered or stripped as markup"
    assert asff["Id"] == f"demo/{7:020x}" and asff["GeneratorId"] == "auditsift/aws_auth_modified"
    assert asff["Severity"] == asff["FindingProviderFields"]["Severity"] == {"Label": "CRITICAL", "Original": "2.000"}
    assert asff["Types"] == asff["FindingProviderFields"]["Types"] == [
        "Unusual Behaviors/User", "TTPs/Persistence", "TTPs/Persistence/T1098.006", "TTPs/Credential Access",
        "TTPs/Credential Access/T1552.007"]
    assert asff["Resources"] == [{"Type": "AwsEksCluster", "Id": f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/demo",
                                  "Partition": "aws", "Region": REGION, "Details": {"AwsEksCluster": {"Name": "demo"}}}]
    assert (asff["FirstObservedAt"], asff["LastObservedAt"]) == (record["window_start"], record["window_end"])
    assert asff["ProductFields"]["auditsift/rules"] == "aws_auth_modified,secrets_sweep"
    assert "Note" not in asff


def test_asff_types_carry_each_rules_finding_type_and_attack_tactic_once_from_the_pack():
    record = finding(3, entity_type="source_ip", hits=[("exec_into_pod", "medium"), ("exec_suspicious_command", "high"),
                                                        ("privileged_workload_created", "high")])
    types = asff_finding(record, rules=PACK, cluster="demo", region=REGION, account=ACCOUNT, product="p",
                         updated_at="2026-11-08T06:20:00.000000Z", run_result=RUN)["Types"]
    assert types == ["Unusual Behaviors/IP address", "TTPs/Execution", "TTPs/Execution/T1609", "TTPs/Privilege Escalation",
                     "TTPs/Privilege Escalation/T1611"]
    assert all(len(kind.split("/")) in (2, 3) and len(kind) <= 128 for kind in types)


@pytest.mark.parametrize("record, label", [
    (finding(1, model_part=1.2), "MEDIUM"),
    (finding(1, model_part=3.5), "HIGH"),
    (finding(1, model_part=0.4, hits=[("exec_into_pod", "medium")]), "MEDIUM"),
    (finding(1, model_part=3.5, hits=[("aws_auth_modified", "critical")]), "CRITICAL"),
    (finding(1, model_part=0.4, hits=[("anonymous_request_failed", "info")]), "INFORMATIONAL"),
    (finding(1, model_part=1.5, hits=[("rbac_object_changed", "critical", "routine")]), "MEDIUM"),
])
def test_severity_is_the_worst_of_non_routine_rules_and_model(record, label):
    assert severity_label(record) == label


def test_rejected_findings_raise_one_line_naming_the_call_after_all_batches_are_sent(make_config, client_events):
    config = hub_config(make_config, account_id=ACCOUNT)
    sent = []

    def reject_first(parsed, **_):
        sent.append(1)
        if len(sent) == 1:
            parsed.update(FailedCount=1, SuccessCount=99, FailedFindings=[
                {"Id": "demo/0000000000000000001", "ErrorCode": "InvalidInput", "ErrorMessage": "Finding does not\nadhere to ASFF"}])

    client_events("after-call.securityhub.BatchImportFindings", reject_first)
    with pytest.raises(AwsCallError) as raised:
        export_findings(config, run_findings(), run_incidents(), RUN)
    message = str(raised.value)
    assert message == ("SecurityHub.BatchImportFindings rejected 1 of 150 findings: InvalidInput: "
                       "Finding does not adhere to ASFF (Id demo/0000000000000000001)")
    assert len(sent) == 2


def sns_queue(config):
    sns, sqs = aws_session.client("sns", config), aws_session.client("sqs", config)
    topic = sns.create_topic(Name="auditsift-findings")["TopicArn"]
    queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return topic, sqs, queue


def test_sns_summary_has_a_short_subject_counts_and_the_report_location(make_config):
    topic, sqs, queue = sns_queue(make_config())
    config = make_config(cluster="production-eu-west-1-" + "x" * 80, findings={"sns": {"enabled": True, "topic_arn": topic}})
    result = export_findings(config, run_findings(), run_incidents(), RUN)

    assert result["securityhub"] is None and result["sns"]["topic_arn"] == topic
    body = json.loads(sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"][0]["Body"])
    assert len(body["Subject"]) <= 100 and body["Subject"].startswith("auditsift production-eu-west-1-")
    assert "entity windows: 230; flagged: 150; suppressed: 10" in body["Message"]
    assert RUN["report"] in body["Message"] and "#1 2.00 user user-1@corp.example" in body["Message"]


def test_publishing_to_a_missing_topic_is_one_aws_error(make_config):
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:nowhere"
    config = make_config(findings={"sns": {"enabled": True, "topic_arn": topic}})
    with pytest.raises(AwsCallError, match=r"^SNS\.Publish failed \(arn:aws:sns:.*:nowhere\): NotFound"):
        export_findings(config, run_findings(), run_incidents(), RUN)


def test_nothing_is_called_when_both_exports_are_disabled(make_config, monkeypatch):
    monkeypatch.setattr(aws_session, "client", lambda *a, **k: pytest.fail("no AWS client expected"))
    assert export_findings(make_config(), run_findings(), run_incidents(), RUN) == {"securityhub": None, "sns": None}


def test_export_command_sends_the_workdir_latest_findings(make_config, tmp_path):
    storage = LocalStorage(tmp_path / "work")
    storage.write_json("scores/cluster=demo/r1/findings.json", run_findings()[:3])
    storage.write_json("scores/cluster=demo/r1/incidents.json", run_incidents(run_findings()[:3]))
    storage.write_json("state/cluster=demo/latest.json", {
        "score": {"run_id": "r1", "key": "scores/cluster=demo/r1", "records": 3, "flagged": 3, "suppressed": 0,
                  "ranges": RUN["ranges"]},
        "report": {"run_id": "r2", "html": "/reports/r2/report.html"}})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"cluster": "demo", "findings": {"securityhub": {"enabled": True}}}))

    result = CliRunner().invoke(export_command, ["--workdir", str(tmp_path / "work"), "--config", str(config_path)])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["securityhub"]["imported"] == 3
    stored = all_hub_findings(make_config())
    assert {f["ProductFields"]["auditsift/report"] for f in stored} == {"/reports/r2/report.html"}


def test_an_incident_is_one_asff_finding_with_its_findings_related_and_its_tactics_as_types():
    members = [finding(rank, entity="mallory@corp.example", hits=[("secrets_sweep", "high")]) for rank in range(1, 15)]
    incident = run_incidents(members)[0]
    hostile = {**incident, "title": "evil\n\x1b[31m" + "x" * 400, "summary": "y" * 2000, "tactics": ["TA0006", "discovery", "TA9999"]}
    asff = incident_asff(hostile, members, rules=PACK, cluster="demo", region=REGION, account=ACCOUNT, product="arn:aws:securityhub:x",
                         updated_at="2026-11-08T06:20:00.000000Z", run_result=RUN)

    model = botocore.session.get_session().get_service_model("securityhub").shape_for("AwsSecurityFinding")
    assert set(model.required_members) <= set(asff) <= set(model.members)
    assert len(incident["finding_ids"]) == 14, "one user's adjacent windows are one incident"
    assert asff["Id"] == f"demo/{incident['incident_id']}"
    assert asff["RelatedFindings"] == asff["FindingProviderFields"]["RelatedFindings"]
    assert [r["Id"] for r in asff["RelatedFindings"]] == [f"demo/{rank:020x}" for rank in range(1, MAX_RELATED + 1)]
    assert asff["ProductFields"]["auditsift/finding_ids"].split(",") == incident["finding_ids"]
    assert asff["Types"] == asff["FindingProviderFields"]["Types"]
    assert asff["Types"][:2] == ["TTPs/Credential Access", "TTPs/Discovery"], "the incident's tactics first, then its findings' types"
    assert set(asff_finding(members[0], rules=PACK, cluster="demo", region=REGION, account=ACCOUNT, product="x", updated_at="x",
                            run_result=RUN)["Types"]) <= set(asff["Types"])
    assert asff["Severity"]["Label"] == incident["severity"].upper()
    assert len(asff["Title"]) <= TITLE_MAX and len(asff["Description"]) <= DESCRIPTION_MAX and "\x1b" not in asff["Title"]
    assert (asff["FirstObservedAt"], asff["LastObservedAt"]) == (incident["first_seen"], incident["last_seen"])


def test_an_incident_carries_its_findings_types_and_only_flagged_incidents_are_exported():
    members = [finding(1, entity="mallory@corp.example", hits=[("secrets_sweep", "high")])]
    incident = run_incidents(members)[0]
    asff = incident_asff(incident, members, rules=PACK, cluster="demo", region=REGION, account=ACCOUNT, product="arn:aws:securityhub:x",
                         updated_at="2026-11-08T06:20:00.000000Z", run_result=RUN)
    assert set(asff_finding(members[0], rules=PACK, cluster="demo", region=REGION, account=ACCOUNT, product="x",
                            updated_at="x", run_result=RUN)["Types"]) <= set(asff["Types"])
    incidents = run_incidents()
    assert len(exportable_incidents(incidents, run_findings(), 0.0)) == 150
    assert not any(set(i["finding_ids"]) & {f"{rank:020x}" for rank in range(151, 161)} for i in exportable_incidents(incidents, run_findings(), 0.0))


def test_export_with_nothing_enabled_says_so_and_exits_2(tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"cluster": "demo"}))
    result = CliRunner().invoke(export_command, ["--workdir", str(tmp_path / "work"), "--config", str(config_path)])
    assert result.exit_code == 2
    assert "nothing to export" in result.output
    assert not (tmp_path / "work").exists()
