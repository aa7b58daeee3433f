"""Triage: analysts' verdicts on findings and incidents, the suppressions they imply, and precision over time.

Verdicts are appended to ``triage/cluster=<c>/verdicts.jsonl`` in the workdir, never rewritten: the
file is the history (a record that changes a verdict names the one it ``replaces``), and
``latest_verdicts`` reads the current one. A verdict on an incident (``inc-…``, from the report's
incidents.jsonl) is one record per member finding plus one for the incident.

A benign verdict with ``suppress_similar`` adds a scoped suppression per finding to
``triage/cluster=<c>/suppressions.json``, which the score stage loads
(``pipeline.stages.score.load_suppressions``): the same entity (compared literally) AND the same
rules AND the same top reasons with values up to twice the reviewed ones, never a blanket allowlist
of the entity, so the same identity doing something new, or much more of it, is still flagged, and a
window with neither rule hits nor reasons is never hidden. ``preview_suppressions`` shows what a
suppression would hide in the latest scores before it is applied. Precision (malicious / (malicious
+ benign), over each finding's latest verdict) tells the team how often what the report flags is real.
"""
from __future__ import annotations

import fnmatch
from datetime import datetime, timezone

import orjson

from pipeline.config import Suppression
from pipeline.context import RunContext
from pipeline.errors import ConfigError, StageError
from pipeline.io.storage import Storage, open_storage, safe_segment

VERDICTS = ("benign", "malicious", "unsure")
SUPPRESSION_REASONS = 3
SIMILAR_VALUE_FACTOR = 2.0
MIN_ID_PREFIX = 8
INCIDENT_PREFIX = "inc-"
CANDIDATES_SHOWN = 10


def triage_key(cluster: str) -> str:
    """Where a cluster's verdicts and triage suppressions live (``RunContext.cluster_key('triage')``)."""
    return f"triage/cluster={safe_segment(cluster)}"


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_incident_suppression(incident: dict, suppress_similar: bool) -> None:
    """Refuse --suppress-similar on a campaign (``pipeline.report.incidents.fold_campaigns``): its members are alike by
    shape, not reviewed one by one, and anyone can make their own window take that shape, so a suppression per member
    could hide an intruder who joined the crowd. A known-benign crowd is suppressed by a pattern in the config."""
    if suppress_similar and incident.get("campaign"):
        count = incident["campaign"].get("identities") or len(incident.get("finding_ids", ()))
        raise ConfigError(f"--suppress-similar would add a suppression for each of the {count:,} identities of campaign "
                          f"{incident['incident_id']}, which are alike by shape, not reviewed one by one",
                          hint="record the verdict without --suppress-similar, and suppress a known-benign crowd with an "
                               "entity_pattern under suppressions: in the config")


def check_verdict(verdict: str, suppress_similar: bool) -> None:
    if verdict not in VERDICTS:
        raise ConfigError(f"unknown verdict {verdict!r}", hint=f"use one of {', '.join(VERDICTS)}")
    if suppress_similar and verdict != "benign":
        raise ConfigError(f"--suppress-similar only applies to a benign verdict, not {verdict}",
                          hint="drop --suppress-similar, or record --verdict benign if the activity is expected")


def record_verdict(storage: Storage, cluster: str, finding: dict, verdict: str, note: str = "", suppress_similar: bool = False,
                   reviewer: str | None = None, expires: str | None = None, incident_id: str | None = None) -> dict:
    """Append one verdict on ``finding``; with benign + ``suppress_similar``, add its scoped suppression.

    Returns the verdict record as written: ``suppression`` names the suppression it added, ``replaces`` the
    finding's previous verdict (verdict, time, reviewer) or None.
    """
    return record_verdicts(storage, cluster, [(finding, suppress_similar)], verdict, note, reviewer, expires, incident_id)[0]


def record_verdicts(storage: Storage, cluster: str, findings: list[tuple[dict, bool]], verdict: str, note: str = "",
                    reviewer: str | None = None, expires: str | None = None, incident_id: str | None = None) -> list[dict]:
    """``record_verdict`` for each (finding, suppress similar) at once: the history and the suppressions are read and
    written once, however many findings (a campaign holds thousands, and one write each would be quadratic)."""
    check_verdict(verdict, any(suppress for _, suppress in findings))
    latest = latest_verdicts(storage, cluster)
    suppressions = [similar_suppression(finding, note, reviewer, expires) if suppress else None for finding, suppress in findings]
    add_suppressions(storage, cluster, [item for item in suppressions if item is not None])
    records = [{
        "time": now_iso(),
        "finding_id": finding["finding_id"],
        "incident_id": incident_id,
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
        "replaces": _replaced(latest.get(finding["finding_id"])),
    } for (finding, _), suppression in zip(findings, suppressions)]
    _append(storage, cluster, records)
    return records


