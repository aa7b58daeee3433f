"""Deployment artefacts for scheduled runs, generated from the one configuration and printed, never applied.

``auditsift deploy stepfunctions``  the Amazon States Language definition of one scheduled run
``auditsift deploy schedule``       the EventBridge Scheduler CreateSchedule request that starts it
``auditsift deploy iam``            least-privilege policies (and trust policies) for every role involved
``auditsift deploy processing``     the scale-out features CreateProcessingJob requests (map and reduce)
``auditsift deploy athena``         the Athena/Glue table over the archive and example analyst queries
``auditsift deploy cron``           the crontab line for hosts without Step Functions

Everything lives under one workdir ``s3://<deploy.bucket>/<prefix>`` (``--prefix``, default
``auditsift``); the configuration the containers read is uploaded to ``<workdir>/deploy/config.yaml``.
Missing values stop with one line naming the configuration key. docs/operations.md shows the
state diagram, the roles and how to apply each artefact.
"""
from __future__ import annotations

import functools
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import click

from pipeline.config import Config, load_config
from pipeline.errors import ConfigError
from pipeline.storage import safe_segment

DEFAULT_PREFIX = "auditsift"
CONFIG_KEY = "deploy/config.yaml"
CONTAINER_CONFIG_DIR = "/opt/ml/processing/input/config"
CONTAINER_CONFIG = f"{CONTAINER_CONFIG_DIR}/config.yaml"
ARCHIVE_DIR = "/opt/ml/processing/input/archive"
PARTIALS_OUT_DIR = "/opt/ml/processing/output/partials"
PARTIALS_IN_DIR = "/opt/ml/processing/input/partials"
FEATURES_OUT_DIR = "/opt/ml/processing/output/features"
VOLUME_GB = 50
JOB_PREFIX = "auditsift-"
PROCESSING_RULE = "StepFunctionsGetEventsForSageMakerProcessingJobsRule"
TRAINING_RULE = "StepFunctionsGetEventsForSageMakerTrainingJobsRule"
TRANSFORM_RULE = "StepFunctionsGetEventsForSageMakerTransformJobsRule"
SAGEMAKER_ERRORS = ["SageMaker.AmazonSageMakerException", "ThrottlingException"]
RUNTIME = {"archive": 7200, "plan": 900, "features-map": 7200, "features": 7200, "train": 14400, "score": 7200,
           "report": 3600, "export": 1800, "train-prep": 7200, "score-prep": 7200}
RCF_JOB_NAME = "auditsift-rcf-{}-{}{}"  # run id, step letter, $$.State.RetryCount: a new name per attempt
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*(/[A-Za-z0-9._=-]+)*")
_ECR_IMAGE = re.compile(r"(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<repo>[a-z0-9._/-]+)[:@].+")
_KMS_KEY_ID = re.compile(r"(?:mrk-)?[0-9a-f-]{32,36}")


def cli_boundary(fn):
    """``pipeline.cli.boundary`` (one-line errors, exit codes), looked up when the command runs.

    pipeline.cli imports these command modules to register them, so they cannot import
    pipeline.cli while they load.
    """

    @functools.wraps(fn)
    def call(*args, **kwargs):
        from pipeline.cli import boundary

        return boundary(fn)(*args, **kwargs)

    return call


# --------------------------------------------------------------------------- resolved names
def require(config: Config, key: str):
    """The value at dotted ``key`` of the config; ConfigError naming the key when it is unset."""
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    if value in (None, ""):
        raise ConfigError(f"{key} is not set", hint=f"set {key} in the config (docs/operations.md lists what deploy needs)")
    return value


def check_prefix(prefix: str) -> str:
    cleaned = prefix.strip("/")
    if not _PREFIX.fullmatch(cleaned):
        raise ConfigError(f"--prefix {prefix!r} is not a plain S3 key prefix", hint="use letters, digits and . _ = - separated by /")
    return cleaned


def partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def account_id(config: Config) -> str:
    """The AWS account, read from the state machine role ARN (arn:aws:iam::<account>:role/...)."""
    key = "deploy.state_machine_role_arn"
    arn = require(config, key)
    parts = arn.split(":")
    if len(parts) < 6 or parts[2] != "iam" or not re.fullmatch(r"\d{12}", parts[4]):
        raise ConfigError(f"{key} is not an IAM role ARN: {arn!r}", hint="e.g. arn:aws:iam::123456789012:role/auditsift-run")
    return parts[4]


def workdir(config: Config, prefix: str) -> str:
    return f"s3://{require(config, 'deploy.bucket')}/{prefix}"


def log_group(config: Config) -> str:
    return config.deploy.log_group or f"/aws/eks/{config.cluster}/cluster"


def state_machine_name(config: Config) -> str:
    return f"auditsift-{config.cluster}"[:80]


def kms_key(config: Config) -> str | None:
    return config.storage.kms_key_id


