"""SageMaker Random Cut Forest: requests as SageMaker needs them, outputs parsed from the real formats.

moto accepts the Create*/Describe* calls (jobs finish at once) but runs no container,
so ``FakeSageMaker`` plays the transform container: it reads the CSV parts the job was
given and writes ``<part>.out`` objects in the documented jsonlines format, scoring each
row by its distance from the origin (planted outliers score high).
"""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import botocore.retries.bucket as bucket_module
import botocore.retries.standard as standard
import botocore.session
import numpy as np
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber

from pipeline.aws import session as aws_session
from pipeline.aws.sagemaker_rcf import SageMakerRcf, TransformRun, job_name, parse_transform_output, rcf_image_uri
from pipeline.errors import AwsCallError, ConfigError, StageError
from pipeline.io.storage import open_storage
from tests.aws.conftest import sagemaker_detector
from training.calibration import calibrate
from training.registry import load_detector, make_detector

pytestmark = pytest.mark.aws

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sagemaker"
ROLE = "arn:aws:iam::111122223333:role/auditsift-sagemaker"
KMS = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
RCF_IMAGE_US_EAST_1 = "382416733822.dkr.ecr.us-east-1.amazonaws.com/randomcutforest:1"
VALID_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


@pytest.mark.parametrize(
    "fixture, expected",
    [
        ("part-0000.csv.out", [0.9732585549, 0.8915036917, 3.5104629993, 0.9180341363, 0.8802711964]),
        ("multirecord-blank-lines.out", [1.0312, 0.9911, 1.2004, 4.75]),
        ("json-accept.out", [0.02, 0.25, 1.5]),
        ("doc-rendering.out", [0.02, 0.25]),
    ],
)
def test_parse_transform_output_fixtures(fixture, expected):
    assert parse_transform_output((FIXTURES / fixture).read_text()) == expected


@pytest.mark.parametrize(
    "text, line",
    [((FIXTURES / "not-jsonlines.out").read_text(), 1), ('{"score": 1}\n{"score": "high"}\n', 2),
     ('{"score": 1}\n{"score": NaN}\n', 2), ('{"scores": 3}', 1), ('{"score": 1', 1)],
)
def test_parse_transform_output_refuses_anything_else(text, line):
    with pytest.raises(StageError, match=f"^batch transform output line {line}: "):
        parse_transform_output(text)


def test_job_names_are_valid_for_sagemaker():
    when = dt.datetime(2026, 3, 1, 6, 15, 0, tzinfo=dt.timezone.utc)
    name = job_name("demo", when, "train", "abc")
    assert name.startswith("auditsift-demo-20260301061500-") and VALID_NAME.match(name)
    assert name == job_name("demo", when, "train", "abc") != job_name("demo", when, "train", "abd")
    for cluster in ("a" * 100, "prod_eu.west--1", "---", "x.y_z-"):
        name = job_name(cluster, when, "p")
        assert len(name) <= 63 and VALID_NAME.match(name), name


def test_image_uri_from_sagemaker_core_or_config():
    assert rcf_image_uri("us-east-1") == RCF_IMAGE_US_EAST_1
    assert rcf_image_uri("eu-west-1") == "438346466558.dkr.ecr.eu-west-1.amazonaws.com/randomcutforest:1"
    assert rcf_image_uri("us-east-1", "123.dkr.ecr.us-east-1.amazonaws.com/rcf:pinned") == "123.dkr.ecr.us-east-1.amazonaws.com/rcf:pinned"
    with pytest.raises(ConfigError, match="no Random Cut Forest image known for region mars-north-1"):
        rcf_image_uri("mars-north-1")


def _fake_score(rows: np.ndarray) -> np.ndarray:
    return 1.0 + np.linalg.norm(rows, axis=1) / 10.0


