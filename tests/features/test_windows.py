"""Per-entity windows: which window an event counts in, what a window's features say (denial rates,
breadth), and how each window is judged against the entity's own earlier windows (novelty, baselines)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from features.aggregate import partial_aggregates, reduce_partials
from features.flags import flag_events
from features.windows import FEATURE_NAMES, MIN_HISTORY_WINDOWS, WINDOW_FEATURES, feature_matrix, finalise
from tests.factory import T0, event, events
from tests.features.tables import CONTEXT, event_table


def windows(raws: list[dict], window_minutes: int = 60, entity_types=("user", "source_ip")) -> pd.DataFrame:
    """The feature table of these events: map, reduce and finalise as the features stage runs them."""
    partials = partial_aggregates(flag_events(event_table(raws), CONTEXT), window_minutes, entity_types)
    return finalise(reduce_partials([partials]), window_minutes)


def users(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["entity_type"] == "user"].reset_index(drop=True)


def at(hour: int, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 11, 1, hour, minute, second, micro, tzinfo=timezone.utc)


def test_the_last_microsecond_of_an_hour_and_the_next_hour_are_different_windows():
    table = users(windows([event(at(9, 59, 59, 999_999), audit_id="late"), event(at(10), audit_id="next")]))
    assert [w.isoformat() for w in table["window_start"]] == ["2026-11-01T09:00:00+00:00", "2026-11-01T10:00:00+00:00"]
    assert table["n"].tolist() == [1, 1]
    assert (table["window_end"] - table["window_start"]).eq(pd.Timedelta(minutes=60)).all()


@pytest.mark.parametrize("window_minutes, starts", [
    (15, ["09:00", "09:00", "09:15", "09:45", "10:00"]),
    (30, ["09:00", "09:00", "09:00", "09:30", "10:00"]),
])
def test_window_edges_follow_window_minutes(window_minutes, starts):
    moments = [at(9), at(9, 14, 59, 999_999), at(9, 15), at(9, 59, 59, 999_999), at(10)]
    raws = [event(moment, audit_id=f"e{i}", user={"username": f"user-{i}"}) for i, moment in enumerate(moments)]
    table = users(windows(raws, window_minutes)).sort_values("entity")
    assert [w.strftime("%H:%M") for w in table["window_start"]] == starts


def test_a_request_logged_at_two_stages_counts_once():
    raws = [event(T0, audit_id="r1", stage="RequestReceived"), event(T0, audit_id="r1"), event(T0 + timedelta(seconds=5), audit_id="r2")]
    assert users(windows(raws))["n"].tolist() == [2]


def test_denial_rate_and_denial_counts():
    raws = [event(T0 + timedelta(seconds=i), audit_id=f"d{i}", **override) for i, override in enumerate([
        {}, {}, {"responseStatus": {"code": 403}, "annotations": {"authorization.k8s.io/decision": "forbid"}},
        {"responseStatus": {"code": 401}, "annotations": {"authorization.k8s.io/decision": None}},
    ])]
    row = users(windows(raws)).iloc[0]
    assert row["deny_rate"] == pytest.approx(0.5)
    assert row["denied_403"] == pytest.approx(np.log1p(1))
    assert row["n_denied_401"] == 1 and row["n_denied_403"] == 1


def test_a_secret_sweep_reads_many_distinct_secrets_in_one_window():
    sweep = [event(T0 + timedelta(seconds=i), audit_id=f"s{i}", verb="get",
                   objectRef={"resource": "secrets", "namespace": "web", "name": f"secret-{i}"}) for i in range(12)]
    row = users(windows(sweep)).iloc[0]
    assert row["n_secret_read"] == 12 and len(row["secret_names"]) == 12
    assert row["distinct_secrets"] > users(windows(sweep[:1])).iloc[0]["distinct_secrets"]


def test_an_entity_is_new_in_its_first_window_only_and_novelty_counts_against_its_own_past():
    day = [event(T0 + timedelta(hours=h), audit_id=f"h{h}") for h in range(3)]
    day.append(event(T0 + timedelta(hours=3), audit_id="h3", sourceIPs=["198.51.100.7"], userAgent="curl/8.4.0"))
    table = users(windows(day))
    assert table["entity_is_new"].tolist() == [True, False, False, False]
    assert table["novel_peers"].tolist()[1:] == [0, 0, 1]
    assert table["novel_ua_families"].tolist()[1:] == [0, 0, 1]


def test_a_sensitive_action_is_new_once():
    quiet = [event(T0 + timedelta(hours=h), audit_id=f"q{h}") for h in range(2)]
    reads = [event(T0 + timedelta(hours=h), audit_id=f"s{h}", verb="get", objectRef={"resource": "secrets", "namespace": "web", "name": "db"})
             for h in (2, 3)]
    assert users(windows(quiet + reads))["new_sensitive_actions"].gt(0).tolist() == [False, False, True, False]


def test_off_hours_needs_history_and_a_never_active_hour():
    steady = events(MIN_HISTORY_WINDOWS + 1, start=T0 - timedelta(days=MIN_HISTORY_WINDOWS + 1), step=timedelta(days=1))
    table = users(windows(steady + [event(at(3), audit_id="night"), event(at(9, 30), audit_id="usual")]))
    assert table["off_hours"].tolist() == [0.0] * (MIN_HISTORY_WINDOWS + 1) + [1.0, 0.0]


def test_a_burst_stands_out_against_the_entitys_own_baseline():
    steady = [event(T0 + timedelta(hours=h, minutes=m), audit_id=f"b{h}-{m}") for h in range(6) for m in range(0, 60, 10)]
    burst = [event(T0 + timedelta(hours=6, seconds=s), audit_id=f"burst{s}") for s in range(300)]
    table = users(windows(steady + burst))
    assert table["requests_vs_baseline"].iloc[:MIN_HISTORY_WINDOWS].eq(0).all()  # too little history to judge
    assert table["requests_vs_baseline"].iloc[-1] > 5 and abs(table["requests_vs_baseline"].iloc[-2]) < 1


def test_the_model_reads_every_registered_feature_in_order():
    table = windows(events(5))
    assert feature_matrix(table).shape == (len(table), len(FEATURE_NAMES))
    assert all(len(feature.why) > 10 and feature.reads for feature in WINDOW_FEATURES)
