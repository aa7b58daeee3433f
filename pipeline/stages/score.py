"""Score stage: model scores + rule hits -> ranked, explained findings with their evidence events.

Rank formula (docs/detection.md):
    model_part = (score - median) / (threshold - median), with median and threshold of the
                 training scores of the record's peer group (features.entities: humans, nodes,
                 service accounts, public addresses, ...), the threshold raised to the entity's own
                 highest training score; 0 is typical for its kind, 1 is exactly at the threshold;
    rule_part  = weight of the heaviest rule hit + 0.25 per further rule hit of at least low weight that is
                 neither routine nor a copy (weights from config scoring.severity_weights; info rules weigh 0;
                 a rule the entity triggers routinely in training, or a controller's copy of a template written
                 in the run, weighs a quarter: see ``rule_parts``);
    combined   = scoring.model_weight * model_part + rule_part.
A record is flagged when model_part > 1 (the model alone) or a high/critical rule hit it that
is not the entity's routine (the rules alone); neither can hide the other because they add. Suppressions
(``pipeline.triage.suppression_for``) clear ``flagged`` but keep the record, marked ``suppressed``.

Events are processed hour by hour so memory stays bounded by an hour of events. The records written out
(findings.json, and the report stage's files made from it) are every flagged one, suppressed or not, and the best
``report.quiet_per_entity_type`` quiet ones per entity type (``written_records``); ``rank`` stays the place
among all scored records, and the summary counts what was left out.
"""
from __future__ import annotations

import hashlib
import heapq
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.aggregate import hit_counts
from features.columns import MICROS, combinations, combine, run_heads
from features.copies import WorkloadWrite, template_copies
from features.events import COLUMN_NAMES, REQUEST_IDENTITY
from features.flags import controller_copy, flag_events, workload_write
from features.novelty import HISTORY_FLAG_NAMES, HISTORY_FLAGS, history_flags
from features.rules import SEVERITIES, AggregateGroups, RulePack
from features.windows import FEATURE_BY_NAME, FEATURE_NAMES, feature_matrix
from pipeline.catalog import load_rule_pack
from pipeline.config import Suppression
from pipeline.context import RunContext
from pipeline.errors import ConfigError
from pipeline.io.storage import safe_segment
from pipeline.report.incidents import group_incidents
from pipeline.report.pivots import EVIDENCE_COLUMNS
from pipeline.report.render import weighs_in_full
from pipeline.stages.archive import list_archive_hours
from pipeline.stages.clock import iso
from pipeline.stages.features import (
    BusyHour,
    busy_hour,
    cached_requests,
    features_fingerprint,
    flag_context,
    hour_batches,
    hour_file_source,
    hour_rows,
    hour_workers,
    load_features,
    load_rule_history,
    map_columns,
    partial_key,
    read_cache,
    read_hour_events,
)
from pipeline.stages.ranges import overlaps
from pipeline.stages.train import load_model
from pipeline.stages.workers import ordered_map
from pipeline.triage import SuppressionIndex, read_suppressions

log = logging.getLogger(__name__)
INTERESTING_FLAGS = ("denied_401", "denied_403", "secret_read", "exec", "rbac_write", "token_request", "csr_create",
                     "aws_auth_write", "webhook_write", "privileged_workload", "permission_review", "anonymous_allowed",
                     "events_delete", "impersonation", "portforward", "secret_list_cluster_wide")
# What the incidents' events index reads beside the evidence columns: a binding's subjects and the subject CN of the request a CSR
# approval approves (cause and effect across identities)
INDEX_EXTRA = ("subjects", "csr_subject_cn")
# Quiet findings whose evidence the incidents' events index holds, best-ranked first (every flagged or suppressed finding's is
# always in): reading evidence rows back from the archive is the index's cost (9 s for 1,984 windows on the seed-7 sample), so a
# day of 20,000 written windows reads at most this many quiet ones; a quiet window below it joins an incident by adjacency only
INDEX_QUIET_MAX = 2_000
# What tells the requests of evidence events apart: REQUEST_IDENTITY among the evidence columns (the receive time is not one)
REQUEST_KEY = tuple(name for name in REQUEST_IDENTITY if name in EVIDENCE_COLUMNS)
MAX_AUDIT_IDS = 50
ROUTINE_WINDOWS = 2
ROUTINE_FACTOR = 0.25
OWN_MARGIN = 0.1
TOP_REASONS = 5


def load_suppressions(ctx: RunContext) -> list[Suppression]:
    """Suppressions from the config plus those recorded by `auditsift triage --suppress-similar`."""
    return list(ctx.config.suppressions) + read_suppressions(ctx.storage, ctx.cluster)