def kms_key_arn(config: Config, region: str, account: str) -> str | None:
    """The KMS key as an ARN for IAM policies (aliases cannot authorise Decrypt)."""
    key = kms_key(config)
    if not key:
        return None
    if key.startswith("arn:") and ":key/" in key:
        return key
    if _KMS_KEY_ID.fullmatch(key):
        return f"arn:{partition(region)}:kms:{region}:{account}:key/{key}"
    raise ConfigError(f"storage.kms_key_id {key!r} is an alias; IAM policies need the key itself",
                      hint="set storage.kms_key_id to the key ARN or key id")


def cluster_segment(config: Config) -> str:
    return safe_segment(config.cluster)


# --------------------------------------------------------------------------- processing jobs
def processing_request(config: Config, prefix: str, *, entrypoint: list[str], arguments: list[str] | None,
                       runtime_seconds: int, instance_count: int = 1, inputs: list[dict] = (),
                       outputs: list[dict] = (), isolated: bool = False) -> dict:
    """A CreateProcessingJob request without its name: the auditsift image, the job role, the
    config file as the first input, KMS on volumes and outputs when storage.kms_key_id is set."""
    role = require(config, "deploy.job_role_arn")
    image = require(config, "deploy.processing_image_uri")
    kms = kms_key(config)
    cluster_config = {"InstanceCount": instance_count, "InstanceType": config.deploy.processing_instance_type,
                      "VolumeSizeInGB": VOLUME_GB}
    if kms:
        cluster_config["VolumeKmsKeyId"] = kms
    app = {"ImageUri": image, "ContainerEntrypoint": entrypoint}
    if arguments is not None:
        app["ContainerArguments"] = arguments
    request = {
        "RoleArn": role,
        "AppSpecification": app,
        "ProcessingResources": {"ClusterConfig": cluster_config},
        "ProcessingInputs": [s3_input("config", f"{workdir(config, prefix)}/{CONFIG_KEY}", CONTAINER_CONFIG_DIR), *inputs],
        "StoppingCondition": {"MaxRuntimeInSeconds": runtime_seconds},
        "NetworkConfig": {"EnableNetworkIsolation": isolated, "EnableInterContainerTrafficEncryption": instance_count > 1},
    }
    if outputs:
        request["ProcessingOutputConfig"] = {"Outputs": list(outputs), **({"KmsKeyId": kms} if kms else {})}
    return request


def s3_input(name: str, uri: str, local_path: str, distribution: str = "FullyReplicated") -> dict:
    return {"InputName": name, "S3Input": {"S3Uri": uri, "LocalPath": local_path, "S3DataType": "S3Prefix",
                                           "S3InputMode": "File", "S3DataDistributionType": distribution}}


def s3_output(name: str, uri: str, local_path: str) -> dict:
    return {"OutputName": name, "S3Output": {"S3Uri": uri, "LocalPath": local_path, "S3UploadMode": "EndOfJob"}}


def archive_uri(config: Config, prefix: str) -> str:
    return f"{workdir(config, prefix)}/archive/cluster={cluster_segment(config)}/"


def partials_uri(config: Config, prefix: str) -> str:
    return f"{workdir(config, prefix)}/features/cluster={cluster_segment(config)}/partials/"


def map_request(config: Config, prefix: str) -> dict:
    """Scale-out features map: N instances, each given a share of the archive's hour files
    (ShardedByS3Key), no network access; partials land in the workdir's partial cache."""
    return processing_request(
        config, prefix, entrypoint=["python", "-m", "pipeline.processing"],
        arguments=["map", "--input-dir", ARCHIVE_DIR, "--output-dir", PARTIALS_OUT_DIR, "--config", CONTAINER_CONFIG],
        runtime_seconds=RUNTIME["features-map"], instance_count=config.deploy.processing_instance_count,
        inputs=[s3_input("archive", archive_uri(config, prefix), ARCHIVE_DIR, "ShardedByS3Key")],
        outputs=[s3_output("partials", partials_uri(config, prefix), PARTIALS_OUT_DIR)], isolated=True,
    )


def features_fingerprint(config: Config) -> str:
    from pipeline.context import RunContext
    from pipeline.stages import features_fingerprint as fingerprint

    return fingerprint(RunContext(None, config, "deploy"))


def reduce_request(config: Config, prefix: str) -> dict:
    """Scale-out features reduce: one instance merges this configuration's partials into one feature table."""
    fingerprint = features_fingerprint(config)
    output = f"{workdir(config, prefix)}/features/cluster={cluster_segment(config)}/scale-out/{fingerprint}/"
    return processing_request(
        config, prefix, entrypoint=["python", "-m", "pipeline.processing"],
        arguments=["reduce", "--partials-dir", PARTIALS_IN_DIR, "--output", f"{FEATURES_OUT_DIR}/features.parquet",
                   "--config", CONTAINER_CONFIG],
        runtime_seconds=RUNTIME["features"],
        inputs=[s3_input("partials", f"{partials_uri(config, prefix)}{fingerprint}/", PARTIALS_IN_DIR)],
        outputs=[s3_output("features", output, FEATURES_OUT_DIR)], isolated=True,
    )


