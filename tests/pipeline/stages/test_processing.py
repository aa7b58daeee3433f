"""Scale-out feature extraction equals the single process, and the scheduled-run plan decides as documented.

Shards are mapped in other OS processes than the reduce (a spawn pool, and the real
``auditsift container map`` entry point once per Processing instance); each
shard's output directory is merged into one, as SageMaker's uploads merge into one S3
prefix, then reduced.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import random
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from features.aggregate import KEY, SET_NAMES, partial_aggregates, reduce_partials
from features.flags import add_flags
from features.windows import finalise
from pipeline.cli.container import plan_command
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.errors import ConfigError
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.stages.archive import archive_inputs, list_archive_hours
from pipeline.stages.features import events_frame, features_fingerprint, flag_context, run_features
from pipeline.stages.ranges import Ranges, resolve_ranges
from pipeline.stages.scaleout import map_shard, model_trained_at, partials_root, plan_run, reduce_shards, retrain_due
from tests.factory import T0, event, events, write_jsonl

CLUSTER = "demo"
PEOPLE = [
    ("alice@corp.example", "10.0.12.34", "kubectl/v1.29.2 (darwin/arm64) kubernetes/4b8e819"),
    ("bob@corp.example", "10.0.40.2", "kubectl/v1.30.1 (linux/amd64) kubernetes/6813625"),
    ("system:serviceaccount:ci:deployer", "10.0.77.9", "argocd-application-controller/v2.11.0"),
    ("mallory@corp.example", "203.0.113.50", "python-requests/2.31.0"),
]
OBJECTS = [("pods", "web"), ("deployments", "web"), ("configmaps", "kube-system"), ("secrets", "payments"),
           ("services", "web"), ("roles", "web")]


def scenario_events(seed: int = 7, requests: int = 800, hours: int = 6) -> list[dict]:
    """Mixed traffic over ``hours`` hours: reads, writes, denials, 404s, and exec sessions that log
    ResponseStarted then ResponseComplete under one auditID (always within one hour)."""
    rng = random.Random(seed)
    items = []
    for i in range(requests):
        user, ip, agent = rng.choice(PEOPLE)
        resource, namespace = rng.choice(OBJECTS)
        verb = rng.choice(["get", "get", "list", "watch", "create", "update", "delete"])
        code = rng.choice([200] * 8 + [403, 404])
        name = f"{resource[:-1]}-{rng.randrange(4)}" if verb in ("get", "update", "delete") else None
        ref = {"resource": resource, "namespace": namespace, **({"name": name} if name else {})}
        uri = f"/api/v1/namespaces/{namespace}/{resource}" + (f"/{name}" if name else "")
        override = {"verb": verb, "user": {"username": user, "groups": ["system:authenticated"]}, "sourceIPs": [ip],
                    "userAgent": agent, "objectRef": ref, "requestURI": uri, "responseStatus": {"code": code}}
        if code == 403:
            override["annotations"] = {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""}
        items.append(event(T0 + timedelta(seconds=rng.randrange(hours * 3600)), audit_id=f"req-{i:05d}", **override))
    for j in range(16):
        user, ip, agent = rng.choice(PEOPLE)
        started = T0 + timedelta(hours=rng.randrange(hours), minutes=rng.randrange(50))
        exec_request = {
            "verb": "create", "user": {"username": user, "groups": ["system:authenticated"]}, "sourceIPs": [ip],
            "userAgent": agent, "responseStatus": {"code": 101},
            "objectRef": {"resource": "pods", "subresource": "exec", "namespace": "web", "name": "web-0"},
            "requestURI": "/api/v1/namespaces/web/pods/web-0/exec?command=sh&command=-c&command=id&stdout=true",
        }
        items.append(event(started, audit_id=f"exec-{j:03d}", stage="ResponseStarted", **exec_request))
        items.append(event(started + timedelta(minutes=rng.randrange(1, 9)), audit_id=f"exec-{j:03d}", stage="ResponseComplete",
                           requestReceivedTimestamp=started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **exec_request))
    rng.shuffle(items)
    return items


@pytest.fixture(scope="module")
def archived(tmp_path_factory):
    """An archive of the scenario, its config file, and the single-process reference feature table."""
    root = tmp_path_factory.mktemp("scale-out")
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump({"cluster": CLUSTER, "features": {"window_minutes": 30}}))
    config = load_config(config_path)
    storage = LocalStorage(root / "work")
    source = write_jsonl(root / "audit.jsonl", scenario_events())
    archive_inputs(storage, resolve_inputs([str(source)]), CLUSTER, "archive-run")
    hours = list_archive_hours(storage, CLUSTER)
    events = pa.concat_tables([storage.read_parquet(key) for _, _, key in hours]).combine_chunks()
    flags = flag_context(RunContext(storage, config, "reference"))
    partial = partial_aggregates(add_flags(events_frame(events), flags), config.features.window_minutes,
                                 config.features.entity_types)
    reference = finalise(reduce_partials([partial]), config.features.window_minutes).drop(columns=list(SET_NAMES))
    return {"root": root, "config_path": config_path, "config": config, "storage": storage, "hours": hours,
            "events": events, "reference": roundtrip(reference)}


def roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    """Through Parquet and back, as the reduce step's output file goes, sorted by key."""
    return pa.Table.from_pandas(frame, preserve_index=False).to_pandas().sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def map_pool():
    """Two fresh interpreters (spawn: nothing inherited from the test process) that run map steps."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        yield pool


def run_maps(shards: list[Path], outputs: Path, config_path: Path) -> None:
    """One `auditsift container map` process per shard, all running at once."""
    processes = [
        subprocess.Popen([sys.executable, "-m", "pipeline", "container", "--log-level", "WARNING", "map",
                          "--input-dir", str(shard), "--output-dir", str(outputs / shard.name), "--config", str(config_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for shard in shards
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()


def upload(outputs: Path, partials: Path) -> None:
    """Merge every instance's output directory into one, like SageMaker's uploads to one S3 prefix."""
    for instance in sorted(outputs.iterdir()):
        shutil.copytree(instance, partials, dirs_exist_ok=True)


def shard_by_request(events: pa.Table, count: int, target: Path) -> list[Path]:
    """Split events over ``count`` shards by a hash of auditID: every window's events spread over shards,
    while the stages of one request stay together."""
    ids = events["audit_id"].to_pylist()
    index = pa.array([int(hashlib.sha256(i.encode()).hexdigest(), 16) % count for i in ids])
    shards = []
    for n in range(count):
        shard = target / f"shard-{n}"
        shard.mkdir(parents=True)
        pq.write_table(events.filter(pc.equal(index, n)), shard / "events.parquet")
        shards.append(shard)
    return shards


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_map_over_request_shards_then_reduce_equals_single_process(archived, map_pool, tmp_path, count):
    shards = shard_by_request(archived["events"], count, tmp_path / "input")
    window = f"{archived['config'].features.window_minutes}min"
    spread = {}
    for shard in shards:
        frame = pq.read_table(shard / "events.parquet", columns=["user", "time"]).to_pandas()
        for key in set(zip(frame["user"], frame["time"].dt.floor(window))):
            spread[key] = spread.get(key, 0) + 1
    if count > 1:
        assert max(spread.values()) == count, "some window must straddle every shard"

    mapped = map_pool.starmap(map_shard, [(shard, tmp_path / "outputs" / shard.name, archived["config"]) for shard in shards])
    assert sum(m["events"] for m in mapped) == len(archived["events"])
    upload(tmp_path / "outputs", tmp_path / "partials")
    counts = reduce_shards(tmp_path / "partials", tmp_path / "features.parquet", archived["config"])

    result = pq.read_table(tmp_path / "features.parquet").to_pandas().sort_values(KEY).reset_index(drop=True)
    assert counts["files"] == count and counts["rows"] == len(archived["reference"])
    pd.testing.assert_frame_equal(result, archived["reference"])


def test_entry_points_over_archive_hour_files_fill_the_partial_cache_and_reduce_to_the_same_table(archived, tmp_path):
    """ShardedByS3Key hands each of 3 instances whole hour files; each runs the real map entry point.
    Uploaded into the workdir's partial cache, the output lets the features stage build its table
    without reading a single archived hour (they are overwritten with garbage), and that table and
    the reduce entry point's both equal the single-process table."""
    storage, hours = archived["storage"], archived["hours"]
    archive_root = storage.local_path(f"archive/cluster={CLUSTER}")
    shards = [tmp_path / "input" / f"instance-{n}" for n in range(3)]
    for position, (_, _, key) in enumerate(hours):
        source = storage.local_path(key)
        target = shards[position % 3] / source.relative_to(archive_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)

    run_maps(shards, tmp_path / "outputs", archived["config_path"])
    upload(tmp_path / "outputs", tmp_path / "partials")

    work = tmp_path / "work"
    shutil.copytree(storage.root, work)
    shutil.copytree(tmp_path / "partials", work / f"features/cluster={CLUSTER}/partials")
    for _, _, key in hours:
        (work / key).write_bytes(b"not Parquet: the features stage must find every hour in the cache")
    ranges = Ranges(T0 - timedelta(days=1), T0 + timedelta(hours=4), T0 + timedelta(hours=4), T0 + timedelta(days=1))
    ctx = RunContext(LocalStorage(work), archived["config"], "features-run")
    assert run_features(ctx, ranges)["hours"] == len(hours)
    staged = ctx.storage.read_parquet(f"{ctx.read_state()['features']['key']}/features.parquet").to_pandas()
    reference = archived["reference"]
    pd.testing.assert_frame_equal(staged[list(reference.columns)].sort_values(KEY).reset_index(drop=True), reference)

    completed = subprocess.run(
        [sys.executable, "-m", "pipeline", "container", "reduce", "--partials-dir", str(tmp_path / "partials"),
         "--output", str(tmp_path / "out" / "features.parquet"), "--config", str(archived["config_path"])],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert f'"rows":{len(archived["reference"])}' in completed.stdout
    result = pq.read_table(tmp_path / "out" / "features.parquet").to_pandas().sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(result, archived["reference"])


def test_an_instance_with_an_empty_shard_writes_nothing(archived, tmp_path):
    (tmp_path / "empty").mkdir()
    counts = map_shard(tmp_path / "empty", tmp_path / "out", archived["config"])
    assert counts["files"] == 0 and not list((tmp_path / "out").rglob("*.parquet"))


def test_reduce_refuses_partials_of_another_features_configuration(archived, tmp_path):
    (tmp_path / "partials" / "0123456789ab" / "date=2026-11-01").mkdir(parents=True)
    with pytest.raises(ConfigError, match="0123456789ab"):
        partials_root(tmp_path / "partials", features_fingerprint(RunContext(None, archived["config"], "x")))


def test_map_entry_point_reports_a_missing_input_dir_in_one_line(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.container import container as processing_cli

    result = CliRunner().invoke(processing_cli, ["map", "--input-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not a directory" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- plan
UTC = timezone.utc


def _config(**sections):
    from pipeline.config import parse_config

    return parse_config({"cluster": CLUSTER, **sections}, "<test>")


def test_model_age_comes_from_the_training_run_id():
    assert model_trained_at({"id": "20261101T061802Z-a1b2c3-iforest"}) == datetime(2026, 11, 1, 6, 18, 2, tzinfo=UTC)
    assert model_trained_at({"id": "hand-made"}) is None


@pytest.mark.parametrize("model, now, due, why", [
    (None, datetime(2026, 11, 8, 6, 15, tzinfo=UTC), True, "no trained model"),
    ({"id": "20261101T062500Z-aaaaaa-iforest", "backend": "iforest"}, datetime(2026, 11, 7, 6, 15, tzinfo=UTC), False, "6 days"),
    ({"id": "20261101T062500Z-aaaaaa-iforest", "backend": "iforest"}, datetime(2026, 11, 8, 6, 15, tzinfo=UTC), True, "7 days"),
    ({"id": "20261101T062500Z-aaaaaa-rcf-local", "backend": "rcf-local"}, datetime(2026, 11, 2, 6, 15, tzinfo=UTC), True, "changed"),
    ({"id": "manual", "backend": "iforest"}, datetime(2026, 11, 2, 6, 15, tzinfo=UTC), True, "cannot tell"),
])
def test_retrain_is_due_every_n_calendar_days_even_when_training_ran_minutes_after_the_schedule(model, now, due, why):
    decision, reason = retrain_due(model, _config(schedule={"retrain_every_days": 7}), now)
    assert decision is due and why in reason


def test_plan_scores_the_day_before_now_minus_grace_and_trains_on_train_days_before(tmp_path):
    config = _config(archive={"grace_minutes": 15}, schedule={"train_days": 14})
    ctx = RunContext(LocalStorage(tmp_path), config, "r")
    ranges, plan = plan_run(ctx, datetime(2026, 11, 8, 6, 10, 30, tzinfo=UTC))
    assert plan["ranges"] == {"train_from": "2026-10-24T05:00:00Z", "train_to": "2026-11-07T05:00:00Z",
                              "score_from": "2026-11-07T05:00:00Z", "score_to": "2026-11-08T05:00:00Z"}
    assert plan["retrain"] is True and ranges.as_dict() == plan["ranges"]


def test_a_scheduled_plan_on_a_young_archive_trains_from_its_first_event_as_auditsift_run_does(tmp_path):
    """Three days archived, 14 training days configured: the plan's training range starts at the first archived
    event's window (so the warm-up day is the archive's first day), the range ``auditsift run`` resolves too."""
    source = write_jsonl(tmp_path / "audit.jsonl", events(72, start=datetime(2026, 11, 5, 6, 7, tzinfo=UTC), step=timedelta(hours=1)))
    storage = LocalStorage(tmp_path / "work")
    archive_inputs(storage, resolve_inputs([str(source)]), CLUSTER, "archive-run")
    ctx = RunContext(storage, _config(archive={"grace_minutes": 15}, schedule={"train_days": 14}), "plan-run")
    now = datetime(2026, 11, 8, 6, 10, 30, tzinfo=UTC)
    ranges, plan = plan_run(ctx, now)
    assert plan["ranges"]["train_from"] == "2026-11-05T06:00:00Z"
    assert ranges == resolve_ranges(ctx, score_from=ranges.score_from, score_to=ranges.score_to)


def test_plan_entry_point_writes_the_plan_file_step_functions_reads(tmp_path):
    from click.testing import CliRunner

    storage = LocalStorage(tmp_path / "work")
    storage.write_json(f"state/cluster={CLUSTER}/latest.json",
                       {"model": {"id": "20261105T062000Z-abcdef-iforest", "backend": "iforest"}})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"cluster": CLUSTER}))
    result = CliRunner().invoke(plan_command, ["--workdir", str(tmp_path / "work"), "--plan-id", "3f2a-run",
                                               "--now", "2026-11-08T06:15:00Z", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    plan = storage.read_json(f"state/cluster={CLUSTER}/plans/3f2a-run.json")
    assert plan["retrain"] is False and plan["reason"] == "model is 3 days old (retrain every 7)"
    assert plan["ranges"]["score_to"] == "2026-11-08T06:00:00Z"


@pytest.mark.parametrize("command, extra", [
    ("rcf-train-prepare", []), ("rcf-score-prepare", []), ("rcf-score-finish", ["--transform-job", "t"]),
    ("rcf-train-finish", ["--training-job", "t", "--model-name", "m", "--transform-job", "c"]),
])
def test_rcf_steps_refuse_another_backend_before_touching_the_workdir(tmp_path, command, extra):
    """A state machine generated for sagemaker-rcf run with a config that says otherwise stops in one line."""
    from click.testing import CliRunner

    from pipeline.cli.container import container as processing_cli

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"cluster": CLUSTER, "model": {"backend": "rcf-local"}}))
    result = CliRunner().invoke(processing_cli, [command, "--workdir", str(tmp_path / "work"), "--spec-id", "run-1",
                                                 *extra, "--config", str(config_path), "--wait-lock", "0"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[0] == "error: model.backend is rcf-local; the rcf-* steps are for sagemaker-rcf"
    assert sorted(p.relative_to(tmp_path / "work").as_posix() for p in (tmp_path / "work").rglob("*") if p.is_file()) == []


def test_rcf_spec_keys_are_per_cluster_and_run():
    from pipeline.stages.scaleout import rcf_spec_key

    ctx = RunContext(LocalStorage("/tmp"), load_config(None, {"cluster": "prod.eu"}), "r")
    assert rcf_spec_key(ctx, "3f2a-9c", "training") == "state/cluster=prod.eu/sagemaker/3f2a-9c/training.json"
    assert rcf_spec_key(ctx, "3f2a-9c", "scoring") == "state/cluster=prod.eu/sagemaker/3f2a-9c/scoring.json"


def test_an_upgrade_of_the_map_code_maps_every_hour_again_instead_of_reading_its_partials(archived, tmp_path, monkeypatch):
    """Partials are cached per features fingerprint. A release whose flag code differs (here: features/flags.py
    with one line more) must not read the partials the old code cached: every hour is mapped again, under a new
    fingerprint, and the table still equals the reference."""
    from pipeline.stages import features as stage

    work = tmp_path / "work"
    shutil.copytree(archived["storage"].root, work)
    ranges = Ranges(T0 - timedelta(days=1), T0 + timedelta(hours=4), T0 + timedelta(hours=4), T0 + timedelta(days=1))

    def features_run(run_id: str) -> tuple[str, set[Path], pd.DataFrame]:
        ctx = RunContext(LocalStorage(work), archived["config"], run_id)
        run_features(ctx, ranges)
        table = ctx.storage.read_parquet(f"{ctx.read_state()['features']['key']}/features.parquet").to_pandas()
        cached = set((work / f"features/cluster={CLUSTER}/partials").rglob("*.arrow"))
        return features_fingerprint(ctx), cached, table[list(archived["reference"].columns)].sort_values(KEY).reset_index(drop=True)

    before, cached_before, _ = features_run("old-release")
    assert cached_before and all(f"/{before}/" in str(path) for path in cached_before)
    assert features_run("old-release-again")[1] == cached_before  # the same code reads its cache

    release = tmp_path / "release" / "features"
    shutil.copytree(Path(stage.MAP_CODE[0]), release, ignore=shutil.ignore_patterns("*.so", "_native", "__pycache__"))
    (release / "flags.py").write_text((release / "flags.py").read_text() + "\n# a changed flag\n")
    monkeypatch.setattr(stage, "MAP_CODE", (release, stage.MAP_CODE[1]))
    stage.map_code_digest.cache_clear()
    try:
        after, cached_after, table = features_run("new-release")
    finally:
        stage.map_code_digest.cache_clear()
    assert after != before
    mapped_again = cached_after - cached_before
    assert len(mapped_again) == 2 * len(archived["hours"]) and all(f"/{after}/" in str(path) for path in mapped_again)
    pd.testing.assert_frame_equal(table, archived["reference"])


def test_reduce_reads_only_window_partials_among_an_hours_cache_files():
    """A busy hour's map step writes three files (partials, rule hits, requests); only the first are window partials."""
    from pipeline.stages.features import is_partials_file, requests_cache_key, rules_cache_key

    key = "features/cluster=demo/partials/0123456789ab/date=2026-11-01/hour=14/00ff00ff00ff00ff.arrow"
    assert [is_partials_file(name) for name in (key, rules_cache_key(key), requests_cache_key(key))] == [True, False, False]
