"""Verdicts accumulate into precision; a benign verdict with --suppress-similar writes the scoped
suppression the score stage loads (same entity AND rules AND top reasons, nothing wider); the
`auditsift triage` command finds findings in the latest scores and fails in one line."""
from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from pipeline.cli.triage import triage_command
from pipeline.config import parse_config
from pipeline.context import RunContext
from pipeline.errors import ConfigError
from pipeline.io.storage import LocalStorage
from pipeline.stages.score import load_suppressions
from pipeline.text import printable
from pipeline.triage import (
    SuppressionIndex,
    precision,
    read_verdicts,
    record_incident_verdict,
    record_verdict,
    similar_suppression,
    suppression_for,
    triage_key,
)
from tests.report_factory import make_context

CLUSTER = "demo"


@pytest.fixture()
def workdir(tmp_path):
    """A workdir whose latest scores are the factory's findings."""
    ctx = RunContext(LocalStorage(tmp_path / "work"), parse_config({"cluster": CLUSTER}), "20261105T061500Z-a1b2c3")
    findings = make_context(noise=20)["findings"]
    key = f"scores/cluster={CLUSTER}/{ctx.run_id}"
    ctx.storage.write_json(f"{key}/findings.json", findings)
    ctx.update_state("score", {"key": key, "run_id": ctx.run_id})
    return ctx, findings


def test_precision_counts_each_findings_latest_verdict(workdir):
    ctx, findings = workdir
    assert precision(ctx.storage, CLUSTER) == {"reviewed": 0, "benign": 0, "malicious": 0, "unsure": 0, "precision": None, "unreadable": 0}
    record_verdict(ctx.storage, CLUSTER, findings[0], "malicious", "aws-auth rewritten by a stolen key")
    record_verdict(ctx.storage, CLUSTER, findings[1], "benign", "pentest", reviewer="sam")
    record_verdict(ctx.storage, CLUSTER, findings[2], "unsure")
    assert precision(ctx.storage, CLUSTER)["precision"] == 0.5
    record_verdict(ctx.storage, CLUSTER, findings[1], "malicious", "the pentest was not scheduled")
    key = f"{triage_key(CLUSTER)}/verdicts.jsonl"
    ctx.storage.write_bytes(key, ctx.storage.read_bytes(key) + b"{not json\n")
    stats = precision(ctx.storage, CLUSTER)
    assert stats == {"reviewed": 3, "benign": 0, "malicious": 2, "unsure": 1, "precision": 1.0, "unreadable": 1}
    records, unreadable = read_verdicts(ctx.storage, CLUSTER)
    assert len(records) == 4 and unreadable == 1
    assert records[1]["reviewer"] == "sam" and records[0]["entity"] == findings[0]["entity"]
    assert records[0]["rules"] == ["aws_auth_modified", "secrets_sweep"] and records[0]["suppression"] is None


def test_benign_suppress_similar_writes_a_scoped_suppression_the_score_stage_loads(workdir):
    ctx, findings = workdir
    target = findings[0]
    record = record_verdict(ctx.storage, CLUSTER, target, "benign", "red-team exercise", suppress_similar=True, reviewer="sam")
    record_verdict(ctx.storage, CLUSTER, target, "benign", "still the exercise", suppress_similar=True)
    loaded = load_suppressions(ctx)
    assert [s.id for s in loaded] == [record["suppression"]] == [f"triage-{target['finding_id']}"]
    suppression = loaded[0]
    assert suppression.entity == target["entity"] and suppression.entity_type == "user"
    assert set(suppression.rules) == {"aws_auth_modified", "secrets_sweep"}
    assert suppression.reasons == ("secret_reads", "distinct_secrets", "new_peers") and "still the exercise" in suppression.note
    assert suppression_for(target, loaded) == suppression
    later_window = {**target, "window_start": "2026-11-05T14:00:00Z", "rule_hits": target["rule_hits"][1:]}
    assert suppression_for(later_window, loaded) == suppression
    new_rule = {**target, "rule_hits": target["rule_hits"] + [{"rule": "exec_in_system_namespace", "severity": "high", "count": 1}]}
    new_reason = {**target, "reasons": [{**target["reasons"][0], "feature": "execs"}] + target["reasons"][1:]}
    other_entity = {**target, "entity": "alice@corp.example"}
    other_type = {**target, "entity_type": "source_ip"}
    assert all(suppression_for(record, loaded) is None for record in (new_rule, new_reason, other_entity, other_type))