def processing_requests(config: Config, prefix: str = DEFAULT_PREFIX, now: datetime | None = None) -> dict:
    """The scale-out features CreateProcessingJob requests, named ``auditsift-features-{map,reduce}-<UTC time>``."""
    prefix = check_prefix(prefix)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    return {
        "map": {"ProcessingJobName": f"{JOB_PREFIX}features-map-{stamp}", **map_request(config, prefix)},
        "reduce": {"ProcessingJobName": f"{JOB_PREFIX}features-reduce-{stamp}", **reduce_request(config, prefix)},
    }


# --------------------------------------------------------------------------- state machine
def _literal(text: str) -> str:
    """A string literal for an intrinsic function: quoted, with ' { } \\ escaped."""
    return "'" + re.sub(r"([\\'{}])", r"\\\1", text) + "'"


def _format(template: str, *paths: str) -> str:
    """``States.Format`` of ``template`` (whose ``{}`` are placeholders) over the given paths."""
    quoted = "{}".join(_literal(part)[1:-1] for part in template.split("{}"))
    return f"States.Format('{quoted}', {', '.join(paths)})"


def _states_array(items: list[str]) -> str:
    """``States.Array(...)`` of literals and ``$``-paths (items starting with '$' are paths)."""
    return "States.Array(" + ", ".join(item if item.startswith("$") else _literal(item) for item in items) + ")"


def _sagemaker_retry() -> list[dict]:
    """Retry SageMaker API errors and throttling when the job is being created. A job that ran and
    failed (States.TaskFailed) is not retried: its name is taken, so a retry could only fail again."""
    return [{"ErrorEquals": SAGEMAKER_ERRORS, "IntervalSeconds": 30, "BackoffRate": 2.0, "MaxAttempts": 4}]


