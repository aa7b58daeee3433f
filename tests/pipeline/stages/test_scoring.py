"""Rank order: a record that shows the same requests as a higher-ranked one is listed lower, and so is a controller's copy
of a template whose own write is a finding."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.io.storage import LocalStorage
from pipeline.stages.run import run_pipeline
from pipeline.stages.score import repeat_of

WINDOW = pd.Timestamp("2026-11-04T05:00:00Z")


def test_address_record_of_an_identity_already_listed_repeats_it():
    """sara@ sweeping secrets from 198.51.100.10: the address record holds the same requests as the
    user record, so it repeats it; a second address with its own requests does not."""
    sweep = [f"sweep-{i}" for i in range(30)]
    user = ("user", "sara@corp.example", WINDOW)
    address = ("source_ip", "198.51.100.10", WINDOW)
    other = ("source_ip", "10.0.55.213", WINDOW)
    audit_ids = {user: sweep, address: sweep[:25] + ["browse-1", "browse-2"], other: ["probe-1", "probe-2", sweep[0]]}
    assert repeat_of([user, address, other], audit_ids) == [None, user, None]


def test_a_record_holding_less_than_half_of_someone_elses_requests_stands_alone():
    first = ("user", "ci-deployer", WINDOW)
    second = ("source_ip", "52.15.218.109", WINDOW)
    audit_ids = {first: ["a", "b", "c"], second: ["a", "x", "y"]}
    assert repeat_of([first, second], audit_ids) == [None, None]
    assert repeat_of([first, ("user", "no-evidence", WINDOW)], audit_ids) == [None, None]


def test_a_tie_between_two_holders_goes_to_the_higher_ranked_one_in_every_process():
    """Evidence split evenly between two higher records: the choice may not depend on set or hash order
    (a rerun in a new process must rank identically)."""
    first, second = ("user", "a", WINDOW), ("user", "b", WINDOW)
    both = ("source_ip", "10.0.0.1", WINDOW)
    for shared in (["x", "y"], ["y", "x"]):
        audit_ids = {first: ["x"], second: ["y"], both: shared}
        assert repeat_of([first, second, both], audit_ids)[2] == first


@pytest.fixture(scope="module")
def cronjob_run(tmp_path_factory) -> list[dict]:
    """Seed 3's sample (two days, scale 0.05): ci-deployer, from an address it never used, creates CronJob
    default/log-rotate running a privileged container every hour; the controllers then create its Jobs and Pods."""
    from pipeline.sample import generate_sample, sample_clock

    root = tmp_path_factory.mktemp("cronjob")
    generate_sample(root / "data", days=2, seed=3, scale=0.05)
    ctx = RunContext(LocalStorage(str(root / "work")), load_config(), "copies")
    run_pipeline(ctx, [str(root / "data")], now=sample_clock(root / "data"))
    return ctx.storage.read_json(f"{ctx.read_state()['score']['key']}/findings.json")


def test_the_controllers_copies_of_a_privileged_cronjob_count_a_quarter_and_its_authors_write_in_full(cronjob_run):
    def privileged(finding):
        return next((h for h in finding["rule_hits"] if h["rule"] == "privileged_workload_created"), None)

    author = next(f for f in cronjob_run if f["entity"] == "ci-deployer" and privileged(f))
    assert author["flagged"] and privileged(author)["weight"] == 1.0 and "copy_of" not in privileged(author)
    controllers = {f"system:serviceaccount:kube-system:{name}" for name in ("cronjob-controller", "job-controller")}
    copies = [f for f in cronjob_run if f["entity"] in controllers and privileged(f)]
    assert {f["entity"] for f in copies} == controllers
    assert len(copies) >= 10  # every hour after the CronJob was written
    for finding in copies:
        hit = privileged(finding)
        assert hit["copy_of"] == "cronjobs default/log-rotate" and hit["copies"] == hit["count"] and hit["weight"] == 0.25
        assert finding["rank"] > min(author["rank"], author.get("repeats_rank") or author["rank"])  # its user or address record


def test_hits_damped_as_routine_or_copies_add_nothing_beyond_their_own_weight():
    """Seed 4's CI address re-applying the aws-node DaemonSet (three rules, each its routine) against a developer's one
    Service patched to NodePort (service_exposed, high): the routine hits weigh a quarter each and earn no bonus for
    being several, so the new exposure outranks the routine at the same model part."""
    from collections import Counter

    from pipeline.catalog import load_rule_pack
    from pipeline.stages.score import rule_parts

    config = load_config()
    ci, raj = ("source_ip", "35.163.210.205", WINDOW), ("user", "raj@corp.example", WINDOW)
    records = pd.DataFrame({"entity_type": [ci[0], raj[0]], "entity": [ci[1], raj[1]], "window_start": [WINDOW, WINDOW]})
    routine_rules = ("host_escape_workload_written", "privileged_workload_created", "kube_system_workload_identity")
    record_hits = {ci: Counter({rule: 3 for rule in routine_rules}), raj: Counter({"service_exposed": 1})}
    routine = {(ci[0], ci[1], rule): 5 for rule in routine_rules}
    parts, hits = rule_parts(records, record_hits, load_rule_pack(config), config.scoring.severity_weights, routine)
    assert parts.tolist() == [0.25, 1.0]
    assert all(hit["routine"] for hit in hits[ci]) and not hits[raj][0]["routine"]
    copied = {ci: {"privileged_workload_created": (3, "daemonsets kube-system/aws-node")}}
    parts, hits = rule_parts(records, {raj: record_hits[raj]}, load_rule_pack(config), config.scoring.severity_weights, {}, copied)
    assert parts.tolist() == [0.25, 1.0] and hits[ci][0]["copy_of"] == "daemonsets kube-system/aws-node"
