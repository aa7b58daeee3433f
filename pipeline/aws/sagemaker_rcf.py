"""``sagemaker-rcf``: SageMaker's built-in Random Cut Forest behind the detector contract.

Plain boto3 (CreateTrainingJob, CreateModel, CreateTransformJob): SageMaker Python SDK
3.x removed the ``RandomCutForest`` estimator and ``record_set``, and 2.x is being
deprecated, so nothing here depends on either. The training image comes from
``model.sagemaker.image_uri`` or, when unset, from ``sagemaker-core``'s offline table
(``sagemaker.core.image_uris.retrieve("randomcutforest", region)``, the ``sagemaker``
extra), e.g. ``382416733822.dkr.ecr.us-east-1.amazonaws.com/randomcutforest:1``.

The detector is ``training.base.BaseDetector``: the same ``Scaler`` the local detectors
use is fitted on the training rows and applied once, so SageMaker sees exactly what
``rcf-local`` would. The scaled matrix goes to the S3 workdir as headerless CSV.

fit: upload ``models/<cluster>/<model_id>/train/part-NNNN.csv`` -> training job
(``model_id`` = training job name) -> CreateModel -> batch transform over the same
CSVs -> threshold calibrated (``training.calibration.calibrate``) on those training
scores. The model's self-check scores are the training transform's scores of the
first rows; loading cannot re-score them without a job, so on load the check only
confirms the manifest and probe file are intact (their sha256s are verified).

score: upload ``models/<cluster>/<model_id>/transform/<job>/input/part-NNNN.csv`` ->
transform job (CSV in, ``application/jsonlines`` out, one ``{"score": x}`` per input
line) -> read ``<output>/part-NNNN.csv.out`` and join scores to rows by order, part by
part, refusing any count mismatch. Higher score = more anomalous, as everywhere.

Each step (``stage_input``, ``submit_transform``, ``wait``, ``collect_transform``)
is a method so tests can run them one by one against moto, whose jobs complete at
once and write no outputs. SageMaker RCF takes no seed: results are not bit-for-bit
reproducible across trainings (the manifest records the job that produced them).

Split across processes (Step Functions runs the SageMaker jobs with ``.sync``):
``prepare_training`` scales and uploads the training rows and returns the spec (the
CreateTrainingJob request and the calibration CreateTransformJob request, built by the
same ``training_request``/``transform_body`` the in-process path sends); after the
jobs, ``fit`` inside ``completed_jobs(CompletedJobs(...))`` attaches to them instead of
starting new ones: it checks the rows scale to the staged sha256 and that the jobs ran on
the staged data, then calibrates on the calibration transform's output exactly as the
in-process fit does. ``prepare_scoring`` and ``score`` inside ``completed_jobs`` do the
same for scoring. ``pipeline.stages.scaleout`` has the container entry points.

Create* calls survive a lost response: when SageMaker created the job but the response
was a 5xx (or the connection dropped) and botocore's retry is then told the name is in
use, ``create`` describes the existing job and adopts it when it matches the request.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import pathlib
import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterator

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.aws import session as aws
from pipeline.config import Config
from pipeline.errors import AwsCallError, ConfigError, StageError
from pipeline.io.storage import Storage, safe_segment
from training.base import COMMON_PARAMS, PROBE_ROWS, BaseDetector
from training.errors import InvalidInputError
from training.scaling import Scaler

TRAIN_CONTENT_TYPE = "text/csv;label_size=0"
TRANSFORM_CONTENT_TYPE = "text/csv"
TRANSFORM_ACCEPT = "application/jsonlines"
CSV_FORMAT = "%.9g"
JOB_NAME_MAX = 63
WAIT_SLACK_SECONDS = 30 * 60
_NAME_CHARS = re.compile(r"[^A-Za-z0-9]+")
SPLIT_PREFIX = "sfn-"
_JOBS = {
    "training": ("describe_training_job", "TrainingJobName", "TrainingJobStatus"),
    "transform": ("describe_transform_job", "TransformJobName", "TransformJobStatus"),
}
_CREATE = {
    "training": ("create_training_job", "describe_training_job", "TrainingJobName"),
    "transform": ("create_transform_job", "describe_transform_job", "TransformJobName"),
    "model": ("create_model", "describe_model", "ModelName"),
}
# What must match for an existing resource of the same name to be adopted as the one requested.
_SAME = {
    "training": (("AlgorithmSpecification", "TrainingImage"), ("RoleArn",),
                 ("InputDataConfig", 0, "DataSource", "S3DataSource", "S3Uri"), ("OutputDataConfig", "S3OutputPath")),
    "transform": (("ModelName",), ("TransformInput", "DataSource", "S3DataSource", "S3Uri"),
                  ("TransformOutput", "S3OutputPath")),
    "model": (("PrimaryContainer", "Image"), ("PrimaryContainer", "ModelDataUrl"), ("ExecutionRoleArn",)),
}
_IN_USE = re.compile(r"already exist|must be unique", re.IGNORECASE)


def job_name(cluster: str, when: datetime, *parts: str) -> str:
    """``auditsift-<cluster>-<yyyymmddHHMMSS>-<hash8>``: valid for SageMaker (<= 63 chars of [A-Za-z0-9-]).

    The hash covers ``parts`` (data digest, purpose), so the name says when and from what.
    """
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:8]
    room = JOB_NAME_MAX - len("auditsift---") - len(stamp) - len(digest)
    label = _NAME_CHARS.sub("-", cluster).strip("-")[:room].rstrip("-") or "cluster"
    return f"auditsift-{label}-{stamp}-{digest}"


def rcf_image_uri(region: str, configured: str | None = None) -> str:
    """The region's ``randomcutforest:1`` image, unless ``model.sagemaker.image_uri`` pins one."""
    if configured:
        return configured
    try:
        from sagemaker.core import image_uris  # the optional [sagemaker] extra, needed only for the image lookup
    except ImportError:
        raise ConfigError("cannot look up the SageMaker Random Cut Forest image: sagemaker-core is not installed",
                          hint="pip install 'auditsift[sagemaker]', or set model.sagemaker.image_uri") from None
    try:
        return image_uris.retrieve("randomcutforest", region=region, version="1")
    except ValueError as error:
        raise ConfigError(f"no Random Cut Forest image known for region {region}: {' '.join(str(error).split())[:200]}",
                          hint="set model.sagemaker.image_uri (see the AWS docs 'Docker registry paths')") from None


