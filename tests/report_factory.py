"""A realistic report context built by hand, shaped exactly like pipeline/report.py builds it
from the score stage's files; attacker-controlled strings sit wherever a log value lands
(username, user agent, object name, request URI, namespace, addresses)."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from features.windows import FEATURE_BY_NAME
from pipeline.config import parse_config
from pipeline.stages.score import finding_id

CLUSTER = "demo"
SCORE_FROM = datetime(2026, 11, 4, 0, 0, tzinfo=timezone.utc)
TRAIN_FROM = SCORE_FROM - timedelta(days=3)
HOUR = timedelta(hours=1)

# Payloads for every context a value may land in: element text, quoted attributes, URLs,
# <style>/<script> bodies, template syntax, Markdown tables/code/links, SQL and Insights literals.
SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '" onmouseover="x'
URL = "javascript:alert(1)"
STYLE = "</style><b>styled</b>"
TEMPLATE = "{{7*7}}"
PAYLOADS = (SCRIPT, ATTRIBUTE, URL, STYLE, TEMPLATE)
HOSTILE_USER = f"mallory{SCRIPT}{ATTRIBUTE}' OR '1'='1 | `tick` [x]({URL})\n# {TEMPLATE} {STYLE}"
HOSTILE_AGENT = f"kubectl/v1.29.2 {STYLE}{SCRIPT} {ATTRIBUTE} {URL} {TEMPLATE} | ```"
HOSTILE_NAME = f"db-creds</script><img src=x onerror=alert(1)>{ATTRIBUTE} {URL} {TEMPLATE} {STYLE} |x|"
HOSTILE_URI = f"/api/v1/namespaces/default/secrets?q={SCRIPT}&r={URL}&s={ATTRIBUTE}&t={TEMPLATE}{STYLE}"
HOSTILE_NAMESPACE = f"ns{SCRIPT}"

CONFIG = parse_config({"cluster": CLUSTER, "report": {"top_n": 60}})


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def reason(feature: str, value: float, baseline: float | None, contribution: float) -> dict:
    return {"feature": feature, "value": value, "baseline": baseline, "contribution": contribution, "why": FEATURE_BY_NAME[feature].why}


def evidence_event(at: datetime, user: str, source_ip: str, verb: str, resource: str | None, namespace: str | None, name: str | None,
                   code: int, user_agent: str, why: list[str], score: float, audit_id: str, request_uri: str | None = None,
                   subresource: str | None = None, claimed_ip: str | None = None) -> dict:
    path = request_uri or f"/api/v1/namespaces/{namespace}/{resource}" + (f"/{name}" if name else "")
    return {"time": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "audit_id": audit_id, "stage": "ResponseComplete", "user": user,
            "source_ip": source_ip, "claimed_ip": claimed_ip, "user_agent": user_agent, "verb": verb, "resource": resource,
            "subresource": subresource, "namespace": namespace, "name": name, "code": code, "request_uri": path,
            "impersonated_user": None, "score": score, "why": why}


def make_finding(rank: int, entity_type: str, entity: str, start: datetime, score: float, model_part: float, rule_hits: list,
                 reasons: list, events: int, flagged: bool, audit_ids: list[str], suppressed_by: str | None = None) -> dict:
    finding = {
        "rank": rank, "finding_id": finding_id(CLUSTER, entity_type, entity, start), "entity_type": entity_type, "entity": entity,
        "window_start": iso(start), "window_end": iso(start + HOUR), "score": score, "flagged": flagged,
        "model_score": round(0.42 + 0.05 * model_part, 6), "model_part": model_part, "rule_part": round(score - model_part, 6),
        "rule_hits": rule_hits, "reasons": reasons, "event_count": events, "audit_ids": audit_ids, "suppressed": suppressed_by is not None,
    }
    if suppressed_by:
        finding.update(flagged=False, suppressed_by=suppressed_by)
    return finding


def make_context(seed: int = 0, noise: int = 220) -> dict:
    """The report context of one scored day: three planted findings, one suppressed, and ``noise``
    ordinary entity windows, with evidence for the top 60, timelines and top events."""
    rng = random.Random(seed)
    attack = SCORE_FROM + timedelta(hours=14)
    hostile_events = [
        evidence_event(attack + timedelta(seconds=7 * i), HOSTILE_USER, "198.51.100.23", "get", "secrets",
                       HOSTILE_NAMESPACE if i % 3 == 0 else "payments", HOSTILE_NAME if i % 2 else f"token-{i}", 200,
                       HOSTILE_AGENT, ["rule:secrets_sweep", "secret_read", "new_source_ip_for_user"], round(4.1 - i * 0.05, 4),
                       f"a11ce000-0000-4000-8000-{i:012d}", HOSTILE_URI if i % 4 == 0 else None, claimed_ip="10.0.0.1")
        for i in range(24)
    ] + [evidence_event(attack + timedelta(minutes=9), HOSTILE_USER, "198.51.100.23", "update", "configmaps", "kube-system", "aws-auth",
                        200, HOSTILE_AGENT, ["rule:aws_auth_modified", "aws_auth_write"], 5.6, "a11ce000-0000-4000-8000-aw5a0th00001")]
    hostile_events.sort(key=lambda e: (-e["score"], e["time"]))
    scanner_start = SCORE_FROM + timedelta(hours=3)
    scanner_events = [
        evidence_event(scanner_start + timedelta(seconds=40 * i), "system:anonymous", "203.0.113.7", "get", None, None, None,
                       200 if i % 5 == 0 else 403, "python-requests/2.31.0",
                       ["rule:anonymous_access_allowed", "anonymous_allowed"] if i % 5 == 0 else ["denied_403"],
                       2.2 if i % 5 == 0 else 1.1, f"5ca00000-0000-4000-8000-{i:012d}", request_uri=["/version", "/api/v1/pods", "/.env", "/apis"][i % 4])
        for i in range(16)
    ]
    alice_start = SCORE_FROM + timedelta(hours=22)
    alice_events = [
        evidence_event(alice_start + timedelta(minutes=2 * i), "alice@corp.example", "10.0.12.34", ["create", "get"][i % 2], "pods",
                       "web", f"debug-{i}", 101 if i % 2 == 0 else 200, "kubectl/v1.29.2 (darwin/arm64) kubernetes/4b8e819",
                       ["exec", "off_hours"], 1.4, f"a1a1a1a1-0000-4000-8000-{i:012d}", subresource="exec" if i % 2 == 0 else None)
        for i in range(6)
    ]
    planted = [
        make_finding(1, "user", HOSTILE_USER, attack, 5.62, 3.87, [
            {"rule": "aws_auth_modified", "severity": "critical", "count": 1},
            {"rule": "secrets_sweep", "severity": "high", "count": 24}],
            [reason("secret_reads", 24.0, 0.5, 0.31), reason("distinct_secrets", 12.0, 1.0, 0.22),
             reason("new_peers", 1.0, 0.0, 0.12), reason("requests_vs_baseline", 9.8, 0.2, 0.1), reason("aws_auth_writes", 1.0, 0.0, 0.07)],
            25, True, [e["audit_id"] for e in hostile_events]),
        make_finding(2, "source_ip", "203.0.113.7", scanner_start, 2.71, 1.71, [
            {"rule": "anonymous_access_allowed", "severity": "high", "count": 4},
            {"rule": "anonymous_request_failed", "severity": "info", "count": 12}],
            [reason("denied_403", 12.0, 0.0, 0.28), reason("distinct_uris", 16.0, 2.0, 0.2), reason("new_entity", 1.0, 0.0, 0.15)],
            16, True, [e["audit_id"] for e in scanner_events]),
        make_finding(3, "user", "alice@corp.example", alice_start, 1.55, 1.55, [],
                     [reason("execs", 3.0, 0.0, 0.2), reason("off_hours", 1.0, 0.0, 0.11)], 6, True,
                     [e["audit_id"] for e in alice_events]),
        make_finding(4, "user", "system:serviceaccount:ci:deployer", SCORE_FROM + timedelta(hours=2), 1.31, 1.31,
                     [{"rule": "rbac_object_changed", "severity": "low", "count": 3}],
                     [reason("rbac_writes", 3.0, 0.0, 0.2)], 40, False, ["c1000000-0000-4000-8000-000000000001"],
                     suppressed_by=f"triage-deployer {SCRIPT}"),
    ]
    evidence = {planted[0]["finding_id"]: hostile_events, planted[1]["finding_id"]: scanner_events,
                planted[2]["finding_id"]: alice_events}
    people = [f"dev{i}@corp.example" for i in range(12)] + [f"system:serviceaccount:apps:svc-{i}" for i in range(8)]
    noise_findings = []
    for index in range(noise):
        entity = people[index % len(people)]
        start = SCORE_FROM + HOUR * (index % 24)
        model_part = round(max(-0.6, rng.gauss(0.05, 0.28)), 4)
        noise_findings.append(make_finding(0, "user", entity, start, model_part, model_part, [],
                                           [reason("requests", round(rng.uniform(5, 40), 1), 12.0, 0.01)], rng.randint(3, 80),
                                           False, [f"n0-{index:06d}"]))
    findings = planted + sorted(noise_findings, key=lambda f: -f["score"])
    for rank, finding in enumerate(findings, start=1):
        finding["rank"] = rank
    for finding in findings[3:60]:
        if finding["finding_id"] not in evidence and not finding["suppressed"]:
            evidence[finding["finding_id"]] = [evidence_event(datetime.fromisoformat(finding["window_start"].replace("Z", "+00:00")),
                                                              finding["entity"], "10.0.20.5", "list", "pods", "apps", None, 200,
                                                              "kubectl/v1.29.2", [], 0.3, finding["audit_ids"][0])]
    timelines = {}
    for finding in findings[:60]:
        key = f"{finding['entity_type']}|{finding['entity']}"
        base = rng.randint(4, 30)
        series = []
        moment = TRAIN_FROM
        while moment < SCORE_FROM + timedelta(days=1):
            busy = 9 <= moment.hour < 18
            count = max(0, int(rng.gauss(base if busy else base / 6, base / 5)))
            if iso(moment) == finding["window_start"]:
                count = max(count, finding["event_count"] * 4)
            if count:
                series.append([iso(moment), count, int(count * 0.6) if iso(moment) == finding["window_start"] and finding["rank"] == 2 else 0])
            moment += HOUR
        timelines.setdefault(key, series)
    top_events = sorted(hostile_events + scanner_events + alice_events, key=lambda e: (-e["score"], e["time"]))
    run = {
        "run_id": "20261105T061500Z-a1b2c3", "cluster": CLUSTER, "workdir": "/srv/auditsift/work", "config": CONFIG.resolved(),
        "inputs": ["sample-data/audit-2026-11-04.jsonl.gz"],
        "counts": {
            "archive": {"records_read": 412_733, "events": 412_690, "duplicates": 31, "events_added": 412_659, "quarantined": 43,
                        "quarantined_by_reason": {"bad_json": 38, "cloudwatch_truncated": 4, "not_an_event": 1}},
            "features": {"train_rows": 9_812, "score_rows": len(findings)},
            "score": {"records": len(findings), "flagged": sum(f["flagged"] for f in findings),
                      "suppressed": sum(f["suppressed"] for f in findings), "events_scored": 104_377,
                      "rule_hits": {"secrets_sweep": 24, "aws_auth_modified": 1, "anonymous_access_allowed": 4,
                                    "anonymous_request_failed": 12, "rbac_object_changed": 3}},
        },
        "ranges": {"train_from": iso(TRAIN_FROM), "train_to": iso(SCORE_FROM), "score_from": iso(SCORE_FROM),
                   "score_to": iso(SCORE_FROM + timedelta(days=1))},
        "model": {"id": "20261105T061500Z-a1b2c3-iforest", "backend": "iforest", "threshold": 0.5731, "threshold_method": "quantile",
                  "train_score_median": 0.4012, "train_rows": 9_812},
        "timings": {"archive": 12.1, "features": 8.4, "train": 3.2, "score": 6.6},
        "versions": {"python": "3.11.9", "auditsift": "0.1.0"},
    }
    return {"run": run, "findings": findings, "evidence": evidence, "events": top_events, "timelines": timelines, "top_n": 60}


def with_extras(context: dict) -> dict:
    """The context plus what ``pipeline.report.render.report_extras`` adds (rules, pivots, triage), without a workdir."""
    from pipeline.catalog import load_rule_pack
    from pipeline.report.pivots import pivot_queries
    from pipeline.report.render import rule_context

    findings = context["findings"]
    verdict = {"time": "2026-11-05T08:02:11Z", "finding_id": findings[2]["finding_id"], "verdict": "benign",
               "note": f"on-call debugging {SCRIPT}", "reviewer": "sam", "suppression": None}
    return {
        **context,
        "rules": rule_context(load_rule_pack(CONFIG)),
        "pivots": {f["finding_id"]: pivot_queries(f, context["evidence"][f["finding_id"]], CONFIG)
                   for f in findings if f["finding_id"] in context["evidence"]},
        "triage": {"precision": {"reviewed": 5, "malicious": 3, "benign": 1, "unsure": 1, "precision": 0.75, "unreadable": 0},
                   "verdicts": {verdict["finding_id"]: verdict}},
    }


def incidents_of(context: dict) -> list[dict]:
    """The incident records ``pipeline.report.incidents.group_incidents`` makes of the context's findings, linked by their
    evidence (each evidence event indexed under its finding, as the score stage passes them)."""
    from pipeline.report.incidents import group_incidents

    by_id = {f["finding_id"]: f for f in context["findings"]}
    index = [{**e, "entity_type": by_id[fid]["entity_type"], "entity": by_id[fid]["entity"], "window_start": by_id[fid]["window_start"]}
             for fid, events in context["evidence"].items() for e in events]
    return [incident.to_record() for incident in group_incidents(context["findings"], index)]
