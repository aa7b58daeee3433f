"""History flags: is this address, client or action new for this identity, judged against what the
identity did in the training range (the sets the windows keep)?"""
from __future__ import annotations

from collections import namedtuple
from datetime import timedelta

import numpy as np
import pytest

from features.aggregate import partial_aggregates
from features.flags import flag_events, frame_with_flags
from features.novelty import HISTORY_FLAG_NAMES, HISTORY_FLAGS, add_history_flags, history_flags, history_score
from tests.factory import T0, event, events
from tests.features.tables import CONTEXT, event_table

History = namedtuple("History", "peers user_agents ua_families verb_resources")
KUBECTL = "kubectl/v1.29.2 (darwin/arm64) kubernetes/4b8e819"


def history_of(raws: list[dict]) -> dict:
    """What each user did in these (training) events, as the scoring stage keeps it: the union of its windows' sets."""
    partials = partial_aggregates(flag_events(event_table(raws), CONTEXT), 60, ["user"])
    history = {}
    for user, windows in partials.groupby("entity"):
        sets = {name: set().union(*map(set, windows[name])) for name in History._fields}
        history[("user", user)] = History(**sets)
    return history


# alice: a week of kubectl lists of pods from her VPC address.
HISTORY = history_of(events(20, start=T0 - timedelta(days=7), step=timedelta(hours=8)))


def judged(raw: dict, history: dict = HISTORY) -> dict[str, bool]:
    flags = history_flags(flag_events(event_table([raw]), CONTEXT), history)
    return {name: bool(values[0]) for name, values in flags.items()}


def test_what_alice_always_does_is_not_new():
    assert judged(event(T0)) == dict.fromkeys(HISTORY_FLAG_NAMES, False)


def test_a_never_seen_identity_is_new_and_nothing_else_is_judged():
    assert judged(event(T0, user={"username": "mallory"}, userAgent="curl/8.4.0")) == {
        **dict.fromkeys(HISTORY_FLAG_NAMES, False), "new_identity": True}


def test_alice_from_an_address_she_never_used():
    flags = judged(event(T0, sourceIPs=["198.51.100.7"]))
    assert flags["new_source_for_user"] and not flags["new_identity"]


@pytest.mark.parametrize("agent, new_agent, new_family", [
    (KUBECTL, False, False),
    ("kubectl/v1.30.1 (linux/amd64) kubernetes/9f1c2a3", True, False),  # a new build of her client: a weak signal
    ("curl/8.4.0", True, True),  # her credentials in a script: a different hand on the keys
])
def test_a_new_user_agent_and_a_new_client_family(agent, new_agent, new_family):
    flags = judged(event(T0, userAgent=agent))
    assert (flags["new_user_agent_for_user"], flags["new_client_family_for_user"]) == (new_agent, new_family)


def test_an_action_alice_never_took():
    secrets = event(T0, verb="get", objectRef={"resource": "secrets", "namespace": "web", "name": "db"})
    assert judged(secrets)["new_action_for_user"]
    assert not judged(event(T0, verb="list"))["new_action_for_user"]


def test_without_history_nothing_is_new():
    assert judged(event(T0, user={"username": "mallory"}, sourceIPs=["198.51.100.7"]), history={}) == dict.fromkeys(HISTORY_FLAG_NAMES, False)


def test_the_column_path_and_the_per_event_path_agree():
    raws = [event(T0), event(T0, user={"username": "mallory"}), event(T0, sourceIPs=["198.51.100.7"], userAgent="curl/8.4.0"),
            event(T0, verb="delete", objectRef={"resource": "pods", "namespace": "web", "name": "p"}), event(T0, user={})]
    inputs = flag_events(event_table(raws), CONTEXT)
    by_column = history_flags(inputs, HISTORY)
    by_event = add_history_flags(frame_with_flags(inputs), HISTORY)
    for name in HISTORY_FLAG_NAMES:
        assert by_column[name].tolist() == by_event[name].tolist(), name


def test_history_score_adds_the_declared_weights():
    frame = add_history_flags(frame_with_flags(flag_events(event_table(
        [event(T0), event(T0, sourceIPs=["198.51.100.7"], userAgent="curl/8.4.0")]), CONTEXT)), HISTORY)
    weights = {f.name: f.event_weight for f in HISTORY_FLAGS}
    expected = weights["new_source_for_user"] + weights["new_user_agent_for_user"] + weights["new_client_family_for_user"]
    assert np.allclose(history_score(frame), [0.0, expected])