def parse_transform_output(text: str) -> list[float]:
    """Scores from a Random Cut Forest batch-transform output object, in input order.

    Accepts what RCF writes with ``Accept: application/jsonlines`` and ``AssembleWith: Line``:
    one ``{"score": x}`` per line (blank lines ignored), also the documented rendering with
    several records on one line separated by commas, and the ``application/json`` shape
    ``{"scores": [{"score": x}, ...]}``. Anything else raises ``StageError`` naming the line.
    """
    decoder = json.JSONDecoder()
    scores: list[float] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        position, end = 0, len(line)
        while True:
            while position < end and (line[position].isspace() or line[position] == ","):
                position += 1
            if position >= end:
                break
            try:
                value, position = decoder.raw_decode(line, position)
            except json.JSONDecodeError:
                raise _bad_output(line_no, line, "not JSON") from None
            records = value.get("scores") if isinstance(value, dict) and "scores" in value else [value]
            if not isinstance(records, list):
                raise _bad_output(line_no, line, '"scores" is not a list')
            for record in records:
                score = record.get("score") if isinstance(record, dict) else None
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                    raise _bad_output(line_no, line, 'expected {"score": <finite number>}')
                scores.append(float(score))
    return scores


def _bad_output(line_no: int, line: str, why: str) -> StageError:
    return StageError(f"batch transform output line {line_no}: {why}: {line[:120]!r}",
                      hint="the job must use Accept application/jsonlines with the randomcutforest image")


@dataclass(frozen=True)
class TransformRun:
    """One batch transform: its job name and the workdir keys of its input parts (with row counts) and outputs."""

    job_name: str
    input_prefix: str
    output_prefix: str
    parts: tuple[tuple[str, int], ...]

    def output_key(self, input_key: str) -> str:
        return f"{self.output_prefix}/{input_key.rsplit('/', 1)[-1]}.out"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def matrix_digest(Z: np.ndarray) -> str:
    """sha256 of a scaled matrix's float64 bytes: proves two processes scaled the same rows the same way."""
    return hashlib.sha256(np.ascontiguousarray(Z, dtype=np.float64).tobytes()).hexdigest()


def _at(document, path: tuple):
    """``document[path[0]][path[1]]...``, or None where the path does not exist."""
    for part in path:
        try:
            document = document[part]
        except (KeyError, IndexError, TypeError):
            return None
    return document


