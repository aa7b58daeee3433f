"""Deployment artefacts: the state machine validates and wires the right steps, IAM is least privilege,
AWS (moto) accepts every request, and the cron wrapper never runs two passes on one workdir."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from pipeline.aws import session as aws_session
from pipeline.cli.deploy import deploy_command
from pipeline.config import parse_config
from pipeline.deploy.asl import state_machine_definition
from pipeline.deploy.iam import iam_policies
from pipeline.deploy.processing import processing_requests
from pipeline.deploy.schedule import crontab_line, crontab_schedule, schedule_request
from pipeline.errors import ConfigError
from pipeline.io.storage import LocalStorage
from tests.aws.conftest import ACCOUNT, REGION, hermetic_aws, moto_url  # noqa: F401  (moto server, fake credentials, guard)
from tests.factory import event, write_jsonl

ROOT = Path(__file__).resolve().parents[3]
STATELINT = ROOT / ".tools" / "node_modules" / ".bin" / "statelint"
WRAPPER = ROOT / "scripts" / "auditsift-cron"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DEPLOY = {
    "cluster": "prod",
    "aws": {"region": REGION, "max_attempts": 3},
    "storage": {"sse": "aws:kms", "kms_key_id": KEY_ARN},
    "deploy": {
        "bucket": "audit-bucket",
        "state_machine_role_arn": f"arn:aws:iam::{ACCOUNT}:role/auditsift-run",
        "job_role_arn": f"arn:aws:iam::{ACCOUNT}:role/auditsift-jobs",
        "processing_image_uri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/auditsift:1.0",
        "processing_instance_count": 3,
        "notify_topic_arn": f"arn:aws:sns:{REGION}:{ACCOUNT}:auditsift-ops",
    },
    "findings": {"securityhub": {"enabled": True}},
}
RCF = {"model": {"backend": "sagemaker-rcf", "sagemaker": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/auditsift-rcf"}},
       "deploy": {"processing_instance_count": 1}, "findings": {"securityhub": {"enabled": False}}}
STAR_ACTIONS = {"sagemaker:ListTags", "ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}


def deploy_config(**overrides):
    return parse_config(DEPLOY, "<test>", overrides)


def config_file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def statelint():
    """The statelint binary; installed with `make nodetools` when node and npm exist but it does not."""
    if not STATELINT.exists():
        if not (shutil.which("node") and shutil.which("npm")):
            pytest.skip("node and npm are not installed: cannot validate the ASL definition with @wmfs/statelint")
        subprocess.run(["make", "nodetools"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return STATELINT


def lint(statelint, definition: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / f"definition-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(definition))
    return subprocess.run([str(statelint), str(path)], capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- state machine
@pytest.mark.parametrize("overrides", [{}, RCF], ids=["iforest-scale-out-export", "sagemaker-rcf"])
def test_definition_passes_statelint(statelint, tmp_path, overrides):
    completed = lint(statelint, state_machine_definition(deploy_config(**overrides)), tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_statelint_rejects_a_broken_definition(statelint, tmp_path):
    broken = state_machine_definition(deploy_config())
    del broken["States"]["Score"]["Next"]
    assert lint(statelint, broken, tmp_path).returncode != 0


def happy_path(definition: dict, retrain: bool) -> list[str]:
    states, name, path = definition["States"], definition["StartAt"], []
    while True:
        path.append(name)
        state = states[name]
        if state["Type"] == "Choice":
            name = state["Choices"][0]["Next"] if retrain else state["Default"]
        elif state.get("End") or state["Type"] in ("Succeed", "Fail"):
            return path
        else:
            name = state["Next"]


def test_run_order_with_scale_out_export_and_training_only_when_due():
    definition = state_machine_definition(deploy_config())
    assert happy_path(definition, retrain=True) == [
        "Start", "Archive", "Plan", "ReadPlan", "FeaturesMap", "Features", "RetrainDue", "Train", "Score", "Report",
        "Export", "NotifySuccess"]
    assert "Train" not in happy_path(definition, retrain=False)
    rcf = state_machine_definition(deploy_config(**RCF))
    assert happy_path(rcf, retrain=False) == [
        "Start", "Archive", "Plan", "ReadPlan", "Features", "RetrainDue", "PrepareScoring", "ReadScoringSpec", "ScoreRcf",
        "Score", "Report", "NotifySuccess"]
    assert happy_path(rcf, retrain=True) == [
        "Start", "Archive", "Plan", "ReadPlan", "Features", "RetrainDue", "PrepareTraining", "ReadTrainingSpec", "TrainRcf",
        "CreateRcfModel", "ScoreTrainingRows", "Train", "PrepareScoring", "ReadScoringSpec", "ScoreRcf", "Score", "Report",
        "NotifySuccess"]


@pytest.mark.parametrize("overrides", [{}, RCF], ids=["iforest", "sagemaker-rcf"])
def test_every_task_retries_and_routes_failures_to_a_notification_then_fail(overrides):
    states = state_machine_definition(deploy_config(**overrides))["States"]
    tasks = {name: state for name, state in states.items() if state["Type"] == "Task"}
    for name, state in tasks.items():
        assert state["Retry"] and all(r["IntervalSeconds"] > 0 and r["BackoffRate"] >= 1 and r["MaxAttempts"] > 0
                                      for r in state["Retry"]), name
        assert state["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error" if name != "NotifyFailure"
                                   else "$.notify_error", "Next": "NotifyFailure" if name != "NotifyFailure" else "Failed"}]
        if state["Resource"].startswith("arn:aws:states:::sagemaker:"):
            assert state["Retry"][0]["ErrorEquals"] == ["SageMaker.AmazonSageMakerException", "ThrottlingException"]
    assert states["NotifyFailure"]["Next"] == "Failed" and states["Failed"]["Type"] == "Fail"
    assert states["NotifyFailure"]["Resource"] == "arn:aws:states:::sns:publish"
    assert states["NotifyFailure"]["Parameters"]["TopicArn"] == DEPLOY["deploy"]["notify_topic_arn"]


RCF_RESOURCES = {
    "TrainRcf": "arn:aws:states:::sagemaker:createTrainingJob.sync",
    "CreateRcfModel": "arn:aws:states:::sagemaker:createModel",
    "ScoreTrainingRows": "arn:aws:states:::sagemaker:createTransformJob.sync",
    "ScoreRcf": "arn:aws:states:::sagemaker:createTransformJob.sync",
}
RCF_NAME_KEYS = {"TrainRcf": "TrainingJobName.$", "CreateRcfModel": "ModelName.$", "ScoreTrainingRows": "TransformJobName.$",
                 "ScoreRcf": "TransformJobName.$"}
UUID_LIKE = "0" * 8 + "-" + "0" * 4 + "-" + "0" * 4 + "-" + "0" * 4 + "-" + "0" * 12


def test_sagemaker_rcf_runs_training_model_and_transforms_as_service_integrations():
    """The built-in algorithm's jobs are Step Functions steps (.sync), each attempt with its own valid name;
    the pipeline's own work runs in Processing jobs around them."""
    from tests.aws import asl

    states = state_machine_definition(deploy_config(**RCF))["States"]
    jobs = {n: s["Resource"] for n, s in states.items() if s.get("Resource", "").startswith("arn:aws:states:::sagemaker:")}
    processing = {n for n, r in jobs.items() if r == "arn:aws:states:::sagemaker:createProcessingJob.sync"}
    assert {n: r for n, r in jobs.items() if n not in processing} == RCF_RESOURCES
    assert processing == {"Archive", "Plan", "Features", "PrepareTraining", "Train", "PrepareScoring", "Score", "Report"}
    for name, key in RCF_NAME_KEYS.items():
        names = {asl.evaluate({key: states[name]["Parameters"][key]}, {"run": {"id": UUID_LIKE}},
                              {"State": {"RetryCount": attempt}})[key[:-2]] for attempt in range(10)}
        assert len(names) == 10, f"{name}: every attempt needs its own name"
        for job in names:
            assert re.fullmatch(r"auditsift-rcf-[a-z0-9](-*[a-z0-9]){0,62}", job) and len(job) <= 63, job
        assert states[name]["Parameters"]["Tags"] == [{"Key": "auditsift:cluster", "Value": "prod"}]
    role = RCF["model"]["sagemaker"]["role_arn"]
    assert states["TrainRcf"]["Parameters"]["RoleArn"] == states["CreateRcfModel"]["Parameters"]["ExecutionRoleArn"] == role
    assert states["TrainRcf"]["ResultSelector"] == {"name.$": "$.TrainingJobName", "artifacts.$": "$.ModelArtifacts.S3ModelArtifacts"}
    selected = asl.evaluate(states["CreateRcfModel"]["ResultSelector"],
                            {"ModelArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/auditsift-rcf-{UUID_LIKE}-m1"}, {})
    assert selected == {"name": f"auditsift-rcf-{UUID_LIKE}-m1"}
    assert states["CreateRcfModel"]["Parameters"]["PrimaryContainer"]["ModelDataUrl.$"] == "$.rcf_training.job.artifacts"
    assert states["ScoreTrainingRows"]["Parameters"]["ModelName.$"] == "$.rcf_training.model.name"
    for name in ("ReadTrainingSpec", "ReadScoringSpec"):
        assert states[name]["Resource"] == "arn:aws:states:::aws-sdk:s3:getObject"
    assert "Train" not in {s.get("Next") for n, s in states.items() if n != "ScoreTrainingRows"}


