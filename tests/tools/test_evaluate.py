"""tools.evaluate: the tables of docs/detection.md come from a results file, not by hand."""
from __future__ import annotations

import json

from tools.evaluate import render_markdown, render_ranks, summarise


def run(seed: int, backend: str, scenarios: list[dict], non_scenario: int = 0) -> dict:
    count = len(scenarios)
    return {"seed": seed, "backend": backend, "scenarios": scenarios, "scenario_count": count,
            "scenarios_in_top_k": sum(s["in_top_k"] for s in scenarios), "scenarios_flagged": sum(s["flagged"] for s in scenarios),
            "non_scenario_flagged": non_scenario, "scenarios_in_top_incidents": count, "scenarios_in_one_incident": count - 1,
            "non_scenario_flagged_incidents": 0, "incidents": count + 1, "flagged_incidents": count,
            "non_scenario_incident_examples": []}


def scenario(category: str, rank: int, flagged: bool = True) -> dict:
    return {"id": f"s01-{category}", "category": category, "best_rank": rank, "flagged": flagged, "in_top_k": rank <= 20}


def test_the_tables_name_each_miss_with_its_rank_and_add_up_per_backend():
    runs = [run(1, "iforest", [scenario("service_exposure", 234, flagged=False), scenario("webhook_tampering", 14)], 1),
            run(2, "iforest", [scenario("webhook_tampering", 3)])]
    text = render_markdown({"summary": summarise(runs), "runs": runs})
    assert "| iforest | 1 | 1/2 | 234 | 1/2 | 1 | 2/2 | 1/2 | service_exposure 234 unflagged (not in top 20) |" in text
    assert "| iforest | 2 | 1/1 | 3 | 1/1 | 0 | 1/1 | 0/1 | - |" in text
    assert "| iforest | 1-2 | 2/3 | 2/3 | 1 | 0.5 | 3/3 | 1/3 | 0 |" in text
    assert "| service exposure | 1 | seed 1: rank 234 unflagged |" in text
    assert "| webhook tampering | 1, 2 | - |" in text
    assert "| 1 | 3 (2) | 2 of 2 | 1 of 2 | 0 |" in text


def test_ranks_of_a_written_report_name_each_scenarios_best_incident(tmp_path):
    """``--ranks``: a report directory of any run (a bench profile's) read against a labels.json."""
    window = {"window_start": "2026-11-07T14:00:00Z", "window_end": "2026-11-07T15:00:00Z", "flagged": True}
    findings = [{"finding_id": "f-spray", "entity": "system:serviceaccount:ci-0001:job-000100", "audit_ids": ["a-1"], **window},
                {"finding_id": "f-ken", "entity": "ken@corp.example", "audit_ids": ["a-2"], **window}]
    incidents = [{"rank": 1, "finding_ids": ["f-spray"], "audit_ids": ["a-1"], "flagged": True, "title": "campaign"},
                 {"rank": 2, "finding_ids": ["f-ken"], "audit_ids": ["a-2"], "flagged": True, "title": "probing"}]
    (tmp_path / "anomalies.jsonl").write_text("".join(json.dumps(f) + "\n" for f in findings))
    (tmp_path / "incidents.jsonl").write_text("".join(json.dumps(i) + "\n" for i in incidents))
    labels = {"scenarios": [{"id": "s08-rbac-escalation", "audit_ids": ["a-2"], "user": "ken@corp.example",
                             "start": "2026-11-07T14:10:00Z", "end": "2026-11-07T14:20:00Z"}]}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    assert render_ranks(tmp_path, tmp_path / "labels.json").splitlines() == ["2 incidents (2 flagged)", "s08-rbac-escalation: incident 2"]
