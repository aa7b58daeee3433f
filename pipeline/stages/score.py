"""Score stage: model scores + rule hits -> ranked, explained findings with their evidence events.

Rank formula (docs/detection.md):
    model_part = (score - median) / (threshold - median), with median and threshold of the
                 training scores of the record's peer group (features.entities: humans, nodes,
                 service accounts, public addresses, ...), the threshold raised to the entity's own
                 highest training score; 0 is typical for its kind, 1 is exactly at the threshold;
    rule_part  = weight of the heaviest rule hit + 0.25 per further rule hit of at least low weight
                 (weights from config scoring.severity_weights; info rules weigh 0; a rule the
                 entity triggers routinely in training weighs a quarter: see ``rule_parts``);
    combined   = scoring.model_weight * model_part + rule_part.
A record is flagged when model_part > 1 (the model alone) or a high/critical rule hit it that
is not the entity's routine (the rules alone); neither can hide the other because they add. Suppressions clear
``flagged`` but keep the record, marked ``suppressed``.

Events are processed hour by hour so memory stays bounded by an hour of events. The records written out
(findings.json, and the report stage's files made from it) are every flagged one, suppressed or not, and the best
``report.quiet_per_entity_type`` quiet ones per entity type (``written_records``); ``rank`` stays the place
among all scored records, and the summary counts what was left out.
"""
from __future__ import annotations

import fnmatch
import hashlib
import heapq
import logging
from collections import Counter, defaultdict

import numpy as np
import pandas as pd

from features.events import REQUEST_IDENTITY
from features.flags import add_flags
from features.novelty import HISTORY_FLAG_NAMES, add_history_flags, history_score, python_values
from features.rules import RulePack
from features.windows import FEATURE_BY_NAME, FEATURE_NAMES, feature_matrix
from pipeline.catalog import load_rule_pack
from pipeline.config import Suppression
from pipeline.context import RunContext
from pipeline.errors import ConfigError
from pipeline.io.storage import safe_segment
from pipeline.report.pivots import EVIDENCE_COLUMNS
from pipeline.stages.archive import read_archive
from pipeline.stages.clock import iso
from pipeline.stages.features import events_frame, flag_context, load_features, load_rule_history
from pipeline.stages.train import load_model

log = logging.getLogger(__name__)
INTERESTING_FLAGS = ("denied_401", "denied_403", "secret_read", "exec", "rbac_write", "token_request", "csr_create",
                     "aws_auth_write", "webhook_write", "privileged_workload", "permission_review", "anonymous_allowed",
                     "events_delete", "impersonation", "portforward", "secret_list_cluster_wide")
MAX_AUDIT_IDS = 50
ROUTINE_WINDOWS = 2
ROUTINE_FACTOR = 0.25
OWN_MARGIN = 0.1
TOP_REASONS = 5


def load_suppressions(ctx: RunContext) -> list[Suppression]:
    """Suppressions from the config plus those recorded by `auditsift triage --suppress-similar`."""
    recorded = ctx.storage.read_json_or(f"{ctx.cluster_key('triage')}/suppressions.json", [])
    return list(ctx.config.suppressions) + [Suppression.model_validate(item) for item in recorded]


def suppression_for(record: dict, suppressions: list[Suppression]) -> Suppression | None:
    """The first suppression matching the record's entity AND its rules AND its top reasons (scoped, not blanket)."""
    rules = {hit["rule"] for hit in record["rule_hits"]}
    reasons = {reason["feature"] for reason in record["reasons"][:3]}
    for item in suppressions:
        if item.entity_type and item.entity_type != record["entity_type"]:
            continue
        if item.entity and item.entity != record["entity"]:
            continue
        if item.entity_pattern and not fnmatch.fnmatchcase(record["entity"], item.entity_pattern):
            continue
        if not (item.entity or item.entity_pattern):
            continue
        if (item.rules or item.exact) and not rules <= set(item.rules):
            continue
        if (item.reasons or item.exact) and not reasons <= set(item.reasons):
            continue
        return item
    return None


