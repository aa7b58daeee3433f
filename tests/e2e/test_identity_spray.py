"""An identity spray (hundreds of service accounts never seen before, each making a couple of ordinary requests in one
hour) must not push the planted attacks down the incident list: alike incidents are told as campaigns
(``pipeline.report.incidents.fold_campaigns``). Before campaigns, 600 sprayed identities made 525 more incidents and moved
the sample's webhook tampering from incident 7 to 120."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sample import sample_clock
from tools.bench_profiles import base_sample, identity_spray
from tools.evaluate import evaluate_incidents

BIN = Path(sys.executable).parent / "auditsift"
SPRAYED = 600
SPRAY_PREFIX = "system:serviceaccount:ci-"


def run(data: Path, workdir: Path, now: str) -> tuple[list[dict], list[dict]]:
    """``auditsift run`` over ``data``: (incidents, findings) of its report."""
    done = subprocess.run([str(BIN), "run", "--input", str(data), "--workdir", str(workdir), "--now", now,
                           "--json", "--quiet"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    report = Path(json.loads(done.stdout[done.stdout.index("{"):])["report_dir"])
    read = lambda name: [json.loads(line) for line in (report / name).read_text().splitlines()]  # noqa: E731
    return read("incidents.jsonl"), read("anomalies.jsonl")


@pytest.mark.slow
def test_a_spray_of_new_identities_is_a_few_campaigns_and_the_attacks_keep_their_places(tmp_path, record_property):
    base, _ = base_sample(tmp_path, 0, seed=3, days=2, events_per_scale_day=1)  # the smallest sample: scale 0.05
    sprayed, summary = identity_spray(tmp_path, base, seed=7, identities=SPRAYED)
    assert summary["hour_identities"] == SPRAYED
    labels = json.loads((base / "labels.json").read_text())

    now = sample_clock(base).isoformat()  # the spray's hour is on the sample's scored day
    quiet_incidents, quiet_findings = run(base, tmp_path / "plain", now)
    incidents, findings = run(sprayed, tmp_path / "sprayed", now)

    before = {s["id"]: s["best_incident_rank"] for s in evaluate_incidents(quiet_incidents, quiet_findings, labels)["incident_scenarios"]}
    after = {s["id"]: s["best_incident_rank"] for s in evaluate_incidents(incidents, findings, labels)["incident_scenarios"]}
    spray_flagged = {f["finding_id"] for f in findings if f["flagged"] and f["entity"].startswith(SPRAY_PREFIX)}
    in_campaigns = {fid for i in incidents if i.get("campaign") for fid in i["finding_ids"]}
    record_property("incident_ranks_before_after", {k: (before[k], after[k]) for k in before})
    record_property("incidents_before_after", (len(quiet_incidents), len(incidents)))

    assert len(spray_flagged) > SPRAYED / 2, "the spray is flagged: new identities reading secrets with curl"
    assert len(spray_flagged & in_campaigns) >= 0.9 * len(spray_flagged), "nearly every sprayed finding is told in a campaign"
    assert len(incidents) - len(quiet_incidents) <= 15, "the spray adds a few incidents, not one per address"
    for scenario, rank in before.items():
        assert rank is not None and after[scenario] is not None, scenario
        assert after[scenario] <= rank + 8, f"{scenario} pushed from incident {rank} to {after[scenario]}"
    biggest = max((i for i in incidents if i.get("campaign")), key=lambda i: len(i["finding_ids"]))
    assert f"{biggest['campaign']['incidents']:,} alike incidents" in biggest["title"]
    assert all(e["entity"].startswith(SPRAY_PREFIX) for e in biggest["entities"] if e["entity_type"] == "user")
