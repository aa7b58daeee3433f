"""The whole daily run over the shapes production volume gives an archive: hours larger than
``archive.merge_rows``, hours read back in several row groups, and one or two worker processes.
Each must give the findings of the plain run: the same records, ranks, scores and flagged set.

The data is three days of the realistic sample at about 1,500 events an hour, with
``merge_rows`` at its floor of 1,000 rows, so these hours take the merge path a cluster at
11 requests a second takes with the default (issue 16: such a run exited 1 in the score stage).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import pipeline.stages.archive
import pipeline.stages.features
import pipeline.stages.score
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.io.storage import LocalStorage
from pipeline.stages.archive import list_archive_hours, run_archive
from pipeline.stages.clock import parse_iso
from pipeline.stages.run import run_pipeline

pytestmark = pytest.mark.slow
SMALLEST_MERGE_ROWS = 1_000


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict:
    """Three days (seed 11, scale 0.3): about 110k events, 1,200-1,700 an hour."""
    from pipeline.sample import generate_sample

    out = tmp_path_factory.mktemp("volume-sample")
    summary = generate_sample(out, days=3, seed=11, scale=0.3)
    return {"dir": out, "days": sorted(str(out / name) for name in summary["files"] if name.endswith(".gz")),
            "end": parse_iso(summary["end"])}


def context(workdir: Path, workers: int = 1, merge_rows: int | None = None) -> RunContext:
    archive = {"workers": workers, **({"merge_rows": merge_rows} if merge_rows else {})}
    config = load_config(overrides={"archive": archive, "features": {"workers": workers}})
    return RunContext(LocalStorage(str(workdir)), config, "volume")


def outputs(ctx: RunContext, result: dict) -> dict:
    """What a run hands analysts and machines: every scored record, the top events, the incidents, the counts."""
    score = ctx.read_state()["score"]
    findings = ctx.storage.read_json(f"{score['key']}/findings.json")
    return {"findings": findings, "events": ctx.storage.read_json(f"{score['key']}/events.json"),
            "incidents": ctx.storage.read_json(f"{score['key']}/incidents.json"),
            "flagged": sorted(f["finding_id"] for f in findings if f["flagged"]),
            "counts": {k: result[k] for k in ("records", "flagged", "suppressed")}}


def hours_in_row_groups(ctx: RunContext) -> dict[str, int]:
    """Archived hours written in more than one row group: their row groups."""
    groups = {}
    for _, _, key in list_archive_hours(ctx.storage, ctx.cluster):
        count = pq.ParquetFile(ctx.storage.local_path(key)).num_row_groups
        if count > 1:
            groups[key] = count
    return groups


@pytest.fixture(scope="module")
def plain(sample, tmp_path_factory) -> dict:
    """The run every variant is compared with: one process, hours merged in memory (the default merge_rows)."""
    ctx = context(tmp_path_factory.mktemp("plain"))
    result = run_pipeline(ctx, [str(sample["dir"])], score_to=sample["end"])
    assert not hours_in_row_groups(ctx)
    return outputs(ctx, result)


def assert_same_run(run: dict, plain: dict) -> None:
    assert run["counts"] == plain["counts"]
    assert run["flagged"] == plain["flagged"]
    assert [(f["rank"], f["finding_id"], f["score"], f["rank_score"]) for f in run["findings"]] == \
        [(f["rank"], f["finding_id"], f["score"], f["rank_score"]) for f in plain["findings"]]
    assert run["findings"] == plain["findings"]
    assert run["events"] == plain["events"]
    assert run["incidents"] == plain["incidents"]


def test_hours_larger_than_merge_rows_give_the_findings_of_the_in_memory_merge(sample, plain, tmp_path, record_property):
    ctx = context(tmp_path, merge_rows=SMALLEST_MERGE_ROWS)
    result = run_pipeline(ctx, [str(sample["dir"])], score_to=sample["end"])
    merged = hours_in_row_groups(ctx)
    hours = len(list_archive_hours(ctx.storage, ctx.cluster))
    assert len(merged) > hours / 2, "most hours hold more than merge_rows events and are merged from sorted runs"
    assert plain["counts"]["flagged"] > 0
    assert_same_run(outputs(ctx, result), plain)
    record_property("result", f"{len(merged)} of {hours} hours merged from runs into 2-{max(merged.values())} row groups; "
                              f"{plain['counts']['records']} records, {plain['counts']['flagged']} flagged, identical")


def test_hours_rewritten_by_a_later_run_read_back_in_row_groups_give_the_same_findings(sample, plain, tmp_path, record_property):
    """The daily routine: yesterday's run archived the first two days; today's run gets them again (a
    redelivery) with the third. Every hour already archived is merged again from its file and the new
    rows, and written in row groups of merge_rows; the features and score stages read them back."""
    first = context(tmp_path, merge_rows=SMALLEST_MERGE_ROWS)
    run_archive(first, sample["days"][:2])
    ctx = context(tmp_path, merge_rows=SMALLEST_MERGE_ROWS)
    result = run_pipeline(ctx, [str(sample["dir"])], score_to=sample["end"])
    redelivered = {Path(day).name.removeprefix("audit-").removesuffix(".jsonl.gz") for day in sample["days"][:2]}
    rewritten = [key for date, _, key in list_archive_hours(ctx.storage, ctx.cluster) if date in redelivered]
    in_groups = hours_in_row_groups(ctx)
    assert result["counts"]["duplicates"] > 0
    assert sum(key in in_groups for key in rewritten) > len(rewritten) / 2, "rewritten hours are read back in row groups"
    assert_same_run(outputs(ctx, result), plain)
    record_property("result", f"{result['counts']['duplicates']} redelivered events dropped; {len(in_groups)} hours in row groups; identical")


def test_one_and_two_worker_processes_give_the_same_findings(sample, plain, tmp_path, monkeypatch, record_property):
    """archive.workers and features.workers at 2, with the size thresholds that keep small runs in one process
    lowered so that the archive, the features map and the score stage's pass over the events really start their
    workers on this data (and on a one-core machine)."""
    started = []

    def spy(function, name):
        def wrapped(*args, **kwargs):
            started.append(name)
            return function(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(pipeline.stages.archive, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(pipeline.stages.archive, "usable_cores", lambda: 2)
    monkeypatch.setattr(pipeline.stages.archive, "archive_in_workers", spy(pipeline.stages.archive.archive_in_workers, "archive"))
    monkeypatch.setattr(pipeline.stages.features, "MIN_ROWS_PER_WORKER", 1)
    monkeypatch.setattr(pipeline.stages.features, "usable_cores", lambda: 2)
    monkeypatch.setattr(pipeline.stages.features, "ordered_map", spy(pipeline.stages.features.ordered_map, "features"))
    monkeypatch.setattr(pipeline.stages.score, "ordered_map", spy(pipeline.stages.score.ordered_map, "score"))
    ctx = context(tmp_path, workers=2)
    result = run_pipeline(ctx, [str(sample["dir"])], score_to=sample["end"])
    assert started == ["archive", "features", "score"]
    assert_same_run(outputs(ctx, result), plain)
    record_property("result", f"archive, features and score in 2 worker processes: {plain['counts']['records']} records identical")
