"""tools.evaluate: the tables of docs/detection.md come from a results file, not by hand."""
from __future__ import annotations

from tools.evaluate import render_markdown, summarise


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
