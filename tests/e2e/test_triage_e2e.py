"""Triage as an analyst uses it, through the CLI on a real small run: a verdict on an incident, a preview of what
--suppress-similar would hide before --yes applies it, the rescore hiding only that shape, suppressions listed and
removed, a changed verdict naming what it replaced, and precision over the latest verdicts of the history."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.report.incidents import group_incidents
from pipeline.sample import sample_clock

SEED = 11
pytestmark = pytest.mark.slow


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    sample = tmp_path_factory.mktemp("sample")
    assert invoke("sample", "--out", str(sample), "--days", "3", "--seed", str(SEED), "--scale", "0.3")[0] == 0
    workdir = tmp_path_factory.mktemp("work")
    code, output = invoke("run", "--input", str(sample), "--workdir", str(workdir), "--now", sample_clock(sample).isoformat(), "--quiet")
    assert code == 0, output
    return workdir


@pytest.fixture()
def work(original, tmp_path) -> dict:
    """A copy of the run's workdir (triage writes to it), its state pointing at the copy's report."""
    workdir = tmp_path / "work"
    shutil.copytree(original, workdir)
    state_path = next(workdir.glob("state/cluster=*/latest.json"))
    state = json.loads(state_path.read_text())
    state["report"]["dir"] = state["report"]["dir"].replace(str(original), str(workdir))
    state_path.write_text(json.dumps(state))
    findings = json.loads((workdir / state["score"]["key"] / "findings.json").read_text())
    return {"workdir": workdir, "report_dir": Path(state["report"]["dir"]), "findings": findings,
            "triage": next(workdir.glob("state/cluster=*")).name}


def triage(work: dict, *args: str) -> tuple[int, str]:
    return invoke("triage", *args, "--workdir", str(work["workdir"]))


def verdicts(work: dict) -> list[dict]:
    path = work["workdir"] / "triage" / work["triage"] / "verdicts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_verdict_on_an_incident_is_one_per_member_plus_the_incident(work):
    incidents = [i.to_record() for i in group_incidents(work["findings"])]
    (work["report_dir"] / "incidents.jsonl").write_text("".join(json.dumps(i) + "\n" for i in incidents))
    incident = next(i for i in incidents if len(i["finding_ids"]) >= 2)
    code, output = triage(work, incident["incident_id"][:14], "--verdict", "malicious", "--reviewer", "sam")
    assert code == 0, output
    assert f"recorded malicious on incident {incident['incident_id']}" in output
    records = verdicts(work)
    assert [r["finding_id"] for r in records[:-1]] == incident["finding_ids"]
    assert all(r["incident_id"] == incident["incident_id"] for r in records) and records[-1]["finding_id"] is None
    n = len(incident["finding_ids"])
    assert f"precision so far: 1.00 ({n} malicious, 0 benign, 0 unsure of {n} reviewed)" in output
    # a second look at one member: the history grows, the latest verdict counts, and the change says what it replaced
    code, output = triage(work, incident["finding_ids"][0], "--verdict", "benign", "--note", "the backup job")
    assert code == 0, output
    assert "replaces malicious recorded" in output and "by sam" in output
    assert f"precision so far: {(n - 1) / n:.2f} ({n - 1} malicious, 1 benign, 0 unsure of {n} reviewed)" in output
    assert len(verdicts(work)) == n + 2


def test_an_incident_id_in_a_report_without_incidents_says_so_in_one_line(work):
    (work["report_dir"] / "incidents.jsonl").unlink()  # a report written before incidents existed
    code, output = triage(work, "inc-0123456789abcdef0123", "--verdict", "benign")
    assert code == 2
    assert output.splitlines()[0].startswith("error: the report of run ") and "has no incidents.jsonl" in output.splitlines()[0]
    assert not verdicts(work)


def test_a_too_short_id_says_the_prefix_minimum(work):
    code, output = triage(work, work["findings"][0]["finding_id"][:5], "--verdict", "benign")
    assert code == 2 and "too short: give at least 8 characters" in output.splitlines()[0]


def test_suppress_similar_previews_then_applies_with_yes_and_the_rescore_hides_only_that_shape(work):
    target = next(f for f in work["findings"] if f["flagged"] and f["reasons"])
    code, output = triage(work, target["finding_id"], "--verdict", "benign", "--suppress-similar")
    assert code == 0, output
    assert "would hide 1 window(s) of the latest scores (1 flagged)" in output and f"would hide #{target['rank']} {target['finding_id']}" in output
    assert "preview only: nothing recorded" in output
    assert not verdicts(work) and not list(work["workdir"].glob("triage/*/suppressions.json"))
    code, output = triage(work, target["finding_id"], "--verdict", "benign", "--suppress-similar", "--yes", "--reviewer", "sam")
    assert code == 0 and f"added suppression triage-{target['finding_id']}" in output
    code, output = invoke("suppressions", "list", "--workdir", str(work["workdir"]), "--format", "json")
    listed = json.loads(output)
    assert [(s["id"], s["source"], s["reviewer"], s["entity"]) for s in listed] == [
        (f"triage-{target['finding_id']}", "triage", "sam", target["entity"])]
    assert listed[0]["created"] and set(listed[0]["ranges"]) == {r["feature"] for r in target["reasons"][:3]}
    assert invoke("score", "--workdir", str(work["workdir"]), "--quiet")[0] == 0
    state = json.loads(next(work["workdir"].glob("state/cluster=*/latest.json")).read_text())
    rescored = json.loads((work["workdir"] / state["score"]["key"] / "findings.json").read_text())
    hidden = [f for f in rescored if f["suppressed"]]
    assert [f["finding_id"] for f in hidden] == [target["finding_id"]]
    # removal: shown without --yes, done with it
    code, output = invoke("suppressions", "remove", f"triage-{target['finding_id']}", "--workdir", str(work["workdir"]))
    assert code == 0 and "rerun with --yes" in output
    assert len(json.loads(invoke("suppressions", "list", "--workdir", str(work["workdir"]), "--format", "json")[1])) == 1
    code, output = invoke("suppressions", "remove", f"triage-{target['finding_id']}", "--workdir", str(work["workdir"]), "--yes")
    assert code == 0 and "removed suppression" in output
    assert json.loads(invoke("suppressions", "list", "--workdir", str(work["workdir"]), "--format", "json")[1]) == []
