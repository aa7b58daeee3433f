"""Incidents: the scored findings of one attack grouped into one story (issue 18).

A finding is one entity in one window; an intrusion is usually several: the identity and its
address, the hours it lasted, and what it set in motion under other identities (the kubelet that
runs a CronJob the intruder created, the subject of a binding it wrote). ``group_incidents``
links findings and tells each group as one incident with a stable id, a rank, a severity, a title
and a three-sentence summary built from its facts.

Links between two findings (``LINK_KINDS``):
- ``same_request``: both hold one request among their evidence (the same auditID AND the same
  request identity, ``features.events.REQUEST_IDENTITY``, as dedup and scoring define it): the
  Audit-ID header is the client's to choose, so an auditID alone links nothing. Without an
  events index, the scoring stage's ``repeats`` marker (also by request identity) stands in.
- ``adjacent``: one identity's (or one address's) windows at most one window apart (a gap of at
  most one empty window: starts at most two windows apart).
- ``cause_effect``: an object one identity created and another then used or ran (a workload and
  the controllers and kubelets acting on its pods, jobs and replica sets; a ServiceAccount or
  token minted and the first window of that service account acting afterwards; a (Cluster)Role
  Binding and the first window of a subject it names; a CSR and its approval by another identity,
  and the first window of the certificate's user: the approved request's subject CN; a finding whose
  rule hits are a controller's copies of a template (``copy_of``, ``features.copies``) and the
  finding whose evidence wrote that template, whatever the verb: a patched Deployment's rollout).

Grouping is bounded so what an attacker controls cannot merge or split stories at will:
- the core of incidents is the findings that are flagged (or were, before a suppression); core
  findings linked by any kind join (union-find), strongest kinds and best ranks first;
- a quiet finding joins at most one incident, the best-ranked core it links to directly, and never
  bridges two: a quiet window cannot glue unrelated incidents (a NAT address, a busy kubelet); a
  quiet window joins by adjacency only when it has a rule hit that is not the entity's routine;
- a cause-effect link starts at a core finding, or at a grant (binding, ServiceAccount, CSR) whose
  effect is core; an effect links to its best-ranked cause only, so a kubelet running pods of many
  workloads does not merge their creators; a node's TokenRequests (how every pod gets its token)
  are never a cause;
- an incident holds at most ``MAX_MEMBERS`` findings: a link that would exceed it is refused and a
  lone finding so refused is listed in ``overflow_finding_ids`` (kept, not grouped);
- quiet findings linked to no core finding stay findings, not incidents.

Campaigns: ``CAMPAIGN_MIN`` or more incidents of one shape (``campaign_shape``: flagged or not, severity, the entity
types and kinds of identity they hold, and the rule they are named by) are told as one incident, ranked where its best
member ranked. Many new identities each doing a little of the same (an identity spray, a CI fleet gone wrong) are then
a few rows, not thousands that push every other incident down the list (docs/performance.md). Folding can only move
an incident up: each campaign keeps its best member's place and every other incident keeps its order. What it can
cost is attention (a real attack shaped like a benign crowd sits inside it), so a campaign names its counts, its rule
and its identities, lists its member incidents' ids and keeps every finding id.

The record keeps raw log values (user names, object names) in ``title``, ``summary`` and
``entities``; whoever renders them escapes them: ``pipeline.text.printable`` for the terminal,
``safe_cell`` for CSV (``incidents_csv`` here), ``pipeline.report.render`` for Markdown and HTML.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

from features.entities import user_group
from features.events import REQUEST_IDENTITY
from pipeline.report.render import finding_level, weighs_in_full
from pipeline.text import safe_cell

MAX_MEMBERS = 100
MAX_AUDIT_IDS = 200
MAX_EFFECTS_PER_CAUSE = 20
CAMPAIGN_MIN = 5
MAX_CAMPAIGN_ENTITIES = 100
MAX_NAME = 80
ADJACENT_WINDOWS = 2
LINK_KINDS = ("same_request", "adjacent", "cause_effect")
SEVERITY_ORDER = ("critical", "high", "medium", "low", "suppressed", "quiet")
INDEX_COLUMNS = ("entity_type", "entity", "window_start", "time", "audit_id", "received_time", "user", "source_ip", "user_agent",
                 "verb", "request_uri", "resource", "subresource", "namespace", "name", "code", "subjects", "csr_subject_cn", "why")
"""What the score stage passes per evidence event of a written finding (its rows of the evidence frame): the finding's key,
the event's request identity and object, ``subjects`` (a binding's, ``features.events``) and ``why`` (its rule hits as
``rule:<id>``, for tactics in time order). ``csr_subject_cn`` (the subject CN of the request a CSR approval approves,
``features.csr``) links the certificate's user."""
WRITE_VERBS = ("create", "update", "patch")
NODE_PREFIX = "system:node:"
SA_PREFIX = "system:serviceaccount:"
_SUFFIX = "[a-z0-9]{5}"
# what a workload's controllers and kubelets act on, by the workload's kind: (resource, name pattern with {n} the workload's name)
RUNS = {
    "cronjobs": (("jobs", r"{n}-\d+"), ("pods", r"{n}-\d+-" + _SUFFIX)),
    "daemonsets": (("pods", r"{n}-" + _SUFFIX), ("controllerrevisions", r"{n}-[a-z0-9]{6,10}")),
    "deployments": (("replicasets", r"{n}-[a-z0-9]{6,10}"), ("pods", r"{n}-[a-z0-9]{6,10}-" + _SUFFIX)),
    "statefulsets": (("pods", r"{n}-\d+"),),
    "replicasets": (("pods", r"{n}-" + _SUFFIX),),
    "jobs": (("pods", r"{n}-" + _SUFFIX),),
    "pods": (("pods", r"{n}"),),
}
CSV_FIELDS = ("incident_id", "rank", "flagged", "severity", "title", "tactics", "first_seen", "last_seen", "entities", "finding_ids")