@pytest.mark.parametrize("verdict", ["malicious", "unsure"])
def test_suppress_similar_needs_a_benign_verdict(workdir, verdict):
    ctx, findings = workdir
    with pytest.raises(ConfigError, match="--suppress-similar only applies to a benign verdict"):
        record_verdict(ctx.storage, CLUSTER, findings[0], verdict, suppress_similar=True)
    assert not ctx.storage.list(triage_key(CLUSTER))


def invoke(ctx, *args):
    result = CliRunner().invoke(triage_command, [*args, "--workdir", str(ctx.storage.root), "--cluster", CLUSTER], catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


def test_triage_command_records_a_verdict_by_id_or_prefix(workdir):
    ctx, findings = workdir
    code, output = invoke(ctx, findings[0]["finding_id"][:10], "--verdict", "benign", "--note", "exercise", "--suppress-similar",
                          "--reviewer", "sam", "--yes")
    assert code == 0, output
    assert f"recorded benign on finding {findings[0]['finding_id']}" in output
    assert printable(findings[0]["entity"]) in output  # printed literally, never read as markup; its line break as \n
    assert "added suppression triage-" in output and "precision so far: 0.00" in output
    code, output = invoke(ctx, findings[2]["finding_id"], "--verdict", "malicious")
    assert code == 0 and "precision so far: 0.50 (1 malicious, 1 benign, 0 unsure of 2 reviewed)" in output
    lines = ctx.storage.read_bytes(f"{triage_key(CLUSTER)}/verdicts.jsonl").splitlines()
    assert [orjson.loads(line)["verdict"] for line in lines] == ["benign", "malicious"]


@pytest.mark.parametrize("args, message", [
    (["0123456789abcdef0123", "--verdict", "benign"], "error: no finding '0123456789abcdef0123' in the latest scores"),
    (["FIRST", "--verdict", "malicious", "--suppress-similar"], "error: --suppress-similar only applies to a benign verdict"),
])
def test_triage_command_fails_in_one_line_with_a_hint(workdir, args, message):
    ctx, findings = workdir
    args = [findings[0]["finding_id"] if a == "FIRST" else a for a in args]
    code, output = invoke(ctx, *args)
    assert code == 2
    lines = output.strip().splitlines()
    assert lines[0].startswith(message) and lines[1].startswith("hint: ")
    assert not ctx.storage.exists(f"{triage_key(CLUSTER)}/verdicts.jsonl")


def test_triage_command_has_help():
    result = CliRunner().invoke(triage_command, ["--help"])
    assert result.exit_code == 0 and "--suppress-similar" in result.output and "Record a verdict" in result.output


def test_a_triage_suppression_never_hides_a_window_with_neither_rules_nor_reasons(workdir):
    ctx, findings = workdir
    target = findings[0]
    suppression = similar_suppression(target, "red-team exercise")
    bare = {**target, "window_start": "2026-11-05T15:00:00Z", "rule_hits": [], "reasons": []}
    assert suppression_for(bare, [suppression]) is None
    assert suppression_for({**bare, "reasons": target["reasons"][:1]}, [suppression]) == suppression


def test_a_triage_suppression_hides_up_to_twice_the_reviewed_values_only(workdir):
    ctx, findings = workdir
    target = findings[0]
    suppression = similar_suppression(target, "")
    first = target["reasons"][0]
    more = {**target, "reasons": [{**first, "value": first["value"] * 2}] + target["reasons"][1:]}
    much_more = {**target, "reasons": [{**first, "value": first["value"] * 2 + 1}] + target["reasons"][1:]}
    assert suppression_for(more, [suppression]) == suppression
    assert suppression_for(much_more, [suppression]) is None


@pytest.mark.parametrize("entity, other", [("dev-*", "dev-alice"), ("a.*", "ab"), ("[ab]ob", "bob"), ("x|y", "x")])
def test_an_entity_with_glob_or_regex_characters_is_matched_literally(workdir, entity, other):
    ctx, findings = workdir
    target = {**findings[0], "entity": entity}
    suppression = similar_suppression(target, "")
    assert suppression_for(target, [suppression]) == suppression
    assert suppression_for({**target, "entity": other}, [suppression]) is None


def test_an_expired_suppression_hides_windows_before_its_expiry_only(workdir):
    ctx, findings = workdir
    target = {**findings[0], "window_start": "2026-11-05T06:00:00Z"}
    suppression = similar_suppression(target, "", expires="2026-11-05T07:00:00Z")
    assert suppression_for(target, [suppression]) == suppression
    assert suppression_for({**target, "window_start": "2026-11-05T07:00:00Z"}, [suppression]) is None


def test_an_ambiguous_prefix_lists_the_candidates(workdir):
    ctx, findings = workdir
    twins = [{**findings[0], "finding_id": "abcdef0123456789aaaa"}, {**findings[1], "finding_id": "abcdef0123456789bbbb"}]
    ctx.storage.write_json(f"{ctx.read_state()['score']['key']}/findings.json", twins + findings[2:])
    code, output = invoke(ctx, "abcdef0123", "--verdict", "benign")
    assert code == 2
    assert output.splitlines()[0] == ("error: finding id prefix 'abcdef0123' matches 2 findings in run 20261105T061500Z-a1b2c3: "
                                      "abcdef0123456789aaaa, abcdef0123456789bbbb")


def test_a_benign_incident_suppresses_the_shapes_of_its_flagged_members_only(workdir):
    ctx, findings = workdir
    members = [findings[0], findings[4]]  # a flagged finding and a quiet one in the same story
    incident = {"incident_id": "inc-0123456789abcdef0123", "title": "secrets read by a new client", "finding_ids": [f["finding_id"] for f in members]}
    record = record_incident_verdict(ctx.storage, CLUSTER, incident, members, "benign", "red team", suppress_similar=True, reviewer="sam")
    assert [r["suppression"] for r in record["findings"]] == [f"triage-{findings[0]['finding_id']}", None]
    assert [s.id for s in load_suppressions(ctx)] == [f"triage-{findings[0]['finding_id']}"]
    records, _ = read_verdicts(ctx.storage, CLUSTER)
    assert [(r["finding_id"], r["incident_id"]) for r in records] == [(f["finding_id"], incident["incident_id"]) for f in members] + [
        (None, incident["incident_id"])]
    assert precision(ctx.storage, CLUSTER)["benign"] == 2
    again = record_incident_verdict(ctx.storage, CLUSTER, incident, members, "malicious", "not the red team after all")
    assert again["replaces"]["verdict"] == "benign" and again["findings"][1]["replaces"]["reviewer"] == "sam"
    assert precision(ctx.storage, CLUSTER) == {"reviewed": 2, "benign": 0, "malicious": 2, "unsure": 0, "precision": 1.0, "unreadable": 0}


def test_a_verdict_on_a_campaign_of_thousands_is_written_at_once_and_never_suppresses_its_members(workdir):
    """A campaign (incidents.fold_campaigns) holds thousands of findings: each member's verdict used to read and rewrite
    the history, which made a spray's campaign hours of work. Its members are alike by shape, which anyone can take, so
    --suppress-similar is refused: one suppression per member could hide an intruder who joined the crowd."""
    ctx, findings = workdir
    members = [{**findings[0], "finding_id": f"{n:020x}", "entity": f"system:serviceaccount:ci-{n // 100:04d}:job-{n:06d}"}
               for n in range(3000)]
    campaign = {"incident_id": "inc-" + "c" * 20, "title": "3,000 alike incidents", "finding_ids": [f["finding_id"] for f in members],
                "campaign": {"incidents": 3000, "identities": 3000, "addresses": 0}}
    with pytest.raises(ConfigError, match="each of the 3,000 identities of campaign inc-c+, which are alike by shape"):
        record_incident_verdict(ctx.storage, CLUSTER, campaign, members, "benign", "CI jobs", suppress_similar=True)
    assert not ctx.storage.list(triage_key(CLUSTER))
    writes = []
    original = ctx.storage.write_bytes
    ctx.storage.write_bytes = lambda key, data: (writes.append(key), original(key, data))[1]
    record = record_incident_verdict(ctx.storage, CLUSTER, campaign, members, "benign", "CI jobs")
    assert len(record["findings"]) == 3000 and writes == [f"{triage_key(CLUSTER)}/verdicts.jsonl"] * 2, "members at once, then the incident"
    assert len(read_verdicts(ctx.storage, CLUSTER)[0]) == 3001 and load_suppressions(ctx) == []
    ctx.storage.write_json(f"scores/cluster={CLUSTER}/{ctx.run_id}/findings.json", findings + members)  # as the CLI finds them
    report = ctx.storage.root / "reports" / ctx.run_id
    report.mkdir(parents=True)
    (report / "incidents.jsonl").write_bytes(orjson.dumps(campaign) + b"\n")
    ctx.update_state("report", {"dir": str(report), "run_id": ctx.run_id})
    code, output = invoke(ctx, campaign["incident_id"], "--verdict", "benign", "--suppress-similar")
    assert code == 2 and output.splitlines()[1].startswith("hint: record the verdict without --suppress-similar"), output


def test_suppressions_are_looked_up_by_entity_among_thousands(workdir):
    ctx, findings = workdir
    members = [{**findings[0], "finding_id": f"{n:020x}", "entity": f"system:serviceaccount:ci-{n // 100:04d}:job-{n:06d}"}
               for n in range(3000)]
    index = SuppressionIndex([similar_suppression(f, "reviewed one by one") for f in members])
    assert index.match(members[1234]).id == f"triage-{members[1234]['finding_id']}"
    assert index.match({**members[1234], "entity": "alice@corp.example"}) is None


def test_the_suppression_index_matches_what_the_list_matches():
    """``SuppressionIndex.match`` == ``suppression_for`` over literal entities, patterns, both, expiries and scopes."""
    import random

    from pipeline.config import Suppression

    rng = random.Random(5)
    entities = ["alice@corp.example", "bob@corp.example", "system:node:ip-10-0-1-2", "203.0.113.9", "a*b"]
    rules = ["secrets_sweep", "exec_into_pod", "aws_auth_modified"]
    items = []
    for n in range(60):
        kind = rng.choice(["entity", "pattern", "both", "neither"])
        items.append(Suppression(
            id=f"s{n}", entity=rng.choice(entities) if kind in ("entity", "both") else None,
            entity_pattern=rng.choice(["*@corp.example", "system:node:*", "a*"]) if kind in ("pattern", "both") else None,
            entity_type=rng.choice([None, "user", "source_ip"]), rules=tuple(rng.sample(rules, rng.randrange(3))),
            exact=rng.random() < 0.5, expires=rng.choice([None, "2026-11-05T12:00:00Z"])))
    index = SuppressionIndex(items)
    for _ in range(500):
        record = {"entity": rng.choice(entities), "entity_type": rng.choice(["user", "source_ip"]), "reasons": [],
                  "window_start": rng.choice(["2026-11-05T10:00:00Z", "2026-11-05T13:00:00Z"]),
                  "rule_hits": [{"rule": r} for r in rng.sample(rules, rng.randrange(3))]}
        assert index.match(record) == suppression_for(record, items)
