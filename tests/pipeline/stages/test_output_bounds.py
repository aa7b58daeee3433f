"""Output bounds: a day with an identity spray keeps every flagged window in findings.json, anomalies.jsonl,
findings.csv and the report (suppressed or not), and only the best ``report.quiet_per_entity_type`` quiet ones per entity
type; run.json and the report say how many quiet ones were left out (issue 16: 300,000 identities in an
hour wrote a 129 MB anomalies.jsonl)."""
from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.io.storage import LocalStorage
from pipeline.stages.clock import parse_iso
from pipeline.stages.report import report_target, run_report
from pipeline.stages.run import run_pipeline
from pipeline.stages.score import run_score, written_records
from tools.bench_profiles import base_sample, identity_spray

QUIET = 100
SPRAY_IDENTITIES = 1_500


def report_files(ctx: RunContext) -> dict:
    storage, prefix = report_target(ctx, None)
    folder = storage.local_path(prefix.rstrip("/"))
    return {"findings": [json.loads(line) for line in (folder / "anomalies.jsonl").read_text().splitlines()],
            "anomalies_bytes": (folder / "anomalies.jsonl").stat().st_size,
            "csv": list(csv.DictReader(io.StringIO((folder / "findings.csv").read_text()))),
            "run": json.loads((folder / "run.json").read_text()), "md": (folder / "report.md").read_text(),
            "html": (folder / "report.html").read_text()}


@pytest.fixture(scope="module")
def spray_day(tmp_path_factory) -> dict:
    """Four days of a small cluster, then an hour in which 1,500 never-seen service accounts make two requests
    each; the day scored with the default bound (which keeps every window of it) and again with 100."""
    out = tmp_path_factory.mktemp("spray")
    base, _ = base_sample(out, 30_000, seed=7, days=4, events_per_scale_day=116_000)
    data, about = identity_spray(out, base, seed=7, identities=SPRAY_IDENTITIES)
    workdir = tmp_path_factory.mktemp("spray-work")
    whole = RunContext(LocalStorage(str(workdir)), load_config(), "whole")
    run_pipeline(whole, [str(data)], score_to=parse_iso(about["end"]))
    # the operator has suppressed one CI namespace's jobs: their windows stay flagged-then-suppressed, and kept
    suppress = {"entity_pattern": "system:serviceaccount:ci-0001:*", "note": "CI jobs of namespace ci-0001"}
    bounded = RunContext(LocalStorage(str(workdir)), load_config(overrides={"report": {"quiet_per_entity_type": QUIET},
                                                                            "suppressions": [suppress]}), "bounded")
    run_score(bounded)
    run_report(bounded)
    return {"whole": report_files(whole), "bounded": report_files(bounded)}


@pytest.mark.slow
def test_a_spray_day_keeps_every_flagged_window_and_the_best_quiet_ones(spray_day, record_property):
    whole, bounded = spray_day["whole"], spray_day["bounded"]
    everything = whole["findings"]
    assert whole["run"]["counts"]["score"]["quiet_left_out"] == {"source_ip": 0, "user": 0}
    spray = {f["entity"] for f in everything if re.fullmatch(r"system:serviceaccount:ci-\d{4}:job-\d{6}", f["entity"])}
    assert len(spray) == SPRAY_IDENTITIES
    quiet = {t: [f for f in everything if f["entity_type"] == t and not f["flagged"]] for t in ("user", "source_ip")}
    assert all(len(rows) > QUIET for rows in quiet.values())

    kept = sorted([f for f in everything if f["flagged"]] + quiet["user"][:QUIET] + quiet["source_ip"][:QUIET], key=lambda f: f["rank"])
    assert [f["finding_id"] for f in bounded["findings"]] == [f["finding_id"] for f in kept]
    suppressed = [f for f in bounded["findings"] if f["suppressed"]]
    assert suppressed and all(f["entity"].startswith("system:serviceaccount:ci-0001:") and not f["flagged"] for f in suppressed)
    unchanged = [f for f in kept if not f["entity"].startswith("system:serviceaccount:ci-0001:")]
    assert [f for f in bounded["findings"] if not f["suppressed"]] == unchanged
    assert [row["rank"] for row in bounded["csv"]] == [str(f["rank"]) for f in bounded["findings"]]
    left_out = {t: len(rows) - QUIET for t, rows in quiet.items()}
    score = bounded["run"]["counts"]["score"]
    assert score["quiet_left_out"] == left_out
    assert score["records"] == len(everything) and score["written"] == len(kept)
    flags_cleared = [f for f in suppressed if f["finding_id"] in {g["finding_id"] for g in everything if g["flagged"]}]
    assert flags_cleared and score["flagged"] + len(flags_cleared) == whole["run"]["counts"]["score"]["flagged"]
    total = f"{sum(left_out.values()):,}"
    assert f"Left out of this report, anomalies.jsonl and findings.csv: {total} quiet entity windows" in bounded["md"]
    assert f"{total} quiet windows left out" in bounded["html"]
    assert f"of {len(everything):,} entity windows" in bounded["md"]
    record_property("result", f"{len(everything)} windows ({len(spray)} sprayed identities), {score['flagged']} flagged: "
                              f"anomalies.jsonl {whole['anomalies_bytes']:,} -> {bounded['anomalies_bytes']:,} bytes, "
                              f"{len(bounded['findings'])} records; left out {left_out}")


def test_written_records_keep_every_flagged_one_and_the_best_quiet_ones_per_entity_type():
    rng = np.random.default_rng(3)
    entity_types = rng.choice(np.array(["user", "source_ip"], dtype=object), size=5_000, p=[0.9, 0.1])
    flagged = rng.random(5_000) < 0.3
    kept, left_out = written_records(flagged, entity_types, 50)
    assert set(np.flatnonzero(flagged)) <= set(kept) and list(kept) == sorted(kept)
    for entity_type in ("user", "source_ip"):
        quiet = np.flatnonzero(~flagged & (entity_types == entity_type))
        assert [i for i in kept if not flagged[i] and entity_types[i] == entity_type] == list(quiet[:50])
        assert left_out[entity_type] == len(quiet) - 50
    everything, nothing_left = written_records(flagged, entity_types, 10_000)
    assert list(everything) == list(range(5_000)) and nothing_left == {"source_ip": 0, "user": 0}