def run_score(ctx: RunContext) -> dict:
    """Score the scoring range and write ranked findings and top events to the workdir."""
    with ctx.timed("score"):
        table, history, ranges = load_features(ctx)
        detector, model, baselines = load_model(ctx)
        pack = load_rule_pack(ctx.config)
        records = table[table["split"] == "score"].reset_index(drop=True)
        if records.empty:
            raise ConfigError(f"no entity windows in the scoring range {iso(ranges.score_from)}..{iso(ranges.score_to)}",
                              hint="check --score-from/--score-to against the archived data")
        scores = detector.score(feature_matrix(records))
        records["model_score"] = scores
        records["model_part"] = model_parts(scores, records["entity_group"].to_numpy(), records["entity_type"].to_numpy(),
                                            model["calibration"], own_max_scores(records, baselines))
        weights = ctx.config.scoring.severity_weights
        events_pass = score_events(ctx, pack, records, history, ranges, weights)
        rule_part, hits = rule_parts(records, events_pass["record_hits"], pack, weights, load_rule_history(ctx))
        records["rule_part"] = rule_part
        records["combined"] = ctx.config.scoring.model_weight * records["model_part"] + records["rule_part"]
        order = ["combined", "model_score", "entity_type", "entity", "window_start"]
        records = records.sort_values(order, ascending=[False, False, True, True, True], kind="stable").reset_index(drop=True)
        evidence = events_pass["evidence"]
        audit_ids = evidence.groupby(["entity_type", "entity", "window_start"], sort=False)["audit_id"].agg(list).to_dict()
        keys = list(zip(records["entity_type"], records["entity"], records["window_start"]))
        repeats = repeat_of(keys, request_keys(evidence))
        records["repeats"] = repeats
        lowered = (1.0 - ctx.config.scoring.repeat_factor) * records["combined"].abs()
        records["rank_score"] = records["combined"] - np.where(records["repeats"].notna(), lowered, 0.0)
        records = records.sort_values(["rank_score", *order], ascending=[False, False, False, True, True, True],
                                      kind="stable").reset_index(drop=True)
        reasons = explain(detector, records, baselines, ctx.config.report.explain_top)
        suppressions = load_suppressions(ctx)
        high = weights.get("high", 1.0)
        keys = list(zip(records["entity_type"], records["entity"], records["window_start"]))
        rule_flagged = np.array([any(h["weight"] >= high for h in hits.get(key, ())) for key in keys], dtype=bool)
        flagged = (records["model_part"].to_numpy() > 1.0) | rule_flagged
        kept, left_out = written_records(flagged, records["entity_type"].to_numpy(), ctx.config.report.quiet_per_entity_type)
        position = {key: index for index, key in enumerate(keys)}
        findings = []
        for index, row in zip(kept.tolist(), records.iloc[kept].itertuples(index=False)):
            key = keys[index]
            record = {
                "rank": index + 1,
                "finding_id": finding_id(ctx.cluster, row.entity_type, row.entity, row.window_start),
                "entity_type": row.entity_type,
                "entity": row.entity,
                "window_start": iso(row.window_start),
                "window_end": iso(row.window_end),
                "score": round(float(row.combined), 6),
                "rank_score": round(float(row.rank_score), 6),
                "flagged": bool(flagged[index]),
                "model_score": round(float(row.model_score), 6),
                "model_part": round(float(row.model_part), 6),
                "rule_part": round(float(row.rule_part), 6),
                "rule_hits": hits.get(key, []),
                "reasons": reasons.get(index, []),
                "event_count": int(row.n),
                "audit_ids": audit_ids.get(key, []),
                "suppressed": False,
                "repeats": None if row.repeats is None else finding_id(ctx.cluster, *row.repeats),
            }
            match = suppression_for(record, suppressions) if suppressions else None
            if match is not None:
                record.update(suppressed=True, flagged=False, suppressed_by=match.id or match.note or "suppression")
            if row.repeats is not None:
                record["repeats_rank"] = position[row.repeats] + 1
            findings.append(record)
        out = f"{ctx.cluster_key('scores')}/{safe_segment(ctx.run_id)}"
        ctx.storage.write_json(f"{out}/findings.json", findings)
        reported = findings[: ctx.config.report.top_n]
        detail = evidence_by_record(evidence, {_key_of(f) for f in reported})
        ctx.storage.write_json(f"{out}/evidence.json", {f["finding_id"]: detail.get(_key_of(f), []) for f in reported})
        ctx.storage.write_json(f"{out}/events.json", events_pass["top_events"])
        ctx.storage.write_json(f"{out}/timelines.json", timelines(table, findings[: ctx.config.report.top_n]))
        per_type = records.groupby("entity_type")["entity"].agg(["size", "nunique"])
        summary = {
            "run_id": ctx.run_id, "key": out, "records": len(records), "flagged": sum(f["flagged"] for f in findings),
            "suppressed": sum(f["suppressed"] for f in findings), "events_scored": events_pass["events"],
            "rule_hits": dict(events_pass["rule_totals"]), "model_id": model["id"], "ranges": ranges.as_dict(),
            "written": len(findings), "quiet_left_out": left_out,
            "by_entity_type": {t: {"windows": int(n), "entities": int(e)} for t, (n, e) in per_type.iterrows()},
        }
        ctx.update_state("score", summary)
    return summary


