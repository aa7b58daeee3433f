"""sagemaker-rcf split around Step Functions ``.sync`` jobs, run end to end against moto.

The generated definition's RCF states (PrepareTraining ... Score) are executed here one by
one: Processing steps run the real ``auditsift container`` commands (click runner)
with the arguments the definition computes; ``aws-sdk:s3:getObject`` reads the spec the
previous step wrote; the SageMaker steps send the requests the definition builds (moto
accepts them, jobs complete at once). moto runs no containers, so ``FakeRcfContainer``
plays SageMaker's randomcutforest image: "training" fits the local RCF (krcf) on the
training channel's CSV, and a batch transform writes one ``{"score": x}`` line per input
line. The same fake answers the in-process backend, so both paths see the same scores
and must produce the same threshold, calibration, manifest and ranking.
"""
from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.aws import session as aws_session
from pipeline.aws.sagemaker_rcf import CompletedJobs, SageMakerRcf, completed_jobs, matrix_digest
from pipeline.cli.container import container as processing_cli
from pipeline.config import load_config
from pipeline.context import RunContext, new_run_id
from pipeline.deploy.asl import state_machine_definition
from pipeline.deploy.names import CONTAINER_CONFIG
from pipeline.errors import StageError
from pipeline.io.storage import open_storage
from pipeline.stages.archive import run_archive
from pipeline.stages.features import run_features
from pipeline.stages.ranges import resolve_ranges
from pipeline.stages.scaleout import rcf_spec_key
from pipeline.stages.score import run_score
from pipeline.stages.train import load_model, run_train
from tests.aws import asl
from tests.aws.conftest import ACCOUNT, REGION
from tests.factory import T0, event, write_jsonl
from training.calibration import calibrate
from training.rcf import RandomCutForestDetector

pytestmark = pytest.mark.aws

BUCKET = "auditsift-test"
WORKDIR = f"s3://{BUCKET}/auditsift"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/auditsift-sagemaker"
RCF_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/randomcutforest:1"
KMS = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CONFIG = {
    "cluster": "demo",
    "aws": {"region": REGION, "max_attempts": 3},
    "storage": {"sse": "AES256"},
    "model": {"backend": "sagemaker-rcf", "min_train_rows": 20, "threshold": {"method": "quantile", "quantile": 0.99},
              "sagemaker": {"role_arn": ROLE, "kms_key_id": KMS, "poll_seconds": 0, "train_files": 3, "num_trees": 50,
                            "num_samples_per_tree": 128, "image_uri": RCF_IMAGE}},
    "deploy": {"bucket": BUCKET, "state_machine_role_arn": f"arn:aws:iam::{ACCOUNT}:role/auditsift-run",
               "job_role_arn": f"arn:aws:iam::{ACCOUNT}:role/auditsift-jobs",
               "processing_image_uri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/auditsift:1.0",
               "processing_instance_count": 1, "notify_topic_arn": f"arn:aws:sns:{REGION}:{ACCOUNT}:auditsift-ops"},
}
PEOPLE = [("alice@corp.example", "10.0.12.34"), ("bob@corp.example", "10.0.40.2"), ("carol@corp.example", "10.0.9.9"),
          ("dave@corp.example", "10.0.7.1"), ("system:serviceaccount:ci:deployer", "10.0.77.9")]
RESOURCES = ["pods", "deployments", "configmaps", "services"]


def audit_events() -> list[dict]:
    """Four days of hourly work for five identities; on the last day mallory reads secrets from a new address."""
    rng = np.random.default_rng(3)
    items = []
    for hour in range(96):
        start = T0 + timedelta(hours=hour)
        for person, (user, ip) in enumerate(PEOPLE):
            for k in range(int(rng.integers(1, 7))):
                resource = RESOURCES[int(rng.integers(len(RESOURCES)))]
                verb = ["get", "list", "watch", "update"][int(rng.integers(4))]
                items.append(event(start + timedelta(minutes=int(rng.integers(60))), audit_id=f"e-{hour}-{person}-{k}",
                                   user={"username": user, "groups": ["system:authenticated"]}, sourceIPs=[ip], verb=verb,
                                   objectRef={"resource": resource, "namespace": "web"},
                                   requestURI=f"/api/v1/namespaces/web/{resource}"))
    for k in range(40):
        items.append(event(T0 + timedelta(hours=90, seconds=20 * k), audit_id=f"m-{k}", verb="get",
                           user={"username": "mallory@corp.example", "groups": ["system:authenticated"]},
                           sourceIPs=["203.0.113.50"], objectRef={"resource": "secrets", "namespace": "payments", "name": f"s{k}"},
                           requestURI=f"/api/v1/namespaces/payments/secrets/s{k}"))
    return items