@dataclass
class Incident:
    """One story: its member findings (best rank first) and the facts told about them."""
    incident_id: str
    rank: int
    title: str
    summary: str
    severity: str
    tactics: list[str]
    first_seen: str
    last_seen: str
    entities: list[dict]
    finding_ids: list[str]
    audit_ids: list[str]
    flagged: bool
    links: list[dict] = field(default_factory=list)
    overflow_finding_ids: list[str] = field(default_factory=list)
    campaign: dict | None = None
    top_score: float = 0.0
    best_rank: int = 0
    audit_times: list[str] = field(default_factory=list, repr=False)  # when each of audit_ids was first seen

    def to_record(self) -> dict:
        record = {"incident_id": self.incident_id, "rank": self.rank, "title": self.title, "summary": self.summary,
                  "severity": self.severity, "tactics": list(self.tactics), "first_seen": self.first_seen, "last_seen": self.last_seen,
                  "entities": [dict(e) for e in self.entities], "finding_ids": list(self.finding_ids),
                  "audit_ids": list(self.audit_ids), "flagged": self.flagged, "links": [dict(link) for link in self.links],
                  "overflow_finding_ids": list(self.overflow_finding_ids)}
        return record if self.campaign is None else {**record, "campaign": dict(self.campaign)}


def group_incidents(findings: Sequence[Mapping], events_index: Iterable[Mapping] | None = None,
                    tactics: Mapping[str, Sequence[str]] | None = None, rule_titles: Mapping[str, str] | None = None,
                    window_minutes: int = 60, campaign_min: int = CAMPAIGN_MIN) -> list[Incident]:
    """Incidents of ``findings`` (records of findings.json in rank order), ranked.

    ``events_index``: rows of ``INDEX_COLUMNS``, each an evidence event of one finding (found by its entity_type, entity and
    window_start); without it only ``repeats`` and adjacency link. ``tactics``: rule id -> ATT&CK tactic ids (issue 17;
    empty until the rules carry them). ``rule_titles``: rule id -> plain title (the rule pack's ``title``).
    ``campaign_min``: alike incidents are told as one campaign from this many (``fold_campaigns``)."""
    findings = sorted(findings, key=lambda f: f["rank"])
    rows = _rows_by_finding(findings, events_index)
    core = [bool(f["flagged"] or f.get("suppressed")) for f in findings]
    requests = [[_request(event) for event in events] for events in rows]
    links = candidate_links(findings, rows, core, window_minutes, requests)
    groups, overflow, used = _group(findings, core, links, [len(set(keys)) for keys in requests])
    incidents = [_incident(findings, members, rows, overflow.get(root, []), used.get(root, []), tactics or {}, rule_titles or {})
                 for root, members in groups.items()]
    incidents.sort(key=_rank_key)
    incidents = fold_campaigns(incidents, {f["finding_id"]: f for f in findings}, rule_titles or {}, campaign_min)
    for rank, incident in enumerate(incidents, 1):
        incident.rank = rank
    return incidents


