"""Rank order: a record that shows the same requests as a higher-ranked one is listed lower."""
from __future__ import annotations

import pandas as pd

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
