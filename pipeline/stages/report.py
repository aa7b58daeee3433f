"""Report stage: the scored findings as files analysts and machines read.

Writes into the report dir (default ``<workdir>/reports/<run-id>/``):
- ``anomalies.jsonl``: one object per scored (entity, window), sorted by rank;
- ``events.jsonl``: the highest-scoring individual events with why they scored;
- ``report.md`` and ``report.html``: for analysts (every log-derived string escaped);
- ``findings.csv``: the ranked list for spreadsheets (formula injection neutralised), with each finding's id,
  severity, headline, repeat marker and incident;
- ``incidents.jsonl`` and ``incidents.csv``: the findings grouped into incidents by the score stage
  (``pipeline.report.incidents``), one per line / row in rank order;
- ``run.json``: run id, resolved config, inputs, counts, ranges, model, timings, versions.
"""
from __future__ import annotations

import csv
import io
import platform
from importlib import metadata

import orjson

from pipeline.catalog import load_rule_pack
from pipeline.context import RunContext
from pipeline.errors import StageError
from pipeline.io.storage import LocalStorage, Storage, open_storage, safe_segment
from pipeline.report.incidents import incidents_csv, incidents_jsonl
from pipeline.report.labels import finding_rows
from pipeline.report.render import render_html, render_markdown, report_extras
from pipeline.text import safe_cell

PACKAGES = ("auditsift", "numpy", "pandas", "pyarrow", "scikit-learn", "krcf", "orjson", "boto3", "pydantic", "sagemaker-core")
CSV_FIELDS = ("rank", "finding_id", "severity", "title", "score", "flagged", "suppressed", "entity_type", "entity", "window_start",
              "window_end", "model_score", "rules", "top_reason", "event_count", "repeat", "incident_id", "order_note")


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def report_target(ctx: RunContext, report_dir: str | None) -> tuple[Storage, str]:
    """(storage, key prefix) of the report dir: ``--report-dir`` if given, else reports/<run-id>/ in the workdir."""
    if report_dir:
        return open_storage(report_dir, ctx.config), ""
    return ctx.storage, f"reports/cluster={safe_segment(ctx.cluster)}/{safe_segment(ctx.run_id)}/"


def run_report(ctx: RunContext, report_dir: str | None = None, run_info: dict | None = None) -> dict:
    """Write every report file for the latest scored run; returns where they went."""
    with ctx.timed("report"):
        state = ctx.read_state()
        score = state.get("score")
        if not score:
            raise StageError("nothing scored yet in this workdir", hint="run `auditsift score` first")
        findings = ctx.storage.read_json(f"{score['key']}/findings.json")
        evidence = ctx.storage.read_json(f"{score['key']}/evidence.json")
        events = ctx.storage.read_json(f"{score['key']}/events.json")
        timelines = ctx.storage.read_json(f"{score['key']}/timelines.json")
        target, prefix = report_target(ctx, report_dir)
        run = build_run_json(ctx, state, run_info or {})
        target.write_bytes(prefix + "anomalies.jsonl", jsonl(findings))
        target.write_bytes(prefix + "events.jsonl", jsonl(events))
        incidents = latest_incidents(ctx.storage, score)
        rule_titles = {r.id: r.title for r in load_rule_pack(ctx.config).rules}
        target.write_bytes(prefix + "findings.csv", findings_csv(findings, incidents, rule_titles).encode("utf-8"))
        target.write_bytes(prefix + "incidents.jsonl", incidents_jsonl(incidents))
        target.write_bytes(prefix + "incidents.csv", incidents_csv(incidents).encode("utf-8"))
        context = {"run": run, "findings": findings, "evidence": evidence, "events": events, "timelines": timelines,
                   "top_n": ctx.config.report.top_n}
        context.update(report_extras(ctx, findings, evidence))
        target.write_bytes(prefix + "report.md", render_markdown(context, incidents=incidents).encode("utf-8"))
        target.write_bytes(prefix + "report.html", render_html(context, incidents=incidents).encode("utf-8"))
        location = target.uri(prefix + "report.html")
        run["report"] = {"dir": location.rsplit("/", 1)[0], "html": location}
        ctx.update_state("report", {"run_id": ctx.run_id, "dir": run["report"]["dir"], "html": location,
                                    "local": isinstance(target, LocalStorage)})
    run["timings"] = dict(ctx.timings)
    target.write_json(prefix + "run.json", run)
    return run


def jsonl(items) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def latest_incidents(storage: Storage, score: dict) -> list[dict]:
    """The incident records the score stage wrote beside findings.json (rank order)."""
    key = f"{score['key']}/incidents.json"
    if not storage.exists(key):
        raise StageError("the latest scores have no incidents.json (scored before incidents existed)",
                         hint="run `auditsift score` again")
    return storage.read_json(key)


def findings_csv(findings: list[dict], incidents: list[dict] = (), rule_titles: dict | None = None) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for f in finding_rows(findings, incidents, rule_titles or {}):
        row = {
            **f,
            "rules": ";".join(h["rule"] for h in f["rule_hits"]),
            "top_reason": f["reasons"][0]["feature"] if f["reasons"] else "",
        }
        writer.writerow([safe_cell(row.get(field)) for field in CSV_FIELDS])
    return out.getvalue()


def build_run_json(ctx: RunContext, state: dict, run_info: dict) -> dict:
    """The run's machine-readable record: enough to reproduce and audit it."""
    archive = state.get("archive", {})
    return {
        "run_id": ctx.run_id,
        "cluster": ctx.cluster,
        "workdir": ctx.storage.url,
        "config": ctx.config.resolved(),
        "inputs": run_info.get("inputs", []),
        "counts": {
            "archive": run_info.get("archive", archive),
            "features": state.get("features", {}),
            "score": {k: v for k, v in state.get("score", {}).items() if k not in ("key",)},
        },
        "ranges": state.get("features", {}).get("ranges", {}),
        "model": state.get("model", {}),
        "timings": dict(ctx.timings),
        "versions": package_versions(),
    }