# --------------------------------------------------------------------------- links
def candidate_links(findings: Sequence[Mapping], rows: list[list[dict]], core: list[bool], window_minutes: int,
                    requests: list[list[tuple]]) -> list[tuple]:
    """(kind, a, b, why, shared requests or None) for every pair of findings (positions in rank order) the rules of the module docstring link; a cause
    comes first in a cause_effect link. ``requests``: each row's ``_request`` key."""
    links = _same_request(findings, requests) + _adjacent(findings, window_minutes)
    links += _cause_effect(findings, rows, core)
    return links


def _same_request(findings, requests) -> list[tuple]:
    holders: dict[tuple, list[int]] = defaultdict(list)
    for index, keys in enumerate(requests):
        for request in dict.fromkeys(keys):
            holders[request].append(index)
    pairs: dict[tuple, int] = defaultdict(int)
    for members in holders.values():
        for other in members[1:MAX_MEMBERS]:
            pairs[(members[0], other)] += 1
    links = [("same_request", a, b, f"{count} request(s) in both", count) for (a, b), count in pairs.items()]
    position = {f["finding_id"]: i for i, f in enumerate(findings)}
    for index, finding in enumerate(findings):
        owner = position.get(finding.get("repeats"))
        if owner is not None and (min(owner, index), max(owner, index)) not in pairs:
            links.append(("same_request", owner, index, "mostly the same requests (repeats)", None))
    return links


def _adjacent(findings, window_minutes: int) -> list[tuple]:
    by_entity: dict[tuple, list[int]] = defaultdict(list)
    for index, finding in enumerate(findings):
        by_entity[(finding["entity_type"], finding["entity"])].append(index)
    gap = timedelta(minutes=window_minutes * ADJACENT_WINDOWS)
    links = []
    for members in by_entity.values():
        members.sort(key=lambda i: findings[i]["window_start"])
        for a, b in zip(members, members[1:]):
            if _time(findings[b]["window_start"]) - _time(findings[a]["window_start"]) <= gap:
                links.append(("adjacent", a, b, "consecutive windows", None))
    return links


def _cause_effect(findings, rows, core) -> list[tuple]:
    """Links from what one identity created to another identity acting on it or as it afterwards."""
    users = defaultdict(list)
    for index, finding in enumerate(findings):
        if finding["entity_type"] == "user":
            users[finding["entity"]].append(index)
    for members in users.values():
        members.sort(key=lambda i: findings[i]["window_start"])
    objects = defaultdict(list)  # (resource, namespace) -> [(name, time, user, finding)]
    for index, events in enumerate(rows):
        for event in events:
            if event.get("name") and event.get("user"):
                objects[(event.get("resource"), event.get("namespace") or "")].append(
                    (event["name"], event["time"], event["user"], index, event.get("subresource"), event.get("verb")))
    effects: dict[int, list[tuple]] = defaultdict(list)  # effect -> [(cause, why)]
    for cause, events in enumerate(rows):
        for event in events:
            if not _succeeded(event) or event.get("verb") not in WRITE_VERBS or not event.get("user"):
                continue
            found = _effects_of(event, findings, users, objects, cause, rows)
            grant = bool(found) and _is_grant(event)
            for effect, why in found[:MAX_EFFECTS_PER_CAUSE]:
                if effect != cause and (core[cause] or (grant and core[effect])):
                    effects[effect].append((cause, why))
    for effect, cause, why in _copies_of_templates(findings, rows):
        if core[cause]:
            effects[effect].append((cause, why))
    links = []
    for effect, causes in effects.items():
        cause, why = min(causes, key=lambda item: item[0])  # the best-ranked cause only
        links.append(("cause_effect", cause, effect, why, None))
    return links


def _copies_of_templates(findings, rows) -> list[tuple[int, int, str]]:
    """(effect, cause, why): each finding with a controller's copies of a template (a rule hit's ``copy_of``, "resource
    namespace/name") and each other finding whose evidence holds a successful write of that template."""
    writers: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for index, events in enumerate(rows):
        for event in events:
            if event.get("verb") in WRITE_VERBS and not event.get("subresource") and event.get("name") and _succeeded(event):
                writers[(event.get("resource"), event.get("namespace") or "", event["name"])].append((index, event.get("user") or ""))
    found = []
    for effect, finding in enumerate(findings):
        for template in dict.fromkeys(hit["copy_of"] for hit in finding.get("rule_hits", ()) if hit.get("copy_of")):
            resource, _, where = template.partition(" ")
            namespace, _, name = where.rpartition("/")
            for cause, writer in dict.fromkeys(writers.get((resource, namespace, name), ())):
                if cause != effect:
                    found.append((effect, cause, f"{_short(finding['entity'])} made copies of {template}, which {_short(writer)} wrote"))
    return found