class FakeSageMaker:
    """Captures Create* requests and writes transform outputs the way the RCF container would."""

    def __init__(self, s3):
        self.s3 = s3
        self.requests: dict[str, list[dict]] = {"CreateTrainingJob": [], "CreateModel": [], "CreateTransformJob": []}

    def capture(self, operation):
        return lambda params, **_: self.requests[operation].append(dict(params))

    def complete_transform(self, request: dict) -> None:
        bucket, _, prefix = request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"][5:].partition("/")
        out_bucket, _, out_prefix = request["TransformOutput"]["S3OutputPath"][5:].partition("/")
        for item in self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
            text = self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
            rows = np.loadtxt(text.splitlines(), delimiter=",", ndmin=2)
            body = "".join(f'{{"score":{s:.10f}}}\n' for s in _fake_score(rows))
            self.s3.put_object(Bucket=out_bucket, Key=f"{out_prefix.rstrip('/')}/{item['Key'][len(prefix):]}.out", Body=body)


@pytest.fixture
def sm_config(make_config):
    return make_config(
        storage={"sse": "AES256"},
        model={"sagemaker": {"role_arn": ROLE, "kms_key_id": KMS, "poll_seconds": 0, "train_files": 3,
                             "num_trees": 50, "num_samples_per_tree": 128, "max_runtime_seconds": 1800},
               "threshold": {"method": "quantile", "quantile": 0.99}},
    )


@pytest.fixture
def fake(bucket, sm_config, client_events):
    fake = FakeSageMaker(aws_session.client("s3", sm_config))
    for operation in fake.requests:
        client_events(f"before-parameter-build.sagemaker.{operation}", fake.capture(operation))
    return fake


@pytest.fixture
def detector_factory(bucket, sm_config, fake, monkeypatch):
    storage = open_storage(f"s3://{bucket}/wd", sm_config)
    real_wait = SageMakerRcf.wait

    def wait(self, kind, name):
        description = real_wait(self, kind, name)
        if kind == "transform":
            fake.complete_transform(fake.requests["CreateTransformJob"][-1])
        return description

    monkeypatch.setattr(SageMakerRcf, "wait", wait)
    return lambda: sagemaker_detector(sm_config, storage)


