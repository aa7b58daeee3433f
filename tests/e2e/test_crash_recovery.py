"""Crash recovery: `auditsift archive` or `auditsift run` killed with SIGKILL at any point, then rerun,
ends exactly where an uninterrupted run ends: the same archived rows, byte-identical hour files,
and a byte-identical anomalies.jsonl. The killed run's lock (its pid now dead) does not block the rerun.

Kill points are progress conditions on the workdir (a phase reached, a seeded number of files
written) plus a seeded jitter, so each lands in the intended phase however busy the machine is.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import pytest

from pipeline.io.storage import LocalStorage
from pipeline.sample import sample_clock
from pipeline.stages.archive import hour_digest, list_archive_hours
from tests.e2e.test_hostile_inputs import built_once, full_run, hostile_input, sample_2d  # noqa: F401  (shared, built once per session)

BIN = Path(sys.executable).parent / "auditsift"
CLUSTER = "default"
RNG = random.Random(20261101)
pytestmark = pytest.mark.slow


def auditsift(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN), *args, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out


def hour_files(workdir: Path) -> list[Path]:
    return sorted((workdir / "archive").glob("cluster=*/date=*/hour=*/part-0.parquet"))


def archive_state(workdir: Path) -> tuple[set, dict[str, bytes]]:
    """(every (audit_id, stage) archived, hour file bytes by key), after checking manifests and leftovers."""
    storage = LocalStorage(workdir)
    rows: list[tuple[str, str]] = []
    files = {}
    for _, _, key in list_archive_hours(storage, CLUSTER):
        data = storage.read_bytes(key)
        table = pq.read_table(workdir / key, columns=["audit_id", "stage"])
        rows.extend(zip(table["audit_id"].to_pylist(), table["stage"].to_pylist()))
        assert storage.read_json(key.rsplit("/", 1)[0] + "/_manifest.json")["sha256"] == hour_digest(storage, key)
        files[key] = data
    assert len(rows) == len(set(rows)), "no row twice"
    assert not storage.list("staging/"), "the rerun cleared the killed run's staging area"
    return set(rows), files


def kill_when(process: subprocess.Popen, reached: Callable[[], bool], jitter: float, describe: Callable[[], str]) -> str:
    """SIGKILL ``process`` ``jitter`` seconds after ``reached()`` first holds; returns what the workdir held then."""
    deadline = time.monotonic() + 600
    while not reached():
        if process.poll() is not None:
            pytest.fail(f"the run finished before the kill point: {process.communicate()[1]}")
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(jitter)
    state = describe()
    if process.poll() is not None:
        pytest.fail("the run finished inside the jitter; lower it")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return state


@pytest.fixture(scope="session")
def sample_3d(tmp_path_factory) -> Path:
    """Three days of realistic audit logs, about 41k events over 72 hours: archiving them takes seconds."""
    from pipeline.sample import generate_sample

    return built_once(tmp_path_factory, "sample-3d", lambda out: generate_sample(out, days=3, seed=5, scale=0.1))


# --------------------------------------------------------------------------- archive
@pytest.fixture(scope="session")
def archive_baseline(sample_3d, tmp_path_factory):
    workdir = built_once(tmp_path_factory, "archive-baseline",
                         lambda out: finish(auditsift("archive", "--input", str(sample_3d), "--workdir", str(out))))
    return archive_state(workdir)


def locked(workdir: Path) -> Callable[[], bool]:
    return lambda: (workdir / "locks" / "run.lock").exists()


ARCHIVE_KILLS = [
    pytest.param(None, RNG.uniform(0.1, 0.8), id="early-while-reading-and-normalising"),
    pytest.param(RNG.uniform(0.05, 0.3), RNG.uniform(0.0, 0.05), id="early-in-the-hour-merges"),
    pytest.param(RNG.uniform(0.4, 0.6), RNG.uniform(0.0, 0.05), id="middle-of-the-hour-merges"),
    pytest.param(RNG.uniform(0.75, 0.9), RNG.uniform(0.0, 0.05), id="late-in-the-hour-merges"),
]


@pytest.mark.parametrize("written, jitter", ARCHIVE_KILLS)
def test_archive_killed_anywhere_then_rerun_equals_an_uninterrupted_archive(written, jitter, sample_3d, archive_baseline,
                                                                            tmp_path, record_property):
    """SIGKILL while reading (lock held, no hour written) or after a seeded fraction of the hour
    merges; the rerun proceeds past the dead run's lock and the archive matches the uninterrupted
    one byte for byte. (After the last hour only the state file and the lock release remain: a few
    milliseconds, too short to aim a kill at.)"""
    rows, files = archive_baseline
    workdir = tmp_path / "work"
    args = ["archive", "--input", str(sample_3d), "--workdir", str(workdir)]
    if written is None:
        reached = lambda: locked(workdir)() and not hour_files(workdir)  # noqa: E731
    else:
        reached = lambda: len(hour_files(workdir)) >= max(1, round(written * len(files)))  # noqa: E731
    state = kill_when(auditsift(*args), reached, jitter,
                      lambda: f"{len(hour_files(workdir))} of {len(files)} hour files written")
    assert locked(workdir)(), "a killed run leaves its lock behind"
    finish(auditsift(*args))
    again_rows, again_files = archive_state(workdir)
    record_property("result", f"killed with {state}; rerun: same {len(again_rows)} rows, {len(again_files)} identical hour files")
    assert again_rows == rows
    assert again_files == files
    assert not locked(workdir)()


# --------------------------------------------------------------------------- run
def partial_files(workdir: Path) -> int:
    return len(list((workdir / "features").glob("cluster=*/partials/*/date=*/hour=*/*.arrow")))


def model_saved(workdir: Path) -> bool:
    return any((workdir / "models").glob("cluster=*/*/model.json"))


FEATURES_KILL_AT = RNG.randint(20, 70)
RUN_KILLS = [
    pytest.param(lambda w: partial_files(w) >= FEATURES_KILL_AT, RNG.uniform(0.0, 0.3), id="during-features"),
    pytest.param(model_saved, RNG.uniform(0.5, 2.0), id="during-scoring"),
]


@pytest.mark.parametrize("kill_point, jitter", RUN_KILLS)
def test_run_killed_then_rerun_gives_the_same_anomalies(kill_point, jitter, sample_2d, hostile_input, full_run, tmp_path, record_property):
    """SIGKILL while features are being computed (a seeded number of hour partials cached) or while
    scoring (model saved); the rerun reuses what is valid, and its archive and anomalies.jsonl equal
    those of the uninterrupted run over the same input (the hostile-input run)."""
    workdir = tmp_path / "work"
    args = ["run", "--input", str(sample_2d), "--input", str(hostile_input), "--workdir", str(workdir), "--json",
            "--now", sample_clock(sample_2d).isoformat()]
    state = kill_when(auditsift(*args), lambda: kill_point(workdir), jitter,
                      lambda: f"{partial_files(workdir)} partial files, model saved: {model_saved(workdir)}")
    assert locked(workdir)()
    out = finish(auditsift(*args))
    again = (Path(json.loads(out[out.index("{"):])["report_dir"]) / "anomalies.jsonl").read_bytes()
    anomalies = (full_run["report"] / "anomalies.jsonl").read_bytes()
    verdict = "identical" if again == anomalies else "DIFFERENT"
    record_property("result", f"killed with {state}; rerun: anomalies.jsonl {verdict} ({len(again.splitlines())} records)")
    assert archive_state(workdir) == archive_state(full_run["workdir"])
    assert again == anomalies
