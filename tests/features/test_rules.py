"""Every rule in the pack fires on its own test events and stays quiet on its negatives;
the real-shaped Panther fixtures trigger the matching rules as their provenance says."""
from __future__ import annotations

import json
import re
from datetime import timedelta
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from features.addresses import AddressBook, load_threat_list
from features.events import EventTableBuilder, SalvagedEvent, normalize_event
from features.flags import FLAG_NAMES, FLAGS, FlagContext, add_flags
from features.novelty import add_history_flags
from features.rules import RuleError, RulePack
from pipeline.catalog import load_rule_pack
from pipeline.config import DEFAULT_RULES, load_config
from pipeline.stages.features import events_frame
from tests.factory import SHARED_FIXTURES, T0, event

CONFIG = load_config()
PACK = load_rule_pack(CONFIG)
CONTEXT = FlagContext(AddressBook([], load_threat_list("192.0.2.0/24\n")), frozenset(CONFIG.rules.allow_identities))


def flagged_frame(raw_events: list[dict], history: dict | None = None) -> pd.DataFrame:
    """Normalised, flagged events; ``history`` is the identity's training-range sets, for new-terms rules."""
    builder = EventTableBuilder()
    for raw in raw_events:
        builder.append(normalize_event(raw, default_time=T0.isoformat()))
    table, bad = builder.build()
    assert not bad
    known = {}
    if history is not None:
        user = raw_events[0]["user"]["username"]
        known = {("user", user): SimpleNamespace(**{k: set(v) for k, v in history.items()})}
    return add_history_flags(add_flags(events_frame(table), CONTEXT), known)


def expand(test) -> list[dict]:
    """A rule test's events: merged over the base event; `{i}` numbers repeated copies; with `salvage`,
    as the readers hand over a line salvaged with that marker."""
    text = json.dumps(test.event)
    items = [
        event(T0 + timedelta(seconds=i), audit_id=f"t-{i}", **json.loads(text.replace("{i}", str(i))))
        for i in range(test.repeat)
    ]
    return [salvaged(item, test.salvage) for item in items] if test.salvage else items


DAMAGED_FIELD = {"body_unreadable": ("requestObject",), "value_unreadable": ("userAgent",), "truncated": ()}


def salvaged(raw: dict, marker: str) -> SalvagedEvent:
    """``raw`` as a line salvaged with ``marker``: the damaged field missing, or cut after its timestamps."""
    damaged = DAMAGED_FIELD[marker]
    return SalvagedEvent({k: v for k, v in raw.items() if k not in damaged}, damaged, cut=marker == "truncated")


CASES = [(rule.id, index, test) for rule in PACK.rules for index, test in enumerate(rule.tests)]


@pytest.mark.parametrize("rule_id,index,test", CASES, ids=[f"{r}-{i}" for r, i, _ in CASES])
def test_rule_fires_exactly_as_its_tests_say(rule_id, index, test):
    hits = PACK.evaluate(flagged_frame(expand(test), test.history))
    assert bool(hits[rule_id].any()) is test.expect


def test_every_rule_has_a_positive_and_a_negative_test():
    for rule in PACK.rules:
        assert any(t.expect for t in rule.tests), rule.id
        assert any(not t.expect for t in rule.tests), rule.id


def test_managed_eks_identities_are_allow_listed():
    raw = event(user={"username": "eks:addon-manager", "groups": ["system:authenticated"]}, verb="create",
                objectRef={"resource": "clusterrolebindings", "name": "addon"},
                requestObject={"roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}, "subjects": [{"kind": "User", "name": "x"}]})
    hits = PACK.evaluate(flagged_frame([raw]))
    assert not hits.to_numpy().any()


def test_every_flag_is_declared_with_what_it_reads_and_why():
    assert len(set(FLAG_NAMES)) == len(FLAGS)
    for flag in FLAGS:
        assert flag.reads and len(flag.why) > 10, flag.name


def test_rule_conditions_only_name_known_columns():
    columns = set(flagged_frame([event()]).columns)
    for rule in PACK.rules:
        code = re.sub(r"'[^']*'|\"[^\"]*\"", "", rule.condition)
        names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", code)) - {"and", "or", "not", "str", "startswith", "na", "False", "True"}
        assert names <= columns, (rule.id, names - columns)


def test_pack_errors_name_the_rule():
    with pytest.raises(RuleError, match="rule bad_one: 'severity'"):
        RulePack.from_dicts([{"id": "bad_one", "title": "t", "severity": "urgent", "rationale": "r", "condition": "read",
                              "tests": [{"event": {}}]}])
    with pytest.raises(RuleError, match="unknown rules: nope"):
        RulePack.from_dicts(yaml.safe_load(DEFAULT_RULES.read_text())["rules"], disabled=["nope"])


# Panther rule id -> our rule, for the fixtures whose single-event semantics we share.
PANTHER_TO_RULE = {
    "Kubernetes.API.AnonymousAccess": "anonymous_access_allowed",
    "Kubernetes.ClusterRoleBinding.Privileged": "admin_binding_created",
    "Kubernetes.Pod.Exec": "exec_into_pod",
    "Kubernetes.AdmissionController.Created": "webhook_configuration_changed",
    "Kubernetes.CronJob.CreatedOrModified": "persistence_workload_created",
    "Kubernetes.DaemonSet.Created": "persistence_workload_created",
    "Kubernetes.Secrets.DumpAllNamespaces": "cluster_wide_secret_list",
    "Kubernetes.Service.NodePort": "nodeport_service_created",
    "Kubernetes.Role.Wildcard": "dangerous_role_created",
}


# Where our rule is deliberately broader than Panther's single-event rule, and why.
INTENTIONAL_DIFFERENCES = {
    "k8s_admission_controller_created__03_Webhook_Update_Not_Create.json": "modifying a webhook is as dangerous as creating one (Sigma)",
    "k8s_clusterrolebinding_privileged__05_RoleBinding_not_ClusterRoleBinding.json": "cluster-admin bound in one namespace is still admin there",
    "k8s_role_wildcard__08_Updating_existing_role_not_creating.json": "widening an existing role to wildcards escalates just the same",
}


def provenance() -> list[tuple[str, str, bool]]:
    rows = []
    for line in (SHARED_FIXTURES / "PROVENANCE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].endswith(".json"):
            rows.append((cells[0], cells[1], cells[3] == "True"))
    return rows


@pytest.mark.skipif(not SHARED_FIXTURES.exists(), reason="fixtures not present")
def test_panther_fixtures_trigger_the_equivalent_rules():
    checked = 0
    disagreements = []
    for name, panther_id, expected in provenance():
        rule_id = PANTHER_TO_RULE.get(panther_id)
        if rule_id is None or name in INTENTIONAL_DIFFERENCES:
            continue
        raw = json.loads((SHARED_FIXTURES / name).read_text())
        raw.setdefault("user", {"username": "unknown-user", "groups": []})
        hits = PACK.evaluate(flagged_frame([raw]))
        checked += 1
        if bool(hits[rule_id].any()) != expected:
            disagreements.append((name, rule_id, expected))
    assert checked >= 28
    assert not disagreements, disagreements
