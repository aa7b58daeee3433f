"""Falco's own k8s_audit test traces (tests/fixtures/falco-k8s-audit, PROVENANCE.md): every trace a Falco rule fires on
surfaces here with a rule hit, and the traces Falco stays quiet on fire no high or critical rule."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.features.test_rules import PACK, flagged_frame

TRACES = Path(__file__).resolve().parent.parent / "fixtures" / "falco-k8s-audit"
ROW = re.compile(r"^\| ([\w.-]+\.json) \| [^|]+ \| `(\w+)` \|$")


def provenance() -> tuple[dict[str, str], list[str]]:
    """(positive trace -> the rule expected to surface it, negative traces), as PROVENANCE.md lists them."""
    text = (TRACES / "PROVENANCE.md").read_text()
    positives = {m.group(1): m.group(2) for m in map(ROW.match, text.splitlines()) if m}
    negatives = re.findall(r"^- ([\w.-]+\.json)$", text, re.M)
    return positives, negatives


POSITIVES, NEGATIVES = provenance()


def hits_of(name: str):
    events = [json.loads(line) for line in (TRACES / name).read_text().splitlines() if line.strip()]
    return PACK.evaluate(flagged_frame(events))


def test_every_vendored_trace_is_listed():
    assert sorted(POSITIVES) + sorted(NEGATIVES) and set(POSITIVES) | set(NEGATIVES) == {p.name for p in TRACES.glob("*.json")}
    assert len(POSITIVES) == 38 and len(NEGATIVES) == 7


@pytest.mark.parametrize("name", sorted(POSITIVES))
def test_trace_a_falco_rule_fires_on_surfaces_with_its_rule(name):
    assert hits_of(name)[POSITIVES[name]].any()


@pytest.mark.parametrize("name", NEGATIVES)
def test_trace_falco_stays_quiet_on_fires_no_high_rule(name):
    hits = hits_of(name)
    loud = [rule for rule in hits.columns if hits[rule].any() and PACK.severity(rule) in ("high", "critical")]
    assert loud == []