def csv_rows(s3, uri: str) -> list[tuple[str, np.ndarray]]:
    bucket, _, prefix = uri[5:].partition("/")
    out = []
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        text = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
        out.append((item["Key"], np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2)))
    return out


class FakeRcfContainer:
    """SageMaker's randomcutforest container, played by krcf: trains on the CSV channel, scores each CSV line."""

    def __init__(self, config):
        self.s3 = aws_session.client("s3", config)
        self.sagemaker = aws_session.client("sagemaker", config)
        self.forests: dict[str, RandomCutForestDetector] = {}
        self.requests: dict[str, list[dict]] = {"CreateTrainingJob": [], "CreateModel": [], "CreateTransformJob": []}

    def train(self, request: dict) -> None:
        self.requests["CreateTrainingJob"].append(request)
        rows = np.vstack([r for _, r in csv_rows(self.s3, request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"])])
        assert rows.shape[1] == int(request["HyperParameters"]["feature_dim"])
        forest = RandomCutForestDetector({"num_trees": int(request["HyperParameters"]["num_trees"]),
                                          "sample_size": int(request["HyperParameters"]["num_samples_per_tree"])}, seed=0)
        forest._fit_scaled(rows)
        artifacts = f"{request['OutputDataConfig']['S3OutputPath']}/{request['TrainingJobName']}/output/model.tar.gz"
        self.forests[artifacts] = forest

    def model(self, request: dict) -> None:
        self.requests["CreateModel"].append(request)

    def transform(self, request: dict) -> None:
        """Writes ``<output>/<input object name>.out`` (AssembleWith Line, Accept application/jsonlines)."""
        self.requests["CreateTransformJob"].append(request)
        assert (request["BatchStrategy"], request["TransformInput"]["SplitType"]) == ("MultiRecord", "Line")
        assert request["TransformOutput"]["Accept"] == "application/jsonlines"
        model = self.sagemaker.describe_model(ModelName=request["ModelName"])
        forest = self.forests[model["PrimaryContainer"]["ModelDataUrl"]]
        source = request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, _, out_prefix = request["TransformOutput"]["S3OutputPath"][5:].partition("/")
        for key, rows in csv_rows(self.s3, source):
            body = "".join(json.dumps({"score": float(s)}) + "\n" for s in forest._score_scaled(rows))
            name = key[len(source[5:].partition("/")[2]):]
            self.s3.put_object(Bucket=bucket, Key=f"{out_prefix.rstrip('/')}/{name}.out", Body=body.encode())

    def hook(self, operation):
        handler = {"CreateTrainingJob": self.train, "CreateModel": self.model, "CreateTransformJob": self.transform}[operation]
        return lambda params, **_: handler(dict(params))


class StepFunctions:
    """Runs Task states of a definition: Processing steps through the CLI, the rest through moto."""

    def __init__(self, definition: dict, config_path: str, container: FakeRcfContainer, config):
        self.states = definition["States"]
        self.config_path = config_path
        self.container = container
        self.s3 = aws_session.client("s3", config)
        self.sagemaker = aws_session.client("sagemaker", config)
        self.visited: list[str] = []
        self.processing: dict[str, list[str]] = {}
        self.sagemaker_requests: dict[str, dict] = {}

    def run(self, start: str, document: dict, stop: str, retry_count: int = 0) -> dict:
        name = start
        while True:
            state = self.states[name]
            self.visited.append(name)
            context = {"State": {"Name": name, "RetryCount": retry_count}, "Execution": {"Name": "exec-1"}}
            parameters = asl.evaluate(state["Parameters"], document, context)
            result = self.call(name, state["Resource"], parameters)
            if "ResultSelector" in state:
                result = asl.evaluate(state["ResultSelector"], result, context)
            document = asl.apply_result_path(state, document, result)
            if name == stop:
                return document
            name = state["Next"]

    def call(self, name: str, resource: str, parameters: dict):
        if resource == "arn:aws:states:::sagemaker:createProcessingJob.sync":
            app = parameters["AppSpecification"]
            assert app["ContainerEntrypoint"] == ["python", "-m", "pipeline", "container"]
            arguments = [self.config_path if item == CONTAINER_CONFIG else item for item in app["ContainerArguments"]]
            self.processing[name] = arguments
            result = CliRunner().invoke(processing_cli, arguments, catch_exceptions=False)
            assert result.exit_code == 0, (name, result.output, result.stderr)
            return {"ProcessingJobStatus": "Completed"}
        if resource == "arn:aws:states:::aws-sdk:s3:getObject":
            body = self.s3.get_object(Bucket=parameters["Bucket"], Key=parameters["Key"])["Body"].read().decode()
            return {"Body": body}
        self.sagemaker_requests[name] = parameters
        if resource == "arn:aws:states:::sagemaker:createTrainingJob.sync":
            self.container.train(parameters)
            self.sagemaker.create_training_job(**parameters)
            return self.sagemaker.describe_training_job(TrainingJobName=parameters["TrainingJobName"])
        if resource == "arn:aws:states:::sagemaker:createModel":
            self.container.model(parameters)
            return self.sagemaker.create_model(**parameters)
        if resource == "arn:aws:states:::sagemaker:createTransformJob.sync":
            self.sagemaker.create_transform_job(**parameters)
            self.container.transform(parameters)
            return self.sagemaker.describe_transform_job(TransformJobName=parameters["TransformJobName"])
        raise AssertionError(f"{name}: unexpected resource {resource}")


@pytest.fixture(scope="module")
def local_workdir(tmp_path_factory):
    """Archive and features built once, locally (the same stage functions); each test uploads them to moto."""
    root = tmp_path_factory.mktemp("split")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    config = load_config(path)
    ctx = RunContext(open_storage(root / "work", config), config, new_run_id())
    run_archive(ctx, [str(write_jsonl(root / "audit.jsonl", audit_events()))], T0 + timedelta(hours=96))
    run_features(ctx, resolve_ranges(ctx, now=T0 + timedelta(hours=96)))
    return root / "work"


@pytest.fixture
def setup(bucket, tmp_path, local_workdir):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    config = load_config(path)
    storage = open_storage(WORKDIR, config)
    for file in sorted(local_workdir.rglob("*")):
        key = file.relative_to(local_workdir).as_posix()
        if file.is_file() and "/partials/" not in key and not key.startswith("locks/"):
            storage.write_bytes(key, file.read_bytes())
    return config, str(path), storage


def _split_run(setup, retrain: bool = True, retry_count: int = 0, container: FakeRcfContainer | None = None,
               stop: str = "Score"):
    config, path, storage = setup
    container = container or FakeRcfContainer(config)
    machine = StepFunctions(state_machine_definition(config), path, container, config)
    run_id = str(uuid.uuid4())
    document = {"run": {"id": run_id}, "plan": {"decision": {"retrain": retrain}}}
    choice = machine.states["RetrainDue"]
    start = choice["Choices"][2]["Next"] if retrain else choice["Default"]
    document = machine.run(start, document, stop, retry_count)
    return machine, container, run_id, document


def _results(storage, config) -> tuple[dict, list[dict], dict]:
    state = RunContext(storage, config, "check").read_state()
    return (state, storage.read_json(f"{state['score']['key']}/findings.json"),
            storage.read_json(f"{state['model']['key']}/detector/manifest.json"))


def test_split_state_machine_trains_and_scores_through_sagemaker_jobs_like_the_in_process_backend(setup, client_events):
    config, _, storage = setup
    machine, container, run_id, document = _split_run(setup)
    assert machine.visited == ["PrepareTraining", "ReadTrainingSpec", "TrainRcf", "CreateRcfModel", "ScoreTrainingRows",
                               "Train", "PrepareScoring", "ReadScoringSpec", "ScoreRcf", "Score"]
    assert machine.states["Score"]["Next"] == "Report"

    # what Step Functions sends, built from the specs the prepare steps wrote
    training = machine.sagemaker_requests["TrainRcf"]
    assert training["TrainingJobName"] == document["rcf_training"]["job"]["name"] == f"auditsift-rcf-{run_id}-t0"
    assert training["RoleArn"] == ROLE and training["AlgorithmSpecification"] == {"TrainingImage": RCF_IMAGE,
                                                                                  "TrainingInputMode": "File"}
    prefix = f"models/demo/sfn-{run_id}"
    assert training["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == f"{WORKDIR}/{prefix}/train/"
    assert training["OutputDataConfig"] == {"S3OutputPath": f"{WORKDIR}/{prefix}/output", "KmsKeyId": KMS}
    assert training["HyperParameters"] == {"feature_dim": str(training["HyperParameters"]["feature_dim"]),
                                           "num_trees": "50", "num_samples_per_tree": "128"}
    assert training["Tags"] == [{"Key": "auditsift:cluster", "Value": "demo"}]
    assert document["rcf_training"]["model"] == {"name": f"auditsift-rcf-{run_id}-m0"}, "name read back from the ModelArn"
    calibration = machine.sagemaker_requests["ScoreTrainingRows"]
    assert calibration["ModelName"] == f"auditsift-rcf-{run_id}-m0"
    assert calibration["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == f"{WORKDIR}/{prefix}/train/"
    scoring = machine.sagemaker_requests["ScoreRcf"]
    assert scoring["TransformJobName"] == f"auditsift-rcf-{run_id}-s0" and scoring["ModelName"] == calibration["ModelName"]
    assert scoring["TransformResources"]["VolumeKmsKeyId"] == KMS
    assert machine.processing["Train"][-10:] == [
        "--spec-id", run_id, "--training-job", f"auditsift-rcf-{run_id}-t0", "--model-name", f"auditsift-rcf-{run_id}-m0",
        "--transform-job", f"auditsift-rcf-{run_id}-c0", "--wait-lock", "0"]

    # the registered model: SageMaker's jobs, the threshold over exactly the container's training scores
    split_state, split_findings, split_manifest = _results(storage, config)
    model = split_state["model"]
    assert model["backend"] == "sagemaker-rcf"
    assert split_manifest["training"]["model_id"] == f"auditsift-rcf-{run_id}-t0"
    assert split_manifest["training"]["model_name"] == f"auditsift-rcf-{run_id}-m0"
    assert split_manifest["training"]["train_transform_job"] == f"auditsift-rcf-{run_id}-c0"
    assert split_manifest["training"]["prefix"] == prefix
    spec = storage.read_json(rcf_spec_key(RunContext(storage, config, "check"), run_id, "training"))
    forest = next(iter(container.forests.values()))
    staged = np.vstack([rows for _, rows in csv_rows(container.s3, spec["train_data"])])
    assert model["threshold"] == pytest.approx(calibrate(forest._score_scaled(staged), "quantile", 0.99), rel=1e-12)
    assert split_manifest["training"]["rows"] == spec["rows"] == staged.shape[0]
    assert split_state["score"]["model_id"] == model["id"] and split_state["score"]["records"] > 0
    assert split_findings[0]["entity"] in ("mallory@corp.example", "203.0.113.50") and split_findings[0]["flagged"]

    # a later run whose model is not due: scoring only, and an attempt retried by Step Functions gets a new name
    rescore, _, rescore_id, rescore_document = _split_run(setup, retrain=False, retry_count=2, container=container)
    assert rescore.visited == ["PrepareScoring", "ReadScoringSpec", "ScoreRcf", "Score"]
    assert rescore_document["rcf_scoring"]["transform"]["name"] == f"auditsift-rcf-{rescore_id}-s2"
    assert len(container.requests["CreateTrainingJob"]) == 1
    rescored = _results(storage, config)[1]
    assert [(f["finding_id"], f["score"]) for f in rescored] == [(f["finding_id"], f["score"]) for f in split_findings]

    # the in-process backend, answered by the same container, agrees on everything but the names
    for operation in container.requests:
        client_events(f"before-parameter-build.sagemaker.{operation}", container.hook(operation))
    before = {operation: len(requests) for operation, requests in container.requests.items()}
    in_process = RunContext(storage, config, new_run_id())
    run_train(in_process)
    run_score(in_process)
    created = {operation: len(requests) - before[operation] for operation, requests in container.requests.items()}
    assert created == {"CreateTrainingJob": 1, "CreateModel": 1, "CreateTransformJob": 2}, "training rows are scored once"
    state, findings, manifest = _results(storage, config)
    assert state["model"]["key"] != split_state["model"]["key"]
    for key in ("threshold", "threshold_method", "train_rows", "train_score_median", "calibration"):
        assert state["model"][key] == split_state["model"][key], key
    for key in ("params", "feature_names", "scaler", "threshold", "self_check"):
        assert manifest[key] == split_manifest[key], key
    assert manifest["training"]["score_stats"] == split_manifest["training"]["score_stats"]
    assert manifest["training"]["rows"] == split_manifest["training"]["rows"]
    baselines = storage.read_parquet(f"{state['model']['key']}/baselines.parquet")
    assert baselines.equals(storage.read_parquet(f"{split_state['model']['key']}/baselines.parquet"))
    columns = ("rank", "finding_id", "score", "flagged", "model_score", "model_part", "rule_part", "reasons")
    assert [{c: f[c] for c in columns} for f in findings] == [{c: f[c] for c in columns} for f in split_findings]


def test_finish_steps_use_only_the_jobs_that_ran_on_the_staged_rows(setup):
    config, path, storage = setup
    machine, container, run_id, _ = _split_run(setup, stop="Train")
    ctx = RunContext(storage, config, "check")
    spec = storage.read_json(rcf_spec_key(ctx, run_id, "training"))
    runner = CliRunner()
    base = ["rcf-train-finish", "--workdir", WORKDIR, "--config", path, "--spec-id", run_id,
            "--training-job", f"auditsift-rcf-{run_id}-t0", "--model-name", f"auditsift-rcf-{run_id}-m0"]

    # a transform job over other rows: refused, naming what differs
    other = dict(machine.sagemaker_requests["ScoreTrainingRows"], TransformJobName="auditsift-rcf-other")
    other["TransformInput"] = json.loads(json.dumps(other["TransformInput"]).replace("/train/", "/elsewhere/"))
    container.sagemaker.create_transform_job(**other)
    result = runner.invoke(processing_cli, [*base, "--transform-job", "auditsift-rcf-other"])
    assert result.exit_code == 2, result.output
    assert ("error: SageMaker transform job auditsift-rcf-other did not run on the staged data: its "
            "TransformInput.DataSource.S3DataSource.S3Uri differ") in result.stderr

    # the feature table changed after PrepareTraining: the rescaled rows no longer match the spec's sha256
    storage.write_json(rcf_spec_key(ctx, run_id, "training"), {**spec, "digest": "0" * 64})
    result = runner.invoke(processing_cli, [*base, "--transform-job", f"auditsift-rcf-{run_id}-c0"])
    assert result.exit_code == 2 and f"error: the training rows or parameters differ from those staged for {run_id}" in result.stderr

    result = runner.invoke(processing_cli, [*base[:5], "--spec-id", "no-such-run", *base[7:], "--transform-job", "x"])
    assert result.exit_code == 2 and "error: no training spec for run no-such-run" in result.stderr

    # rows nobody staged are never sent to a new transform job from inside a finish step
    detector, _, _ = load_model(ctx)
    assert isinstance(detector, SageMakerRcf) and detector.model_id_ == f"auditsift-rcf-{run_id}-t0"
    rows = np.ones((3, len(detector.feature_names_)))
    with completed_jobs(CompletedJobs()), pytest.raises(StageError, match="needs a new batch transform"):
        detector.score(rows)
    staged = CompletedJobs(scoring_spec={"spec_id": "s", "digest": matrix_digest(detector.transform(rows)),
                                         "model_id": "auditsift-rcf-another-t0"}, scoring_job="auditsift-rcf-x-s0")
    with completed_jobs(staged), pytest.raises(StageError, match="staged for model auditsift-rcf-another-t0"):
        detector.score(rows)
    assert container.requests["CreateTransformJob"] == [machine.sagemaker_requests["ScoreTrainingRows"]]