def _effects_of(event: dict, findings, users, objects, cause: int, rows) -> list[tuple[int, str]]:
    resource, verb, subresource = event.get("resource"), event.get("verb"), event.get("subresource")
    namespace, name, actor, at = event.get("namespace") or "", event.get("name"), event["user"], event["time"]
    if resource in RUNS and verb == "create" and not subresource and name:
        found = []
        for kind, pattern in RUNS[resource]:
            match = re.compile(pattern.replace("{n}", re.escape(name)))
            for other, time, user, index, _, _ in objects.get((kind, namespace), ()):
                if user != actor and time >= at and match.fullmatch(other):
                    found.append((index, f"{_short(user)} acted on {kind} {namespace}/{other} of the {resource[:-1]} "
                                         f"{_short(actor)} created"))
        return list(dict.fromkeys(found))
    if resource == "serviceaccounts" and verb == "create" and name and not actor.startswith(NODE_PREFIX):
        what = "a token for" if subresource == "token" else "the ServiceAccount"
        return _first_use(f"{SA_PREFIX}{namespace}:{name}", at, findings, users, f"{_short(actor)} minted {what}", rows)
    if resource in ("rolebindings", "clusterrolebindings") and event.get("subjects"):
        found = []
        for subject in _subjects(event["subjects"]):
            found += _first_use(subject, at, findings, users, f"{_short(actor)} bound {resource[:-1]} {name or '(unnamed)'} to", rows)
        return found
    if resource == "certificatesigningrequests" and name:
        found = []
        if verb == "create" and not subresource:
            for other, time, user, index, sub, other_verb in objects.get((resource, ""), ()):
                if other == name and user != actor and sub == "approval" and time >= at:
                    found.append((index, f"{_short(user)} approved CSR {name} that {_short(actor)} created"))
        if subresource == "approval" and event.get("csr_subject_cn"):
            found += _first_use(event["csr_subject_cn"], at, findings, users, f"{_short(actor)} approved CSR {name} for", rows)
        return found
    return []


def _first_use(subject: str, at: str, findings, users, why: str, rows) -> list[tuple[int, str]]:
    """The subject's first window ending after ``at`` in which it acted: not every hour it ever acts, and not a window whose
    evidence after ``at`` is only refusals (system:anonymous is every scanner's identity: its refused probes before the
    grant took effect are not its use). A window whose evidence (its most relevant events, not all) holds nothing after
    ``at`` counts as acting."""
    for index in users.get(subject, ()):
        if _iso_micro(findings[index]["window_end"]) <= at:
            continue
        after = [event for event in rows[index] if event["time"] >= at]
        if not after or any(_succeeded(event) for event in after):
            return [(index, f"{why} {_short(subject)}, which then acted")]
    return []


def _is_grant(event: dict) -> bool:
    return event.get("resource") in ("rolebindings", "clusterrolebindings", "serviceaccounts", "certificatesigningrequests")


def _subjects(text: str) -> list[str]:
    """Identities a binding's ``subjects`` (Kind:namespace/name, comma-joined) names; groups name no one identity."""
    identities = []
    for item in text.split(","):
        kind, _, rest = item.partition(":")
        namespace, _, name = rest.partition("/")
        if kind == "User" and name:
            identities.append(name)
        elif kind == "ServiceAccount" and name:
            identities.append(f"{SA_PREFIX}{namespace}:{name}")
    return identities[:MAX_EFFECTS_PER_CAUSE]


# --------------------------------------------------------------------------- grouping
KIND_ORDER = {kind: order for order, kind in enumerate(LINK_KINDS)}


