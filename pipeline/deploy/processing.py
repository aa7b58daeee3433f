"""SageMaker CreateProcessingJob requests: the scale-out features map and reduce, and every stage run in the image."""
from __future__ import annotations

from datetime import datetime, timezone

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.deploy.names import (
    ARCHIVE_DIR,
    CONFIG_KEY,
    CONTAINER,
    CONTAINER_CONFIG,
    CONTAINER_CONFIG_DIR,
    DEFAULT_PREFIX,
    FEATURES_OUT_DIR,
    JOB_PREFIX,
    PARTIALS_IN_DIR,
    PARTIALS_OUT_DIR,
    RUNTIME,
    VOLUME_GB,
    check_prefix,
    cluster_segment,
    kms_key,
    require,
    workdir,
)
from pipeline.stages.features import features_fingerprint as fingerprint


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
        config, prefix, entrypoint=list(CONTAINER),
        arguments=["map", "--input-dir", ARCHIVE_DIR, "--output-dir", PARTIALS_OUT_DIR, "--config", CONTAINER_CONFIG],
        runtime_seconds=RUNTIME["features-map"], instance_count=config.deploy.processing_instance_count,
        inputs=[s3_input("archive", archive_uri(config, prefix), ARCHIVE_DIR, "ShardedByS3Key")],
        outputs=[s3_output("partials", partials_uri(config, prefix), PARTIALS_OUT_DIR)], isolated=True,
    )


def features_fingerprint(config: Config) -> str:
    """The fingerprint this release's map step files its partials under, for this configuration."""
    return fingerprint(RunContext(None, config, "deploy"))


def reduce_request(config: Config, prefix: str) -> dict:
    """Scale-out features reduce: one instance merges this configuration's partials into one feature table."""
    fingerprint = features_fingerprint(config)
    output = f"{workdir(config, prefix)}/features/cluster={cluster_segment(config)}/scale-out/{fingerprint}/"
    return processing_request(
        config, prefix, entrypoint=list(CONTAINER),
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