def run_score(ctx: RunContext, fitted=None) -> dict:
    """Score the scoring range and write ranked findings and top events to the workdir (``fitted``: the detector
    ``auditsift run`` has just trained, see ``load_model``)."""
    with ctx.timed("score"):
        table, history, ranges = load_features(ctx)
        detector, model, baselines = load_model(ctx, fitted)
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
        rule_part, hits = rule_parts(records, events_pass["record_hits"], pack, weights, load_rule_history(ctx), events_pass["copied_hits"])
        records["rule_part"] = rule_part
        records["combined"] = ctx.config.scoring.model_weight * records["model_part"] + records["rule_part"]
        order = ["combined", "model_score", "entity_type", "entity", "window_start"]
        records = records.sort_values(order, ascending=[False, False, True, True, True], kind="stable").reset_index(drop=True)
        evidence = events_pass["evidence"]
        audit_ids = evidence.audit_ids()
        keys = list(zip(records["entity_type"], records["entity"], records["window_start"]))
        repeats = repeat_of(keys, evidence.requests())
        records["repeats"] = repeats
        lowered = (1.0 - ctx.config.scoring.repeat_factor) * records["combined"].abs()
        records["rank_score"] = records["combined"] - np.where(records["repeats"].notna(), lowered, 0.0)
        records = records.sort_values(["rank_score", *order], ascending=[False, False, False, True, True, True],
                                      kind="stable").reset_index(drop=True)
        reasons = explain(detector, records, baselines, ctx.config.report.explain_top)
        suppressions = SuppressionIndex(load_suppressions(ctx))
        high = weights.get("high", 1.0)
        keys = list(zip(records["entity_type"], records["entity"], records["window_start"]))
        rule_flagged = np.array([any(h["weight"] >= high for h in hits.get(key, ())) for key in keys], dtype=bool)
        flagged = (records["model_part"].to_numpy() > 1.0) | rule_flagged
        kept, left_out = written_records(flagged, records["entity_type"].to_numpy(), ctx.config.report.quiet_per_entity_type)
        position = {key: index for index, key in enumerate(keys)}
        findings = []
        written = records.iloc[kept][["entity_type", "entity", "window_start", "window_end", "combined", "rank_score", "model_score",
                                      "model_part", "rule_part", "n", "repeats"]]
        for index, row in zip(kept.tolist(), written.itertuples(index=False)):
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
            match = suppressions.match(record) if suppressions else None
            if match is not None:
                record.update(suppressed=True, flagged=False, suppressed_by=match.id or match.note or "suppression")
            if row.repeats is not None:
                record["repeats_rank"] = position[row.repeats] + 1
            findings.append(record)
        out = f"{ctx.cluster_key('scores')}/{safe_segment(ctx.run_id)}"
        reported = findings[: ctx.config.report.top_n]
        # the evidence frame (every written finding's evidence events, INDEX_QUIET_MAX quiet ones at most) is the incidents' index
        core = [f["flagged"] or f["suppressed"] for f in findings]
        indexed = [f for f, c in zip(findings, core) if c] + [f for f, c in zip(findings, core) if not c][:INDEX_QUIET_MAX]
        detail = evidence.rows({_key_of(f) for f in indexed + reported}, extra=INDEX_EXTRA)
        ctx.storage.write_json(f"{out}/evidence.json", {f["finding_id"]: [{k: v for k, v in row.items() if k not in INDEX_EXTRA}
                                                                          for row in detail.get(_key_of(f), [])] for f in reported})
        for f in findings:
            f["headline"] = pack.headline(f["rule_hits"], detail.get(_key_of(f), []))
        ctx.storage.write_json(f"{out}/findings.json", findings)
        incidents = group_incidents(findings, events_index(indexed, detail), tactics=rule_tactics(pack),
                                    rule_titles={r.id: r.title for r in pack.rules}, window_minutes=ctx.config.features.window_minutes)
        ctx.storage.write_json(f"{out}/incidents.json", [incident.to_record() for incident in incidents])
        ctx.storage.write_json(f"{out}/events.json", events_pass["top_events"])
        ctx.storage.write_json(f"{out}/timelines.json", timelines(table, findings[: ctx.config.report.top_n]))
        per_type = records.groupby("entity_type")["entity"].agg(["size", "nunique"])
        summary = {
            "run_id": ctx.run_id, "key": out, "records": len(records), "flagged": sum(f["flagged"] for f in findings),
            "suppressed": sum(f["suppressed"] for f in findings), "events_scored": events_pass["events"],
            "rule_hits": dict(events_pass["rule_totals"]), "model_id": model["id"], "ranges": ranges.as_dict(),
            "written": len(findings), "quiet_left_out": left_out,
            "incidents": len(incidents), "flagged_incidents": sum(i.flagged for i in incidents),
            "by_entity_type": {t: {"windows": int(n), "entities": int(e)} for t, (n, e) in per_type.iterrows()},
        }
        ctx.update_state("score", summary)
    return summary


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
    holder: dict[object, int] = {}
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
    entries = {}
    for group, entity_type in set(zip(groups.tolist(), entity_types.tolist())):
        entry = calibration.get(group) or calibration.get(f"type:{entity_type}") or calibration["*"]
        entries[(group, entity_type)] = (entry["median"], entry["threshold"])
    median, threshold = np.array([entries[key] for key in zip(groups.tolist(), entity_types.tolist())], dtype=float).reshape(-1, 2).T
    spread = threshold - median
    raised = np.where(np.isfinite(own_max), np.maximum(threshold, own_max + OWN_MARGIN * spread), threshold)
    return (scores - median) / np.maximum(raised - median, 1e-9)