def _counts(seed: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(lam=[20, 5, 3, 50, 1, 8], size=(rows, 6)).astype(float)


def test_fit_score_save_load_against_moto(detector_factory, fake, sm_config, tmp_path):
    X = _counts(7, 200)
    names = ["list", "get", "create", "watch", "exec", "delete"]
    progress = []
    detector = detector_factory()
    detector.progress = progress.append
    detector.fit(X, names)
    storage = detector.storage

    (training,) = fake.requests["CreateTrainingJob"]
    assert training["TrainingJobName"] == detector.model_id_ and VALID_NAME.match(detector.model_id_)
    assert detector.model_id_.startswith("auditsift-demo-")
    prefix = f"models/demo/{detector.model_id_}"
    assert training["AlgorithmSpecification"] == {"TrainingImage": RCF_IMAGE_US_EAST_1, "TrainingInputMode": "File"}
    assert training["HyperParameters"] == {"feature_dim": "6", "num_trees": "50", "num_samples_per_tree": "128"}
    (channel,) = training["InputDataConfig"]
    assert channel["ChannelName"] == "train" and channel["ContentType"] == "text/csv;label_size=0"
    assert channel["DataSource"]["S3DataSource"] == {
        "S3DataType": "S3Prefix", "S3Uri": f"{storage.url}/{prefix}/train/", "S3DataDistributionType": "ShardedByS3Key"}
    assert training["OutputDataConfig"] == {"S3OutputPath": f"{storage.url}/{prefix}/output", "KmsKeyId": KMS}
    assert training["ResourceConfig"]["VolumeKmsKeyId"] == KMS
    assert training["ResourceConfig"]["InstanceType"] == "ml.m5.large" and training["ResourceConfig"]["InstanceCount"] == 1
    assert training["RoleArn"] == ROLE and training["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800}

    parts = storage.list(f"{prefix}/train")
    assert parts == [f"{prefix}/train/part-{i:04d}.csv" for i in range(3)]
    uploaded = np.vstack([np.loadtxt(storage.read_bytes(k).decode().splitlines(), delimiter=",", ndmin=2) for k in parts])
    local = make_detector("rcf-local").fit(X, names)
    assert detector.params["scaling"] == local.params["scaling"]
    expected_scaled = local.transform(X)
    np.testing.assert_array_equal(detector.transform(X), expected_scaled)
    np.testing.assert_allclose(uploaded, expected_scaled, rtol=1e-8, atol=1e-12)

    (model,) = fake.requests["CreateModel"]
    assert model == {"ModelName": detector.model_id_, "ExecutionRoleArn": ROLE, "PrimaryContainer": {
        "Image": RCF_IMAGE_US_EAST_1, "ModelDataUrl": f"{storage.url}/{prefix}/output/{detector.model_id_}/output/model.tar.gz"}}
    (train_transform,) = fake.requests["CreateTransformJob"]
    assert train_transform["ModelName"] == detector.model_id_
    assert train_transform["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"{storage.url}/{prefix}/train/"}},
        "ContentType": "text/csv", "SplitType": "Line", "CompressionType": "None"}
    assert train_transform["TransformOutput"] == {
        "S3OutputPath": f"{storage.url}/{prefix}/transform/{train_transform['TransformJobName']}/output",
        "Accept": "application/jsonlines", "AssembleWith": "Line", "KmsKeyId": KMS}
    assert train_transform["TransformResources"]["VolumeKmsKeyId"] == KMS

    train_scores = _fake_score(expected_scaled)
    assert detector.threshold_ == pytest.approx(calibrate(train_scores, "quantile", 0.99), rel=1e-9)
    assert any("training job" in line and "Completed" in line for line in progress)

    fresh = _counts(8, 30)
    fresh[[3, 17]] *= 40
    scores = detector.score(fresh)
    assert len(fake.requests["CreateTransformJob"]) == 2
    np.testing.assert_allclose(scores, _fake_score(detector.transform(fresh)), rtol=1e-9)
    assert set(np.argsort(scores)[-2:]) == {3, 17}
    assert (scores[[3, 17]] > detector.threshold_).all()
    assert detector.explain(fresh) is None

    manifest = detector.save(tmp_path / "model")
    assert manifest["detector"] == "sagemaker-rcf"
    assert manifest["training"]["model_id"] == detector.model_id_
    assert manifest["training"]["model_artifacts"].endswith(f"{detector.model_id_}/output/model.tar.gz")
    assert manifest["threshold"]["value"] == detector.threshold_

    loaded = load_detector(tmp_path / "model", config=sm_config, storage=storage)
    assert loaded.threshold_ == detector.threshold_ and loaded.feature_names_ == names
    np.testing.assert_allclose(loaded.score(fresh), scores, rtol=1e-9)
    assert len(fake.requests["CreateModel"]) == 1, "the existing model is reused"


def test_transform_output_count_must_match_input_rows(detector_factory):
    detector = detector_factory()
    detector.model_id_ = "auditsift-demo-20260301000000-0123abcd"
    Z = np.loadtxt(FIXTURES / "part-0000.csv", delimiter=",")
    run = detector.stage_input(Z[:3], "score")
    storage = detector.storage
    with pytest.raises(StageError, match=f"batch transform {run.job_name} wrote no "):
        detector.collect_transform(run)

    split = TransformRun(run.job_name, run.input_prefix, run.output_prefix,
                         ((f"{run.input_prefix}/part-0000.csv", 5), (f"{run.input_prefix}/part-0001.csv", 3)))
    storage.write_bytes(f"{run.output_prefix}/part-0000.csv.out", (FIXTURES / "part-0000.csv.out").read_bytes())
    storage.write_bytes(f"{run.output_prefix}/part-0001.csv.out", (FIXTURES / "short.out").read_bytes())
    with pytest.raises(StageError) as caught:
        detector.collect_transform(split)
    assert str(caught.value) == f"batch transform output {storage.uri(run.output_prefix)}/part-0001.csv.out has 2 scores for 3 input rows"

    storage.write_bytes(f"{run.output_prefix}/part-0001.csv.out", (FIXTURES / "not-jsonlines.out").read_bytes())
    with pytest.raises(StageError, match=r"part-0001.csv.out: batch transform output line 1: expected \{\"score\""):
        detector.collect_transform(split)

    storage.write_bytes(f"{run.output_prefix}/part-0001.csv.out", b'{"score":1.5}\n{"score":0.5}\n{"score":0.7}\n')
    np.testing.assert_allclose(detector.collect_transform(split),
                               [0.9732585549, 0.8915036917, 3.5104629993, 0.9180341363, 0.8802711964, 1.5, 0.5, 0.7])


def _description(status: str, secondary: str, reason: str | None = None) -> dict:
    now = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    description = {
        "TrainingJobName": "auditsift-demo-20260301000000-0123abcd",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:111122223333:training-job/auditsift-demo-20260301000000-0123abcd",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "AlgorithmSpecification": {"TrainingImage": RCF_IMAGE_US_EAST_1, "TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
        "CreationTime": now,
    }
    if reason:
        description["FailureReason"] = reason
    return description


def test_failed_job_raises_its_failure_reason_in_one_line(detector_factory):
    detector = detector_factory()
    progress = []
    detector.progress = progress.append
    name = "auditsift-demo-20260301000000-0123abcd"
    reason = ("ClientError: Unable to read data channel 'train'.\n"
              "Requested content-type is 'text/csv;label_size=0'. Please verify the data matches the requested content-type.")
    with Stubber(detector.sagemaker) as stub:
        stub.add_response("describe_training_job", _description("InProgress", "Starting"), {"TrainingJobName": name})
        stub.add_response("describe_training_job", _description("InProgress", "Starting"), {"TrainingJobName": name})
        stub.add_response("describe_training_job", _description("Failed", "Failed", reason), {"TrainingJobName": name})
        with pytest.raises(AwsCallError) as caught:
            detector.wait("training", name)
    message = str(caught.value)
    assert message == (f"SageMaker training job {name} failed: ClientError: Unable to read data channel 'train'. "
                       "Requested content-type is 'text/csv;label_size=0'. Please verify the data matches the requested content-type.")
    assert "/aws/sagemaker/TrainingJobs" in caught.value.hint
    assert progress == [f"SageMaker training job {name}: InProgress (Starting)", f"SageMaker training job {name}: Failed (Failed)"]


def test_sagemaker_needs_an_s3_workdir_and_a_role(make_config, tmp_path):
    local = open_storage(tmp_path / "wd")
    detector = sagemaker_detector(make_config(model={"sagemaker": {"role_arn": ROLE}}), local)
    with pytest.raises(ConfigError, match="needs an s3:// workdir"):
        detector.fit(np.ones((10, 2)), ["a", "b"])
    s3_detector = sagemaker_detector(make_config(), open_storage("s3://bucket/wd", make_config()))
    with pytest.raises(ConfigError, match="model.sagemaker.role_arn is not set"):
        s3_detector.model_id_ = "x"
        s3_detector.image_uri_ = RCF_IMAGE_US_EAST_1
        s3_detector.training_request("models/demo/x/train", 2, 100)


# --------------------------------------------------------------------------- lost Create* responses
class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


def _fault(status: int, code: str, message: str) -> AWSResponse:
    body = json.dumps({"__type": code, "message": message}).encode()
    return AWSResponse("https://api.sagemaker.us-east-1.amazonaws.com/", status,
                       {"x-amzn-RequestId": "5e1f", "Content-Type": "application/x-amz-json-1.1"}, _Body(body))


class LostResponse:
    """before-send: the first Create* reaches SageMaker (created through another client) but its answer is a 503;
    botocore retries, and SageMaker answers what it answers for a name in use."""

    def __init__(self, operation: str, code: str, message: str, change=None):
        self.side = botocore.session.get_session().create_client("sagemaker", region_name="us-east-1")
        self.operation, self.code, self.message, self.change = operation, code, message, change
        self.sent: list[dict] = []

    def __call__(self, request, **_):
        self.sent.append(json.loads(request.body))
        if len(self.sent) == 1:
            created = json.loads(json.dumps(self.sent[0]))
            if self.change:
                self.change(created)
            getattr(self.side, self.operation)(**created)
            return _fault(503, "ServiceUnavailable", "Service Unavailable")
        return _fault(400, self.code, self.message.format(**self.sent[0]))


@pytest.fixture
def no_retry_sleeps(monkeypatch):
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)
    monkeypatch.setattr(bucket_module.TokenBucket, "acquire", lambda self, amount=1, block=True: True)


TRAINING_IN_USE = ("ResourceInUse", "Training job names must be unique within an AWS account and region, and a training "
                   "job with this name already exists (arn:aws:sagemaker:us-east-1:111122223333:training-job/{TrainingJobName})")
TRANSFORM_IN_USE = ("ValidationException", "Transform job names must be unique within an AWS account and region, and a "
                    "transform job with this name already exists (arn:aws:sagemaker:us-east-1:111122223333:transform-job/"
                    "{TransformJobName})")
MODEL_IN_USE = ("ValidationException", 'Cannot create already existing model "arn:aws:sagemaker:us-east-1:111122223333:model/'
                '{ModelName}".')


def test_a_5xx_after_sagemaker_created_the_jobs_and_model_continues_with_them(detector_factory, fake, client_events,
                                                                            no_retry_sleeps):
    """Issue 7: CreateTrainingJob/CreateModel/CreateTransformJob acted on, response lost, botocore's retry told
    "name in use": the existing (identical) job or model is described and used; nothing fails, nothing is duplicated."""
    lost = {operation: LostResponse(name, *answer) for operation, name, answer in [
        ("CreateTrainingJob", "create_training_job", TRAINING_IN_USE), ("CreateModel", "create_model", MODEL_IN_USE),
        ("CreateTransformJob", "create_transform_job", TRANSFORM_IN_USE)]}
    for operation, handler in lost.items():
        client_events(f"before-send.sagemaker.{operation}", handler)
    progress = []
    detector = detector_factory()
    detector.progress = progress.append
    X = _counts(7, 120)
    detector.fit(X, ["list", "get", "create", "watch", "exec", "delete"])

    for operation, handler in lost.items():
        assert len(handler.sent) == 2 and handler.sent[0] == handler.sent[1], operation
    name = detector.model_id_
    assert f"SageMaker training job {name} already exists (an earlier attempt created it); using it" in progress
    assert f"SageMaker model {name} already exists (an earlier attempt created it); using it" in progress
    assert any(line.startswith("SageMaker transform job ") and line.endswith("using it") for line in progress)
    assert detector.sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Completed"
    expected = _fake_score(detector.transform(X))
    assert detector.threshold_ == pytest.approx(calibrate(expected, "quantile", 0.99), rel=1e-9)
    np.testing.assert_allclose(detector.score(X), expected, rtol=1e-9)


def test_a_name_in_use_by_a_different_job_is_an_error_naming_the_difference(detector_factory, client_events, no_retry_sleeps):
    def elsewhere(request):
        request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = "s3://someone-else/data/"

    client_events("before-send.sagemaker.CreateTrainingJob",
                  LostResponse("create_training_job", *TRAINING_IN_USE, change=elsewhere))
    detector = detector_factory()
    with pytest.raises(AwsCallError) as caught:
        detector.fit(_counts(7, 50), ["list", "get", "create", "watch", "exec", "delete"])
    assert str(caught.value) == (f"SageMaker training job {detector.model_id_} already exists with a different "
                                 "InputDataConfig.0.DataSource.S3DataSource.S3Uri")


def test_other_create_errors_are_not_mistaken_for_a_lost_response(detector_factory, client_events):
    client_events("before-send.sagemaker.CreateTrainingJob",
                  lambda **_: _fault(400, "ResourceLimitExceeded", "The account-level service limit 'ml.m5.large for "
                                                                   "training job usage' is 0 Instances"))
    detector = detector_factory()
    with pytest.raises(AwsCallError) as caught:
        detector.fit(_counts(7, 50), ["list", "get", "create", "watch", "exec", "delete"])
    assert str(caught.value).startswith(f"SageMaker.CreateTrainingJob failed ({detector.model_id_}): ResourceLimitExceeded: ")