def _name_in_use(error: ClientError) -> bool:
    """SageMaker's answer to a Create* whose name exists: ResourceInUse (training/transform jobs) or a
    ValidationException "Cannot create already existing model"."""
    info = error.response.get("Error", {})
    code, message = str(info.get("Code", "")), str(info.get("Message", ""))
    return code == "ResourceInUse" or (code in ("ValidationException", "ValidationError") and bool(_IN_USE.search(message)))


@dataclass(frozen=True)
class TrainingStage:
    """Scaled training rows uploaded for a training job: their prefix, parts (key, rows) and the request body."""

    train_prefix: str
    parts: tuple[tuple[str, int], ...]
    request: dict


@dataclass(frozen=True)
class CompletedJobs:
    """SageMaker jobs that ran (Step Functions, ``.sync``) on what ``prepare_training``/``prepare_scoring`` staged.

    Inside ``completed_jobs(...)``, ``SageMakerRcf.fit`` and ``score`` attach to these jobs
    instead of starting their own; anything that would need a new job is an error.
    """

    training_spec: dict | None = None
    training_job: str | None = None
    model_name: str | None = None
    calibration_job: str | None = None
    scoring_spec: dict | None = None
    scoring_job: str | None = None


_COMPLETED: ContextVar[CompletedJobs | None] = ContextVar("sagemaker_rcf_completed_jobs", default=None)


@contextmanager
def completed_jobs(jobs: CompletedJobs) -> Iterator[CompletedJobs]:
    """Make ``SageMakerRcf`` fit/score from ``jobs`` (already run) for the duration of the block."""
    token = _COMPLETED.set(jobs)
    try:
        yield jobs
    finally:
        _COMPLETED.reset(token)


def _spec_value(spec: dict, key: str, kind: str):
    try:
        return spec[key]
    except (KeyError, TypeError):
        raise StageError(f"the {kind} spec has no {key!r}", hint="rerun the execution from its prepare step") from None