def own_max_scores(records: pd.DataFrame, baselines: pd.DataFrame) -> np.ndarray:
    """Each record's entity's highest training score (NaN for entities without training windows)."""
    known = baselines.dropna(subset=["entity"]).set_index(["entity_type", "entity"])["max_score"]
    keys = pd.MultiIndex.from_arrays([records["entity_type"], records["entity"]])
    return known.reindex(keys).to_numpy(dtype=float)


def events_index(findings: list[dict], detail: dict[tuple, list]) -> list[dict]:
    """The incidents' events index (``pipeline.report.incidents.INDEX_COLUMNS``): each evidence event of each written
    finding with the finding's key (entity_type, entity, window_start). The key is written into ``detail``'s rows
    themselves, each of which is one finding's (``Evidence.rows``), so call this after they are written out: a copy of
    every row cost 0.22 of the score stage's seconds at 1M events (125,000 rows)."""
    index = []
    for f in findings:
        for row in detail.get(_key_of(f), ()):
            row.update(entity_type=f["entity_type"], entity=f["entity"], window_start=f["window_start"])
            index.append(row)
    return index


def rule_tactics(pack: RulePack) -> dict[str, list[str]]:
    """rule id -> its ATT&CK tactics, for the rules that carry one (``tactic``); empty while the rule pack has none."""
    return {r.id: [tactic] for r in pack.rules if (tactic := getattr(r, "tactic", None))}


def _key_of(finding: dict) -> tuple:
    return (finding["entity_type"], finding["entity"], pd.Timestamp(finding["window_start"]))


@lru_cache(maxsize=65_536)
def _window_iso(window_start) -> str:
    return iso(pd.Timestamp(window_start).to_pydatetime())


def finding_id(cluster: str, entity_type: str, entity: str, window_start) -> str:
    """Stable id for (cluster, entity, window): a rerun updates the same finding, never duplicates it."""

    text = f"{cluster}|{entity_type}|{entity}|{_window_iso(window_start)}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def score_events(ctx: RunContext, pack: RulePack, records: pd.DataFrame, history: pd.DataFrame, ranges, weights: dict) -> dict:
    """One pass over the scored range, hour by hour: rule hits per record, event scores, evidence, top events.

    Events are read column by column from the archive (``EventColumns``: flags, history flags and rules judge each
    distinct value once) and never become a DataFrame. An hour of more than ``features.batch_rows`` events is read
    in batches of that many (its rule thresholds counted over the whole hour first), so memory is bounded by a
    batch, whatever the hour; of each event kept as evidence or as a top event only its key, score, audit id and
    why are held, and its columns are read again from the archive for the few that are written.

    The hours are scored by worker processes when they hold enough events (``features.hour_workers``), each worker
    with a copy of the pass (``EventScores.worker_copy``); what each hour kept is merged here in hour order
    (``EventScores.merge``), so the outputs are one process's."""
    scored = EventScores(ctx, pack, records, history, ranges, weights)
    hours = [(index, date, hour, key) for index, (date, hour, key) in enumerate(list_archive_hours(ctx.storage, ctx.cluster))
             if overlaps(date, hour, ranges.score_from, ranges.score_to)]
    rows = hour_rows(ctx, [key for *_, key in hours])
    workers = hour_workers(ctx, rows)
    # what the features map judged over each busy hour (or one of unknown size), from its cache: ``cached_requests``
    busy = [count is None or count > ctx.config.features.batch_rows for count in rows]
    fingerprint = features_fingerprint(ctx) if any(busy) else None
    requests = (cached_requests(ctx, partial_key(ctx, fingerprint, date, hour, key)) if is_busy else None
                for (_, date, hour, key), is_busy in zip(hours, busy))
    if workers < 2:
        for (index, *_, key), judged in zip(hours, requests):
            scored.add_hour(index, key, judged)
        return scored.result()
    sources = ((index, hour_file_source(ctx, key), judged) for (index, *_, key), judged in zip(hours, requests))
    results = ordered_map(_score_hour, sources, workers, setup=_score_setup, setup_args=(scored.worker_copy(),), name="auditsift-score")
    try:
        for (index, *_, key), part in zip(hours, results):
            scored.merge(index, key, part)
    finally:
        results.close()
    return scored.result()


def _score_setup(scorer: EventScores) -> EventScores:
    return scorer


