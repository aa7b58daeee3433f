"""The bench's own correctness (never its times): the production-shaped profiles are honest audit logs,
the anchors compute what auditsift computes, and the targets and fits judge what they say they judge."""
from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.io.storage import LocalStorage
from pipeline.stages.archive import run_archive
from pipeline.stages.clock import parse_iso
from pipeline.stages.features import run_features
from pipeline.stages.ranges import resolve_ranges
from tools.bench import (
    LINEAR_TOLERANCE,
    _auditsift_partials,
    _inputs,
    compare_naive,
    compare_partials,
    duckdb_partials,
    linear_fits,
    naive_features,
    targets,
)
from tools.bench_profiles import CONTROL_PLANE, PEAK_HOUR, base_sample, busy_day, generator_digest, identity_spray

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict]:
    return base_sample(tmp_path_factory.mktemp("bench"), 30_000, seed=7, days=4, events_per_scale_day=116_000)


def hour_lines(data: Path) -> list[dict]:
    return [orjson.loads(line) for path in sorted(data.glob("*-part*.jsonl.gz")) for line in gzip.open(path)]


def archived(data: Path, about: dict, workdir: Path) -> tuple[RunContext, dict]:
    ctx = RunContext(LocalStorage(str(workdir)), load_config(overrides={"archive": {"workers": 1}, "features": {"workers": 1}}), "bench")
    counts = run_archive(ctx, [str(data)])
    run_features(ctx, resolve_ranges(ctx, score_to=parse_iso(about["end"])))
    return ctx, counts


def test_the_busy_hour_is_fresh_requests_in_the_days_mix_over_hundreds_of_identities(base, tmp_path):
    data, about = busy_day(tmp_path, base[0], seed=7, peak_events=20_000)
    events = hour_lines(data)
    assert len(events) == about["hour_events"] >= 20_000
    stages = Counter((e["auditID"], e["stage"]) for e in events)
    assert max(stages.values()) == 1 and all(UUID4.match(e["auditID"]) for e in events)
    requests: dict[str, list[dict]] = {}
    for event in events:
        requests.setdefault(event["auditID"], []).append(event)
    for stages_of in requests.values():
        names = sorted(e["stage"] for e in stages_of)
        assert names in (["ResponseComplete"], ["ResponseComplete", "ResponseStarted"]) or \
            (names == ["ResponseStarted"] and stages_of[0]["responseStatus"]["code"] == 401)
        assert all(e["requestReceivedTimestamp"] <= e["stageTimestamp"] for e in stages_of)
    received = sorted(e["requestReceivedTimestamp"] for e in events)
    assert received[0][11:13] == received[-1][11:13] == f"{PEAK_HOUR:02d}"
    users = Counter((e.get("user") or {}).get("username") for e in events)
    assert about["hour_identities"] == len(users) - (None in users) >= 200
    assert len({u for u in users if u and CONTROL_PLANE.match(u)}) < 20, "the control plane is not multiplied"
    nodes = [e for e in events if ((e.get("user") or {}).get("username") or "").startswith("system:node:ip-10-")]
    assert nodes and all(e["user"]["username"].split(":")[2].startswith("ip-" + e["sourceIPs"][-1].replace(".", "-")) for e in nodes)
    _, counts = archived(data, about, tmp_path / "work")
    assert counts["events"] == about["total_events"] and counts["quarantined"] == 0 and counts["duplicates"] == 0


def test_the_spray_hour_holds_exactly_the_new_identities_asked_for(base, tmp_path):
    data, about = identity_spray(tmp_path, base[0], seed=7, identities=700)
    events = hour_lines(data)
    identities = Counter(e["user"]["username"] for e in events)
    assert len(identities) == 700 and set(identities.values()) == {2}
    assert all(re.fullmatch(r"system:serviceaccount:ci-\d{4}:job-\d{6}", name) for name in identities)
    assert len(events) == len({e["auditID"] for e in events}) == about["hour_events"] == 1_400
    assert about["total_events"] == base[1]["total_events"] + 1_400


def test_data_is_reused_by_name_only_while_its_generator_is_unchanged(base, tmp_path):
    """A second bench run reuses a profile's directory; data another generator made (here: its recorded digest
    differs, as after an edit to the sample generator) is made again, with the same bytes for the same code."""
    data, about = identity_spray(tmp_path, base[0], seed=7, identities=50)
    made = [path.read_bytes() for path in sorted(data.glob("*-part*.jsonl.gz"))]
    assert about["generator"] == generator_digest()
    (data / "marker").touch()
    assert identity_spray(tmp_path, base[0], seed=7, identities=50)[1] == about
    assert (data / "marker").exists(), "reused, not written again"

    summary = data.parent / f"{data.name}.summary.json"
    summary.write_text(orjson.dumps({**about, "generator": "an-older-one"}).decode())
    again, remade = identity_spray(tmp_path, base[0], seed=7, identities=50)
    assert remade == about and not (again / "marker").exists()
    assert [path.read_bytes() for path in sorted(again.glob("*-part*.jsonl.gz"))] == made


def test_duckdb_and_the_naive_version_compute_auditsifts_partials(base, tmp_path):
    data, about = base
    ctx, _ = archived(data, about, tmp_path / "work")
    partials = _auditsift_partials(str(tmp_path / "work"))
    duck = duckdb_partials(_inputs(str(data)), ctx.config.features.window_minutes, ctx.config.features.entity_types)
    assert compare_partials(duck, partials, ["n"], [c for c in partials.columns if c in duck.columns and c != "n"
                                                    and c not in ("entity_type", "entity", "window_start")]) == \
        {"same_windows": True, "counts_equal": True, "sets_equal": True}
    check = compare_naive(naive_features(_inputs(str(data)), chunk_lines=1_000_000), partials)
    assert check["same_windows"] and check["counts_equal"] and check["sets_equal"]
    # a changed count is seen
    duck.loc[0, "n"] += 1
    assert not compare_partials(duck, partials, ["n"], [])["counts_equal"]


def _report(kind: str, xs: list[int], ys: list[float], key: str) -> dict:
    data = [{"kind": kind, "label": f"{x:,}", "events": x, "nominal_events": x, key: x,
             "summary": {"whole_run_seconds": y, "whole_run_cpu_seconds": y, "peak_rss_mb": 600}} for x, y in zip(xs, ys)]
    return {"data": data}


def test_a_line_passes_and_a_quadratic_fails_the_linearity_target():
    linear = _report("size", [250_000, 1_000_000, 4_000_000], [5 + 10e-6 * x for x in (250_000, 1_000_000, 4_000_000)], "events")
    fits = linear_fits(linear)
    seconds = next(f for f in fits if f["measure"] == "whole-run seconds")
    assert seconds["extrapolation_ratio"] == 1.0 and seconds["slope_per_million"] == 10.0 and seconds["intercept"] == 5.0
    quadratic = _report("spray", [75_000, 150_000, 300_000], [1e-9 * x * x for x in (75_000, 150_000, 300_000)], "identities")
    ratio = next(f for f in linear_fits(quadratic) if f["measure"] == "whole-run seconds")["extrapolation_ratio"]
    assert ratio > LINEAR_TOLERANCE
    judged = targets({"data": [], "fits": linear_fits(quadratic)})
    assert [t["pass"] for t in judged if t["target"] == "whole-run seconds linear in identities"] == [False]
    assert [t["pass"] for t in judged if t["target"] == "peak memory MB linear in identities"] == [True]