class SageMakerRcf(BaseDetector):
    """Random Cut Forest trained and scored by SageMaker; needs an ``s3://`` workdir and ``model.sagemaker.role_arn``."""

    name = "sagemaker-rcf"
    DEFAULT_PARAMS = {"num_trees": 100, "num_samples_per_tree": 256, **COMMON_PARAMS}

    def __init__(self, params: dict | None = None, seed: int = 0, *, config=None, storage: Storage | None = None,
                 cluster: str | None = None, progress: Callable[[str], None] | None = None):
        super().__init__(params, seed)
        if config is None:

            config = Config()
        self.config = config
        self.storage = storage
        self.cluster = cluster or config.cluster
        self.progress = progress
        self._client = None
        self._jobs_started = 0

    @classmethod
    def build(cls, params: dict | None = None, seed: int = 0, *, config=None, storage: Storage | None = None,
              cluster: str | None = None, progress: Callable[[str], None] | None = None, **_) -> "SageMakerRcf":
        """A detector (``training.registry``) that trains and scores through SageMaker jobs: ``config`` supplies the
        role, instances and KMS key, ``storage`` the workdir its rows are staged in."""
        return cls(params, seed, config=config, storage=storage, cluster=cluster, progress=progress)

    @property
    def sagemaker(self):
        """The SageMaker client (region ``model.sagemaker.region``, else ``aws.region``), made on first use."""
        if self._client is None:
            self._client = aws.client("sagemaker", self.config, region=self.config.model.sagemaker.region)
        return self._client

    @property
    def settings(self):
        return self.config.model.sagemaker

    def _kms_key(self) -> str | None:
        storage = self.config.storage
        return self.settings.kms_key_id or (storage.kms_key_id if storage.sse == "aws:kms" else None)

    def _require_s3(self) -> Storage:
        if self.storage is None or not self.storage.url.startswith("s3://"):
            raise ConfigError("model.backend sagemaker-rcf needs an s3:// workdir (SageMaker reads and writes S3)",
                              hint="pass --workdir s3://bucket/prefix in the SageMaker region")
        return self.storage

    def model_prefix(self) -> str:
        """Workdir key prefix of this model's SageMaker data: ``models/<cluster>/<model_id>`` in process,
        ``models/<cluster>/sfn-<spec id>`` when Step Functions ran the jobs."""
        return getattr(self, "prefix_", None) or f"models/{safe_segment(self.cluster)}/{self.model_id_}"

    def _next_name(self, *parts: str) -> str:
        self._jobs_started += 1
        return job_name(self.cluster, datetime.now(timezone.utc), *parts, str(self._jobs_started))

    def upload_matrix(self, Z: np.ndarray, prefix: str, parts: int) -> tuple[tuple[str, int], ...]:
        """Write ``Z`` as ``parts`` headerless CSV files ``<prefix>/part-NNNN.csv``, rows in order; returns (key, rows)."""
        storage = self._require_s3()
        written = []
        for index, block in enumerate(np.array_split(Z, parts)):
            sink = io.StringIO()
            np.savetxt(sink, block, fmt=CSV_FORMAT, delimiter=",")
            key = f"{prefix}/part-{index:04d}.csv"
            storage.write_bytes(key, sink.getvalue().encode("ascii"))
            written.append((key, int(block.shape[0])))
        return tuple(written)

    def training_request(self, train_prefix: str, feature_dim: int, data_bytes: int) -> dict:
        """The CreateTrainingJob request, without its name, for the CSV parts below ``train_prefix``.

        The ML volume gets twice the CSV size (File mode copies the channel to it), at least 5 GB.
        """
        storage = self._require_s3()
        settings = self.settings
        if not settings.role_arn:
            raise ConfigError("model.sagemaker.role_arn is not set",
                              hint="set it to a SageMaker execution role that can read and write the workdir bucket")
        kms = self._kms_key()
        output = {"S3OutputPath": storage.uri(f"{self.model_prefix()}/output")}
        resources = {"InstanceType": settings.instance_type, "InstanceCount": settings.instance_count,
                     "VolumeSizeInGB": max(5, 2 * math.ceil(data_bytes / 2**30) + 1)}
        if kms:
            output["KmsKeyId"] = kms
            resources["VolumeKmsKeyId"] = kms
        return {
            "AlgorithmSpecification": {"TrainingImage": self.image_uri_, "TrainingInputMode": "File"},
            "RoleArn": settings.role_arn,
            "HyperParameters": {
                "feature_dim": str(feature_dim),
                "num_trees": str(self.params["num_trees"]),
                "num_samples_per_tree": str(self.params["num_samples_per_tree"]),
            },
            "InputDataConfig": [{
                "ChannelName": "train",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": storage.uri(train_prefix) + "/",
                                                "S3DataDistributionType": "ShardedByS3Key"}},
                "ContentType": TRAIN_CONTENT_TYPE,
                "CompressionType": "None",
            }],
            "OutputDataConfig": output,
            "ResourceConfig": resources,
            "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_seconds},
        }

    def create(self, kind: str, request: dict) -> bool:
        """Create a training job, transform job or model; True when created, False when an identical one existed.

        A Create* whose response is lost after SageMaker acted on it (a 5xx, a dropped
        connection) is retried by botocore and then answered "name in use". That existing
        resource is described and adopted when it is what ``request`` asks for (same image,
        role, input and output, and hyperparameters); anything else is an error naming the
        differences, never a silent reuse.
        """
        create_name, describe_name, name_key = _CREATE[kind]
        method = getattr(self.sagemaker, create_name)
        name = request[name_key]
        label = "model" if kind == "model" else f"{kind} job"
        try:
            method(**request)
            return True
        except BotoCoreError as error:
            raise aws.aws_error(error, method, name) from None
        except ClientError as error:
            if not _name_in_use(error):
                raise aws.aws_error(error, method, name) from None
            original = error
        describe = getattr(self.sagemaker, describe_name)
        try:
            existing = describe(**{name_key: name})
        except (ClientError, BotoCoreError):
            raise aws.aws_error(original, method, name) from None
        paths = _SAME[kind] + tuple(("HyperParameters", key) for key in request.get("HyperParameters", {}))
        different = [".".join(map(str, path)) for path in paths if _at(request, path) != _at(existing, path)]
        if different:
            raise AwsCallError(f"SageMaker {label} {name} already exists with a different {', '.join(different)}",
                               hint="another run used this name; rerun (new names are generated) and check who created it")
        if self.progress:
            self.progress(f"SageMaker {label} {name} already exists (an earlier attempt created it); using it")
        return False

    def wait(self, kind: str, name: str) -> dict:
        """Poll Describe*Job every ``poll_seconds`` until the job ends; return the description when Completed.

        A Failed or Stopped job raises one ``AwsCallError`` line with SageMaker's FailureReason.
        ``progress`` gets a line whenever status or secondary status changes.
        """
        method_name, name_key, status_key = _JOBS[kind]
        method = getattr(self.sagemaker, method_name)
        deadline = time.monotonic() + self.settings.max_runtime_seconds + WAIT_SLACK_SECONDS
        last = None
        while True:
            description = aws.call(method, name, **{name_key: name})
            status = description.get(status_key, "Unknown")
            secondary = description.get("SecondaryStatus")
            line = f"SageMaker {kind} job {name}: {status}" + (f" ({secondary})" if secondary else "")
            if self.progress and line != last:
                self.progress(line)
            last = line
            if status == "Completed":
                return description
            if status in ("Failed", "Stopped"):
                reason = _one_line(description.get("FailureReason") or "no FailureReason given")
                raise AwsCallError(f"SageMaker {kind} job {name} {status.lower()}: {reason}",
                                   hint=f"see CloudWatch Logs /aws/sagemaker/{'TrainingJobs' if kind == 'training' else 'TransformJobs'} "
                                        f"stream {name}/...")
            if time.monotonic() > deadline:
                raise AwsCallError(f"SageMaker {kind} job {name} still {status} after waiting "
                                   f"{self.settings.max_runtime_seconds + WAIT_SLACK_SECONDS} s",
                                   hint="the job keeps running in SageMaker; check it in the console or raise "
                                        "model.sagemaker.max_runtime_seconds")
            time.sleep(self.settings.poll_seconds)

    @property
    def model_name_(self) -> str:
        """The SageMaker model: named after the training job in process, by Step Functions otherwise."""
        return getattr(self, "_model_name", None) or self.model_id_

    @model_name_.setter
    def model_name_(self, value: str) -> None:
        self._model_name = value

    def ensure_model(self) -> None:
        """CreateModel (image + the training job's artifacts) unless the model exists."""
        method = self.sagemaker.describe_model
        try:
            method(ModelName=self.model_name_)
            return
        except ClientError as error:
            if "Could not find model" not in str(error.response.get("Error", {}).get("Message", "")):
                raise aws.aws_error(error, method, self.model_name_) from None
        self.create("model", {"ModelName": self.model_name_,
                              "PrimaryContainer": {"Image": self.image_uri_, "ModelDataUrl": self.model_artifacts_},
                              "ExecutionRoleArn": self.settings.role_arn})

    def stage_input(self, Z: np.ndarray, purpose: str) -> TransformRun:
        """Name a transform job and upload its input CSVs below ``<model>/transform/<job>/input``."""
        name = self._next_name(self.model_id_, purpose, matrix_digest(Z))
        return self._stage_rows(Z, name, f"{self.model_prefix()}/transform/{name}")

    def _stage_rows(self, Z: np.ndarray, name: str, base: str) -> TransformRun:
        parts = self.upload_matrix(Z, f"{base}/input", max(1, min(self.settings.train_files, Z.shape[0])))
        return TransformRun(name, f"{base}/input", f"{base}/output", parts)

    def transform_request(self, run: TransformRun) -> dict:
        """The CreateTransformJob request: CSV lines in, one jsonlines score per line out."""
        return {"TransformJobName": run.job_name, "ModelName": self.model_name_, **self.transform_body(run)}

    def transform_body(self, run: TransformRun) -> dict:
        """The CreateTransformJob request without the job and model names (Step Functions supplies those)."""
        storage = self._require_s3()
        kms = self._kms_key()
        output = {"S3OutputPath": storage.uri(run.output_prefix), "Accept": TRANSFORM_ACCEPT, "AssembleWith": "Line"}
        resources = {"InstanceType": self.settings.transform_instance_type,
                     "InstanceCount": max(1, min(self.settings.instance_count, len(run.parts)))}
        if kms:
            output["KmsKeyId"] = kms
            resources["VolumeKmsKeyId"] = kms
        return {
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": 6,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": storage.uri(run.input_prefix) + "/"}},
                "ContentType": TRANSFORM_CONTENT_TYPE,
                "SplitType": "Line",
                "CompressionType": "None",
            },
            "TransformOutput": output,
            "TransformResources": resources,
        }

    def submit_transform(self, run: TransformRun) -> None:
        self.create("transform", self.transform_request(run))

    def collect_transform(self, run: TransformRun) -> np.ndarray:
        """Scores of every input row, read from the ``.out`` objects and joined to rows by order.

        Each output object must hold exactly as many scores as its input part had lines.
        """
        storage = self._require_s3()
        scores: list[float] = []
        for key, rows in run.parts:
            out_key = run.output_key(key)
            if not storage.exists(out_key):
                raise StageError(f"batch transform {run.job_name} wrote no {storage.uri(out_key)}",
                                 hint=f"see CloudWatch Logs /aws/sagemaker/TransformJobs stream {run.job_name}/...")
            try:
                values = parse_transform_output(storage.read_bytes(out_key).decode("utf-8"))
            except StageError as error:
                raise StageError(f"{storage.uri(out_key)}: {error.message}", hint=error.hint) from None
            if len(values) != rows:
                raise StageError(f"batch transform output {storage.uri(out_key)} has {len(values)} scores "
                                 f"for {rows} input rows", hint="rerun scoring; rows are joined by order so counts must match")
            scores.extend(values)
        return np.asarray(scores, dtype=np.float64)

    def batch_score(self, run: TransformRun) -> np.ndarray:
        """submit -> wait -> collect for one transform run."""
        self.submit_transform(run)
        self.wait("transform", run.job_name)
        return self.collect_transform(run)

    def stage_training(self, Z: np.ndarray, prefix: str) -> TrainingStage:
        """Upload the scaled training rows below ``<prefix>/train`` and build the CreateTrainingJob body.

        Shared by the in-process fit and ``prepare_training``: at least one CSV part per
        instance (``ShardedByS3Key``), the region's RCF image, output to ``<prefix>/output``.
        """
        storage = self._require_s3()
        settings = self.settings
        if Z.shape[0] < settings.instance_count:
            raise InvalidInputError(f"{Z.shape[0]} training rows cannot be sharded over {settings.instance_count} instances",
                                    "lower model.sagemaker.instance_count or train on more rows")
        self.prefix_ = prefix
        self.region_ = self.sagemaker.meta.region_name
        self.image_uri_ = rcf_image_uri(self.region_, settings.image_uri)
        train_prefix = f"{prefix}/train"
        parts = self.upload_matrix(Z, train_prefix, min(max(settings.train_files, settings.instance_count), Z.shape[0]))
        self.train_data_ = storage.uri(train_prefix) + "/"
        return TrainingStage(train_prefix, parts, self.training_request(train_prefix, Z.shape[1], data_bytes=Z.size * 16))

    def _fitted(self, digest: str, transform_job: str, scores: np.ndarray) -> np.ndarray:
        """Record a finished fit; its calibration scores also answer ``score`` on the same rows (no second job)."""
        self.train_transform_job_ = transform_job
        self.fit_rows_ = int(scores.shape[0])
        self.probe_scores_ = scores[:PROBE_ROWS].copy()
        self.fit_digest_ = digest
        self.fit_scores_ = scores.copy()
        return scores

    def _fit_scaled(self, Z: np.ndarray) -> np.ndarray:
        jobs = _COMPLETED.get()
        if jobs is not None:
            return self._attach_training(Z, jobs)
        self._require_s3()
        digest = matrix_digest(Z)
        self.model_id_ = self._next_name("train", digest, json.dumps(self.params, sort_keys=True))
        self.model_name_ = self.model_id_
        stage = self.stage_training(Z, f"models/{safe_segment(self.cluster)}/{self.model_id_}")
        self.create("training", {"TrainingJobName": self.model_id_, **stage.request})
        description = self.wait("training", self.model_id_)
        self.model_artifacts_ = description["ModelArtifacts"]["S3ModelArtifacts"]
        self.ensure_model()
        name = self._next_name(self.model_id_, "train-scores", digest)
        run = TransformRun(name, stage.train_prefix, f"{self.model_prefix()}/transform/{name}/output", stage.parts)
        return self._fitted(digest, name, self.batch_score(run))

    # ---------------------------------------------------------------- split across processes
    def prepare_training(self, X, feature_names: list[str], spec_id: str) -> dict:
        """Scale and upload the training rows for jobs someone else runs; return the spec (JSON-serialisable).

        Scaled as ``fit`` scales them (the detector's ``Scaler``, fitted on these rows); the
        later ``fit`` under ``completed_jobs`` recomputes the matrix and refuses to go on
        unless its sha256 is the one recorded here. ``requests.training`` and
        ``requests.calibration`` are the CreateTrainingJob and CreateTransformJob bodies
        the in-process path would send, without names.
        """
        names = [str(n) for n in feature_names]
        X = self._matrix(X, names)
        if X.shape[0] == 0:
            raise InvalidInputError("cannot fit on an empty feature table", "check the training window selects at least one entity")
        Z = Scaler.fit(X, self.params["scaling"]).transform(X)
        prefix = f"models/{safe_segment(self.cluster)}/{SPLIT_PREFIX}{safe_segment(spec_id)}"
        stage = self.stage_training(Z, prefix)
        output = f"{prefix}/transform/calibration/output"
        return {
            "kind": "training", "spec_id": spec_id, "cluster": self.cluster, "region": self.region_,
            "image_uri": self.image_uri_, "params": self.params, "feature_names": names,
            "digest": matrix_digest(Z), "rows": int(Z.shape[0]), "prefix": prefix, "train_prefix": stage.train_prefix,
            "train_data": self.train_data_, "calibration_output_prefix": output, "parts": [list(p) for p in stage.parts],
            "requests": {"training": stage.request,
                         "calibration": self.transform_body(TransformRun("", stage.train_prefix, output, stage.parts))},
        }

    def prepare_scoring(self, X, spec_id: str) -> dict:
        """Scale (as ``score`` does) and upload rows to score with this fitted model; return the spec.

        ``requests.transform`` is the CreateTransformJob body (model name included) without the job name.
        """
        Z = self.transform(X)
        if Z.shape[0] == 0:
            raise InvalidInputError("no rows to score", "check the scoring range selects at least one entity window")
        self._check_region()
        run = self._stage_rows(Z, "", f"{self.model_prefix()}/transform/{SPLIT_PREFIX}{safe_segment(spec_id)}")
        return {
            "kind": "scoring", "spec_id": spec_id, "cluster": self.cluster, "model_id": self.model_id_,
            "model_name": self.model_name_, "digest": matrix_digest(Z), "rows": int(Z.shape[0]),
            "input_prefix": run.input_prefix, "output_prefix": run.output_prefix, "parts": [list(p) for p in run.parts],
            "requests": {"transform": {"ModelName": self.model_name_, **self.transform_body(run)}},
        }

    def _check_staged(self, description: dict, kind: str, name: str, expected: dict) -> None:
        """A completed job must have run on what was staged (paths as tuples into its description)."""
        different = [".".join(map(str, path)) for path, value in expected.items() if _at(description, path) != value]
        if different:
            raise StageError(f"SageMaker {kind} {name} did not run on the staged data: its {', '.join(different)} differ",
                             hint="pass the job names the state machine produced for this run id")

    def _attach_training(self, Z: np.ndarray, jobs: CompletedJobs) -> np.ndarray:
        """The completed training job, model and calibration transform of ``jobs`` as this fit; returns the training scores."""
        spec = jobs.training_spec
        if spec is None or not (jobs.training_job and jobs.model_name and jobs.calibration_job):
            raise StageError("fit needs the training spec and the training, model and calibration names of the completed jobs",
                             hint="run auditsift container rcf-train-finish with every option")
        storage = self._require_s3()
        spec_id = _spec_value(spec, "spec_id", "training")
        digest = matrix_digest(Z)
        if digest != _spec_value(spec, "digest", "training") or self.params != _spec_value(spec, "params", "training"):
            raise StageError(f"the training rows or parameters differ from those staged for {spec_id}",
                             hint="the feature table or model config changed between the prepare and train steps; rerun the execution")
        self.prefix_ = _spec_value(spec, "prefix", "training")
        self.image_uri_ = _spec_value(spec, "image_uri", "training")
        self.train_data_ = _spec_value(spec, "train_data", "training")
        self.region_ = self._check_region(_spec_value(spec, "region", "training"))
        parts = tuple((str(key), int(rows)) for key, rows in _spec_value(spec, "parts", "training"))
        request = _spec_value(spec, "requests", "training")["training"]

        training = self.wait("training", jobs.training_job)
        self._check_staged(training, "training job", jobs.training_job, {
            ("AlgorithmSpecification", "TrainingImage"): self.image_uri_,
            ("InputDataConfig", 0, "DataSource", "S3DataSource", "S3Uri"): self.train_data_,
            ("OutputDataConfig", "S3OutputPath"): request["OutputDataConfig"]["S3OutputPath"],
            **{("HyperParameters", key): value for key, value in request["HyperParameters"].items()}})
        self.model_id_ = jobs.training_job
        self.model_artifacts_ = training["ModelArtifacts"]["S3ModelArtifacts"]
        model = aws.call(self.sagemaker.describe_model, jobs.model_name, ModelName=jobs.model_name)
        self._check_staged(model, "model", jobs.model_name, {("PrimaryContainer", "Image"): self.image_uri_,
                                                            ("PrimaryContainer", "ModelDataUrl"): self.model_artifacts_})
        self.model_name_ = jobs.model_name
        output = _spec_value(spec, "calibration_output_prefix", "training")
        transform = self.wait("transform", jobs.calibration_job)
        self._check_staged(transform, "transform job", jobs.calibration_job, {
            ("ModelName",): jobs.model_name, ("TransformInput", "DataSource", "S3DataSource", "S3Uri"): self.train_data_,
            ("TransformOutput", "S3OutputPath"): storage.uri(output)})
        run = TransformRun(jobs.calibration_job, _spec_value(spec, "train_prefix", "training"), output, parts)
        return self._fitted(digest, jobs.calibration_job, self.collect_transform(run))

    def _attach_scoring(self, Z: np.ndarray, digest: str, jobs: CompletedJobs) -> np.ndarray:
        spec = jobs.scoring_spec
        if spec is None or not jobs.scoring_job:
            raise StageError("scoring these rows needs a new batch transform, but the SageMaker jobs are run by "
                             "Step Functions here", hint="run auditsift container rcf-score-prepare first")
        spec_id = _spec_value(spec, "spec_id", "scoring")
        if digest != _spec_value(spec, "digest", "scoring"):
            raise StageError(f"the rows to score differ from those staged for {spec_id}",
                             hint="the feature table changed between the prepare and score steps; rerun the execution")
        if _spec_value(spec, "model_id", "scoring") != self.model_id_:
            raise StageError(f"rows for {spec_id} were staged for model {spec['model_id']}, the current model is {self.model_id_}",
                             hint="a training ran between the prepare and score steps; rerun the execution")
        storage = self._require_s3()
        run = TransformRun(jobs.scoring_job, _spec_value(spec, "input_prefix", "scoring"),
                           _spec_value(spec, "output_prefix", "scoring"),
                           tuple((str(key), int(rows)) for key, rows in _spec_value(spec, "parts", "scoring")))
        transform = self.wait("transform", jobs.scoring_job)
        self._check_staged(transform, "transform job", jobs.scoring_job, {
            ("ModelName",): self.model_name_, ("TransformInput", "DataSource", "S3DataSource", "S3Uri"): storage.uri(run.input_prefix) + "/",
            ("TransformOutput", "S3OutputPath"): storage.uri(run.output_prefix)})
        return self.collect_transform(run)

    def _check_region(self, expected: str | None = None) -> str:
        region = self.sagemaker.meta.region_name
        expected = expected or self.region_
        if region != expected:
            what = f"model {self.model_id_}" if hasattr(self, "model_id_") else "the staged training data"
            raise ConfigError(f"{what} was trained in {expected}, the SageMaker client is in {region}",
                              hint=f"set model.sagemaker.region to {expected}")
        return region

    def _score_scaled(self, Z: np.ndarray) -> np.ndarray:
        """Scores via a batch transform; the probe rows' scores are the ones recorded at fit (no job at save/load),
        and the training rows' are the calibration transform's."""
        if Z is getattr(self, "probe_", None):
            return self.probe_scores_
        digest = matrix_digest(Z)
        if digest == getattr(self, "fit_digest_", None):
            return self.fit_scores_.copy()
        jobs = _COMPLETED.get()
        if jobs is not None:
            return self._attach_scoring(Z, digest, jobs)
        self._check_region()
        self.ensure_model()
        return self.batch_score(self.stage_input(Z, "score"))

    def _explain_scaled(self, Z: np.ndarray) -> None:
        return None

    def _save_model(self, directory: pathlib.Path) -> None:
        """Nothing beyond the manifest: the model artifacts stay in S3 where the training job wrote them."""

    def _load_model(self, directory: pathlib.Path, manifest: dict) -> None:
        training = manifest["training"]
        self.cluster = training["cluster"]
        self.model_id_ = training["model_id"]
        self.model_name_ = training.get("model_name") or self.model_id_
        self.prefix_ = training.get("prefix") or f"models/{safe_segment(self.cluster)}/{self.model_id_}"
        self.model_artifacts_ = training["model_artifacts"]
        self.image_uri_ = training["image_uri"]
        self.region_ = training["region"]
        self.train_data_ = training["train_data"]
        self.train_transform_job_ = training["train_transform_job"]
        self.fit_rows_ = int(training["fit_rows"])
        self.probe_scores_ = np.asarray(manifest["self_check"]["scores"], dtype=np.float64)

    def _fit_info(self) -> dict:
        return {
            "cluster": self.cluster,
            "model_id": self.model_id_,
            "training_job": self.model_id_,
            "model_name": self.model_name_,
            "prefix": self.model_prefix(),
            "model_artifacts": self.model_artifacts_,
            "image_uri": self.image_uri_,
            "region": self.region_,
            "train_data": self.train_data_,
            "train_transform_job": self.train_transform_job_,
            "fit_rows": self.fit_rows_,
        }