def _group(findings, core, links, requests: list[int]) -> tuple[dict[int, list[int]], dict[int, list[str]], dict[int, list[dict]]]:
    parent = list(range(len(findings)))
    size = [1] * len(findings)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    refused: dict[int, set[int]] = defaultdict(set)
    used: list[tuple] = []
    ordered = sorted(links, key=lambda link: (KIND_ORDER[link[0]], min(link[1], link[2]), max(link[1], link[2])))
    for link in ordered:
        kind, a, b = link[:3]
        if not (core[a] and core[b]):
            continue
        ra, rb = root(a), root(b)
        if ra == rb:
            used.append(link)
            continue
        if size[ra] + size[rb] > MAX_MEMBERS:
            refused[a].add(b)
            refused[b].add(a)
            continue
        big, small = (ra, rb) if (size[ra], -ra) >= (size[rb], -rb) else (rb, ra)
        parent[small] = big
        size[big] += size[small]
        used.append(link)
    best: dict[int, int] = {}
    for index in range(len(findings)):
        if core[index]:
            best.setdefault(root(index), findings[index]["rank"])  # rank order: the first member seen is the best
    # quiet findings: one hop to the best-ranked core they link to; by shared requests only when at least half of the quiet
    # one's are shared (a pod's address window holding a few of a stolen token's requests is not the story), by adjacency
    # only with a rule hit that is not the entity's routine
    attach: dict[int, tuple] = {}
    for link in ordered:
        kind, a, b, _, shared = link
        for quiet, other in ((a, b), (b, a)):
            if core[quiet] or not core[other]:
                continue
            if kind == "adjacent" and not _has_own_rule_hit(findings[quiet]):
                continue
            if shared is not None and 2 * shared < requests[quiet]:
                continue
            chosen = attach.get(quiet)
            if chosen is None or best[root(other)] < best[root(chosen[1])]:
                attach[quiet] = (kind, other, link)
    groups: dict[int, list[int]] = defaultdict(list)
    for index in range(len(findings)):
        if core[index]:
            groups[root(index)].append(index)
    overflow: dict[int, list[str]] = defaultdict(list)
    for quiet, (_, other, link) in sorted(attach.items()):
        target = root(other)
        if len(groups[target]) >= MAX_MEMBERS:
            overflow[target].append(findings[quiet]["finding_id"])
            continue
        groups[target].append(quiet)
        used.append(link)
    for index in sorted(refused):
        if len(groups.get(root(index), ())) == 1:
            target = root(min(refused[index]))
            overflow[target].append(findings[index]["finding_id"])
            del groups[root(index)]
    by_group: dict[int, list[dict]] = defaultdict(list)
    for kind, a, b, why, _ in used:
        target = root(a) if core[a] else root(b)
        by_group[target].append({"kind": kind, "from": findings[a]["finding_id"], "to": findings[b]["finding_id"], "why": why})
    return {r: sorted(m) for r, m in groups.items()}, overflow, by_group


def _has_own_rule_hit(finding: Mapping) -> bool:
    return any(weighs_in_full(hit) and hit.get("weight", 0) > 0 for hit in finding.get("rule_hits", ()))


# --------------------------------------------------------------------------- telling
def _incident(findings, members: list[int], rows, overflow: list[str], links: list[dict], tactics_of, rule_titles) -> Incident:
    parts = [findings[i] for i in members]  # rank order
    core = [f for f in parts if f["flagged"] or f.get("suppressed")]
    earliest = min(core or parts, key=lambda f: (f["window_start"], f["finding_id"]))
    events = sorted((e for i in members for e in rows[i]), key=lambda e: (e["time"], e.get("audit_id") or ""))
    first = events[0]["time"] if events else min(_iso_micro(f["window_start"]) for f in parts)
    last = events[-1]["time"] if events else max(_iso_micro(f["window_end"]) for f in parts)
    entities = list(dict.fromkeys((f["entity_type"], f["entity"]) for f in parts))
    seen = {}  # audit id -> when first seen: the evidence's time, else its finding's window start
    if events:
        for e in events:
            if e.get("audit_id"):
                seen.setdefault(e["audit_id"], e["time"])
    else:
        for f in sorted(parts, key=lambda f: f["window_start"]):
            for audit_id in f["audit_ids"]:
                seen.setdefault(audit_id, _iso_micro(f["window_start"]))
    audit_ids = list(seen)[:MAX_AUDIT_IDS]
    rules = _rules_in_time_order(parts, events)
    tactics = list(dict.fromkeys(t for rule in rules for t in tactics_of.get(rule, ())))
    severity = min((_severity(f) for f in parts), key=SEVERITY_ORDER.index)
    facts = {"parts": parts, "entities": entities, "events": events, "rules": rules, "titles": rule_titles, "tactics": tactics,
             "first": first, "last": last, "links": links}
    return Incident(
        incident_id="inc-" + hashlib.sha256(earliest["finding_id"].encode()).hexdigest()[:20], rank=0,
        title=_title(facts), summary=_summary(facts), severity=severity, tactics=tactics, first_seen=first, last_seen=last,
        entities=[{"entity_type": t, "entity": e} for t, e in entities], finding_ids=[f["finding_id"] for f in parts],
        audit_ids=audit_ids, audit_times=[seen[a] for a in audit_ids], flagged=any(f["flagged"] for f in parts), links=links,
        overflow_finding_ids=overflow, best_rank=parts[0]["rank"],
        top_score=max(f.get("rank_score", f["score"]) for f in ([f for f in parts if f["flagged"]] or parts)))