def _score_hour(scorer: EventScores, item: tuple[int, str | bytes, bytes | None]) -> HourScore:
    """Worker side of ``score_events``: one archived hour (its path or bytes, and its cached requests when busy)
    scored by a copy of the run's ``EventScores`` whose accumulators start empty; what it kept comes back to be
    merged in hour order."""
    index, source, requests = item
    scorer.clear()
    best = scorer.score_hour(index, Path(source).read_bytes() if isinstance(source, str) else source, requests)
    return HourScore(scorer.total, scorer.rule_totals, dict(scorer.record_hits), scorer.candidates, best, scorer.workload_writes)


@dataclass
class HourScore:
    """What ``EventScores.score_hour`` keeps of one hour, as a worker returns it."""

    total: int
    rule_totals: Counter
    record_hits: dict
    candidates: list
    best: pa.Table | None
    workload_writes: list


class EventScores:
    """``score_events``' pass over the scored range: what it keeps of the events it has scored.

    Per event: rule hits (with the history flags, which only scoring judges), an event score (the model part of
    its identity's or address's window, the weights of its rule hits, novelty and interesting flags), and why.
    Kept: rule hit counts per (entity, window), the ``MAX_AUDIT_IDS`` best events of each (entity, window) as
    evidence candidates, and the ``report.events_top`` best events of each hour for the top events. An event is
    numbered (hour << 32) + its position among the hour's events in the scoring range (``rows`` reads it again)."""

    def __init__(self, ctx: RunContext, pack: RulePack, records: pd.DataFrame, history: pd.DataFrame, ranges, weights: dict):
        cfg = ctx.config.features
        self.storage, self.pack, self.weights, self.flags = ctx.storage, pack, weights, flag_context(ctx)
        self.entity_types = [name for name in ("user", "source_ip") if name in cfg.entity_types]
        self.window_minutes, self.step = cfg.window_minutes, cfg.window_minutes * 60_000_000
        self.batch_rows, self.events_top = cfg.batch_rows, ctx.config.report.events_top
        self.columns = score_columns(pack, cfg.entity_types)
        self.low, self.high = (int(pd.Timestamp(moment).value // 1000) for moment in (ranges.score_from, ranges.score_to))
        starts = records["window_start"].to_numpy(dtype="datetime64[us]").view(np.int64).tolist()
        self.model_part = dict(zip(zip(records["entity_type"].tolist(), records["entity"].tolist(), starts), records["model_part"].tolist()))
        # plain namespaces, not itertuples' namedtuples (a class made per call): workers receive a pickled copy
        self.seen = {(r.entity_type, r.entity): SimpleNamespace(**r._asdict()) for r in history.itertuples(index=False)} if len(history) else {}
        self.why = [f"rule:{rule.id}" for rule in pack.active] + list(INTERESTING_FLAGS) + list(HISTORY_FLAG_NAMES)
        self.record_hits: dict[tuple, Counter] = defaultdict(Counter)
        self.rule_totals: Counter = Counter()
        self.candidates: list[pa.Table] = []
        self.workload_writes: list[WorkloadWrite] = []  # the workload writes rules fired on (``template_copies``)
        self.top_events: list = []
        self.hours: dict[int, str] = {}
        self.total = self.offered = 0

    def batches(self, data: bytes, columns: list[str], hour: BusyHour | None) -> Iterator[tuple[pa.Table, dict]]:
        """An archived hour's events (its file's bytes) within the scoring range, ``columns`` only: (events, flags judged
        over the whole hour) in batches when ``hour`` is its ``BusyHour``, else the hour at once (``read_hour_events``)."""
        pieces = hour.batches(columns) if hour is not None else [(read_hour_events(data, columns), None, {})]
        for batch, _, judged in pieces:
            within = self._within(batch)
            yield batch.filter(within), {name: values[within] for name, values in judged.items()}

    def _within(self, batch: pa.Table) -> np.ndarray:
        micros = batch["time"].combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
        return (micros >= self.low) & (micros < self.high)

    def add_hour(self, index: int, key: str, requests: bytes | None = None) -> None:
        """Score one archived hour's events within the scoring range (a busy hour in batches, ``BusyHour``)."""
        self.hours[index] = key
        self._offer(self.score_hour(index, self.storage.read_bytes(key), requests))

    def clear(self) -> None:
        """Empty the accumulators (a worker's copy, before each hour)."""
        self.record_hits, self.rule_totals, self.candidates, self.total = defaultdict(Counter), Counter(), [], 0
        self.workload_writes = []

    def worker_copy(self) -> "EventScores":
        """This pass without its accumulators, to be pickled to workers (``_score_hour``)."""
        copy = object.__new__(EventScores)
        copy.__dict__.update(self.__dict__)
        copy.clear()
        copy.top_events, copy.hours, copy.storage = [], {}, None  # a worker is given each hour's file, not the workdir
        return copy

    def merge(self, index: int, key: str, part: HourScore) -> None:
        """Add one hour scored elsewhere (``_score_hour``), in hour order, as ``add_hour`` would have."""
        self.hours[index] = key
        self.total += part.total
        self.rule_totals.update(part.rule_totals)
        for record, counts in part.record_hits.items():
            self.record_hits[record].update(counts)
        self.candidates += part.candidates
        self.workload_writes += part.workload_writes
        self._offer(part.best)

    def score_hour(self, index: int, data: bytes, requests: bytes | None = None) -> pa.Table | None:
        """Score one archived hour (its file's bytes; for a busy hour, what the features map judged over it, as
        cached: ``features.cached_requests``) into the accumulators; returns its ``events_top`` best events, best
        first, or None when none of its events is in the scoring range."""
        hour = busy_hour(data, self.window_minutes, self.batch_rows, read_cache(requests) if requests is not None else None)
        groups = None
        if hour is not None:
            groups = AggregateGroups(self.pack)  # thresholds count over the whole hour
            for batch, judged in self.batches(data, self.columns, hour):
                inputs = flag_events(batch, self.flags, judged, only=self.pack.threshold_flags)
                groups.add(inputs, history_flags(inputs, self.seen))
        best = []
        offset = 0
        for batch, judged in self.batches(data, self.columns, hour):
            if len(batch):
                best.append(self._add(batch, judged, (index << 32) + offset, groups))
                offset += len(batch)
        if not best:
            return None
        # the hour's best events as DataFrame.nlargest(keep="first") picks them
        best = pa.concat_tables(best)
        return best.take(pc.sort_indices(best, sort_keys=[("event_score", "descending"), ("number", "ascending")])[: self.events_top])

    def _offer(self, best: pa.Table | None) -> None:
        """An hour's best events into the top events over all hours, kept by rounded score."""
        if best is None:
            return
        # (score, audit_id, stage, time, -n for the pass's n-th candidate, row): ties (events that share an auditID and
        # stage) go to the earlier candidate, and two rows are never compared
        times = best["time"].cast(pa.int64()).to_pylist()
        for position, (score, audit_id, stage) in enumerate(zip(*(best[name].to_pylist() for name in ("event_score", "audit_id", "stage")))):
            self.offered += 1
            item = (round(float(score), 4), audit_id, stage, times[position], -self.offered, best.slice(position, 1))
            if len(self.top_events) < self.events_top:
                heapq.heappush(self.top_events, item)
            elif item[:5] > self.top_events[0][:5]:
                heapq.heapreplace(self.top_events, item)

    def _add(self, table: pa.Table, judged: dict, first: int, groups) -> pa.Table:
        """Score one table of events (an hour, or a batch of one with the flags ``judged`` over its hour; ``first``
        numbers its first row) and keep what ``result`` needs; returns its ``events_top`` best events (``_kept``)."""
        inputs = flag_events(table, self.flags, judged)
        novelty = history_flags(inputs, self.seen)
        hits = self.pack.hits(inputs, novelty, groups)
        rows = inputs.rows
        self.total += rows
        severity = np.zeros(rows)
        fired = []
        for rule_id, column in hits.items():
            if column.any():
                self.rule_totals[rule_id] += int(column.sum())
                severity += column * self.weights.get(self.pack.severity(rule_id), 0.0)
                fired.append(rule_id)
        interesting = np.column_stack([inputs.flags[name] for name in INTERESTING_FLAGS]).any(axis=1)
        windows, window_codes = np.unique(inputs.micros("time") // self.step * self.step, return_inverse=True)
        parts = []
        for entity_type in ("user", "source_ip"):
            combination, values = combine([inputs.encoded(entity_type), (window_codes, windows.tolist())],
                                          lambda entity, start: self.model_part.get((entity_type, entity, start), 0.0))
            parts.append(np.array(values, dtype=float)[combination])
        novelty_score = sum(novelty[flag.name].astype(float) * flag.event_weight for flag in HISTORY_FLAGS)
        score = np.maximum(*parts) + severity + novelty_score + 0.2 * interesting
        numbers = first + np.arange(rows, dtype=np.int64)
        why = [hits[rule.id] for rule in self.pack.active] + [inputs.flags[name] for name in INTERESTING_FLAGS] \
            + [novelty[name] for name in HISTORY_FLAG_NAMES]
        starts = [pd.Timestamp(int(start), unit="us", tz="UTC") for start in windows]
        if fired:
            self._note_workload_writes(inputs, hits, fired, numbers, window_codes, starts)
        for entity_type in self.entity_types:
            codes, entities = inputs.ranked(entity_type)
            present = np.flatnonzero(codes >= 0)
            group = codes[present] * len(windows) + window_codes[present]
            if fired:
                self._count_hits(entity_type, hits, fired, present, group, entities, starts)
            # the best MAX_AUDIT_IDS events of each (entity, window): by score, then time, then audit id, then position
            audit_rank = inputs.ranked("audit_id")[0]
            order = np.lexsort((present, audit_rank[present], inputs.micros("time")[present], -score[present], group))
            ordered = group[order]
            head = run_heads(ordered)
            rank = np.arange(len(order)) - np.maximum.accumulate(np.where(head, np.arange(len(order)), 0))
            chosen = present[np.sort(order[rank < MAX_AUDIT_IDS])]
            self.candidates.append(self._kept(table, chosen, score, numbers, why, {
                "entity_type": pa.array(np.full(len(chosen), entity_type, dtype=object), pa.string()),
                "entity": pa.array(entities[codes[chosen]], pa.string()),
                "window_start": pa.array(windows[window_codes[chosen]], MICROS)}, REQUEST_KEY[1:]))
        return self._kept(table, np.argsort(-score, kind="stable")[: self.events_top], score, numbers, why, {}, ("stage",))

    def _note_workload_writes(self, inputs, hits: dict, fired: list, numbers: np.ndarray, window_codes: np.ndarray, starts: list) -> None:
        """Keep the workload writes (create, update, patch) any rule fired on, for ``template_copies``: a few a day."""
        fired_on = np.column_stack([hits[rule] for rule in fired])
        rows = np.flatnonzero(fired_on.any(axis=1) & workload_write(inputs))
        if not len(rows):
            return
        copy, micros = controller_copy(inputs), inputs.micros("time")
        values = {name: inputs.encoded(name) for name in ("resource", "namespace", "name", "workload_owner")}
        entities = {entity_type: inputs.ranked(entity_type) for entity_type in self.entity_types}
        for row in rows.tolist():
            value = {name: column[1][column[0][row]] for name, column in values.items()}
            records = tuple((entity_type, ranked[1][ranked[0][row]], starts[window_codes[row]])
                            for entity_type, ranked in entities.items() if ranked[0][row] >= 0)
            self.workload_writes.append(WorkloadWrite(
                (int(micros[row]), int(numbers[row])), value["resource"], value["namespace"] or "", value["name"] or "",
                value["workload_owner"], bool(copy[row]), frozenset(rule for rule, on in zip(fired, fired_on[row]) if on), records))

    def copied_hits(self) -> dict[tuple, dict[str, tuple[int, str]]]:
        """Move the hits that only repeat a template's (``features.copies``) out of ``record_hits``: per record, rule ->
        (hits moved, the template they copy). Called once, after every hour."""
        copied: dict[tuple, dict[str, tuple[int, str]]] = defaultdict(dict)
        for write, rules, template in template_copies(self.workload_writes, lambda rule: SEVERITIES.index(self.pack.severity(rule))):
            for record in write.records:
                for rule in rules:
                    self.record_hits[record][rule] -= 1
                    if not self.record_hits[record][rule]:
                        del self.record_hits[record][rule]
                    count, first = copied[record].get(rule, (0, template))
                    copied[record][rule] = (count + 1, first)
        return copied

    def _count_hits(self, entity_type: str, hits: dict, fired: list, present: np.ndarray, group: np.ndarray, entities, starts) -> None:
        """Rule hit counts per (entity, window) of this entity type, added to ``record_hits``."""
        groups, sums = hit_counts(group, [hits[rule][present] for rule in fired])
        for group_index, rule_index in zip(*np.nonzero(sums)):
            key = (entity_type, entities[groups[group_index] // len(starts)], starts[groups[group_index] % len(starts)])
            self.record_hits[key][fired[rule_index]] += int(sums[group_index, rule_index])

    @staticmethod
    def _kept(table: pa.Table, rows: np.ndarray, score: np.ndarray, numbers: np.ndarray, why: list, keys: dict, columns: tuple) -> pa.Table:
        """What is kept of ``rows``: ``keys``, the event ``columns`` (dictionary-encoded), time, audit id, score,
        number and why (a bit per ``self.why`` name)."""
        bits = np.packbits(np.column_stack([flag[rows] for flag in why]), axis=1)
        taken = {name: _encoded(table[name].take(pa.array(rows))) for name in columns}
        return pa.table({**keys, **taken, "time": table["time"].take(pa.array(rows)), "audit_id": _plain(table["audit_id"].take(pa.array(rows))),
                         "event_score": pa.array(score[rows]), "number": pa.array(numbers[rows]),
                         "why": pa.FixedSizeBinaryArray.from_buffers(pa.binary(bits.shape[1]), len(rows), [None, pa.py_buffer(bits.tobytes())])})

    def rows(self, kept: pa.Table, extra: tuple[str, ...] = ()) -> list[dict]:
        """Kept events as plain JSON-ready dicts (``evidence_rows``), their columns (and the ``extra`` ones) read again
        from the archive."""
        if len(kept) == 0:
            return []
        numbers = kept["number"].to_numpy()
        order = np.argsort(numbers, kind="stable")
        pieces = []
        for index in np.unique(numbers >> 32).tolist():
            wanted = np.sort(numbers[numbers >> 32 == index] & 0xFFFFFFFF)
            data = self.storage.read_bytes(self.hours[index])
            # the batches' events in the scoring range from their times alone; the evidence columns of those holding wanted rows
            ends = np.cumsum([np.count_nonzero(self._within(times)) for times in hour_batches(data, ["time"], self.batch_rows)])
            holding = sorted(set(np.searchsorted(ends, wanted, side="right").tolist()))
            for number, batch in zip(holding, hour_batches(data, [*EVIDENCE_COLUMNS, *extra], self.batch_rows, set(holding))):
                offset = int(ends[number - 1]) if number else 0
                batch = batch.filter(self._within(batch))
                inside = wanted[(wanted >= offset) & (wanted < offset + len(batch))] - offset
                pieces.append(pa.table({name: _plain(batch[name].take(pa.array(inside))) for name in (*EVIDENCE_COLUMNS, *extra)}))
        read = pa.concat_tables(pieces).take(pa.array(np.argsort(order, kind="stable")))
        return evidence_rows(read, kept["event_score"].to_pylist(), kept["why"].to_pylist(), self.why, extra)

    def result(self) -> dict:
        """What run_score reads: rule hits per record, evidence, top events, rule totals and events scored."""
        ordered = sorted(self.top_events, key=lambda i: (-i[0], i[1], i[2], i[3], -i[4]))
        ordered_top = self.rows(pa.concat_tables([item[5] for item in ordered])) if ordered else []
        evidence, self.candidates = Evidence(self.candidates, self), []
        copied = self.copied_hits()
        return {"record_hits": self.record_hits, "copied_hits": copied, "evidence": evidence, "top_events": ordered_top,
                "rule_totals": self.rule_totals, "events": self.total}


class Evidence:
    """The evidence candidates of every hour: at most ``MAX_AUDIT_IDS`` events per (entity_type, entity,
    window_start), most relevant first (event score, then time, then audit id), as Arrow columns; rows become
    dicts only for the records that are reported (``EventScores.rows``)."""

    def __init__(self, candidates: list[pa.Table], scores: EventScores):
        self.scores = scores
        table = pa.concat_tables(candidates) if candidates else None
        if table is None or len(table) == 0:
            self.table, self.groups = None, {}
            return
        order = pc.sort_indices(table, sort_keys=[("entity_type", "ascending"), ("entity", "ascending"), ("window_start", "ascending"),
                                                  ("event_score", "descending"), ("time", "ascending"), ("audit_id", "ascending"),
                                                  ("number", "ascending")])
        table = table.take(order)
        changed = np.zeros(len(table), dtype=bool)
        changed[0] = True
        for name in ("entity_type", "entity", "window_start"):
            column = table[name]
            changed[1:] |= pc.not_equal(column[1:], column[:-1]).to_numpy(zero_copy_only=False)
        position = np.arange(len(table))
        rank = position - np.maximum.accumulate(np.where(changed, position, 0))
        kept = rank < MAX_AUDIT_IDS
        self.table = table.filter(pa.array(kept))
        starts = np.flatnonzero(changed[kept])
        counts = np.diff(np.r_[starts, len(self.table)])
        heads = self.table.select(["entity_type", "entity", "window_start"]).take(pa.array(starts))
        stamps = {micros: pd.Timestamp(micros, unit="us", tz="UTC") for micros in np.unique(heads["window_start"].cast(pa.int64()).to_numpy()).tolist()}
        self.groups = {(entity_type, entity, stamps[start]): (first, count) for entity_type, entity, start, first, count
                       in zip(heads["entity_type"].to_pylist(), heads["entity"].to_pylist(),
                              heads["window_start"].cast(pa.int64()).to_pylist(), starts.tolist(), counts.tolist())}

    def requests(self) -> dict[tuple, list]:
        """Per (entity_type, entity, window_start), the requests of its evidence events, most relevant first: one
        number per distinct ``REQUEST_KEY``, so that requests a client sent under one Audit-ID stay apart."""
        if self.table is None:
            return {}
        codes = [_codes(self.table[name]) + 1 for name in REQUEST_KEY]  # nulls are -1
        requests = combinations([(code, int(code.max(initial=0)) + 1) for code in codes])[0].tolist()
        return {key: requests[start:start + count] for key, (start, count) in self.groups.items()}

    def audit_ids(self) -> dict[tuple, list]:
        """Audit ids of each (entity_type, entity, window_start)'s evidence events, most relevant first."""
        if self.table is None:
            return {}
        ids = self.table["audit_id"].to_pylist()
        return {key: ids[start:start + count] for key, (start, count) in self.groups.items()}

    def rows(self, keys: set, extra: tuple[str, ...] = ()) -> dict[tuple, list]:
        """Evidence event dicts of each of ``keys``, most relevant first (with the ``extra`` event columns)."""
        spans = sorted(((key, self.groups[key]) for key in keys if key in self.groups), key=lambda item: item[1][0])
        if not spans:
            return {}
        rows = self.scores.rows(self.table.take(pa.array(np.concatenate([np.arange(start, start + count) for _, (start, count) in spans]))),
                                extra)
        result, position = {}, 0
        for key, (_, count) in spans:
            result[key] = rows[position:position + count]
            position += count
        return result


def _encoded(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A text column dictionary-encoded (as the archive's text columns are read), so that kept rows share its values."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Integer codes, equal for equal values (nulls included), of a text column, plain or dictionary-encoded."""
    column = column.unify_dictionaries() if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    return np.concatenate([chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False) for chunk in column.chunks]
                          or [np.zeros(0, dtype=np.int64)]).astype(np.int64)


def _plain(column: pa.ChunkedArray) -> pa.Array:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def score_columns(pack: RulePack, entity_types) -> list[str]:
    """The event columns the score stage reads: the features map's (flags, rules, entities) and the evidence's."""
    wanted = set(map_columns(pack, entity_types)) | set(EVIDENCE_COLUMNS) | {"request_uri", "user_agent", "verb", "resource"}
    return [name for name in COLUMN_NAMES if name in wanted]


def evidence_rows(table: pa.Table, scores: list[float], why_bits: list[bytes], why: list[str], extra: tuple[str, ...] = ()) -> list[dict]:
    """Events (their ``EVIDENCE_COLUMNS``, score and why bits, a bit per ``why`` name) as plain JSON-ready dicts
    (times in ISO 8601 UTC, microseconds: Arrow's ``%S`` of a microsecond timestamp carries them)."""
    names = (*EVIDENCE_COLUMNS, *extra)
    columns = [pc.strftime(table[name], format="%Y-%m-%dT%H:%M:%SZ").to_pylist() if name == "time" else table[name].to_pylist()
               for name in names]
    reasons: dict[bytes, list[str]] = {}  # rows share a handful of why patterns
    rows = []
    for values, score, pattern in zip(zip(*columns), scores, why_bits):
        record = dict(zip(names, values))
        if (named := reasons.get(pattern)) is None:
            bits = np.unpackbits(np.frombuffer(pattern, dtype=np.uint8))[: len(why)]
            named = reasons[pattern] = [why[j] for j in np.flatnonzero(bits).tolist()]
        record["why"] = list(named)
        record["score"] = round(float(score), 4)
        rows.append(record)
    return rows


def rule_parts(records: pd.DataFrame, record_hits: dict, pack: RulePack, weights: dict,
               routine: dict[tuple[str, str, str], int], copied: dict | None = None) -> tuple[np.ndarray, dict]:
    """Each record's rule part and its hit list. Two kinds of hit still show but weigh ROUTINE_FACTOR of their
    severity and cannot flag alone: a rule this entity triggered in ROUTINE_WINDOWS or more training windows, its
    routine (the GitOps controller writing RBAC), marked ``routine``; and a controller's copies of a template whose
    own write fired the rule in this pass (``copied``: record -> rule -> (hits, template); ``features.copies``),
    marked ``copy_of`` (``copies`` counts them). A rule with any other hit in the record weighs in full. The rule part is
    the heaviest hit's weight plus 0.25 for each other hit of at least low weight that weighs in full: a damped hit
    adds nothing beyond its own weight, or three routine highs would add as much as one high."""
    parts = np.zeros(len(records))
    hits_by_key: dict[tuple, list] = {}
    copied = copied or {}
    keys = list(zip(records["entity_type"], records["entity"], records["window_start"]))
    for index, key in enumerate(keys):
        counter, copies = record_hits.get(key) or {}, copied.get(key, {})
        if not counter and not copies:
            continue
        hit_list = []
        for rule in [*counter, *(rule for rule in copies if rule not in counter)]:
            own, (copy_count, template) = counter.get(rule, 0), copies.get(rule, (0, None))
            hit = {"rule": rule, "severity": pack.severity(rule), "count": own + copy_count,
                   "routine": routine.get((key[0], key[1], rule), 0) >= ROUTINE_WINDOWS}
            if copy_count:
                hit["copies"] = copy_count
            if not own:
                hit["copy_of"] = template
            hit["weight"] = round(weights.get(hit["severity"], 0.0) * (1.0 if weighs_in_full(hit) else ROUTINE_FACTOR), 4)
            hit_list.append(hit)
        hit_list.sort(key=lambda h: (-h["weight"], h["rule"]))
        hits_by_key[key] = hit_list
        low = weights.get("low", 0.25)
        parts[index] = hit_list[0]["weight"] + 0.25 * sum(1 for h in hit_list[1:] if h["weight"] >= low and weighs_in_full(h))
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
    values_of = baselines[list(FEATURE_NAMES)].to_numpy(dtype=float)
    per_entity, per_type = {}, {}
    for index, (entity_type, entity) in enumerate(zip(baselines["entity_type"], baselines["entity"])):
        if pd.isna(entity):
            per_type.setdefault(entity_type, values_of[index])
        else:
            per_entity.setdefault((entity_type, entity), values_of[index])
    reasons: dict[int, list] = {}
    for position, row in enumerate(head.itertuples(index=False)):
        baseline = per_entity.get((row.entity_type, row.entity), per_type.get(row.entity_type))
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