def record_incident_verdict(storage: Storage, cluster: str, incident: dict, members: list[dict], verdict: str, note: str = "",
                            suppress_similar: bool = False, reviewer: str | None = None, expires: str | None = None) -> dict:
    """One verdict per member finding of ``incident`` (each may add its suppression), then the incident's own record.

    Returns the incident record; ``findings`` holds the member records as written."""
    check_verdict(verdict, suppress_similar)
    check_incident_suppression(incident, suppress_similar)
    written = record_verdicts(storage, cluster, [(finding, suppress_similar and suppressible(finding)) for finding in members], verdict,
                              note, reviewer, expires, incident["incident_id"])
    record = {
        "time": now_iso(), "finding_id": None, "incident_id": incident["incident_id"], "cluster": cluster,
        "title": incident.get("title"), "finding_ids": [f["finding_id"] for f in members], "verdict": verdict, "note": note,
        "reviewer": reviewer, "suppression": None,
        "replaces": _replaced(latest_incident_verdicts(storage, cluster).get(incident["incident_id"])),
    }
    _append(storage, cluster, [record])
    return {**record, "findings": written}


def _replaced(previous: dict | None) -> dict | None:
    return None if previous is None else {key: previous.get(key) for key in ("verdict", "time", "reviewer", "note")}


def _append(storage: Storage, cluster: str, records: list[dict]) -> None:
    key = f"{triage_key(cluster)}/verdicts.jsonl"
    existing = storage.read_bytes(key) if storage.exists(key) else b""
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    storage.write_bytes(key, existing + b"".join(orjson.dumps(record) + b"\n" for record in records))


def can_suppress(finding: dict) -> bool:
    """A finding has a shape to suppress by: rule hits or reasons (a window with neither gives no scope)."""
    return bool(finding["rule_hits"] or finding["reasons"])


def suppressible(finding: dict) -> bool:
    """An incident member a benign --suppress-similar verdict adds a suppression for: flagged (or already suppressed)
    and with a shape; quiet members are in the incident for context, their shape is not what was reviewed."""
    return bool(finding["flagged"] or finding.get("suppressed")) and can_suppress(finding)


def similar_suppression(finding: dict, note: str, reviewer: str | None = None, expires: str | None = None) -> Suppression:
    """The suppression for findings like this one: its entity (literally), its rules, its top reasons and their values
    up to ``SIMILAR_VALUE_FACTOR`` times the reviewed ones.

    ``suppression_for`` requires a later record's rules and top reasons to be subsets of these, so a new rule or a new
    kind of deviation is still flagged, and its reason values inside the ranges, so much more of the same is too."""
    if not can_suppress(finding):
        raise ConfigError(f"finding {finding['finding_id']} has neither rule hits nor reasons: nothing scopes a suppression",
                          hint="record the verdict without --suppress-similar, or add a suppression with rules to the config")
    top = finding["reasons"][:SUPPRESSION_REASONS]
    who = f" by {reviewer}" if reviewer else ""
    return Suppression(
        id=f"triage-{finding['finding_id']}",
        entity=finding["entity"],
        entity_type=finding["entity_type"],
        rules=tuple(sorted({h["rule"] for h in finding["rule_hits"]})),
        reasons=tuple(r["feature"] for r in top),
        ranges={r["feature"]: (0.0, round(float(r["value"]) * SIMILAR_VALUE_FACTOR, 6)) for r in top},
        exact=True,
        note=f"benign{who} on finding {finding['finding_id']}: {note}" if note else f"benign{who} on finding {finding['finding_id']}",
        created=now_iso(),
        reviewer=reviewer,
        expires=expires,
    )


class SuppressionIndex:
    """Suppressions by the entity they name, so matching a record looks at that entity's few and the patterns, not at
    every suppression: triage adds one per reviewed finding and they accumulate, and the score stage matches every
    written record (a spray writes hundreds of thousands). ``match`` returns what ``suppression_for`` would."""

    def __init__(self, suppressions: list[Suppression]):
        self.by_entity: dict[str, list[tuple[int, Suppression]]] = {}
        self.patterns: list[tuple[int, Suppression]] = []
        for order, item in enumerate(suppressions):
            if item.entity is not None:
                self.by_entity.setdefault(item.entity, []).append((order, item))
            elif item.entity_pattern:
                self.patterns.append((order, item))

    def __bool__(self) -> bool:
        return bool(self.by_entity or self.patterns)

    def match(self, record: dict) -> Suppression | None:
        """The first suppression (in the given order) matching the record: ``suppression_for``'s rules."""
        candidates = self.by_entity.get(record["entity"], [])
        if self.patterns:
            candidates = sorted(candidates + self.patterns, key=lambda pair: pair[0])
        return suppression_for(record, [item for _, item in candidates])