# --------------------------------------------------------------------------- campaigns
def campaign_shape(incident: Incident, findings_by_id: Mapping[str, Mapping]) -> tuple:
    """What makes incidents alike enough to be one campaign: flagged or not, severity, the entity types and identity kinds
    (``features.entities.user_group``: fixed by how the caller authenticated, not by the name it chose) they hold, and
    the rule they are named by (the heaviest that fired in full; None when none did). Not the whole set of rules: an
    address shared by a few sprayed identities holds the union of theirs, and unions would make a shape per address."""
    parts = [findings_by_id[fid] for fid in incident.finding_ids if fid in findings_by_id]
    kinds = {user_group(e["entity"]) for e in incident.entities if e["entity_type"] == "user"}
    return (incident.flagged, incident.severity, tuple(sorted({e["entity_type"] for e in incident.entities})), tuple(sorted(kinds)),
            _top_rule(parts))


def fold_campaigns(incidents: list[Incident], findings_by_id: Mapping[str, Mapping], rule_titles: Mapping[str, str],
                   campaign_min: int = CAMPAIGN_MIN) -> list[Incident]:
    """``incidents`` (in rank order) with every ``campaign_min`` or more of one ``campaign_shape`` told as one campaign,
    at the place of its best-ranked member; the others keep their order."""
    alike: dict[tuple, list[Incident]] = defaultdict(list)
    for incident in incidents:
        alike[campaign_shape(incident, findings_by_id)].append(incident)
    crowds = {shape: group for shape, group in alike.items() if len(group) >= campaign_min}
    campaigns = {id(group[0]): _campaign(group, shape, rule_titles) for shape, group in crowds.items()}
    folded = {id(incident) for group in crowds.values() for incident in group}
    return [campaigns.get(id(incident), incident) for incident in incidents if id(incident) not in folded or id(incident) in campaigns]


def _campaign(members: list[Incident], shape: tuple, rule_titles: Mapping[str, str]) -> Incident:
    best = members[0]  # rank order
    by_start = sorted(members, key=lambda i: (i.first_seen, i.incident_id))
    earliest = by_start[0]
    entities = list(dict.fromkeys((e["entity_type"], e["entity"]) for i in members for e in i.entities))
    identities = sum(1 for kind, _ in entities if kind == "user")
    addresses = len(entities) - identities
    timeline = sorted({(when, audit_id) for i in members for when, audit_id in zip(i.audit_times, i.audit_ids)})
    audit_ids = list(dict.fromkeys(audit_id for _, audit_id in timeline))[:MAX_AUDIT_IDS]
    first_seen, last_seen = earliest.first_seen, max(i.last_seen for i in members)
    tactics = list(dict.fromkeys(t for i in by_start for t in i.tactics))
    flagged, severity, types, kinds, top = shape  # what every member shares
    what = _rule_title(top, rule_titles) if top else "Unusual activity for its kind"
    crowd = f"{identities:,} identit{'y' if identities == 1 else 'ies'}" + (f" from {addresses:,} address{'es' if addresses != 1 else ''}" if addresses else "")
    findings = [fid for i in members for fid in i.finding_ids]
    summary = (f"{len(members):,} incidents of one shape between {_clock(first_seen)} and {_clock(last_seen)} UTC: {crowd}"
               f"{' (' + ', '.join(kinds) + ')' if kinds else ''}, {len(findings):,} findings. "
               + (f"Each is named by the same rule ({what})" if top else "No rule fired in any; the model found each unusual for its kind")
               + f"; the best-ranked is \"{best.title}\". "
               "They are told as one incident so that many alike cannot push the others down the list; "
               "incidents.jsonl keeps every finding of it.")
    return Incident(
        incident_id="inc-" + hashlib.sha256(f"campaign {earliest.incident_id}".encode()).hexdigest()[:20], rank=0,
        title=f"{what}: {len(members):,} alike incidents, {crowd}", summary=summary,
        severity=severity, tactics=tactics, first_seen=first_seen,
        last_seen=last_seen, entities=[{"entity_type": t, "entity": e} for t, e in entities[:MAX_CAMPAIGN_ENTITIES]],
        finding_ids=findings, audit_ids=audit_ids, flagged=flagged,
        overflow_finding_ids=[fid for i in members for fid in i.overflow_finding_ids],
        campaign={"incidents": len(members), "identities": identities, "addresses": addresses, "entity_types": list(types),
                  "identity_kinds": list(kinds), "rule": top, "incident_ids": [i.incident_id for i in members][:MAX_MEMBERS]},
        top_score=best.top_score, best_rank=best.best_rank)