def request_keys(evidence: pd.DataFrame) -> dict[tuple, list]:
    """Per record key, the requests of its evidence events: the auditID with what the request's stages share among the
    evidence columns (REQUEST_IDENTITY but the receive time), so that requests a client sent under one Audit-ID stay apart."""
    columns = [name for name in REQUEST_IDENTITY if name in EVIDENCE_COLUMNS]
    requests = list(zip(*(python_values(evidence[name]) for name in columns)))
    keys = zip(evidence["entity_type"], evidence["entity"], evidence["window_start"])
    grouped: dict[tuple, list] = defaultdict(list)
    for key, request in zip(keys, requests):
        grouped[key].append(request)
    return grouped


def written_records(flagged: np.ndarray, entity_types: np.ndarray, quiet_per_type: int) -> tuple[np.ndarray, dict[str, int]]:
    """Positions (records in rank order) of the records findings.json and every file made from it hold: every
    flagged one (``flagged`` as the model and rules decide, before suppressions: an analyst audits what a
    suppression hid), and the first ``quiet_per_type`` quiet ones of each entity type; and how many quiet ones
    of each type are left out.

    Flagged records are never left out, however many (an attacker cannot hide one by making more), and the
    bound is per entity type, so a flood of identities cannot push the quiet addresses out of the files."""
    keep = flagged.copy()
    left_out = {}
    for entity_type in sorted(set(entity_types.tolist())):
        quiet = np.flatnonzero(~flagged & (entity_types == entity_type))
        keep[quiet[:quiet_per_type]] = True
        left_out[entity_type] = max(len(quiet) - quiet_per_type, 0)
    return np.flatnonzero(keep), left_out


def repeat_of(keys: list[tuple], requests: dict[tuple, list]) -> list[tuple | None]:
    """For records in rank order: the key of a higher-ranked record that already holds at least half of
    this record's evidence requests (the same requests seen as an identity and as its address), else None.

    Such a record adds no new activity for the analyst; it stays listed but ranks lower
    (``scoring.repeat_factor``), so distinct activity reaches the top of the list."""
    holder: dict[tuple, int] = {}
    result: list[tuple | None] = []
    for index, key in enumerate(keys):
        ids = list(dict.fromkeys(requests.get(key, ())))
        held = Counter(holder[i] for i in ids if i in holder)
        # The record holding the most of them; on a tie the higher-ranked one (never hash order).
        owner, shared = min(held.items(), key=lambda item: (-item[1], item[0])) if held else (None, 0)
        result.append(keys[owner] if owner is not None and 2 * shared >= len(ids) else None)
        for i in ids:
            holder.setdefault(i, index)
    return result