def suppression_for(record: dict, suppressions: list[Suppression]) -> Suppression | None:
    """The first suppression matching the record's entity AND its rules AND its top reasons and their values (scoped,
    not blanket), before its expiry. ``entity`` is compared literally (a user name with ``*`` or regex characters
    in it names itself only); only a configured ``entity_pattern`` is a glob."""
    rules = {hit["rule"] for hit in record["rule_hits"]}
    top = record["reasons"][:SUPPRESSION_REASONS]
    reasons = {reason["feature"] for reason in top}
    for item in suppressions:
        if item.entity_type and item.entity_type != record["entity_type"]:
            continue
        if item.entity is not None and item.entity != record["entity"]:
            continue
        if item.entity_pattern and not fnmatch.fnmatchcase(record["entity"], item.entity_pattern):
            continue
        if not (item.entity or item.entity_pattern):
            continue
        if item.expires and record["window_start"] >= item.expires:
            continue
        if item.exact and not (rules or reasons):
            continue
        if (item.rules or item.exact) and not rules <= set(item.rules):
            continue
        if (item.reasons or item.exact) and not reasons <= set(item.reasons):
            continue
        if any(not item.ranges[r["feature"]][0] <= float(r["value"]) <= item.ranges[r["feature"]][1]
               for r in top if r["feature"] in item.ranges):
            continue
        return item
    return None


def preview_suppressions(findings: list[dict], suppressions: list[Suppression]) -> list[dict]:
    """The findings of the latest scores that ``suppressions`` would mark suppressed (flagged or quiet, as the score stage
    does), in rank order."""
    index = SuppressionIndex(suppressions)
    return [f for f in findings if index.match(f) is not None]


def read_suppressions(storage: Storage, cluster: str) -> list[Suppression]:
    """The suppressions triage added for ``cluster`` (the config's own are ``Config.suppressions``)."""
    return [Suppression.model_validate(item) for item in storage.read_json_or(f"{triage_key(cluster)}/suppressions.json", [])]


def add_suppressions(storage: Storage, cluster: str, suppressions: list[Suppression]) -> None:
    """Add (or replace, by id) suppressions in the cluster's triage suppressions file, in one write."""
    if not suppressions:
        return
    key = f"{triage_key(cluster)}/suppressions.json"
    ids = {item.id for item in suppressions}
    items = [item for item in storage.read_json_or(key, []) if item.get("id") not in ids]
    items += [item.model_dump(mode="json") for item in suppressions]
    storage.write_json(key, items)


def find_suppression(ctx: RunContext, suppression_id: str) -> Suppression:
    """The triage suppression with this id; a configured one, or none, is a one-line error."""
    for item in read_suppressions(ctx.storage, ctx.cluster):
        if item.id == suppression_id:
            return item
    if any(item.id == suppression_id for item in ctx.config.suppressions):
        raise ConfigError(f"suppression {suppression_id!r} is defined in the config file", hint="remove it from `suppressions:` there")
    raise ConfigError(f"no suppression {suppression_id!r} in cluster {ctx.cluster}", hint="`auditsift suppressions list` shows the ids")


def remove_suppression(storage: Storage, cluster: str, suppression_id: str) -> None:
    key = f"{triage_key(cluster)}/suppressions.json"
    storage.write_json(key, [item for item in storage.read_json_or(key, []) if item.get("id") != suppression_id])


def read_verdicts(storage: Storage, cluster: str) -> tuple[list[dict], int]:
    """Every verdict recorded for ``cluster`` in order (on findings and on incidents), and how many lines could not be read."""
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
        if isinstance(record, dict) and record.get("verdict") in VERDICTS and (record.get("finding_id") or record.get("incident_id")):
            records.append(record)
        else:
            unreadable += 1
    return records, unreadable


def latest_verdicts(storage: Storage, cluster: str) -> dict[str, dict]:
    """Each finding's latest verdict: a second look overrides the first (the history stays in the file)."""
    return {record["finding_id"]: record for record in read_verdicts(storage, cluster)[0] if record.get("finding_id")}


def latest_incident_verdicts(storage: Storage, cluster: str) -> dict[str, dict]:
    """Each incident's latest verdict as a whole."""
    return {record["incident_id"]: record for record in read_verdicts(storage, cluster)[0] if not record.get("finding_id")}


