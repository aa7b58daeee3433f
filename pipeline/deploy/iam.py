"""Least-privilege IAM trust and permission policies for every role a scheduled run uses."""
from __future__ import annotations

from pipeline.config import Config
from pipeline.deploy.names import (
    _ECR_IMAGE,
    DEFAULT_PREFIX,
    JOB_PREFIX,
    PROCESSING_RULE,
    TRAINING_RULE,
    TRANSFORM_RULE,
    account_id,
    check_prefix,
    cluster_segment,
    kms_key_arn,
    log_group,
    partition,
    require,
    state_machine_name,
)
from pipeline.errors import ConfigError
from pipeline.report.asff import product_arn


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