def model_parts(scores: np.ndarray, groups: np.ndarray, entity_types: np.ndarray, calibration: dict,
                own_max: np.ndarray) -> np.ndarray:
    """Scores on a calibrated scale: 0 = the peer group's median, 1 = the threshold, where the threshold is the
    peer group's, raised to the entity's own highest training score plus OWN_MARGIN of the group's spread: an
    identity that is always unusual among its peers (the GitOps controller) is flagged only when it is clearly
    more unusual than it has ever been."""
    parts = np.empty(len(scores))
    for index, (score, group, entity_type, own) in enumerate(zip(scores, groups, entity_types, own_max)):
        entry = calibration.get(group) or calibration.get(f"type:{entity_type}") or calibration["*"]
        spread = entry["threshold"] - entry["median"]
        threshold = max(entry["threshold"], own + OWN_MARGIN * spread) if np.isfinite(own) else entry["threshold"]
        parts[index] = (score - entry["median"]) / max(threshold - entry["median"], 1e-9)
    return parts


def own_max_scores(records: pd.DataFrame, baselines: pd.DataFrame) -> np.ndarray:
    """Each record's entity's highest training score (NaN for entities without training windows)."""
    known = baselines.dropna(subset=["entity"]).set_index(["entity_type", "entity"])["max_score"]
    keys = pd.MultiIndex.from_arrays([records["entity_type"], records["entity"]])
    return known.reindex(keys).to_numpy(dtype=float)


def _key_of(finding: dict) -> tuple:
    return (finding["entity_type"], finding["entity"], pd.Timestamp(finding["window_start"]))


def finding_id(cluster: str, entity_type: str, entity: str, window_start) -> str:
    """Stable id for (cluster, entity, window): a rerun updates the same finding, never duplicates it."""

    text = f"{cluster}|{entity_type}|{entity}|{iso(pd.Timestamp(window_start).to_pydatetime())}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def score_events(ctx: RunContext, pack: RulePack, records: pd.DataFrame, history: pd.DataFrame, ranges, weights: dict) -> dict:
    """One pass over the scored range, hour by hour: rule hits per record, event scores, evidence, top events."""
    window = f"{ctx.config.features.window_minutes}min"
    model_part = {(r.entity_type, r.entity, r.window_start): r.model_part for r in records[["entity_type", "entity", "window_start", "model_part"]].itertuples(index=False)}
    seen = {(r.entity_type, r.entity): r for r in history.itertuples(index=False)} if len(history) else {}
    flags = flag_context(ctx)
    record_hits: dict[tuple, Counter] = defaultdict(Counter)
    candidates: list[pd.DataFrame] = []
    rule_totals: Counter = Counter()
    # (score, audit_id, stage, time, -n for the pass's n-th candidate, row): ties (events that share an auditID and stage)
    # go to the earlier candidate, and two rows are never compared
    top_events: list = []
    total = offered = 0
    for table in read_archive(ctx.storage, ctx.cluster, ranges.score_from, ranges.score_to):
        if len(table) == 0:
            continue
        events = add_history_flags(add_flags(events_frame(table), flags), seen)
        hits = pack.evaluate(events)
        events["window_start"] = events["time"].dt.floor(window)
        severity = np.zeros(len(events))
        why = [[] for _ in range(len(events))]
        for rule_id in hits.columns:
            column = hits[rule_id].to_numpy(dtype=bool)
            if column.any():
                rule_totals[rule_id] += int(column.sum())
                severity += column * weights.get(pack.severity(rule_id), 0.0)
                for index in np.flatnonzero(column):
                    why[index].append(f"rule:{rule_id}")
        events["rule_weight"] = severity
        interesting = events[list(INTERESTING_FLAGS)].to_numpy(dtype=bool).any(axis=1)
        starts = events["window_start"].to_numpy(dtype=object)
        user_part = [model_part.get(("user", u, w), 0.0) for u, w in zip(python_values(events["user"]), starts)]
        ip_part = [model_part.get(("source_ip", i, w), 0.0) for i, w in zip(python_values(events["source_ip"]), starts)]
        events["event_score"] = np.maximum(user_part, ip_part) + severity + history_score(events) + 0.2 * interesting
        for index, flags_hit in enumerate(events[list(INTERESTING_FLAGS)].to_numpy(dtype=bool)):
            why[index].extend(name for name, hit in zip(INTERESTING_FLAGS, flags_hit) if hit)
        for name in HISTORY_FLAG_NAMES:
            for index in np.flatnonzero(events[name].to_numpy(dtype=bool)):
                why[index].append(name)
        events["why"] = why
        total += len(events)
        for entity_type, column in (("user", "user"), ("source_ip", "source_ip")):
            if entity_type not in ctx.config.features.entity_types:
                continue
            _accumulate_hits(events, hits, column, entity_type, record_hits)
            best = events.sort_values(["event_score", "time", "audit_id"], ascending=[False, True, True], kind="stable")
            best = best.groupby([column, "window_start"], sort=False).head(MAX_AUDIT_IDS)
            candidates.append(best[list(EVIDENCE_COLUMNS) + ["event_score", "why", "window_start"]].assign(
                entity_type=entity_type, entity=best[column]))
        for row in evidence_rows(events.nlargest(ctx.config.report.events_top, "event_score")):
            offered += 1
            item = (row["score"], row["audit_id"], row["stage"], row["time"], -offered, row)
            if len(top_events) < ctx.config.report.events_top:
                heapq.heappush(top_events, item)
            elif item[:5] > top_events[0][:5]:
                heapq.heapreplace(top_events, item)
    ordered_top = [item[5] for item in sorted(top_events, key=lambda i: (-i[0], i[1], i[2], i[3], -i[4]))]
    evidence = pd.concat(candidates, ignore_index=True) if candidates else pd.DataFrame(columns=list(EVIDENCE_COLUMNS) + ["event_score", "why", "window_start", "entity_type", "entity"])
    evidence = evidence.sort_values(["event_score", "time", "audit_id"], ascending=[False, True, True], kind="stable")
    evidence = evidence.groupby(["entity_type", "entity", "window_start"], sort=False).head(MAX_AUDIT_IDS)
    return {"record_hits": record_hits, "evidence": evidence, "top_events": ordered_top, "rule_totals": rule_totals, "events": total}