def precision(storage: Storage, cluster: str) -> dict:
    """Counts over each finding's latest verdict; precision = malicious / (malicious + benign), None before any.

    An incident verdict counts through its member findings' records only, never twice."""
    records, unreadable = read_verdicts(storage, cluster)
    latest = {record["finding_id"]: record for record in records if record.get("finding_id")}
    counts = {verdict: sum(1 for r in latest.values() if r["verdict"] == verdict) for verdict in VERDICTS}
    decided = counts["malicious"] + counts["benign"]
    return {"reviewed": len(latest), **counts, "precision": round(counts["malicious"] / decided, 4) if decided else None,
            "unreadable": unreadable}


def latest_findings(ctx: RunContext) -> tuple[dict, list[dict]]:
    """The latest score summary and its findings (findings.json)."""
    score = ctx.read_state().get("score")
    if not score:
        raise StageError("nothing scored yet in this workdir", hint="run `auditsift run` or `auditsift score` first")
    return score, ctx.storage.read_json(f"{score['key']}/findings.json")


def _match_id(wanted: str, ids: list[str], kind: str, where: str) -> str | None:
    """The one id ``wanted`` names (whole, or a prefix of at least MIN_ID_PREFIX characters); None when none does."""
    if wanted in ids:
        return wanted
    bare = wanted.removeprefix(INCIDENT_PREFIX) if kind == "incident" else wanted
    if len(bare) < MIN_ID_PREFIX:
        raise ConfigError(f"{kind} id prefix {wanted!r} is too short: give at least {MIN_ID_PREFIX} characters"
                          + (f" after {INCIDENT_PREFIX!r}" if kind == "incident" else ""),
                          hint=f"copy the {kind} id from the report (`auditsift report --no-write` lists them)")
    matches = [i for i in ids if i.startswith(wanted)]
    if len(matches) > 1:
        shown = ", ".join(matches[:CANDIDATES_SHOWN]) + (f" and {len(matches) - CANDIDATES_SHOWN} more" if len(matches) > CANDIDATES_SHOWN else "")
        raise ConfigError(f"{kind} id prefix {wanted!r} matches {len(matches)} {kind}s in {where}: {shown}", hint="give more of the id")
    return matches[0] if matches else None


def find_finding(ctx: RunContext, finding_id: str) -> dict:
    """The finding with this id (or a unique prefix of at least MIN_ID_PREFIX characters) in the latest scores."""
    score, findings = latest_findings(ctx)
    run = score.get("run_id", "?")
    found = _match_id(finding_id.strip().lower(), [f["finding_id"] for f in findings], "finding", f"run {run}")
    if found is None:
        raise StageError(f"no finding {finding_id!r} in the latest scores (run {run}, cluster {ctx.cluster})",
                         hint="copy the id from report.html or anomalies.jsonl of the latest run; "
                              "`auditsift report --no-write` lists the latest findings")
    return next(f for f in findings if f["finding_id"] == found)


def find_incident(ctx: RunContext, incident_id: str) -> tuple[dict, list[dict]]:
    """The incident with this id (or a unique prefix) in the latest report's incidents.jsonl, and its member findings
    as the latest scores hold them."""
    score, findings = latest_findings(ctx)
    report = ctx.read_state().get("report")
    if not report:
        raise StageError(f"no report yet in this workdir to find incident {incident_id!r} in", hint="run `auditsift report` first")
    storage = open_storage(report["dir"], ctx.config)
    if not storage.exists("incidents.jsonl"):
        raise StageError(f"the report of run {report['run_id']} has no incidents.jsonl (written before incidents existed)",
                         hint="triage its findings by finding id, or rerun `auditsift report` to group them")
    incidents = [orjson.loads(line) for line in storage.read_bytes("incidents.jsonl").splitlines() if line.strip()]
    found = _match_id(incident_id.strip().lower(), [i["incident_id"] for i in incidents], "incident", f"run {report['run_id']}")
    if found is None:
        raise StageError(f"no incident {incident_id!r} in the report of run {report['run_id']} (cluster {ctx.cluster})",
                         hint="copy the id from report.html or incidents.jsonl of the latest run")
    incident = next(i for i in incidents if i["incident_id"] == found)
    by_id = {f["finding_id"]: f for f in findings}
    missing = [fid for fid in incident["finding_ids"] if fid not in by_id]
    if missing:
        raise StageError(f"incident {found} names {len(missing)} finding(s) not in the latest scores, e.g. {missing[0]}",
                         hint="rerun `auditsift report` so incidents.jsonl matches the latest scores")
    return incident, [by_id[fid] for fid in incident["finding_ids"]]