def _sdk_retry() -> list[dict]:
    return [{"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 5, "BackoffRate": 2.0, "MaxAttempts": 3}]


def _catch(next_state: str, result_path: str = "$.error") -> list[dict]:
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": result_path, "Next": next_state}]


def _processing_task(stage: str, request: dict, next_state: str, arguments_expression: str | None = None,
                     comment: str = "") -> dict:
    parameters = {"ProcessingJobName.$": _format(f"{JOB_PREFIX}{stage}-{{}}", "$.run.id"), **request}
    if arguments_expression:
        parameters["AppSpecification"] = {**request["AppSpecification"], "ContainerArguments.$": arguments_expression}
    state = {"Type": "Task", "Resource": "arn:aws:states:::sagemaker:createProcessingJob.sync", "Parameters": parameters,
             "ResultPath": None, "Retry": _sagemaker_retry(), "Catch": _catch("NotifyFailure"), "Next": next_state}
    return {"Comment": comment, **state} if comment else state


def _stage_arguments(config: Config, prefix: str, stage: str, *extra: str) -> list[str]:
    return ["--log-level", "INFO", stage, *extra, "--workdir", workdir(config, prefix), "--config", CONTAINER_CONFIG,
            "--quiet", "--wait-lock", "0"]


def _stage_job(config: Config, prefix: str, stage: str, arguments: list[str] | None,
               entrypoint: tuple[str, ...] = ("python", "-m", "pipeline")) -> dict:
    return processing_request(config, prefix, entrypoint=list(entrypoint), arguments=arguments,
                              runtime_seconds=RUNTIME[stage])


def plan_key_path(config: Config, prefix: str) -> str:
    """The plan object's key as a States.Format template over the run id."""
    return f"{prefix}/state/cluster={cluster_segment(config)}/plans/{{}}.json"


def rcf_spec_key_path(config: Config, prefix: str, kind: str) -> str:
    """A split sagemaker-rcf spec's key (``pipeline.processing.rcf_spec_key``) as a States.Format template over the run id."""
    return f"{prefix}/state/cluster={cluster_segment(config)}/sagemaker/{{}}/{kind}.json"


def _rcf_job_name(step: str) -> str:
    """``States.Format`` of ``auditsift-rcf-<run id>-<step><attempt>``: at most 53 characters, and a retry
    after a lost response (a 5xx after SageMaker created the job) gets a new name instead of "name in use"."""
    return _format(RCF_JOB_NAME.format("{}", step, "{}"), "$.run.id", "$$.State.RetryCount")


def _sagemaker_sync_task(resource: str, parameters: dict, result_selector: dict, result_path: str, next_state: str,
                         comment: str) -> dict:
    return {"Type": "Task", "Comment": comment, "Resource": f"arn:aws:states:::sagemaker:{resource}",
            "Parameters": parameters, "ResultSelector": result_selector, "ResultPath": result_path,
            "Retry": _sagemaker_retry(), "Catch": _catch("NotifyFailure"), "Next": next_state}


def _read_spec_task(config: Config, prefix: str, bucket: str, kind: str, result_path: str, next_state: str) -> dict:
    return {
        "Type": "Task", "Comment": f"Read the {kind} spec the previous step wrote (requests for the SageMaker steps).",
        "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
        "Parameters": {"Bucket": bucket, "Key.$": _format(rcf_spec_key_path(config, prefix, kind), "$.run.id")},
        "ResultSelector": {"spec.$": "States.StringToJson($.Body)"}, "ResultPath": result_path,
        "Retry": _sdk_retry(), "Catch": _catch("NotifyFailure"), "Next": next_state,
    }


def _transform_parameters(step: str, model_name_path: str, body_path: str, tags: list[dict]) -> dict:
    fields = ("BatchStrategy", "MaxPayloadInMB", "TransformInput", "TransformOutput", "TransformResources")
    return {"TransformJobName.$": _rcf_job_name(step), "ModelName.$": model_name_path,
            **{f"{field}.$": f"{body_path}.{field}" for field in fields}, "Tags": tags}


def rcf_states(config: Config, prefix: str, bucket: str, score_next: str) -> dict[str, dict]:
    """The sagemaker-rcf train and score steps: the pipeline's work in Processing jobs around SageMaker's own
    training job, model and batch transforms, which Step Functions runs with ``.sync``.

    PrepareTraining -> ReadTrainingSpec -> TrainRcf -> CreateRcfModel -> ScoreTrainingRows -> Train, then
    PrepareScoring -> ReadScoringSpec -> ScoreRcf -> Score (-> ``score_next``). The request bodies come from the
    spec files the prepare steps write (``SageMakerRcf.prepare_training``/``prepare_scoring``, the same request
    builders as the in-process backend); names, roles and tags are fixed here.
    """
    role = require(config, "model.sagemaker.role_arn")
    tags = [{"Key": "auditsift:cluster", "Value": config.cluster}]
    train_spec, score_spec = "$.rcf_training.spec", "$.rcf_scoring.spec"
    training_body = f"{train_spec}.requests.training"
    entry = ("python", "-m", "pipeline.processing")

    def step_arguments(command: str, *extra: str) -> str:
        return _states_array(["--log-level", "INFO", command, "--workdir", workdir(config, prefix), "--config",
                              CONTAINER_CONFIG, "--spec-id", "$.run.id", *extra, "--wait-lock", "0"])

    return {
        "PrepareTraining": _processing_task(
            "train-prep", _stage_job(config, prefix, "train-prep", None, entry), "ReadTrainingSpec",
            step_arguments("rcf-train-prepare"),
            comment="Scale the training rows as the detector does, upload headerless CSV, write the training spec."),
        "ReadTrainingSpec": _read_spec_task(config, prefix, bucket, "training", "$.rcf_training", "TrainRcf"),
        "TrainRcf": _sagemaker_sync_task(
            "createTrainingJob.sync",
            {"TrainingJobName.$": _rcf_job_name("t"), "RoleArn": role,
             **{f"{field}.$": f"{training_body}.{field}" for field in (
                 "AlgorithmSpecification", "HyperParameters", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
                 "StoppingCondition")},
             "Tags": tags},
            {"name.$": "$.TrainingJobName", "artifacts.$": "$.ModelArtifacts.S3ModelArtifacts"},
            "$.rcf_training.job", "CreateRcfModel",
            "SageMaker's built-in Random Cut Forest (randomcutforest:1) on the staged CSV."),
        "CreateRcfModel": _sagemaker_sync_task(
            "createModel",
            {"ModelName.$": _rcf_job_name("m"), "ExecutionRoleArn": role,
             "PrimaryContainer": {"Image.$": f"{train_spec}.image_uri", "ModelDataUrl.$": "$.rcf_training.job.artifacts"},
             "Tags": tags},
            {"name.$": "States.ArrayGetItem(States.StringSplit($.ModelArn, '/'), 1)"},
            "$.rcf_training.model", "ScoreTrainingRows", "The model the batch transforms use (name read back from its ARN)."),
        "ScoreTrainingRows": _sagemaker_sync_task(
            "createTransformJob.sync",
            _transform_parameters("c", "$.rcf_training.model.name", f"{train_spec}.requests.calibration", tags),
            {"name.$": "$.TransformJobName"}, "$.rcf_training.calibration", "Train",
            "Scores of the training rows, which calibrate the threshold."),
        "Train": _processing_task(
            "train", _stage_job(config, prefix, "train", None, entry), "PrepareScoring",
            step_arguments("rcf-train-finish", "--training-job", "$.rcf_training.job.name", "--model-name",
                           "$.rcf_training.model.name", "--transform-job", "$.rcf_training.calibration.name"),
            comment="Calibrate the threshold on the training scores; write the verified model manifest and state."),
        "PrepareScoring": _processing_task(
            "score-prep", _stage_job(config, prefix, "score-prep", None, entry), "ReadScoringSpec",
            step_arguments("rcf-score-prepare"),
            comment="Scale the scoring rows with the current model, upload headerless CSV, write the scoring spec."),
        "ReadScoringSpec": _read_spec_task(config, prefix, bucket, "scoring", "$.rcf_scoring", "ScoreRcf"),
        "ScoreRcf": _sagemaker_sync_task(
            "createTransformJob.sync",
            _transform_parameters("s", f"{score_spec}.requests.transform.ModelName", f"{score_spec}.requests.transform", tags),
            {"name.$": "$.TransformJobName"}, "$.rcf_scoring.transform", "Score",
            "Batch transform of the scoring rows: one {\"score\": x} line per row."),
        "Score": _processing_task(
            "score", _stage_job(config, prefix, "score", None, entry), score_next,
            step_arguments("rcf-score-finish", "--transform-job", "$.rcf_scoring.transform.name"),
            comment="Rank, explain and record findings from the transform's scores (as `auditsift score`)."),
    }


def state_machine_definition(config: Config, prefix: str = DEFAULT_PREFIX) -> dict:
    """The Amazon States Language definition of one scheduled run (diagram in docs/operations.md).

    Start gives the run an id (job names ``auditsift-<step>-<id>``); Archive reads the cluster's
    CloudWatch audit streams; Plan decides the ranges (ending at the execution's start time) and
    whether the model is due; RetrainDue trains when the execution input says ``retrain: true``,
    or when it says nothing and the plan says so (with sagemaker-rcf, ``rcf_states``: SageMaker's
    training job and batch transforms run as ``.sync`` steps between Processing steps); Score,
    Report and (when configured) Export follow;
    Notify publishes to deploy.notify_topic_arn. Every Task retries transient errors and routes any
    failure to NotifyFailure, then Failed.
    """
    prefix = check_prefix(prefix)
    bucket = require(config, "deploy.bucket")
    topic = require(config, "deploy.notify_topic_arn")
    rcf = config.model.backend == "sagemaker-rcf"
    if rcf:
        require(config, "model.sagemaker.role_arn")
    train_entry, score_entry = ("PrepareTraining", "PrepareScoring") if rcf else ("Train", "Score")
    scale_out = config.deploy.processing_instance_count > 1
    export = config.findings.securityhub.enabled or config.findings.sns.enabled
    cluster = config.cluster
    after_report = "Export" if export else "NotifySuccess"
    plan = "$.plan.decision.ranges"
    features_arguments = _states_array(_stage_arguments(
        config, prefix, "features", "--train-from", f"{plan}.train_from", "--train-to", f"{plan}.train_to",
        "--score-from", f"{plan}.score_from", "--score-to", f"{plan}.score_to"))
    plan_arguments = _states_array([
        "--log-level", "INFO", "plan", "--workdir", workdir(config, prefix), "--config", CONTAINER_CONFIG,
        "--plan-id", "$.run.id", "--now", "$$.Execution.StartTime"])

    states: dict[str, dict] = {
        "Start": {"Type": "Pass", "Comment": "A unique id for this run's job names and plan file.",
                  "Parameters": {"id.$": "States.UUID()"}, "ResultPath": "$.run", "Next": "Archive"},
        "Archive": _processing_task(
            "archive", _stage_job(config, prefix, "archive",
                                  _stage_arguments(config, prefix, "archive", "--from-cloudwatch", log_group(config))),
            "Plan", comment="Archive new audit events from CloudWatch Logs (checkpointed, exactly once)."),
        "Plan": _processing_task(
            "plan", _stage_job(config, prefix, "plan", None, ("python", "-m", "pipeline.processing")), "ReadPlan",
            plan_arguments, comment="Decide ranges and whether the model is due; writes the plan file."),
        "ReadPlan": {
            "Type": "Task", "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
            "Parameters": {"Bucket": bucket, "Key.$": _format(plan_key_path(config, prefix), "$.run.id")},
            "ResultSelector": {"decision.$": "States.StringToJson($.Body)"}, "ResultPath": "$.plan",
            "Retry": _sdk_retry(), "Catch": _catch("NotifyFailure"), "Next": "FeaturesMap" if scale_out else "Features",
        },
    }
    if scale_out:
        states["FeaturesMap"] = _processing_task(
            "features-map", map_request(config, prefix), "Features",
            comment=f"Partial aggregates on {config.deploy.processing_instance_count} instances (ShardedByS3Key), "
                    "written into the workdir's partial cache.")
    states["Features"] = _processing_task(
        "features", _stage_job(config, prefix, "features", None), "RetrainDue", features_arguments,
        comment="Reduce cached partials and finalise the feature table for the plan's ranges.")
    states["RetrainDue"] = {
        "Type": "Choice",
        "Comment": "Execution input retrain: true/false wins; otherwise the plan decides (schedule.retrain_every_days).",
        "Choices": [
            {"And": [{"Variable": "$.retrain", "IsPresent": True}, {"Variable": "$.retrain", "BooleanEquals": True}],
             "Next": train_entry},
            {"And": [{"Variable": "$.retrain", "IsPresent": True}, {"Variable": "$.retrain", "BooleanEquals": False}],
             "Next": score_entry},
            {"Variable": "$.plan.decision.retrain", "BooleanEquals": True, "Next": train_entry},
        ],
        "Default": score_entry,
    }
    if rcf:
        states.update(rcf_states(config, prefix, bucket, "Report"))
    else:
        states["Train"] = _processing_task(
            "train", _stage_job(config, prefix, "train", _stage_arguments(config, prefix, "train")), "Score",
            comment=f"Train model.backend {config.model.backend} on the training rows.")
        states["Score"] = _processing_task(
            "score", _stage_job(config, prefix, "score", _stage_arguments(config, prefix, "score")), "Report")
    states["Report"] = _processing_task(
        "report", _stage_job(config, prefix, "report", _stage_arguments(config, prefix, "report")), after_report)
    if export:
        states["Export"] = _processing_task(
            "export", _stage_job(config, prefix, "export",
                                 ["--workdir", workdir(config, prefix), "--config", CONTAINER_CONFIG],
                                 ("python", "-m", "pipeline.findings_export")),
            "NotifySuccess", comment="Flagged findings to Security Hub (ASFF) and/or the findings SNS topic.")
    reports = f"{workdir(config, prefix)}/reports/cluster={cluster_segment(config)}/"
    states["NotifySuccess"] = {
        "Type": "Task", "Resource": "arn:aws:states:::sns:publish",
        "Parameters": {
            "TopicArn": topic, "Subject": f"auditsift {cluster}: scheduled run finished"[:100],
            "Message.$": _format(f"auditsift run {{}} for cluster {cluster} finished (plan: {{}}). Reports: {reports}",
                                 "$$.Execution.Name", "$.plan.decision.reason"),
        },
        "ResultPath": None, "Retry": _sdk_retry(), "Catch": _catch("NotifyFailure"), "End": True,
    }
    states["NotifyFailure"] = {
        "Type": "Task", "Resource": "arn:aws:states:::sns:publish",
        "Parameters": {
            "TopicArn": topic, "Subject": f"auditsift {cluster}: scheduled run FAILED"[:100],
            "Message.$": _format(f"auditsift run {{}} for cluster {cluster} failed: {{}}: {{}}",
                                 "$$.Execution.Name", "$.error.Error", "$.error.Cause"),
        },
        "ResultPath": None, "Retry": _sdk_retry(), "Catch": _catch("Failed", "$.notify_error"), "Next": "Failed",
    }
    states["Failed"] = {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"}
    return {
        "Comment": f"auditsift scheduled run for cluster {cluster} (generated by `auditsift deploy stepfunctions`; "
                   "see docs/operations.md)",
        "StartAt": "Start",
        "TimeoutSeconds": 12 * 3600,
        "States": states,
    }


# --------------------------------------------------------------------------- schedule
def schedule_request(config: Config, role_arn: str, state_machine_arn: str | None = None) -> dict:
    """EventBridge Scheduler CreateSchedule: config.schedule.expression (UTC) starts the state machine.

    The input carries the scheduled time for the record; the run's ranges come from the
    execution's start time (the Plan step).
    """
    expression = config.schedule.expression
    if not re.fullmatch(r"(cron|rate|at)\(.+\)", expression):
        raise ConfigError(f"schedule.expression {expression!r} is not an EventBridge Scheduler expression",
                          hint="e.g. cron(15 6 * * ? *) or rate(1 day)")
    if not state_machine_arn:
        region = require(config, "aws.region")
        state_machine_arn = (f"arn:{partition(region)}:states:{region}:{account_id(config)}:stateMachine:"
                             f"{state_machine_name(config)}")
    return {
        "Name": f"auditsift-{config.cluster}"[:64],
        "GroupName": "default",
        "Description": f"auditsift scheduled run for EKS cluster {config.cluster}"[:512],
        "ScheduleExpression": expression,
        "ScheduleExpressionTimezone": "UTC",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED",
        "Target": {
            "Arn": state_machine_arn,
            "RoleArn": role_arn,
            "Input": json.dumps({"source": "eventbridge-scheduler", "scheduled_time": "<aws.scheduler.scheduled-time>"}),
            "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600},
        },
    }


# --------------------------------------------------------------------------- IAM
def _statement(sid: str, actions: list[str], resources: list[str] | str, condition: dict | None = None) -> dict:
    statement = {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def _policy(statements: list[dict]) -> dict:
    return {"Version": "2012-10-17", "Statement": statements}


def _trust(service: str, account: str) -> dict:
    return _policy([{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole",
                     "Condition": {"StringEquals": {"aws:SourceAccount": account}}}])


def _pass_role(sid: str, role_arn: str) -> dict:
    return _statement(sid, ["iam:PassRole"], [role_arn], {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}})


def _s3_prefix(sid: str, bucket: str, prefix: str, arn_partition: str) -> list[dict]:
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    return [
        _statement(f"{sid}List", ["s3:ListBucket"], [f"arn:{arn_partition}:s3:::{bucket}"],
                   {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}),
        _statement(f"{sid}Objects", actions, [f"arn:{arn_partition}:s3:::{bucket}/{prefix}/*"]),
    ]


def _job_logs(sid: str, region: str, account: str, arn_partition: str, groups: list[str]) -> list[dict]:
    """What a SageMaker job's own container logs and metrics need; PutMetricData has no resource-level permissions."""
    return [
        _statement(sid, ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                   [f"arn:{arn_partition}:logs:{region}:{account}:log-group:{group}:*" for group in groups]),
        _statement("Metrics", ["cloudwatch:PutMetricData"], "*", {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}),
    ]


def _ecr_pull(image_uri: str, key: str, arn_partition: str) -> list[dict]:
    match = _ECR_IMAGE.fullmatch(image_uri)
    if not match:
        raise ConfigError(f"{key} {image_uri!r} is not an ECR image URI",
                          hint="e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/auditsift:1.0")
    repository = f"arn:{arn_partition}:ecr:{match['region']}:{match['account']}:repository/{match['repo']}"
    return [
        _statement("EcrToken", ["ecr:GetAuthorizationToken"], "*"),
        _statement("EcrPull", ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
                   [repository]),
    ]


def _kms_use(key_arn: str | None) -> list[dict]:
    return [_statement("KmsUse", ["kms:Decrypt", "kms:GenerateDataKey"], [key_arn])] if key_arn else []


def _kms_grant(key_arn: str | None) -> list[dict]:
    """Creating a SageMaker job with VolumeKmsKeyId lets SageMaker create a grant on the key for the job's volumes."""
    return [_statement("KmsJobVolumes", ["kms:CreateGrant"], [key_arn], {"Bool": {"kms:GrantIsForAWSResource": "true"}})] if key_arn else []


def iam_policies(config: Config, prefix: str = DEFAULT_PREFIX) -> dict:
    """Trust and permission policies for the state machine, processing-job, SageMaker execution and scheduler roles.

    Resources are the workdir prefix, the one audit log group, the KMS key and job names
    starting with ``auditsift-``. ``*`` appears only where AWS has no resource-level
    permission: sagemaker:ListTags (as in AWS's own Step Functions templates),
    ecr:GetAuthorizationToken and cloudwatch:PutMetricData (namespace-conditioned).
    """
    prefix = check_prefix(prefix)
    region = require(config, "aws.region")
    bucket = require(config, "deploy.bucket")
    account = account_id(config)
    job_role = require(config, "deploy.job_role_arn")
    image = require(config, "deploy.processing_image_uri")
    topic = require(config, "deploy.notify_topic_arn")
    arn_partition = partition(region)
    key_arn = kms_key_arn(config, region, account)
    sagemaker_arn = f"arn:{arn_partition}:sagemaker:{region}:{account}"
    group = log_group(config)

    rcf = config.model.backend == "sagemaker-rcf"
    execution_role = require(config, "model.sagemaker.role_arn") if rcf else None
    rules = [PROCESSING_RULE, TRAINING_RULE, TRANSFORM_RULE] if rcf else [PROCESSING_RULE]
    state = f"arn:{arn_partition}:s3:::{bucket}/{prefix}/state/cluster={cluster_segment(config)}"
    state_machine = [
        _statement("ProcessingJobs", ["sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob",
                                      "sagemaker:StopProcessingJob"], [f"{sagemaker_arn}:processing-job/{JOB_PREFIX}*"]),
        _statement("SyncIntegrationListTags", ["sagemaker:ListTags"], "*"),
        _pass_role("PassJobRole", job_role),
        _statement("SyncIntegrationRule", ["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                   [f"arn:{arn_partition}:events:{region}:{account}:rule/{rule}" for rule in rules]),
        _statement("ReadPlan", ["s3:GetObject"], [f"{state}/plans/*", *([f"{state}/sagemaker/*"] if rcf else [])]),
        _statement("Notify", ["sns:Publish"], [topic]),
    ]
    if rcf:
        state_machine += [
            _statement("RcfTrainingJobs", ["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob",
                                           "sagemaker:StopTrainingJob", "sagemaker:AddTags"],
                       [f"{sagemaker_arn}:training-job/{JOB_PREFIX}rcf-*"]),
            _statement("RcfModels", ["sagemaker:CreateModel", "sagemaker:AddTags"], [f"{sagemaker_arn}:model/{JOB_PREFIX}rcf-*"]),
            _statement("RcfTransformJobs", ["sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob",
                                            "sagemaker:StopTransformJob", "sagemaker:AddTags"],
                       [f"{sagemaker_arn}:transform-job/{JOB_PREFIX}rcf-*"]),
            _pass_role("PassRcfRole", execution_role),
        ]
    if key_arn:
        state_machine += [_statement("KmsReadPlan", ["kms:Decrypt"], [key_arn]), *_kms_grant(key_arn)]

    job = [
        *_s3_prefix("Workdir", bucket, prefix, arn_partition),
        _statement("ReadAuditLogs", ["logs:DescribeLogStreams", "logs:FilterLogEvents", "logs:GetLogEvents"],
                   [f"arn:{arn_partition}:logs:{region}:{account}:log-group:{group}",
                    f"arn:{arn_partition}:logs:{region}:{account}:log-group:{group}:*"]),
        *_job_logs("JobLogs", region, account, arn_partition, ["/aws/sagemaker/ProcessingJobs"]),
        *_ecr_pull(image, "deploy.processing_image_uri", arn_partition),
        *_kms_use(key_arn),
    ]
    hub = config.findings.securityhub
    if hub.enabled:
        from pipeline.findings_export import product_arn

        product = product_arn(config, region, hub.account_id or account)
        job.append(_statement("SecurityHubImport", ["securityhub:BatchImportFindings"], [product]))
    if config.findings.sns.enabled:
        job.append(_statement("FindingsTopic", ["sns:Publish"], [require(config, "findings.sns.topic_arn")]))
    if rcf:
        # The state machine runs the SageMaker jobs; the Train/Score steps only check what ran.
        job.append(_statement("RcfCheckJobs", ["sagemaker:DescribeTrainingJob", "sagemaker:DescribeModel",
                                               "sagemaker:DescribeTransformJob"],
                              [f"{sagemaker_arn}:{kind}/{JOB_PREFIX}rcf-*" for kind in ("training-job", "model", "transform-job")]))

    roles = {
        "state_machine_role": {"arn": config.deploy.state_machine_role_arn, "trust": _trust("states.amazonaws.com", account),
                               "policy": _policy(state_machine)},
        "job_role": {"arn": job_role, "trust": _trust("sagemaker.amazonaws.com", account), "policy": _policy(job)},
        "scheduler_role": {
            "trust": _trust("scheduler.amazonaws.com", account),
            "policy": _policy([_statement("StartRun", ["states:StartExecution"],
                                          [f"arn:{arn_partition}:states:{region}:{account}:stateMachine:{state_machine_name(config)}"])]),
        },
    }
    if rcf:
        execution = [
            *_s3_prefix("RcfData", bucket, f"{prefix}/models", arn_partition),
            *_job_logs("RcfLogs", region, account, arn_partition, ["/aws/sagemaker/TrainingJobs", "/aws/sagemaker/TransformJobs"]),
            *_kms_use(key_arn),
        ]
        roles["sagemaker_execution_role"] = {"arn": execution_role, "trust": _trust("sagemaker.amazonaws.com", account),
                                             "policy": _policy(execution)}
    return roles


# --------------------------------------------------------------------------- CLI
def _write(text: str, out: str | None) -> None:
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    else:
        click.echo(text)


def _json(value: dict) -> str:
    return json.dumps(value, indent=2)


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                             help="YAML config (default: configs/local.yaml).")
prefix_option = click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
                             help="Key prefix of the workdir in deploy.bucket (workdir = s3://BUCKET/PREFIX).")
out_option = click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")


@click.group("deploy")
def deploy_command() -> None:
    """Print deployment artefacts for scheduled runs (Step Functions, EventBridge Scheduler, IAM, Athena, cron)."""


@deploy_command.command("stepfunctions")
@config_option
@prefix_option
@out_option
@cli_boundary
def stepfunctions_command(config_path: str | None, prefix: str, out: str | None) -> None:
    """The Amazon States Language definition of one scheduled run."""
    _write(_json(state_machine_definition(load_config(config_path), prefix)), out)


@deploy_command.command("schedule")
@config_option
@click.option("--role-arn", required=True, help="Role EventBridge Scheduler assumes (scheduler_role in `deploy iam`).")
@click.option("--state-machine-arn", default=None, help="Default: auditsift-<cluster> in aws.region and the roles' account.")
@out_option
@cli_boundary
def schedule_command(config_path: str | None, role_arn: str, state_machine_arn: str | None, out: str | None) -> None:
    """The EventBridge Scheduler CreateSchedule request (aws scheduler create-schedule --cli-input-json)."""
    _write(_json(schedule_request(load_config(config_path), role_arn, state_machine_arn)), out)


@deploy_command.command("iam")
@config_option
@prefix_option
@out_option
@cli_boundary
def iam_command(config_path: str | None, prefix: str, out: str | None) -> None:
    """Least-privilege trust and permission policies for every role a scheduled run uses."""
    _write(_json(iam_policies(load_config(config_path), prefix)), out)


@deploy_command.command("processing")
@config_option
@prefix_option
@out_option
@cli_boundary
def processing_command(config_path: str | None, prefix: str, out: str | None) -> None:
    """The scale-out features CreateProcessingJob requests (map over N instances, then reduce)."""
    _write(_json(processing_requests(load_config(config_path), prefix)), out)


@deploy_command.command("athena")
@config_option
@prefix_option
@click.option("--date-from", default=None, help="First date of the example queries (default: 7 days ago).")
@click.option("--date-to", default=None, help="Last date of the example queries (default: today).")
@out_option
@cli_boundary
def athena_command(config_path: str | None, prefix: str, date_from: str | None, date_to: str | None, out: str | None) -> None:
    """CREATE EXTERNAL TABLE over the archive (partition projection) and example analyst queries."""
    from pipeline.athena import athena_script

    config = load_config(config_path)
    _write(athena_script(config, f"{workdir(config, check_prefix(prefix))}/archive/", date_from, date_to), out)


@deploy_command.command("cron")
@config_option
@click.option("--workdir", "workdir_url", required=True, help="Workdir the scheduled runs use.")
@click.option("--input", "inputs", multiple=True, help="Input path or s3:// prefix (repeatable); default: --from-cloudwatch.")
@click.option("--script", default="/opt/auditsift/scripts/auditsift-cron", show_default=True, help="Installed wrapper path.")
@click.option("--log-file", default="/var/log/auditsift-cron.log", show_default=True, help="Where cron output goes.")
@cli_boundary
def cron_command(config_path: str | None, workdir_url: str, inputs: tuple[str, ...], script: str, log_file: str) -> None:
    """The crontab line that runs scheduled passes at schedule.expression (UTC) through scripts/auditsift-cron."""
    from pipeline.cron import crontab_line

    click.echo(crontab_line(load_config(config_path), config_path, workdir_url, list(inputs), script, log_file))