def _rules_in_time_order(parts, events) -> list[str]:
    first: dict[str, str] = {}
    for event in events:
        for why in event.get("why") or ():
            if isinstance(why, str) and why.startswith("rule:"):
                first.setdefault(why[5:], event["time"])
    for finding in parts:
        for hit in finding.get("rule_hits", ()):
            first.setdefault(hit["rule"], _iso_micro(finding["window_start"]))
    return sorted(first, key=lambda rule: (first[rule], rule))


def _severity(finding: Mapping) -> str:
    if finding.get("severity") in SEVERITY_ORDER:
        return finding["severity"]

    return finding_level(finding)


def _rank_key(incident: Incident):
    """Flagged incidents first, then by their best member's rank score (the score findings are ranked by), severity and
    best member rank: the incident holding finding #1 comes first, and a quiet story never ranks above a flagged one."""
    return (not incident.flagged, -incident.top_score, SEVERITY_ORDER.index(incident.severity), incident.best_rank,
            incident.incident_id)


def _title(facts: dict) -> str:
    parts, titles = facts["parts"], facts["titles"]
    top = _top_rule(parts)
    what = _rule_title(top, titles) if top else "Unusual activity for its kind"
    actors = [e for t, e in facts["entities"] if t == "user"]
    addresses = [e for t, e in facts["entities"] if t == "source_ip"]
    who = _short(actors[0]) if actors else "an unknown identity"
    more = f" and {len(actors) - 1} other identit{'y' if len(actors) == 2 else 'ies'}" if len(actors) > 1 else ""
    where = f" from {_short(addresses[0])}" if addresses else ""
    return f"{what}: {who}{more}{where}"


def _summary(facts: dict) -> str:
    parts, events = facts["parts"], facts["events"]
    actors = [_short(e) for t, e in facts["entities"] if t == "user"]
    addresses = [_short(e) for t, e in facts["entities"] if t == "source_ip"]
    flagged = sum(1 for f in parts if f["flagged"])
    who = _listed(actors, 3) or "Unauthenticated or unknown callers"
    where = f" from {_listed(addresses, 3)}" if addresses else ""
    first = f"{who} acted{where} between {_clock(facts['first'])} and {_clock(facts['last'])} UTC " \
            f"({len(parts)} window{'s' if len(parts) != 1 else ''}, {flagged} flagged)."
    objects = _objects(events)
    chain = next((link["why"] for link in facts["links"] if link["kind"] == "cause_effect"), None)
    if objects:
        second = f"It changed {_listed(objects, 3)}" + (f"; {chain}." if chain else ".")
    elif events:
        second = f"It made {len(events)} notable request{'s' if len(events) != 1 else ''}, mostly {_usual(events)}" + \
                 (f"; {chain}." if chain else ".")
    else:
        second = f"It made {sum(f.get('event_count', 0) for f in parts)} requests in these windows."
    rules = [_rule_title(r, facts["titles"]) for r in facts["rules"]]
    if rules:
        third = f"Rules that fired: {_listed(rules, 4)}" + (f" (ATT&CK {', '.join(facts['tactics'])})." if facts["tactics"] else ".")
    else:
        third = "No rule fired; the model found this activity unusual for its kind of identity."
    return " ".join((first, second, third))


def _top_rule(parts) -> str | None:
    hits = [(h.get("weight", 0), f["rank"], h["rule"]) for f in parts for h in f.get("rule_hits", ()) if weighs_in_full(h)]
    hits = [h for h in hits if h[0] > 0] or hits
    return min(hits, key=lambda h: (-h[0], h[1], h[2]))[2] if hits else None


