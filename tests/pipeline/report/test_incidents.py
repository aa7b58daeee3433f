"""Incidents: findings of one attack grouped into one story, and what an attacker controls cannot merge or split them."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.report.incidents import CAMPAIGN_MIN, MAX_MEMBERS, group_incidents, incidents_csv, incidents_jsonl
from pipeline.stages.score import finding_id
from tests.e2e.test_hostile_inputs import full_run, hostile_input, sample_2d  # noqa: F401  (the suite's session run, built once)

DAY = datetime(2026, 11, 7, tzinfo=timezone.utc)
ATTACKER_IP = "139.59.200.194"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def finding(entity: str, hour: int, rank: int, flagged: bool = True, entity_type: str = "user", rules=(), score: float = 2.0,
            repeats: str | None = None, audit_ids=()) -> dict:
    """A findings.json record as the score stage writes it."""
    start = DAY + timedelta(hours=hour)
    return {"rank": rank, "finding_id": finding_id("prod", entity_type, entity, start), "entity_type": entity_type, "entity": entity,
            "window_start": iso(start), "window_end": iso(start + timedelta(hours=1)), "score": score, "rank_score": score,
            "flagged": flagged, "model_score": 0.1, "model_part": 1.2 if flagged else 0.3, "rule_part": 0.0,
            "rule_hits": [{"rule": r, "severity": "high", "count": 1, "routine": False, "weight": 1.0} for r in rules],
            "reasons": [], "event_count": 10, "audit_ids": list(audit_ids), "suppressed": False, "repeats": repeats}


def event(owner: dict, minute: int, audit_id: str, user: str, source_ip: str, verb: str = "get", resource: str = "secrets",
          namespace: str = "default", name: str | None = None, subresource: str | None = None, code: int = 200, **facts) -> dict:
    """One evidence row of ``owner`` (the events index the score stage passes)."""
    at = datetime.fromisoformat(owner["window_start"].replace("Z", "+00:00")) + timedelta(minutes=minute)
    return {"entity_type": owner["entity_type"], "entity": owner["entity"], "window_start": owner["window_start"],
            "time": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "audit_id": audit_id, "user": user, "source_ip": source_ip,
            "user_agent": "kubectl/v1.30.2", "verb": verb, "request_uri": f"/api/v1/{resource}/{name or ''}", "resource": resource,
            "subresource": subresource, "namespace": namespace, "name": name, "code": code, "subjects": None, "why": [], **facts}


def both(user_finding: dict, ip_finding: dict, minute: int, audit_id: str, **kw) -> list[dict]:
    """The same request seen as its identity's and as its address's evidence."""
    return [event(user_finding, minute, audit_id, user_finding["entity"], ip_finding["entity"], **kw),
            event(ip_finding, minute, audit_id, user_finding["entity"], ip_finding["entity"], **kw)]


def where(incidents) -> dict[str, str]:
    return {fid: i.incident_id for i in incidents for fid in i.finding_ids}


# --------------------------------------------------------------------------- links
def test_an_identity_and_its_address_holding_the_same_requests_are_one_incident():
    mike = finding("mike@corp.example", 16, 1, rules=["unauthorized_secret_read"])
    address = finding(ATTACKER_IP, 16, 2, entity_type="source_ip")
    index = [row for n in range(5) for row in both(mike, address, n, f"req-{n}", name=f"db-{n}")]
    incidents = group_incidents([mike, address], index)
    assert len(incidents) == 1
    assert incidents[0].finding_ids == [mike["finding_id"], address["finding_id"]]
    assert [e["entity"] for e in incidents[0].entities] == ["mike@corp.example", ATTACKER_IP]
    assert incidents[0].audit_ids == [f"req-{n}" for n in range(5)], "one timeline in time order, each request once"


def test_without_an_events_index_the_repeats_marker_links_identity_and_address():
    mike = finding("mike@corp.example", 16, 1)
    address = finding(ATTACKER_IP, 16, 2, entity_type="source_ip", repeats=mike["finding_id"])
    assert len(group_incidents([mike, address])) == 1


def test_windows_of_one_identity_join_across_at_most_one_empty_window():
    """The rule: window starts at most two windows apart. 14:00 and 16:00 join (15:00 empty); 20:00 is another story."""
    parts = [finding("frank@corp.example", hour, rank) for rank, hour in enumerate((14, 16, 20), 1)]
    incidents = group_incidents(parts)
    assert sorted(len(i.finding_ids) for i in incidents) == [1, 2]
    groups = where(incidents)
    assert groups[parts[0]["finding_id"]] == groups[parts[1]["finding_id"]] != groups[parts[2]["finding_id"]]


def test_a_cronjob_and_the_kubelet_that_runs_its_pods_are_one_incident():
    creator = finding("ci-deployer", 14, 1, rules=["privileged_workload_created"])
    node = finding("system:node:ip-10-0-45-156", 15, 2, score=1.2)
    other_node = finding("system:node:ip-10-0-61-203", 15, 3, flagged=False, score=0.8)
    index = [event(creator, 43, "c1", "ci-deployer", "18.118.36.149", "create", "cronjobs", name="metrics-push", code=201),
             event(node, 2, "n1", node["entity"], "10.0.45.156", "patch", "pods", name="metrics-push-29901060-t2gt5",
                   subresource="status"),
             event(other_node, 9, "n2", other_node["entity"], "10.0.61.203", "patch", "pods", name="metrics-pusher-abcde",
                   subresource="status")]
    incidents = group_incidents([creator, node, other_node], index)
    assert len(incidents) == 1 and incidents[0].finding_ids == [creator["finding_id"], node["finding_id"]]
    link = next(link for link in incidents[0].links if link["kind"] == "cause_effect")
    assert link["from"] == creator["finding_id"] and "metrics-push-29901060-t2gt5" in link["why"]
    assert "cronjobs default/metrics-push" in incidents[0].summary


def test_a_patched_deployment_and_the_controllers_copies_of_its_template_are_one_incident():
    """sara@ JSON-patches deployment web/web-bff to run privileged; the deployment and replicaset controllers' copies are
    quiet (each hit ``copy_of`` the template, counted a quarter) and join her incident by the template they copy, not by
    name patterns (a patch is no create, and the pods' names are generated)."""
    sara = finding("sara@corp.example", 17, 1, rules=["privileged_workload_created"])
    copies = [finding(f"system:serviceaccount:kube-system:{name}", 17, rank, flagged=False, score=0.9) for rank, name
              in ((2, "deployment-controller"), (3, "replicaset-controller"))]
    for copy in copies:
        copy["rule_hits"] = [{"rule": "privileged_workload_created", "severity": "high", "count": 1, "copies": 1, "routine": False,
                              "weight": 0.25, "copy_of": "deployments web/web-bff"}]
    elsewhere = finding("system:serviceaccount:kube-system:daemon-set-controller", 17, 4, flagged=False, score=0.9)
    elsewhere["rule_hits"] = [{**copies[0]["rule_hits"][0], "copy_of": "daemonsets kube-system/aws-node"}]
    index = [event(sara, 26, "p1", "sara@corp.example", "203.0.113.66", "patch", "deployments", "web", "web-bff"),
             event(copies[0], 26, "r1", copies[0]["entity"], "172.16.183.88", "create", "replicasets", "web", "web-bff-khlgl27wsm", code=201),
             event(copies[1], 27, "q1", copies[1]["entity"], "172.16.183.88", "create", "pods", "web", None, code=201)]
    incidents = group_incidents([sara, *copies, elsewhere], index)
    assert len(incidents) == 1
    assert incidents[0].finding_ids == [sara["finding_id"], *(copy["finding_id"] for copy in copies)]
    whys = [link["why"] for link in incidents[0].links if link["kind"] == "cause_effect"]
    assert any("made copies of deployments web/web-bff, which sara@corp.example wrote" in why for why in whys)


def test_a_binding_joins_its_subjects_first_use_and_not_every_later_hour():
    frank = finding("frank@corp.example", 11, 1, rules=["anonymous_binding_created"])
    anonymous = [finding("system:anonymous", hour, rank, flagged=False, score=0.5) for rank, hour in ((2, 11), (3, 18))]
    index = [event(frank, 26, "b1", "frank@corp.example", "198.51.100.13", "create", "clusterrolebindings", "",
                   "anonymous-metrics", code=201, subjects="User:/system:anonymous,Group:/system:authenticated")]
    index += [event(anonymous[0], 50, "a1", "system:anonymous", "45.77.91.26", "list", "secrets")]
    incidents = group_incidents([frank, *anonymous], index)
    assert [i.finding_ids for i in incidents] == [[frank["finding_id"], anonymous[0]["finding_id"]]]
    assert "bound clusterrolebinding anonymous-metrics to system:anonymous" in incidents[0].links[0]["why"]


def test_a_subjects_first_use_is_its_first_window_that_succeeds_after_the_grant_not_one_of_refused_probes():
    """system:anonymous is every scanner's identity: in the hour of the binding it was only refused (before the grant
    took effect), and its use is the next hour, when the anonymous requests succeed."""
    oscar = finding("oscar@corp.example", 10, 1, rules=["anonymous_binding_created"])
    refused, allowed = (finding("system:anonymous", hour, rank, flagged=flagged) for hour, rank, flagged in ((10, 3, False), (11, 2, True)))
    index = [event(oscar, 20, "b1", "oscar@corp.example", "198.51.100.11", "create", "clusterrolebindings", "", "k8s-dashboard-anon",
                   code=201, subjects="User:/system:anonymous"),
             event(refused, 5, "r1", "system:anonymous", "91.92.66.187", "list", "secrets", code=403),
             event(refused, 40, "r2", "system:anonymous", "91.92.66.187", "list", "secrets", code=403),
             event(allowed, 3, "a1", "system:anonymous", "91.92.66.187", "list", "pods", code=200)]
    incidents = group_incidents([oscar, allowed, refused], index)
    assert incidents[0].finding_ids == [oscar["finding_id"], allowed["finding_id"]]
    assert any("k8s-dashboard-anon to system:anonymous" in link["why"] for link in incidents[0].links)


def test_a_minted_token_joins_the_service_accounts_first_window_acting_afterwards():
    minter = finding("alice@corp.example", 9, 1, rules=["token_minted"])
    sa = "system:serviceaccount:kube-system:aws-load-balancer-controller"
    before, after = finding(sa, 8, 3, flagged=False), finding(sa, 10, 2, flagged=False)
    index = [event(minter, 5, "t1", "alice@corp.example", "198.51.100.10", "create", "serviceaccounts", "kube-system",
                   "aws-load-balancer-controller", "token", code=201)]
    incidents = group_incidents([minter, after, before], index)
    assert [i.finding_ids for i in incidents] == [[minter["finding_id"], after["finding_id"]]]


def test_a_kubelets_token_requests_are_never_a_cause():
    """Every pod gets its token by its node's TokenRequest: a flagged node window must not pull in every service account."""
    node = finding("system:node:ip-10-0-45-156", 9, 1)
    sa = finding("system:serviceaccount:web:frontend", 10, 2, flagged=False)
    index = [event(node, 5, "t1", node["entity"], "10.0.45.156", "create", "serviceaccounts", "web", "frontend", "token", code=201)]
    assert [i.finding_ids for i in group_incidents([node, sa], index)] == [[node["finding_id"]]]


def test_a_csr_and_its_approval_by_another_identity_are_one_incident():
    requester = finding("system:serviceaccount:argocd:argocd-application-controller", 20, 1, rules=["client_certificate_requested"])
    approver = finding("bob@corp.example", 20, 2, flagged=False, score=0.6)
    index = [event(requester, 23, "r1", requester["entity"], "10.0.61.86", "create", "certificatesigningrequests", "", "csr-x1",
                   code=201),
             event(approver, 24, "r2", "bob@corp.example", "198.51.100.12", "update", "certificatesigningrequests", "", "csr-x1",
                   "approval")]
    incidents = group_incidents([requester, approver], index)
    assert [i.finding_ids for i in incidents] == [[requester["finding_id"], approver["finding_id"]]]


def test_the_user_of_an_approved_csrs_certificate_acting_joins_the_approval():
    approver = finding("frank@corp.example", 20, 1, rules=["csr_approved"])
    admin = finding("system:admin", 21, 2, flagged=False)
    index = [event(approver, 24, "r2", "frank@corp.example", "95.216.153.249", "update", "certificatesigningrequests", "",
                   "csr-x1", "approval", csr_subject_cn="system:admin")]
    assert [i.finding_ids for i in group_incidents([approver, admin], index)] == [[approver["finding_id"], admin["finding_id"]]]


# --------------------------------------------------------------------------- what an attacker controls
def test_a_reused_audit_id_on_unrelated_requests_merges_nothing():
    """The Audit-ID header is the client's: an attacker sending a benign user's auditIDs must not join that user's story."""
    attacker = finding("mike@corp.example", 16, 1, rules=["unauthorized_secret_read"])
    victim = finding("ken@corp.example", 16, 2, rules=["forbidden_enumeration"])
    index = [event(attacker, n, f"shared-{n}", "mike@corp.example", ATTACKER_IP, name=f"db-{n}") for n in range(5)]
    index += [event(victim, n, f"shared-{n}", "ken@corp.example", "198.51.100.12", "list", "pods") for n in range(5)]
    incidents = group_incidents([attacker, victim], index)
    assert len(incidents) == 2
    assert all(link["kind"] != "same_request" for i in incidents for link in i.links)


def test_a_quiet_window_never_bridges_two_incidents():
    """A NAT address holding requests of two unrelated flagged identities joins one of them, not both together."""
    mike = finding("mike@corp.example", 16, 1, rules=["unauthorized_secret_read"])
    ken = finding("ken@corp.example", 16, 2, rules=["forbidden_enumeration"])
    nat = finding("18.118.36.149", 16, 3, flagged=False, entity_type="source_ip", score=0.5)
    index = [row for n in range(3) for row in both(mike, nat, n, f"m-{n}")]
    index += [row for n in range(3) for row in both(ken, nat, 10 + n, f"k-{n}")]
    incidents = group_incidents([mike, ken, nat], index)
    assert len(incidents) == 2
    assert where(incidents)[nat["finding_id"]] == where(incidents)[mike["finding_id"]], "the best-ranked story takes it"


def test_a_flood_from_one_address_stays_bounded_and_keeps_every_id():
    address = finding("45.77.91.26", 11, 1, entity_type="source_ip", score=3.0)
    sprayed = [finding(f"user-{n:04d}", 11, n + 2, score=2.0 - n / 1000) for n in range(3 * MAX_MEMBERS)]
    index = [row for n, user in enumerate(sprayed) for row in both(user, address, n % 60, f"spray-{n}")]
    incidents = group_incidents([address, *sprayed], index)
    assert len(incidents) == 1 and len(incidents[0].finding_ids) == MAX_MEMBERS
    assert incidents[0].finding_ids[:2] == [address["finding_id"], sprayed[0]["finding_id"]], "the best-ranked members are kept"
    kept = set(incidents[0].finding_ids) | set(incidents[0].overflow_finding_ids)
    assert kept == {f["finding_id"] for f in [address, *sprayed]}
    assert len(incidents[0].audit_ids) == 200


def test_incident_id_is_stable_across_reruns_and_when_a_later_window_joins():
    first = [finding("frank@corp.example", 3, 1, rules=["exec_in_system_namespace"]), finding("95.216.153.249", 3, 2, entity_type="source_ip")]
    first[1]["repeats"] = first[0]["finding_id"]
    [before] = group_incidents(first)
    assert [i.incident_id for i in group_incidents(first)] == [before.incident_id]
    later = finding("frank@corp.example", 4, 1, rules=["exec_into_pod"], score=2.5)
    [after] = group_incidents([later, *[{**f, "rank": f["rank"] + 1} for f in first]])
    assert len(after.finding_ids) == 3 and after.incident_id == before.incident_id
    assert before.incident_id.startswith("inc-")


# --------------------------------------------------------------------------- campaigns
def sprayed(count: int, first_rank: int, rules=("unauthorized_secret_read",), score: float = 2.3) -> list[dict]:
    """Service accounts never seen before, one finding each, alike: what an identity spray leaves."""
    return [finding(f"system:serviceaccount:ci-{n // 100:04d}:job-{n:06d}", 14, first_rank + n, rules=rules, score=score - n / 10_000)
            for n in range(count)]


def test_many_alike_incidents_are_one_campaign_at_the_place_of_the_best():
    binding = finding("system:serviceaccount:kube-system:ebs-csi-controller-sa", 9, 1, rules=["admin_binding_created"], score=4.0)
    crowd = sprayed(40, 2)
    probing = finding("ken@corp.example", 15, 42, rules=["forbidden_enumeration"], score=1.8)
    incidents = group_incidents([binding, *crowd, probing], rule_titles={"unauthorized_secret_read": "Secret read refused (401/403)"})
    assert [len(i.finding_ids) for i in incidents] == [1, 40, 1]
    campaign = incidents[1]
    assert campaign.finding_ids == [f["finding_id"] for f in crowd], "every finding kept, best first"
    assert (campaign.rank, incidents[2].rank) == (2, 3), "the probing moves up from 42 to 3"
    assert campaign.title == "Secret read refused (401/403): 40 alike incidents, 40 identities"
    assert len(campaign.summary.split(". ")) == 3
    record = json.loads(incidents_jsonl([campaign]))
    assert record["campaign"] == {"incidents": 40, "identities": 40, "addresses": 0, "entity_types": ["user"],
                                  "identity_kinds": ["service-account"], "rule": "unauthorized_secret_read",
                                  "incident_ids": record["campaign"]["incident_ids"]}
    assert len(record["campaign"]["incident_ids"]) == 40 and "campaign" not in json.loads(incidents_jsonl([incidents[0]]))


def test_few_alike_incidents_or_a_more_severe_one_stay_their_own():
    few = sprayed(CAMPAIGN_MIN - 1, 1)
    assert len(group_incidents(few)) == CAMPAIGN_MIN - 1
    crowd = sprayed(CAMPAIGN_MIN + 3, 1)
    worse = crowd[-1]
    worse["rule_hits"][0]["severity"] = "critical"  # the same rule, but a critical hit: not one of the crowd
    incidents = group_incidents(crowd)
    assert sorted(len(i.finding_ids) for i in incidents) == [1, CAMPAIGN_MIN + 2]
    assert next(i for i in incidents if i.campaign is None).finding_ids == [worse["finding_id"]]
    other_kind = sprayed(CAMPAIGN_MIN, 1) + [finding(f"dev{n}@corp.example", 14, 100 + n, rules=["unauthorized_secret_read"]) for n in range(3)]
    assert sorted(len(i.finding_ids) for i in group_incidents(other_kind)) == [1, 1, 1, CAMPAIGN_MIN], "people are not folded with service accounts"


def test_folding_never_moves_an_incident_down():
    """Random alike crowds among distinct findings: every incident outside a campaign keeps its order and moves up by the
    members folded above it, and a campaign takes its best member's place."""
    import random

    rng = random.Random(11)
    rules = ["unauthorized_secret_read", "secret_read_by_scripted_client", "exec_into_pod", "forbidden_enumeration"]
    findings = []
    for rank in range(1, 121):
        kind = rng.choice(["crowd", "crowd", "person"])
        entity = f"system:serviceaccount:ci:job-{rank}" if kind == "crowd" else f"p{rank}@corp.example"
        findings.append(finding(entity, rng.randrange(24), rank, rules=[rng.choice(rules)], score=4.0 - rank / 100))
    folded, apart = group_incidents(findings), group_incidents(findings, campaign_min=len(findings) + 1)
    assert len(folded) < len(apart)
    place = {fid: i.rank for i in folded for fid in i.finding_ids}
    for incident in apart:
        assert place[incident.finding_ids[0]] <= incident.rank
    kept = [i.finding_ids for i in folded if i.campaign is None]
    assert kept == [i.finding_ids for i in apart if [*i.finding_ids] in kept], "the others keep their order"


# --------------------------------------------------------------------------- status, rank and files
def test_quiet_findings_linked_to_nothing_flagged_stay_findings_and_flagged_incidents_rank_first():
    quiet = finding("system:serviceaccount:data:etl-runner", 13, 1, flagged=False, score=3.5, rules=["unauthorized_secret_read"])
    critical = finding("alice@corp.example", 18, 2, score=2.0, rules=["aws_auth_modified"])
    critical["rule_hits"][0]["severity"] = "critical"
    medium = finding("bob@corp.example", 12, 3, score=1.2)
    incidents = group_incidents([quiet, critical, medium])
    assert [i.finding_ids for i in incidents] == [[critical["finding_id"]], [medium["finding_id"]]]
    assert [(i.rank, i.severity, i.flagged) for i in incidents] == [(1, "critical", True), (2, "medium", True)]


def test_suppressed_members_keep_their_incident_unflagged():
    part = finding("mike@corp.example", 16, 1, flagged=False)
    part.update(suppressed=True, suppressed_by="triage-x")
    [incident] = group_incidents([part])
    assert not incident.flagged and incident.severity == "suppressed"


def test_title_and_summary_tell_facts_in_plain_words_and_tactics_in_time_order():
    mike = finding("mike@corp.example", 16, 1, rules=["credentials_used_from_new_place_and_client", "unauthorized_secret_read"])
    address = finding(ATTACKER_IP, 16, 2, entity_type="source_ip")
    index = both(mike, address, 1, "r1", why=["rule:credentials_used_from_new_place_and_client"], verb="list", resource="namespaces")
    index += both(mike, address, 3, "r2", why=["rule:unauthorized_secret_read"], name="db-password", code=403)
    tactics = {"unauthorized_secret_read": ["TA0006"], "credentials_used_from_new_place_and_client": ["TA0001"]}
    titles = {"credentials_used_from_new_place_and_client": "Credentials used from a new place and client"}
    [incident] = group_incidents([mike, address], index, tactics=tactics, rule_titles=titles)
    assert incident.title == f"Credentials used from a new place and client: mike@corp.example from {ATTACKER_IP}"
    sentences = incident.summary.split(". ")
    assert len(sentences) == 3 and "16:01 and 2026-11-07 16:03 UTC" in sentences[0] and ATTACKER_IP in sentences[0]
    assert incident.tactics == ["TA0001", "TA0006"]
    assert (incident.first_seen, incident.last_seen) == ("2026-11-07T16:01:00.000000Z", "2026-11-07T16:03:00.000000Z")
    record = json.loads(incidents_jsonl([incident]))
    assert set(record) >= {"incident_id", "rank", "title", "summary", "severity", "tactics", "first_seen", "last_seen", "entities",
                           "finding_ids", "audit_ids", "flagged"}


def test_incidents_csv_goes_through_safe_cell_and_the_record_keeps_raw_values():
    hostile = "=HYPERLINK(\"http://x\")\x1b[2J\u202e"
    [incident] = group_incidents([finding(hostile, 2, 1)])
    assert hostile in incident.title, "the record keeps the raw value; renderers escape"
    text = incidents_csv([incident])
    assert "\x1b" not in text and "\u202e" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["entities"] == "user:=HYPERLINK(\"http://x\")\\x1b[2J\\u202e"
    assert rows[0]["finding_ids"] == incident.finding_ids[0] and rows[0]["incident_id"] == incident.incident_id


# --------------------------------------------------------------------------- quality on a real sample run
@pytest.mark.slow
def test_each_scenarios_flagged_findings_fall_in_one_incident(full_run, sample_2d, record_property):  # noqa: F811
    """The sample run's labelled attacks: a scenario's flagged findings are one incident (two where two actors)."""
    from tools.evaluate import scenario_matches

    findings = full_run["findings"]
    incidents = group_incidents(findings, evidence_index(full_run["workdir"], findings))
    labels = json.loads((sample_2d / "labels.json").read_text())
    groups = where(incidents)
    spread = {}
    for scenario in labels["scenarios"]:
        scenario = {**scenario, "_ids": set(scenario["audit_ids"])}
        flagged = [f["finding_id"] for f in findings if f["flagged"] and scenario_matches(f, scenario)]
        spread[scenario["id"]] = len({groups[fid] for fid in flagged})
    record_property("result", f"{len(incidents)} incidents, {sum(i.flagged for i in incidents)} flagged; per scenario {spread}")
    assert all(count <= 2 for count in spread.values()), spread
    assert all(len(i.finding_ids) <= MAX_MEMBERS and len(i.audit_ids) <= 200 for i in incidents)


def evidence_index(workdir, findings) -> list[dict]:
    """The rows the score stage would pass: each finding's evidence events (its audit_ids, of its entity, in its window)."""
    from pipeline.io.storage import LocalStorage
    from pipeline.stages.archive import read_archive

    wanted: dict[str, list[dict]] = {}
    for f in findings:
        for audit_id in f["audit_ids"]:
            wanted.setdefault(audit_id, []).append(f)
    start = datetime.fromisoformat(min(f["window_start"] for f in findings).replace("Z", "+00:00"))
    end = datetime.fromisoformat(max(f["window_end"] for f in findings).replace("Z", "+00:00"))
    columns = ["time", "audit_id", "user", "source_ip", "user_agent", "verb", "request_uri", "resource", "subresource", "namespace",
               "name", "code", "subjects"]
    rows = []
    for table in read_archive(LocalStorage(str(workdir)), "default", start, end, columns=columns):
        for event_row in table.to_pylist():
            for f in wanted.get(event_row["audit_id"], ()):
                moment = iso(event_row["time"])
                if event_row[f["entity_type"]] == f["entity"] and f["window_start"] <= moment < f["window_end"]:
                    rows.append({**event_row, "entity_type": f["entity_type"], "entity": f["entity"],
                                 "window_start": f["window_start"]})
    return rows

