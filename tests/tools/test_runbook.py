"""docs/runbook.md's worked example is generated (tools/runbook.py): it cannot drift from the run it describes."""
from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.catalog import load_rule_pack
from pipeline.config import parse_config
from pipeline.stages.report import jsonl
from tests.report_factory import incidents_of, make_context
from tools.runbook import DOC, FACTS, doc_block, example_facts, render_example


def test_the_docs_worked_example_is_what_the_script_renders_from_the_stored_run_facts():
    assert doc_block(DOC.read_text(encoding="utf-8")) == render_example(json.loads(FACTS.read_text(encoding="utf-8")))


def test_the_facts_of_a_run_carry_its_numbers_and_incidents(tmp_path: Path):
    context = make_context()
    incidents = incidents_of(context)
    report = tmp_path / "report"
    report.mkdir()
    (report / "run.json").write_text(json.dumps(context["run"]))
    (report / "anomalies.jsonl").write_bytes(jsonl(context["findings"]))
    (report / "incidents.jsonl").write_bytes(jsonl(incidents))
    facts = example_facts(report)
    flagged = sum(f["flagged"] for f in context["findings"])
    assert (facts["flagged"], facts["windows"], facts["incidents"]) == (flagged, len(context["findings"]), len(incidents))
    block = render_example(facts)
    assert f"It flags {flagged} of {len(context['findings'])} entity windows" in block
    assert incidents[0]["incident_id"] in block and f"#1 `{context['findings'][0]['finding_id']}`" in block


def test_every_rule_has_a_family_in_the_runbook():
    text = DOC.read_text(encoding="utf-8")
    families = text[text.index("## Per rule family"): text.index("## Worked example")]
    named = set(re.findall(r"`([a-z0-9_]+)`", families))
    missing = sorted(r.id for r in load_rule_pack(parse_config({})).rules if r.id not in named)
    assert missing == []
