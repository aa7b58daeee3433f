"""Detection-quality evaluation: run the whole pipeline on labelled sample data and measure the ranking.

For each seed: ``auditsift sample`` data (attacks on the last day), ``auditsift run``,
then for every injected scenario its best rank among the scored day's records, and the
number of flagged records that belong to no scenario. A record belongs to a scenario
when it is the scenario's identity or source address in a window that overlaps the
scenario's time span, or when its evidence includes one of the scenario's events. Incidents
(issue 18): each scenario's best incident rank (an incident holding one of its records or
events), how many incidents its flagged records fall in, and the flagged incidents that match no
scenario.

    python -m tools.evaluate --seeds 1 2 3 --backend iforest rcf-local --out docs/evaluation.json
    python -m tools.evaluate --render docs/evaluation-seeds1-8.json     # the tables of docs/detection.md
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
from pathlib import Path

import orjson

from pipeline.config import load_config
from pipeline.context import RunContext, new_run_id
from pipeline.io.storage import LocalStorage
from pipeline.stages.run import run_pipeline

TOP_K = 20
TOP_INCIDENTS = 10  # issue 18: every scenario in the top 10 incidents


def scenario_matches(finding: dict, scenario: dict) -> bool:
    if set(finding["audit_ids"]) & scenario["_ids"]:
        return True
    if finding["entity"] not in (scenario.get("user"), scenario.get("source_ip")):
        return False
    return finding["window_start"] < scenario["end"] and finding["window_end"] > scenario["start"]


def evaluate_findings(findings: list[dict], labels: dict, top_k: int = TOP_K) -> dict:
    """Per-scenario best rank and flag, and flagged records outside every scenario."""
    scenarios = [{**s, "_ids": set(s["audit_ids"])} for s in labels["scenarios"]]
    per_scenario = []
    owned = [False] * len(findings)
    for scenario in scenarios:
        ranks = [i for i, f in enumerate(findings) if scenario_matches(f, scenario)]
        for i in ranks:
            owned[i] = True
        best = findings[ranks[0]] if ranks else None
        per_scenario.append({
            "id": scenario["id"], "category": scenario.get("category"),
            "best_rank": best["rank"] if best else None,
            "flagged": any(findings[i]["flagged"] for i in ranks),
            "in_top_k": bool(best and best["rank"] <= top_k),
        })
    false_flags = [f for f, mine in zip(findings, owned) if f["flagged"] and not mine]
    return {
        "scenarios": per_scenario,
        "scenarios_in_top_k": sum(s["in_top_k"] for s in per_scenario),
        "scenarios_flagged": sum(s["flagged"] for s in per_scenario),
        "scenario_count": len(per_scenario),
        "non_scenario_flagged": len(false_flags),
        "non_scenario_flagged_examples": [(f["rank"], f["entity_type"], f["entity"], f["window_start"]) for f in false_flags[:10]],
        "records": len(findings),
    }


def evaluate_incidents(incidents: list[dict], findings: list[dict], labels: dict, top: int = TOP_INCIDENTS) -> dict:
    """Per scenario: the best rank of an incident holding one of its findings (or events), whether that is in the top
    ``top`` incidents, and how many incidents its flagged findings fall in; and the flagged incidents matching no scenario."""
    scenarios = [{**s, "_ids": set(s["audit_ids"])} for s in labels["scenarios"]]
    by_id = {f["finding_id"]: f for f in findings}
    owned = [False] * len(incidents)
    per_scenario = []
    for scenario in scenarios:
        mine = {f["finding_id"] for f in findings if scenario_matches(f, scenario)}
        holding = [n for n, i in enumerate(incidents) if mine.intersection(i["finding_ids"]) or scenario["_ids"].intersection(i["audit_ids"])]
        for n in holding:
            owned[n] = True
        flagged_in = {n for n in holding if any(by_id[f]["flagged"] for f in incidents[n]["finding_ids"] if f in mine and f in by_id)}
        best = incidents[holding[0]]["rank"] if holding else None
        per_scenario.append({"id": scenario["id"], "best_incident_rank": best, "in_top": bool(best and best <= top),
                             "incidents_of_flagged": len(flagged_in)})
    stray = [i for i, mine in zip(incidents, owned) if i["flagged"] and not mine]
    return {
        "incidents": len(incidents), "flagged_incidents": sum(i["flagged"] for i in incidents),
        "scenarios_in_top_incidents": sum(s["in_top"] for s in per_scenario),
        "scenarios_in_one_incident": sum(s["incidents_of_flagged"] == 1 for s in per_scenario),
        "non_scenario_flagged_incidents": len(stray),
        "non_scenario_incident_examples": [(i["rank"], i["title"]) for i in stray[:10]],
        "incident_scenarios": per_scenario,
    }


def render_ranks(report: Path, labels_path: Path) -> str:
    """``--ranks``: the incident count and each scenario's best incident rank of a written report directory."""
    read = lambda name: [orjson.loads(line) for line in (report / name).read_bytes().splitlines() if line]  # noqa: E731
    outcome = evaluate_incidents(read("incidents.jsonl"), read("anomalies.jsonl"), orjson.loads(labels_path.read_bytes()))
    lines = [f"{outcome['incidents']} incidents ({outcome['flagged_incidents']} flagged)"]
    lines += [f"{s['id']}: incident {s['best_incident_rank']}" for s in outcome["incident_scenarios"]]
    return "\n".join(lines)


