"""What every deployment artefact names: the workdir, roles, KMS key, container paths and job limits, resolved
from the one configuration; a missing value is one line naming its configuration key."""
from __future__ import annotations

import re

from pipeline.aws.arn import partition
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.io.storage import safe_segment

DEFAULT_PREFIX = "auditsift"
# Every job runs the one CLI in the auditsift image (``python -m pipeline`` is ``auditsift``), never a module path.
AUDITSIFT = ("python", "-m", "pipeline")
CONTAINER = (*AUDITSIFT, "container")  # the container steps: ``auditsift container map|reduce|plan|rcf-...``
EXPORT = (*AUDITSIFT, "export")
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
