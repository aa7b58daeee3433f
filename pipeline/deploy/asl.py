"""The Amazon States Language definition of one scheduled run (``auditsift deploy stepfunctions``)."""
from __future__ import annotations

import re

from pipeline.config import Config
from pipeline.deploy.names import (
    AUDITSIFT,
    CONTAINER,
    CONTAINER_CONFIG,
    DEFAULT_PREFIX,
    EXPORT,
    JOB_PREFIX,
    RCF_JOB_NAME,
    RUNTIME,
    SAGEMAKER_ERRORS,
    check_prefix,
    cluster_segment,
    log_group,
    require,
    workdir,
)
from pipeline.deploy.processing import (
    map_request,
    processing_request,
)


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
               entrypoint: tuple[str, ...] = AUDITSIFT) -> dict:
    return processing_request(config, prefix, entrypoint=list(entrypoint), arguments=arguments,
                              runtime_seconds=RUNTIME[stage])


def plan_key_path(config: Config, prefix: str) -> str:
    """The plan object's key as a States.Format template over the run id."""
    return f"{prefix}/state/cluster={cluster_segment(config)}/plans/{{}}.json"


def rcf_spec_key_path(config: Config, prefix: str, kind: str) -> str:
    """A split sagemaker-rcf spec's key (``pipeline.stages.scaleout.rcf_spec_key``) as a States.Format template over the run id."""
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
    entry = CONTAINER

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
            "plan", _stage_job(config, prefix, "plan", None, CONTAINER), "ReadPlan",
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
                                 EXPORT),
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