def _rule_title(rule: str, titles: Mapping[str, str]) -> str:
    title = titles.get(rule) or rule.replace("_", " ")
    return title[:1].upper() + title[1:]


def _objects(events) -> list[str]:
    """Objects the incident wrote, those a rule fired on first, then creations and deletions, then the rest (status reports
    and lease renewals are a component's heartbeat, not a change)."""
    verbs = ("create", "delete", "deletecollection", "update", "patch")
    written = [e for e in events if e.get("verb") in verbs and _succeeded(e) and e.get("resource")
               and e.get("subresource") != "status" and e.get("resource") != "leases"]
    written.sort(key=lambda e: (not any(str(w).startswith("rule:") for w in e.get("why") or ()), verbs.index(e["verb"]) > 2, e["time"]))
    return list(dict.fromkeys(
        f"{e['resource']}{'/' + e['subresource'] if e.get('subresource') else ''} "
        f"{_short(e.get('namespace') or '')}{'/' if e.get('namespace') and e.get('name') else ''}{_short(e.get('name') or '')}".strip()
        for e in written))


def _usual(events) -> str:
    counts: dict[str, int] = defaultdict(int)
    for e in events:
        counts[f"{e.get('verb') or 'get'} {e.get('resource') or e.get('request_uri') or '?'}"] += 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    return " and ".join(_short(name) for name, _ in top)


def _listed(items: list[str], most: int) -> str:
    if len(items) <= most:
        return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + (items[-1] if items else "")
    return ", ".join(items[:most]) + f" and {len(items) - most} more"


def _short(text) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MAX_NAME else text[: MAX_NAME - 1] + "…"


# --------------------------------------------------------------------------- rows and times
def _rows_by_finding(findings, events_index) -> list[list[dict]]:
    """Each finding's evidence rows, by its key: an event belongs to the finding it was written for, never to every
    finding that happens to share its auditID."""
    rows: list[list[dict]] = [[] for _ in findings]
    if events_index is None:
        return rows
    position = {(f["entity_type"], f["entity"], _iso_seconds(f["window_start"])): i for i, f in enumerate(findings)}
    for event in events_index:
        index = position.get((event["entity_type"], event["entity"], _iso_seconds(event["window_start"])))
        if index is not None:
            time = event["time"]  # the score stage's rows carry it written already: kept as they are, not copied
            rows[index].append(event if isinstance(time, str) and _ISO_MICRO.fullmatch(time) else {**event, "time": _iso_micro(time)})
    return rows


_ISO_MICRO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


_REQUEST_TIMES = tuple(i for i, name in enumerate(REQUEST_IDENTITY) if name.endswith("time"))


def _request(event: dict) -> tuple:
    key = [event.get(name) for name in REQUEST_IDENTITY]
    for i in _REQUEST_TIMES:
        if key[i] is not None:
            key[i] = _iso_micro(key[i])
    return tuple(key)


def _succeeded(event: dict) -> bool:
    code = event.get("code")
    return code is None or int(code) < 400


def _time(value) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _iso_micro(value) -> str:
    return _time(value).astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@lru_cache(maxsize=4096)
def _iso_seconds(value) -> str:
    """Window bounds as findings.json writes them (a finding's key; a day has a few hundred)."""
    return _time(value).astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _clock(text: str) -> str:
    return text[:16].replace("T", " ")


# --------------------------------------------------------------------------- files
def _record(incident: Incident | Mapping) -> Mapping:
    return incident.to_record() if isinstance(incident, Incident) else incident


def incidents_jsonl(incidents: Sequence[Incident | Mapping]) -> bytes:
    """incidents.jsonl: one record per incident (an ``Incident`` or its ``to_record()``), in rank order (raw values;
    renderers escape)."""
    return "".join(json.dumps(_record(i), ensure_ascii=False) + "\n" for i in incidents).encode("utf-8", "surrogatepass")


def incidents_csv(incidents: Sequence[Incident | Mapping]) -> str:
    """incidents.csv: ids, severity, title, tactics and finding ids, cells formula- and escape-safe (``safe_cell``)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for incident in map(_record, incidents):
        row = {**incident, "tactics": ";".join(incident["tactics"]), "finding_ids": ";".join(incident["finding_ids"]),
               "entities": ";".join(f"{e['entity_type']}:{e['entity']}" for e in incident["entities"])}
        writer.writerow([safe_cell(row[name]) for name in CSV_FIELDS])
    return out.getvalue()