@pytest.mark.parametrize("kind, state", [("training", "ReadTrainingSpec"), ("scoring", "ReadScoringSpec")])
def test_rcf_specs_are_read_from_the_keys_the_prepare_steps_write(kind, state):
    from pipeline.context import RunContext
    from pipeline.stages.scaleout import rcf_spec_key

    read = state_machine_definition(deploy_config(**RCF))["States"][state]
    template = re.fullmatch(r"States\.Format\('([^']*)', \$\.run\.id\)", read["Parameters"]["Key.$"]).group(1)
    ctx = RunContext(LocalStorage("/tmp"), deploy_config(**RCF), "r")
    assert template.format("RUN") == f"auditsift/{rcf_spec_key(ctx, 'RUN', kind)}"
    assert read["ResultSelector"] == {"spec.$": "States.StringToJson($.Body)"}


def test_sagemaker_steps_are_sync_processing_jobs_with_unique_valid_names():
    states = state_machine_definition(deploy_config())["States"]
    jobs = {n: s for n, s in states.items() if s.get("Resource", "").startswith("arn:aws:states:::sagemaker:")}
    assert set(jobs) == {"Archive", "Plan", "FeaturesMap", "Features", "Train", "Score", "Report", "Export"}
    assert {s["Resource"] for s in jobs.values()} == {"arn:aws:states:::sagemaker:createProcessingJob.sync"}
    for state in jobs.values():
        template = re.fullmatch(r"States\.Format\('([^']*)', \$\.run\.id\)", state["Parameters"]["ProcessingJobName.$"])
        name = template.group(1).replace("{}", "0" * 8 + "-" + "0" * 4 + "-" + "0" * 4 + "-" + "0" * 4 + "-" + "0" * 12)
        assert re.fullmatch(r"auditsift-[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name) and len(name) <= 63
    map_job = jobs["FeaturesMap"]["Parameters"]
    assert map_job["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3
    assert map_job["ProcessingInputs"][1]["S3Input"]["S3DataDistributionType"] == "ShardedByS3Key"


def container_arguments(app: dict) -> list[str]:
    """The argument list of a job, with `States.Array(...)` paths kept as '$...' items."""
    if "ContainerArguments" in app:
        return app["ContainerArguments"]
    expression = app["ContainerArguments.$"]
    assert expression.startswith("States.Array(")
    return [literal.replace("\\'", "'") if literal else path
            for literal, path in re.findall(r"'((?:\\.|[^'\\])*)'|(\$[\w.$]+)", expression)]


def check_options(command: click.Command, arguments: list[str]) -> None:
    names = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for item in arguments:
        if item.startswith("--"):
            assert item in names, f"{command.name} has no option {item}"


@pytest.mark.parametrize("overrides", [{}, RCF], ids=["iforest", "sagemaker-rcf"])
def test_every_job_runs_a_real_command_with_options_it_accepts(overrides):
    """The definition is checked against the CLI itself, so renaming an option breaks this test, not a 3 a.m. run.
    Every job runs the one CLI (``python -m pipeline`` is ``auditsift``), never a module path."""
    from pipeline.cli import main

    states = state_machine_definition(deploy_config(**overrides))["States"]
    for name, state in states.items():
        app = state.get("Parameters", {}).get("AppSpecification")
        if not app:
            continue
        assert app["ContainerEntrypoint"][:3] == ["python", "-m", "pipeline"], name
        command, arguments = main, [*app["ContainerEntrypoint"][3:], *container_arguments(app)]
        while isinstance(command, click.Group):
            position = next(i for i, item in enumerate(arguments) if item in command.commands)
            check_options(command, arguments[:position])
            command, arguments = command.commands[arguments[position]], arguments[position + 1:]
        check_options(command, arguments)
    if overrides:
        return
    features = container_arguments(states["Features"]["Parameters"]["AppSpecification"])
    assert features[features.index("--train-from") + 1] == "$.plan.decision.ranges.train_from"
    assert features[features.index("--score-to") + 1] == "$.plan.decision.ranges.score_to"
    assert container_arguments(states["Plan"]["Parameters"]["AppSpecification"])[-4:] == [
        "--plan-id", "$.run.id", "--now", "$$.Execution.StartTime"]


def _lookup(document: dict, path: str):
    value = document
    for part in path[2:].split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def _matches(rule: dict, document: dict) -> bool:
    if "And" in rule:
        return all(_matches(inner, document) for inner in rule["And"])
    if "IsPresent" in rule:
        try:
            _lookup(document, rule["Variable"])
            return rule["IsPresent"]
        except KeyError:
            return not rule["IsPresent"]
    return _lookup(document, rule["Variable"]) == rule["BooleanEquals"]


@pytest.mark.parametrize("overrides, train, score", [({}, "Train", "Score"), (RCF, "PrepareTraining", "PrepareScoring")],
                         ids=["iforest", "sagemaker-rcf"])
@pytest.mark.parametrize("document, retrains", [
    ({"plan": {"decision": {"retrain": True}}}, True),
    ({"plan": {"decision": {"retrain": False}}}, False),
    ({"retrain": True, "plan": {"decision": {"retrain": False}}}, True),
    ({"retrain": False, "plan": {"decision": {"retrain": True}}}, False),
])
def test_retrain_choice_follows_the_input_flag_first_then_the_plan(document, retrains, overrides, train, score):
    """Evaluated the way Step Functions does; a missing $.retrain never reaches BooleanEquals (a runtime error)."""
    choice = state_machine_definition(deploy_config(**overrides))["States"]["RetrainDue"]
    chosen = next((rule["Next"] for rule in choice["Choices"] if _matches(rule, document)), choice["Default"])
    assert chosen == (train if retrains else score)


def test_plan_is_read_from_the_key_the_plan_step_writes():
    from pipeline.context import RunContext
    from pipeline.stages.scaleout import plan_key

    read = state_machine_definition(deploy_config())["States"]["ReadPlan"]
    template = re.fullmatch(r"States\.Format\('([^']*)', \$\.run\.id\)", read["Parameters"]["Key.$"]).group(1)
    ctx = RunContext(LocalStorage("/tmp"), deploy_config(), "r")
    assert template.format("RUN") == f"auditsift/{plan_key(ctx, 'RUN')}"
    assert read["Resource"] == "arn:aws:states:::aws-sdk:s3:getObject"
    assert read["ResultSelector"] == {"decision.$": "States.StringToJson($.Body)"}


@pytest.mark.parametrize("missing", ["deploy.bucket", "deploy.job_role_arn", "deploy.processing_image_uri",
                                     "deploy.notify_topic_arn"])
def test_a_missing_required_value_is_one_line_naming_the_key(tmp_path, missing):
    section, key = missing.split(".")
    data = json.loads(json.dumps(DEPLOY))
    del data[section][key]
    result = CliRunner().invoke(deploy_command, ["stepfunctions", "--config", str(config_file(tmp_path, data))])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"error: {missing} is not set"


def test_sagemaker_rcf_needs_its_execution_role():
    with pytest.raises(ConfigError, match=r"^model\.sagemaker\.role_arn is not set$"):
        state_machine_definition(deploy_config(model={"backend": "sagemaker-rcf"}))


def test_stepfunctions_command_writes_the_definition(tmp_path):
    out = tmp_path / "machine.json"
    result = CliRunner().invoke(deploy_command, ["stepfunctions", "--config", str(config_file(tmp_path, DEPLOY)),
                                                 "--out", str(out), "--prefix", "team/auditsift"])
    assert result.exit_code == 0, result.output
    definition = json.loads(out.read_text())
    assert "s3://audit-bucket/team/auditsift" in json.dumps(definition["States"]["Archive"])


@pytest.mark.parametrize("overrides", [{}, RCF], ids=["iforest", "sagemaker-rcf"])
def test_moto_creates_the_state_machine_and_the_schedule_that_starts_it(overrides):
    config = deploy_config(**overrides)
    definition = json.dumps(state_machine_definition(config))
    machine = aws_session.client("stepfunctions", config).create_state_machine(
        name="auditsift-prod", definition=definition, roleArn=config.deploy.state_machine_role_arn)
    request = schedule_request(config, f"arn:aws:iam::{ACCOUNT}:role/auditsift-scheduler")
    assert request["Target"]["Arn"] == machine["stateMachineArn"]
    assert request["ScheduleExpression"] == "cron(15 6 * * ? *)" and request["ScheduleExpressionTimezone"] == "UTC"
    scheduler = aws_session.client("scheduler", config)
    scheduler.create_schedule(**request)
    stored = scheduler.get_schedule(Name="auditsift-prod")
    assert stored["Target"]["RoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/auditsift-scheduler"
    assert json.loads(stored["Target"]["Input"])["scheduled_time"] == "<aws.scheduler.scheduled-time>"
    described = aws_session.client("stepfunctions", config).describe_state_machine(stateMachineArn=machine["stateMachineArn"])
    assert json.loads(described["definition"]) == json.loads(definition)


def test_schedule_rejects_a_malformed_expression():
    with pytest.raises(ConfigError, match="schedule.expression"):
        schedule_request(deploy_config(schedule={"expression": "every day at six"}), "arn:aws:iam::1:role/x")


# --------------------------------------------------------------------------- processing requests
def test_scale_out_requests_have_the_documented_shape_and_moto_accepts_them():
    config = deploy_config()
    requests = processing_requests(config, now=datetime(2026, 11, 8, 6, 15, tzinfo=timezone.utc))
    job = requests["map"]
    assert job["ProcessingJobName"] == "auditsift-features-map-20261108061500"
    assert job["AppSpecification"] == {
        "ImageUri": DEPLOY["deploy"]["processing_image_uri"], "ContainerEntrypoint": ["python", "-m", "pipeline", "container"],
        "ContainerArguments": ["map", "--input-dir", "/opt/ml/processing/input/archive", "--output-dir",
                               "/opt/ml/processing/output/partials", "--config", "/opt/ml/processing/input/config/config.yaml"]}
    assert job["ProcessingResources"]["ClusterConfig"] == {"InstanceCount": 3, "InstanceType": "ml.m5.xlarge",
                                                           "VolumeSizeInGB": 50, "VolumeKmsKeyId": KEY_ARN}
    archive = job["ProcessingInputs"][1]["S3Input"]
    assert archive["S3Uri"] == "s3://audit-bucket/auditsift/archive/cluster=prod/"
    assert archive["S3DataDistributionType"] == "ShardedByS3Key"
    assert job["ProcessingOutputConfig"] == {"KmsKeyId": KEY_ARN, "Outputs": [{"OutputName": "partials", "S3Output": {
        "S3Uri": "s3://audit-bucket/auditsift/features/cluster=prod/partials/",
        "LocalPath": "/opt/ml/processing/output/partials", "S3UploadMode": "EndOfJob"}}]}
    assert job["NetworkConfig"]["EnableNetworkIsolation"] is True and job["RoleArn"] == DEPLOY["deploy"]["job_role_arn"]
    reduce_input = requests["reduce"]["ProcessingInputs"][1]["S3Input"]
    assert re.fullmatch(r"s3://audit-bucket/auditsift/features/cluster=prod/partials/[0-9a-f]{12}/", reduce_input["S3Uri"])

    sagemaker = aws_session.client("sagemaker", config)
    for request in requests.values():
        sagemaker.create_processing_job(**request)
        described = sagemaker.describe_processing_job(ProcessingJobName=request["ProcessingJobName"])
        assert described["AppSpecification"] == request["AppSpecification"]
        assert described["ProcessingInputs"] == request["ProcessingInputs"]


# --------------------------------------------------------------------------- IAM
def statements(policies: dict, role: str) -> list[dict]:
    return policies[role]["policy"]["Statement"]


@pytest.mark.parametrize("overrides", [{}, RCF], ids=["iforest", "sagemaker-rcf"])
def test_iam_is_scoped_to_the_bucket_prefix_log_group_key_and_job_names(overrides):
    policies = iam_policies(deploy_config(**overrides))
    for role, body in policies.items():
        for statement in body["policy"]["Statement"]:
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if "*" in resources:
                assert set(statement["Action"]) <= STAR_ACTIONS, (role, statement)
            for action in statement["Action"]:
                if action.startswith("s3:") and action != "s3:ListBucket":
                    assert all(r.startswith("arn:aws:s3:::audit-bucket/auditsift/") for r in resources), statement
                if action == "s3:ListBucket":
                    assert resources == ["arn:aws:s3:::audit-bucket"] and "s3:prefix" in statement["Condition"]["StringLike"]
                if action.startswith("kms:"):
                    assert resources == [KEY_ARN]
                if action == "iam:PassRole":
                    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    machine = {a: s["Resource"] for s in statements(policies, "state_machine_role") for a in s["Action"]}
    assert machine["sagemaker:CreateProcessingJob"] == [f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:processing-job/auditsift-*"]
    assert machine["events:PutRule"][0] == f"arn:aws:events:{REGION}:{ACCOUNT}:rule/StepFunctionsGetEventsForSageMakerProcessingJobsRule"
    assert len(machine["events:PutRule"]) == (3 if overrides else 1)
    job = {a: s["Resource"] for s in statements(policies, "job_role") for a in s["Action"]}
    assert job["logs:FilterLogEvents"] == [f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/eks/prod/cluster",
                                           f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/eks/prod/cluster:*"]
    assert ("sagemaker_execution_role" in policies) == bool(overrides)
    assert ("securityhub:BatchImportFindings" in job) != bool(overrides)


def test_iam_for_sagemaker_rcf_lets_only_the_state_machine_start_jobs():
    policies = iam_policies(deploy_config(**RCF))
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
    machine = statements(policies, "state_machine_role")
    by_sid = {s["Sid"]: s for s in machine}
    assert by_sid["RcfTrainingJobs"]["Action"] == ["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob",
                                                   "sagemaker:StopTrainingJob", "sagemaker:AddTags"]
    assert by_sid["RcfTrainingJobs"]["Resource"] == [f"{arn}:training-job/auditsift-rcf-*"]
    assert by_sid["RcfModels"]["Action"] == ["sagemaker:CreateModel", "sagemaker:AddTags"]
    assert by_sid["RcfModels"]["Resource"] == [f"{arn}:model/auditsift-rcf-*"]
    assert by_sid["RcfTransformJobs"]["Action"] == ["sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob",
                                                    "sagemaker:StopTransformJob", "sagemaker:AddTags"]
    assert by_sid["RcfTransformJobs"]["Resource"] == [f"{arn}:transform-job/auditsift-rcf-*"]
    assert by_sid["PassRcfRole"]["Resource"] == [RCF["model"]["sagemaker"]["role_arn"]]
    assert by_sid["SyncIntegrationRule"]["Resource"] == [
        f"arn:aws:events:{REGION}:{ACCOUNT}:rule/StepFunctionsGetEventsFor{kind}Rule"
        for kind in ("SageMakerProcessingJobs", "SageMakerTrainingJobs", "SageMakerTransformJobs")]
    assert by_sid["ReadPlan"]["Resource"] == [f"arn:aws:s3:::audit-bucket/auditsift/state/cluster=prod/{area}/*"
                                              for area in ("plans", "sagemaker")]
    assert by_sid["KmsJobVolumes"]["Resource"] == [KEY_ARN]

    # every resource the definition names is covered: the jobs' names and the passed roles
    states = state_machine_definition(deploy_config(**RCF))["States"]
    passed = {s["Parameters"].get("RoleArn") or s["Parameters"].get("ExecutionRoleArn") for s in states.values()
              if s.get("Resource", "").startswith("arn:aws:states:::sagemaker:")} - {None}
    assert passed == {DEPLOY["deploy"]["job_role_arn"], RCF["model"]["sagemaker"]["role_arn"]}
    assert passed == {r for s in machine if s["Action"] == ["iam:PassRole"] for r in s["Resource"]}

    # the jobs' role only checks what ran; it cannot start SageMaker jobs or pass a role
    job_actions = {a for s in statements(policies, "job_role") for a in s["Action"]}
    assert {"sagemaker:DescribeTrainingJob", "sagemaker:DescribeModel", "sagemaker:DescribeTransformJob"} <= job_actions
    assert not {a for a in job_actions if a.startswith("sagemaker:Create") or a == "iam:PassRole"}
    default_machine = {a for s in statements(iam_policies(deploy_config()), "state_machine_role") for a in s["Action"]}
    assert not {a for a in default_machine if a in ("sagemaker:CreateTrainingJob", "sagemaker:CreateModel", "sagemaker:AddTags")}


def test_moto_iam_accepts_every_policy_and_trust_document():
    config = deploy_config(**RCF)
    iam = aws_session.client("iam", config)
    for role, body in iam_policies(config).items():
        iam.create_role(RoleName=f"auditsift-{role}"[:64], AssumeRolePolicyDocument=json.dumps(body["trust"]))
        iam.create_policy(PolicyName=f"auditsift-{role}"[:128], PolicyDocument=json.dumps(body["policy"]))


def test_iam_refuses_a_kms_alias():
    with pytest.raises(ConfigError, match="storage.kms_key_id"):
        iam_policies(deploy_config(storage={"kms_key_id": "alias/auditsift"}))


# --------------------------------------------------------------------------- cron
@pytest.mark.parametrize("expression, crontab", [
    ("cron(15 6 * * ? *)", "15 6 * * *"),
    ("cron(0 8 ? * MON-FRI *)", "0 8 * * MON-FRI"),
    ("cron(0 8 ? * 2-6 *)", "0 8 * * 1-5"),
    ("cron(0 8 ? * 1,7 *)", "0 8 * * 0,6"),
    ("cron(30 1 1 * ? *)", "30 1 1 * *"),
    ("rate(1 day)", "0 0 * * *"),
    ("rate(6 hours)", "0 */6 * * *"),
    ("rate(15 minutes)", "*/15 * * * *"),
])
def test_eventbridge_expressions_become_crontab_fields(expression, crontab):
    assert crontab_schedule(expression) == crontab


@pytest.mark.parametrize("expression", ["cron(0 8 ? * 6L *)", "cron(0 8 * * ? 2027)", "rate(7 days)", "cron(0 8 * *)"])
def test_expressions_cron_cannot_express_are_refused(expression):
    with pytest.raises(ConfigError, match="schedule.expression"):
        crontab_schedule(expression)


def test_crontab_line_runs_the_wrapper_on_the_schedule():
    line = crontab_line(parse_config({"cluster": "demo"}), "/etc/auditsift.yaml", "/var/lib/auditsift", [])
    comment, entry = line.splitlines()
    assert comment.startswith("# auditsift scheduled run for cluster demo: cron(15 6 * * ? *) is UTC")
    assert entry == ("15 6 * * * /opt/auditsift/scripts/auditsift-cron --workdir /var/lib/auditsift --config "
                     "/etc/auditsift.yaml --from-cloudwatch /aws/eks/demo/cluster >> /var/log/auditsift-cron.log 2>&1")


def run_wrapper(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUDITSIFT_PYTHON": sys.executable}
    return subprocess.run([str(WRAPPER), *arguments], capture_output=True, text=True, timeout=300, env=env)


def hold(code: str, target: Path) -> subprocess.Popen:
    """A real second process holding a lock on ``target`` until killed."""
    process = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


HOLD_WORKDIR = ("import sys, time\nfrom pipeline.io.storage import LocalStorage\n"
                "with LocalStorage(sys.argv[1]).lock():\n    print('locked', flush=True)\n    time.sleep(120)\n")
HOLD_FLOCK = ("import fcntl, sys, time\nhandle = open(sys.argv[1], 'a')\nfcntl.flock(handle, fcntl.LOCK_EX)\n"
              "print('locked', flush=True)\ntime.sleep(120)\n")


def cron_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A day of training hours and two scored hours for three people; a config small enough to run in seconds."""
    people = [("alice@corp.example", "10.0.12.34"), ("bob@corp.example", "10.0.40.2"), ("carol@corp.example", "10.0.9.9")]
    items = [event(datetime(2026, 11, day, hour, 7 * k, tzinfo=timezone.utc), audit_id=f"e-{day}-{hour}-{n}-{k}",
                   user={"username": user, "groups": ["system:authenticated"]}, sourceIPs=[ip])
             for day, hours in ((1, (8, 9, 10, 11)), (2, (8, 9))) for hour in hours
             for n, (user, ip) in enumerate(people) for k in range(4)]
    source = write_jsonl(tmp_path / "audit.jsonl", items)
    config = config_file(tmp_path, {"cluster": "demo", "model": {"min_train_rows": 5, "iforest": {"n_estimators": 50}}})
    return source, config


def test_a_second_run_on_a_locked_workdir_exits_75_and_leaves_it_valid(tmp_path):
    source, config = cron_inputs(tmp_path)
    workdir = tmp_path / "work"
    storage = LocalStorage(workdir)
    storage.write_json("state/cluster=demo/latest.json", {"archive": {"run_id": "earlier"}})
    arguments = ["--workdir", str(workdir), "--config", str(config), "--input", str(source), "--now", "2026-11-02T12:15:00Z"]

    holder = hold(HOLD_WORKDIR, workdir)
    try:
        refused = run_wrapper(*arguments)
        assert refused.returncode == 75, refused.stderr
        assert re.match(r"error: workdir .* is locked by another run \(host .+, pid \d+\)", refused.stderr.splitlines()[0])
        assert storage.list("") == ["locks/run.lock", "state/cluster=demo/latest.json"]
        assert storage.read_json("locks/run.lock")["pid"] == holder.pid
        assert storage.read_json("state/cluster=demo/latest.json") == {"archive": {"run_id": "earlier"}}
    finally:
        holder.kill()
        holder.wait()

    completed = run_wrapper(*arguments, "--json", "--log-level", "WARNING")
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["status"] == "ok" and result["retrained"] is True and result["records"] > 0
    assert result["ranges"]["score_from"] == "2026-11-01T12:00:00Z"
    assert Path(result["report"]).is_file() and not storage.exists("locks/run.lock")
    assert storage.read_json("state/cluster=demo/latest.json")["score"]["records"] == result["records"]
    assert storage.exists(f"state/cluster=demo/plans/{result['run_id']}.json")


def test_a_second_wrapper_while_one_runs_exits_75_before_starting(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    holder = hold(HOLD_FLOCK, workdir / ".auditsift-cron.lock")
    try:
        refused = run_wrapper("--workdir", str(workdir), "--input", str(tmp_path))
        assert refused.returncode == 75
        assert refused.stderr.strip() == (f"auditsift-cron: another auditsift-cron run holds {workdir}/.auditsift-cron.lock; "
                                          f"not starting a second run on {workdir}")
        assert sorted(p.name for p in workdir.iterdir()) == [".auditsift-cron.lock"]
    finally:
        holder.kill()
        holder.wait()


def test_deploy_cron_prints_the_crontab_line(tmp_path):
    config = config_file(tmp_path, {"cluster": "demo", "schedule": {"expression": "cron(0 7 ? * MON-FRI *)"}})
    result = CliRunner().invoke(deploy_command, ["cron", "--config", str(config), "--workdir", "/srv/auditsift",
                                                 "--input", "s3://logs/eks/"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].startswith(f"0 7 * * MON-FRI /opt/auditsift/scripts/auditsift-cron --workdir "
                                                    f"/srv/auditsift --config {config} --input s3://logs/eks/")
