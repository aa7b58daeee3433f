"""Every rule carries an ATT&CK for Containers tactic and technique and a plain title template that fills from
the events it fires on; the loader rejects what is not declared."""
from __future__ import annotations

import pytest
import yaml

from features.rules import TACTICS, TECHNIQUES, TITLE_MAX, TITLE_PLACEHOLDERS, RuleError, RulePack, fill_title
from pipeline.config import DEFAULT_RULES
from pipeline.report.pivots import EVIDENCE_COLUMNS
from tests.features.test_rules import PACK, expand, flagged_frame

RULES = yaml.safe_load(DEFAULT_RULES.read_text())["rules"]


def one_rule(**changes) -> list[dict]:
    rule = next(r for r in RULES if r["id"] == "privileged_workload_created")
    return [{**rule, **changes}]


@pytest.mark.parametrize("changes, message", [
    ({"tactic": "TA0009"}, "rule privileged_workload_created: 'tactic': .*ATT&CK for Containers tactic"),  # Collection: not in the matrix
    ({"technique": "T9999"}, "'technique': .*not among the declared"),
    ({"technique": "1611"}, "'technique': .*such as T1609"),
    ({"technique": "T1609"}, "technique T1609 is not under tactic TA0004"),
    ({"title_template": "{user} patched {resoruce}"}, "'title_template': .*unknown placeholders resoruce"),
    ({"title_template": "{user.__class__} did it"}, "'title_template': .*must be a plain"),
    ({"title_template": "{user!r} did it"}, "'title_template': .*must be a plain"),
    ({"title_template": "two\nlines"}, "'title_template': .*one non-empty line"),
    ({"finding_type": "TTPs/Collection"}, "'finding_type': .*TTPs category"),
    ({"finding_type": "Anything"}, "'finding_type': .*namespace/category"),
])
def test_the_loader_rejects_an_undeclared_tactic_technique_placeholder_or_type(changes, message):
    with pytest.raises(RuleError, match=message):
        RulePack.from_dicts(one_rule(**changes))


@pytest.mark.parametrize("field", ["tactic", "technique", "title_template", "finding_type"])
def test_every_field_is_required(field):
    with pytest.raises(RuleError, match=f"'{field}': Field required"):
        RulePack.from_dicts([{k: v for k, v in one_rule()[0].items() if k != field}])


def test_the_declared_tables_are_the_containers_matrix():
    assert set(TACTICS) == {"TA0001", "TA0002", "TA0003", "TA0004", "TA0005", "TA0006", "TA0007", "TA0008", "TA0040"}
    assert all(set(t.tactics) <= set(TACTICS) for t in TECHNIQUES.values())
    assert {rule.technique for rule in PACK.rules} == set(TECHNIQUES), "declare only the techniques the pack uses"


def test_placeholders_read_only_columns_a_findings_evidence_keeps():
    """A title is filled from an evidence event (pipeline.stages.score), so every column a placeholder reads is kept there."""
    every_column = {column: f"v-{column}" for column in EVIDENCE_COLUMNS}
    for placeholder in TITLE_PLACEHOLDERS.values():
        assert placeholder.value(every_column) not in (None, ""), placeholder.name


@pytest.mark.parametrize("rule", PACK.rules, ids=lambda rule: rule.id)
def test_every_title_fills_from_its_own_positive_test_event_without_a_missing_value(rule):
    test = next(t for t in rule.tests if t.expect)
    row = flagged_frame(expand(test), test.history).iloc[0].to_dict()
    missing = [name for name in {f for f in TITLE_PLACEHOLDERS if "{" + f + "}" in rule.title_template}
               if fill_title("{" + name + "}", row) == TITLE_PLACEHOLDERS[name].missing]
    assert not missing, f"{rule.id}: {missing} missing from its positive test event"
    title = rule.title_for(row)
    assert "{" not in title and 0 < len(title) <= TITLE_MAX


def test_a_title_is_plain_bounded_text_whatever_the_event_says():
    hostile = {"user": "eng:bob\x1b[31m\u202e<script>" + "x" * 500, "verb": "patch", "resource": "deployments",
               "namespace": None, "name": "api\n[bold]"}
    title = fill_title("{user} {acted} {resource} {object} from {source_ip}", hostile)
    assert title.startswith("eng:bob [31m <script>x") and "\x1b" not in title and "\u202e" not in title
    assert "…" in title and " patched deployments api [bold] from an unknown address" in title
    assert len(title) <= TITLE_MAX
    assert fill_title("{user} {acted} {object}", {}) == "an unknown identity acted on (no name)"


def test_a_findings_headline_is_its_top_non_routine_rule_filled_from_the_earliest_event_it_matched():
    hits = [{"rule": "rbac_object_changed", "routine": True}, {"rule": "privileged_workload_created", "routine": False}]
    events = [
        {"time": "2026-11-05T10:02:00.000000Z", "user": "eng:bob", "verb": "create", "resource": "pods", "namespace": "web",
         "name": "late", "why": ["rule:privileged_workload_created"]},
        {"time": "2026-11-05T10:01:00.000000Z", "user": "eng:bob", "verb": "patch", "resource": "deployments",
         "namespace": "checkout", "name": "checkout-api", "why": ["rule:privileged_workload_created", "exec"]},
        {"time": "2026-11-05T10:00:00.000000Z", "user": "eng:bob", "verb": "get", "resource": "pods", "why": ["exec"]},
    ]
    assert PACK.headline(hits, events) == ("eng:bob patched deployments checkout/checkout-api to run privileged or with "
                                           "the host's namespaces or paths")
    assert PACK.headline(hits, []) == PACK.by_id()["privileged_workload_created"].title, "no kept event: the fixed title"
    assert PACK.headline([], events) is None