def evidence_by_record(evidence: pd.DataFrame, keys: set | None = None) -> dict[tuple, list]:
    """Evidence event dicts per (entity_type, entity, window_start), most relevant first; only ``keys`` if given."""
    if keys is not None:
        wanted = [k in keys for k in zip(evidence["entity_type"], evidence["entity"], evidence["window_start"])]
        evidence = evidence[wanted]
    grouped: dict[tuple, list] = defaultdict(list)
    for key, row in zip(zip(evidence["entity_type"], evidence["entity"], evidence["window_start"]), evidence_rows(evidence)):
        grouped[key].append(row)
    return grouped


def _accumulate_hits(events: pd.DataFrame, hits: pd.DataFrame, column: str, entity_type: str, record_hits: dict) -> None:
    hit_columns = [c for c in hits.columns if hits[c].any()]
    if not hit_columns:
        return
    frame = pd.concat([events[[column, "window_start"]], hits[hit_columns].astype(int)], axis=1)
    sums = frame.groupby([column, "window_start"], sort=False)[hit_columns].sum()
    for (entity, start), row in sums.iterrows():
        for rule_id, count in row.items():
            if count:
                record_hits[(entity_type, entity, start)][rule_id] += int(count)


def evidence_rows(frame: pd.DataFrame) -> list[dict]:
    """Evidence events as plain JSON-ready dicts (times in ISO 8601 UTC)."""
    rows = []
    for record in frame[list(EVIDENCE_COLUMNS) + ["event_score", "why"]].to_dict("records"):
        record["time"] = record["time"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record["code"] = None if pd.isna(record["code"]) else int(record["code"])
        record["score"] = round(float(record.pop("event_score")), 4)
        record["why"] = list(record["why"])
        rows.append({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()})
    return rows


def rule_parts(records: pd.DataFrame, record_hits: dict, pack: RulePack, weights: dict,
               routine: dict[tuple[str, str, str], int]) -> tuple[np.ndarray, dict]:
    """Each record's rule part and its hit list. A rule this entity triggered in ROUTINE_WINDOWS or
    more training windows is its routine (the GitOps controller writing RBAC): it still shows,
    marked ``routine``, but weighs ROUTINE_FACTOR of its severity and cannot flag alone."""
    parts = np.zeros(len(records))
    hits_by_key: dict[tuple, list] = {}
    keys = list(zip(records["entity_type"], records["entity"], records["window_start"]))
    for index, key in enumerate(keys):
        counter = record_hits.get(key)
        if not counter:
            continue
        hit_list = []
        for rule, count in counter.items():
            seen = routine.get((key[0], key[1], rule), 0)
            weight = weights.get(pack.severity(rule), 0.0) * (ROUTINE_FACTOR if seen >= ROUTINE_WINDOWS else 1.0)
            hit_list.append({"rule": rule, "severity": pack.severity(rule), "count": count,
                             "routine": seen >= ROUTINE_WINDOWS, "weight": round(weight, 4)})
        hit_list.sort(key=lambda h: (-h["weight"], h["rule"]))
        hits_by_key[key] = hit_list
        parts[index] = hit_list[0]["weight"] + 0.25 * sum(1 for h in hit_list[1:] if h["weight"] >= weights.get("low", 0.25))
    return parts, hits_by_key


def explain(detector, records: pd.DataFrame, baselines: pd.DataFrame, top: int) -> dict[int, list]:
    """Reasons for the top records: the features that drove each score, with the entity's own baseline.

    Uses the detector's per-feature attribution (RCF attribution, or iforest's
    leave-one-feature-out) when it has one; features are ranked by contribution and
    only those above the entity's baseline are kept, since a value below normal does
    not explain an anomaly.
    """
    head = records.head(top)
    if head.empty:
        return {}
    matrix = feature_matrix(head)
    contributions = detector.explain(matrix)
    per_entity = baselines.set_index(["entity_type", "entity"]) if len(baselines) else None
    type_rows = baselines[baselines["entity"].isna()].set_index("entity_type") if len(baselines) else None
    reasons: dict[int, list] = {}
    for position, row in enumerate(head.itertuples(index=False)):
        baseline = _baseline_row(per_entity, type_rows, row.entity_type, row.entity)
        values = matrix[position]
        if contributions is not None:
            order = np.argsort(-contributions[position], kind="stable")
            weights = contributions[position]
        else:
            deviation = values - (baseline if baseline is not None else 0.0)
            order = np.argsort(-deviation, kind="stable")
            weights = deviation
        items = []
        for j in order:
            name = FEATURE_NAMES[j]
            base = float(baseline[j]) if baseline is not None else None
            if weights[j] <= 0 or (base is not None and values[j] <= base):
                continue
            items.append({
                "feature": name, "value": _display(name, values[j]), "baseline": _display(name, base) if base is not None else None,
                "contribution": round(float(weights[j]), 4), "why": FEATURE_BY_NAME[name].why,
            })
            if len(items) == TOP_REASONS:
                break
        reasons[position] = items
    return reasons


def _display(name: str, value: float) -> float:
    """Features stored as log1p(count) are shown as counts; the rest as they are."""
    if name.endswith(("_fraction", "_rate")) or name in ("deny_rate", "new_entity", "off_hours") or name.endswith("_vs_baseline"):
        return round(float(value), 4)
    return round(float(np.expm1(value)), 3)


def _baseline_row(per_entity, type_rows, entity_type: str, entity: str):
    if per_entity is not None and (entity_type, entity) in per_entity.index:
        return per_entity.loc[(entity_type, entity), list(FEATURE_NAMES)].to_numpy(dtype=float)
    if type_rows is not None and entity_type in type_rows.index:
        return type_rows.loc[entity_type, list(FEATURE_NAMES)].to_numpy(dtype=float)
    return None


def timelines(table: pd.DataFrame, findings: list[dict]) -> dict:
    """Requests per window across training and scoring ranges for each reported entity."""
    wanted = {(f["entity_type"], f["entity"]) for f in findings}
    subset = table[[k in wanted for k in zip(table["entity_type"], table["entity"])]]
    series: dict[str, list] = {}
    for (entity_type, entity), group in subset.groupby(["entity_type", "entity"], sort=True):
        series[f"{entity_type}|{entity}"] = [
            [iso(start.to_pydatetime()), int(n), int(d)]
            for start, n, d in zip(group["window_start"], group["n"], group["n_denied_401"] + group["n_denied_403"])
        ]
    return series

