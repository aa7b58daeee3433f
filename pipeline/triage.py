"""Triage: analysts' verdicts on findings, the suppressions they imply, and precision over time.

Verdicts are appended to ``triage/cluster=<c>/verdicts.jsonl`` in the workdir. A benign
verdict with ``suppress_similar`` also adds a scoped suppression to
``triage/cluster=<c>/suppressions.json``, which the score stage loads
(``pipeline.stages.score.load_suppressions``): the same entity AND the same rules AND the same top
reasons, never a blanket allowlist of the entity, so the same identity doing something new is
still flagged. Precision (malicious / (malicious + benign), over each finding's latest verdict)
tells the team how often what the report flags is real.
"""
from __future__ import annotations

from datetime import datetime, timezone

import orjson

from pipeline.config import Suppression
from pipeline.context import RunContext
from pipeline.errors import ConfigError, StageError
from pipeline.io.storage import Storage, safe_segment

VERDICTS = ("benign", "malicious", "unsure")
SUPPRESSION_REASONS = 3
MIN_ID_PREFIX = 8


def triage_key(cluster: str) -> str:
    """Where a cluster's verdicts and triage suppressions live (``RunContext.cluster_key('triage')``)."""
    return f"triage/cluster={safe_segment(cluster)}"


def check_verdict(verdict: str, suppress_similar: bool) -> None:
    if verdict not in VERDICTS:
        raise ConfigError(f"unknown verdict {verdict!r}", hint=f"use one of {', '.join(VERDICTS)}")
    if suppress_similar and verdict != "benign":
        raise ConfigError(f"--suppress-similar only applies to a benign verdict, not {verdict}",
                          hint="drop --suppress-similar, or record --verdict benign if the activity is expected")


def record_verdict(storage: Storage, cluster: str, finding: dict, verdict: str, note: str = "", suppress_similar: bool = False,
                   reviewer: str | None = None) -> dict:
    """Append one verdict on ``finding``; with benign + ``suppress_similar``, add its scoped suppression.

    Returns the verdict record as written (``suppression`` names the suppression it added).
    """
    check_verdict(verdict, suppress_similar)
    suppression = similar_suppression(finding, note, reviewer) if suppress_similar else None
    if suppression is not None:
        add_suppression(storage, cluster, suppression)
    record = {
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finding_id": finding["finding_id"],
        "cluster": cluster,
        "entity_type": finding["entity_type"],
        "entity": finding["entity"],
        "window_start": finding["window_start"],
        "window_end": finding["window_end"],
        "score": finding["score"],
        "flagged": finding["flagged"],
        "rules": sorted(h["rule"] for h in finding["rule_hits"]),
        "reasons": [r["feature"] for r in finding["reasons"][:SUPPRESSION_REASONS]],
        "verdict": verdict,
        "note": note,
        "reviewer": reviewer,
        "suppression": suppression.id if suppression is not None else None,
    }
    key = f"{triage_key(cluster)}/verdicts.jsonl"
    existing = storage.read_bytes(key) if storage.exists(key) else b""
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    storage.write_bytes(key, existing + orjson.dumps(record) + b"\n")
    return record


def similar_suppression(finding: dict, note: str, reviewer: str | None = None) -> Suppression:
    """The suppression for findings like this one: its entity, its rules and its top reasons.

    ``pipeline.stages.score.suppression_for`` requires a later record's rules and top reasons to be
    subsets of these, so a new rule or a new kind of deviation is still flagged.
    """
    who = f" by {reviewer}" if reviewer else ""
    return Suppression(
        id=f"triage-{finding['finding_id']}",
        entity=finding["entity"],
        entity_type=finding["entity_type"],
        rules=tuple(sorted({h["rule"] for h in finding["rule_hits"]})),
        reasons=tuple(r["feature"] for r in finding["reasons"][:SUPPRESSION_REASONS]),
        exact=True,
        note=f"benign{who} on finding {finding['finding_id']}: {note}" if note else f"benign{who} on finding {finding['finding_id']}",
    )


def add_suppression(storage: Storage, cluster: str, suppression: Suppression) -> None:
    """Add (or replace, by id) one suppression in the cluster's triage suppressions file."""
    key = f"{triage_key(cluster)}/suppressions.json"
    items = [item for item in storage.read_json_or(key, []) if item.get("id") != suppression.id]
    items.append(suppression.model_dump(mode="json"))
    storage.write_json(key, items)


def read_verdicts(storage: Storage, cluster: str) -> tuple[list[dict], int]:
    """Every verdict recorded for ``cluster`` in order, and how many lines could not be read."""
    key = f"{triage_key(cluster)}/verdicts.jsonl"
    if not storage.exists(key):
        return [], 0
    records, unreadable = [], 0
    for line in storage.read_bytes(key).splitlines():
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            unreadable += 1
            continue
        if isinstance(record, dict) and record.get("verdict") in VERDICTS and record.get("finding_id"):
            records.append(record)
        else:
            unreadable += 1
    return records, unreadable


def latest_verdicts(storage: Storage, cluster: str) -> dict[str, dict]:
    """Each finding's latest verdict: a second look overrides the first."""
    return {record["finding_id"]: record for record in read_verdicts(storage, cluster)[0]}


def precision(storage: Storage, cluster: str) -> dict:
    """Counts over each finding's latest verdict; precision = malicious / (malicious + benign), None before any."""
    records, unreadable = read_verdicts(storage, cluster)
    latest = {record["finding_id"]: record for record in records}
    counts = {verdict: sum(1 for r in latest.values() if r["verdict"] == verdict) for verdict in VERDICTS}
    decided = counts["malicious"] + counts["benign"]
    return {"reviewed": len(latest), **counts, "precision": round(counts["malicious"] / decided, 4) if decided else None,
            "unreadable": unreadable}


def find_finding(ctx: RunContext, finding_id: str) -> dict:
    """The finding with this id (or a unique prefix of at least 8 characters) in the latest scores."""
    score = ctx.read_state().get("score")
    if not score:
        raise StageError("nothing scored yet in this workdir", hint="run `auditsift run` or `auditsift score` first")
    wanted = finding_id.strip().lower()
    findings = ctx.storage.read_json(f"{score['key']}/findings.json")
    exact = [f for f in findings if f["finding_id"] == wanted]
    matches = exact or ([f for f in findings if f["finding_id"].startswith(wanted)] if len(wanted) >= MIN_ID_PREFIX else [])
    if len(matches) == 1:
        return matches[0]
    run = score.get("run_id", "?")
    if matches:
        raise StageError(f"finding id prefix {finding_id!r} matches {len(matches)} findings in run {run}", hint="give more of the id")
    raise StageError(f"no finding {finding_id!r} in the latest scores (run {run}, cluster {ctx.cluster})",
                     hint="copy the id from report.html or anomalies.jsonl of the latest run; "
                          "`auditsift report --no-write` lists the latest findings")