def rerun_from_archive(ctx: RunContext, now) -> dict:
    """Features, train and score on an already archived workdir (for quick iterations on detection)."""
    from pipeline.stages.features import run_features
    from pipeline.stages.ranges import resolve_ranges
    from pipeline.stages.score import run_score
    from pipeline.stages.train import run_train

    run_features(ctx, resolve_ranges(ctx, now=now))
    run_train(ctx)
    return run_score(ctx)


def evaluate_seed(seed: int, backend: str, days: int, scale: float, workroot: Path, config_path: str | None,
                  reuse_archive: bool = False) -> dict:
    from pipeline.sample import generate_sample, sample_clock

    sample_dir = workroot / f"sample-{seed}"
    if not (sample_dir / "labels.json").exists():
        generate_sample(sample_dir, days=days, seed=seed, scale=scale)
    config = load_config(config_path, {"model": {"backend": backend}})
    ctx = RunContext(LocalStorage(workroot / f"work-{seed}-{backend}"), config, new_run_id())
    now = sample_clock(sample_dir)
    if reuse_archive and ctx.read_state().get("archive"):
        result = rerun_from_archive(ctx, now)
    else:
        result = run_pipeline(ctx, [str(sample_dir)], now=now)
    key = ctx.read_state()["score"]["key"]
    findings = ctx.storage.read_json(f"{key}/findings.json")
    incidents = ctx.storage.read_json(f"{key}/incidents.json")
    labels = orjson.loads((sample_dir / "labels.json").read_bytes())
    return {"seed": seed, "backend": backend, "timings": dict(ctx.timings), "flagged": result["flagged"],
            **evaluate_findings(findings, labels), **evaluate_incidents(incidents, findings, labels)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--backend", nargs="+", default=["iforest", "rcf-local"])
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--config", default=None)
    parser.add_argument("--workdir", default=None, help="Reuse samples and workdirs here (default: a temporary directory).")
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    parser.add_argument("--reuse-archive", action="store_true", help="With --workdir: skip archiving where a workdir exists.")
    parser.add_argument("--render", default=None, metavar="JSON", help="Print the Markdown tables of a results file (--out) and exit.")
    parser.add_argument("--ranks", nargs=2, default=None, metavar=("REPORT_DIR", "LABELS"),
                        help="Print each labelled scenario's best incident rank in a report directory of any run (its incidents.jsonl "
                             "and anomalies.jsonl) against a labels.json, and exit: e.g. a bench profile's run against its base sample's labels.")
    args = parser.parse_args(argv)
    if args.render:
        print(render_markdown(orjson.loads(Path(args.render).read_bytes())))
        return 0
    if args.ranks:
        print(render_ranks(*map(Path, args.ranks)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        results = []
        for backend in args.backend:
            for seed in args.seeds:
                outcome = evaluate_seed(seed, backend, args.days, args.scale, root, args.config, args.reuse_archive)
                results.append(outcome)
                misses = [f"{s['id']}@{s['best_rank']}" for s in outcome["scenarios"] if not s["in_top_k"]]
                print(f"{backend:10s} seed {seed}: {outcome['scenarios_in_top_k']}/{outcome['scenario_count']} scenarios in top {TOP_K}, "
                      f"{outcome['scenarios_flagged']} flagged, {outcome['non_scenario_flagged']} non-scenario flagged"
                      f"{'; missed ' + ', '.join(misses) if misses else ''}", flush=True)
                far = [f"{s['id']}@{s['best_incident_rank']}" for s in outcome["incident_scenarios"] if not s["in_top"]]
                print(f"{'':10s} incidents: {outcome['flagged_incidents']} flagged of {outcome['incidents']}; "
                      f"{outcome['scenarios_in_top_incidents']}/{outcome['scenario_count']} scenarios in the top {TOP_INCIDENTS}, "
                      f"{outcome['scenarios_in_one_incident']} with their flagged findings in one incident, "
                      f"{outcome['non_scenario_flagged_incidents']} flagged incidents matching no scenario"
                      f"{'; not in top: ' + ', '.join(far) if far else ''}", flush=True)
        summary = summarise(results)
        for backend, row in summary.items():
            print(f"{backend}: {row}")
        if args.out:
            Path(args.out).write_bytes(orjson.dumps({"summary": summary, "runs": results}, option=orjson.OPT_INDENT_2))
    return 0


def summarise(results: list[dict]) -> dict:
    summary = {}
    for backend in sorted({r["backend"] for r in results}):
        rows = [r for r in results if r["backend"] == backend]
        summary[backend] = {
            "seeds": [r["seed"] for r in rows],
            "scenarios_in_top_k": f"{sum(r['scenarios_in_top_k'] for r in rows)}/{sum(r['scenario_count'] for r in rows)}",
            "scenarios_flagged": f"{sum(r['scenarios_flagged'] for r in rows)}/{sum(r['scenario_count'] for r in rows)}",
            "max_non_scenario_flagged": max(r["non_scenario_flagged"] for r in rows),
            "mean_non_scenario_flagged": round(statistics.mean(r["non_scenario_flagged"] for r in rows), 1),
            "scenarios_in_top_incidents": f"{sum(r['scenarios_in_top_incidents'] for r in rows)}/{sum(r['scenario_count'] for r in rows)}",
            "max_non_scenario_flagged_incidents": max(r["non_scenario_flagged_incidents"] for r in rows),
            "scenarios_in_one_incident": f"{sum(r['scenarios_in_one_incident'] for r in rows)}/{sum(r['scenario_count'] for r in rows)}",
        }
    return summary


def render_markdown(report: dict) -> str:
    """docs/detection.md's tables of a results file: per seed, per backend over the seeds, and the misses per scenario family."""
    rows = ["| backend | seed | scenarios in top 20 | worst scenario rank | scenarios flagged | non-scenario flagged | "
            "scenarios in top 10 incidents | scenarios in one incident | missed or unflagged (best rank) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    misses: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    seeds_of: dict[str, set[int]] = collections.defaultdict(set)
    for run in report["runs"]:
        missed = []
        for scenario in run["scenarios"]:
            category = scenario["category"]
            seeds_of[category].add(run["seed"])
            if scenario["flagged"] and scenario["in_top_k"]:
                continue
            missed.append(f"{category} {scenario['best_rank']}{'' if scenario['flagged'] else ' unflagged'}"
                          f"{'' if scenario['in_top_k'] else f' (not in top {TOP_K})'}")
            misses[category][run["backend"]].append(f"seed {run['seed']}: rank {scenario['best_rank']}{'' if scenario['flagged'] else ' unflagged'}")
        count = run["scenario_count"]
        worst = max((s["best_rank"] or 0 for s in run["scenarios"]), default=0)
        rows.append(f"| {run['backend']} | {run['seed']} | {run['scenarios_in_top_k']}/{count} | {worst} | {run['scenarios_flagged']}/{count} "
                    f"| {run['non_scenario_flagged']} | {run['scenarios_in_top_incidents']}/{count} | {run['scenarios_in_one_incident']}/{count} "
                    f"| {'; '.join(missed) or '-'} |")
    rows += ["", "| backend | seeds | in top 20 | flagged | max non-scenario flags | mean | in top 10 incidents | in one incident "
             "| max non-scenario flagged incidents |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for backend, summary in report["summary"].items():
        rows.append(f"| {backend} | {summary['seeds'][0]}-{summary['seeds'][-1]} | {summary['scenarios_in_top_k']} | {summary['scenarios_flagged']} "
                    f"| {summary['max_non_scenario_flagged']} | {summary['mean_non_scenario_flagged']} | {summary['scenarios_in_top_incidents']} "
                    f"| {summary.get('scenarios_in_one_incident', '-')} | {summary['max_non_scenario_flagged_incidents']} |")
    backends = list(report["summary"])
    rows += ["", f"| scenario family | seeds | {' | '.join(f'{backend} misses' for backend in backends)} |",
             f"|---|---|{'---|' * len(backends)}"]
    for category in sorted(seeds_of):
        cells = " | ".join("; ".join(misses[category][backend]) or "-" for backend in backends)
        rows.append(f"| {category.replace('_', ' ')} | {', '.join(map(str, sorted(seeds_of[category])))} | {cells} |")
    rows += ["", f"Incidents ({backends[0]}, docs/report.md):", "",
             "| seed | incidents (flagged) | scenarios in the top 10 incidents | scenarios whose flagged findings are one incident "
             "| flagged incidents matching no scenario |", "|---|---|---|---|---|"]
    for run in (run for run in report["runs"] if run["backend"] == backends[0]):
        stray = "; ".join(title for _, title in run["non_scenario_incident_examples"])
        rows.append(f"| {run['seed']} | {run['incidents']} ({run['flagged_incidents']}) | {run['scenarios_in_top_incidents']} of "
                    f"{run['scenario_count']} | {run['scenarios_in_one_incident']} of {run['scenario_count']} "
                    f"| {run['non_scenario_flagged_incidents']}{f' ({stray})' if stray else ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
