"""The coverage table of public detections is sound against the rule pack, and docs/detection.md shows it as it is."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from features.coverage import (
    COVERAGE_HEADING,
    COVERAGE_NEEDS,
    Coverage,
    CoverageError,
    coverage_markdown,
    coverage_problems,
)
from pipeline.catalog import load_rule_pack
from pipeline.config import load_config
from tests.factory import event

ROOT = Path(__file__).resolve().parents[2]
COVERAGE = Coverage.from_dict(yaml.safe_load((ROOT / "configs" / "coverage.yaml").read_text()))
RULE_IDS = {rule.id for rule in load_rule_pack(load_config()).rules}


def test_every_entry_names_real_rules_and_explains_every_gap():
    assert coverage_problems(COVERAGE, RULE_IDS) == []


def test_every_public_source_is_counted_in_full():
    # Falco k8saudit 0.18.0 ships 48 rules (one a disabled debug catch-all); the Elastic kubernetes folder 45 rules;
    # GuardDuty 35 EKS audit-log finding types; the EKS Best Practices page one alarm and 8 queries.
    sizes = {name: sum(c.values()) for name, c in COVERAGE.counts().items()}
    assert sizes == {"falco": 48, "elastic": 45, "guardduty": 35, "eks-best-practices": 9}


def test_docs_coverage_section_is_generated_from_the_data():
    text = (ROOT / "docs" / "detection.md").read_text()
    assert COVERAGE_HEADING in text, f"docs/detection.md has no '{COVERAGE_HEADING}' section"
    section = text[text.index(COVERAGE_HEADING):]
    assert section == coverage_markdown(COVERAGE), (
        "regenerate: .venv/bin/python -c 'from tests.features.test_coverage import write_docs; write_docs()'")


def write_docs() -> None:
    """Replace docs/detection.md's coverage section (the file's last) with the rendering of configs/coverage.yaml."""
    path = ROOT / "docs" / "detection.md"
    text = path.read_text()
    head = text[:text.index(COVERAGE_HEADING)] if COVERAGE_HEADING in text else text.rstrip("\n") + "\n\n"
    path.write_text(head + coverage_markdown(COVERAGE))


def test_checks_catch_a_missing_reason_an_unknown_rule_and_a_duplicate():
    entry = {"source": "falco", "id": "Create HostPid Pod", "condition": "pod created with hostPID true"}
    bad = Coverage.from_dict({
        "sources": {"falco": {"title": "Falco", "where": "plugins"}},
        "detections": [
            {**entry, "status": "misses", "planned": {"rule": "x_rule", "condition": "some condition here", "needs": ["flags"]}},
            {**entry, "status": "covers", "rules": ["no_such_rule"]},
            {**entry, "id": "Other", "status": "partial", "reason": "only part of the variants fire"},
            {**entry, "id": "Third", "status": "misses", "reason": "nothing reads the field at all",
             "planned": {"rule": "y_rule", "condition": "some condition here", "needs": ["telepathy"]}},
        ],
        "probes": [{"source": "falco", "id": "Third", "event": {}, "fires": ["rbac_object_changed"]},
                   {"source": "falco", "id": "Fourth", "event": {}}],
    })
    problems = coverage_problems(bad, RULE_IDS)
    assert "falco: 'Create HostPid Pod' listed 2 times" in problems
    assert "falco: 'Create HostPid Pod': misses needs a reason" in problems
    assert "falco: 'Create HostPid Pod': rule 'no_such_rule' is not in the rule pack" in problems
    assert "falco: 'Other': partial needs a planned rule" in problems
    assert "falco: 'Third': unknown need 'telepathy'" in problems
    assert "probe falco: 'Third': misses, but rbac_object_changed fire on the probe" in problems
    assert "probe falco: 'Fourth': no such detection" in problems


def test_a_malformed_entry_is_named_in_one_line():
    with pytest.raises(CoverageError, match="coverage entry Create HostPid Pod: 'status': Field required"):
        Coverage.from_dict({"sources": {}, "detections": [
            {"source": "falco", "id": "Create HostPid Pod", "condition": "pod created with hostPID", "stauts": "covers"}]})


def test_every_planned_rule_has_one_meaning_and_known_needs():
    planned = {}
    for d in COVERAGE.detections:
        if d.planned:
            planned.setdefault(d.planned.rule, set()).update(d.planned.needs)
    assert all(needs <= set(COVERAGE_NEEDS) for needs in planned.values())
    assert set(planned) & RULE_IDS <= {"configmap_credentials_written"}, "a planned rule reuses an id"


@pytest.mark.parametrize("probe", COVERAGE.probes, ids=[f"{p.source}-{p.id}" for p in COVERAGE.probes])
def test_probe_fires_exactly_the_rules_the_table_says(probe):
    from tests.features.test_rules import PACK, flagged_frame

    hits = PACK.evaluate(flagged_frame([event(**probe.event)]))
    assert sorted(c for c in hits.columns if hits[c].any()) == sorted(probe.fires)
