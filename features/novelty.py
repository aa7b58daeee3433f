"""History flags: per event, is this address, client or action new for this identity?

Like event flags (features/flags.py), each is declared once with what it reads and why it
matters, but they are judged against the identity's own history from the training range
(the sets features.windows keeps per entity), so they exist only when scoring. Rules may
name them (Elastic's "new terms" rules are of this kind); outside scoring they are all
False, which is also their value for an identity with no history (``new_identity`` says so).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.addresses import user_agent_family
from features.aggregate import verb_resources
from features.columns import EventColumns, combine


@dataclass(frozen=True)
class HistoryFlag:
    name: str
    reads: str
    why: str
    event_weight: float


HISTORY_FLAGS: tuple[HistoryFlag, ...] = (
    HistoryFlag("new_identity", "user.username vs training range", "an identity never seen before", 0.25),
    HistoryFlag("new_source_for_user", "sourceIPs vs the user's addresses", "credentials used from a place they never were", 0.5),
    HistoryFlag("new_client_family_for_user", "userAgent family vs the user's", "kubectl to curl or a script: a different hand on the keys", 0.5),
    HistoryFlag("new_user_agent_for_user", "userAgent vs the user's", "a client build this identity never used", 0.25),
    HistoryFlag("new_action_for_user", "(verb, resource) vs the user's", "something this identity never did", 0.5),
)
HISTORY_FLAG_NAMES = tuple(f.name for f in HISTORY_FLAGS)


def python_values(series: pd.Series) -> np.ndarray:
    """Plain Python values (None for missing) for fast Python loops over Arrow-backed columns."""
    return series.astype(object).where(series.notna(), None).to_numpy(dtype=object)


def add_history_flags(events: pd.DataFrame, history: dict) -> pd.DataFrame:
    """The events with every history flag as a boolean column.

    ``history`` maps ("user", username) to a record with ``peers``, ``user_agents``,
    ``ua_families`` and ``verb_resources`` sets (pipeline.stages.entity_history); pass {}
    where there is no history to judge against (every flag False).
    """
    flags = no_history(len(events))
    if history and len(events):
        uri_path = events["request_uri"].fillna("").str.split("?", n=1).str[0]
        actions = python_values(events["verb"].fillna("") + " " + events["resource"].fillna(uri_path))
        rows = zip(python_values(events["user"]), python_values(events["source_ip"]), python_values(events["user_agent"]), actions)
        for index, (user, ip, agent, action) in enumerate(rows):
            if user is None:
                continue
            known = history.get(("user", user))
            if known is None:
                flags["new_identity"][index] = True
                continue
            flags["new_source_for_user"][index] = ip is not None and ip not in known.peers
            flags["new_user_agent_for_user"][index] = agent is not None and agent not in known.user_agents
            flags["new_client_family_for_user"][index] = user_agent_family(agent) not in known.ua_families
            flags["new_action_for_user"][index] = action not in known.verb_resources
    return events.assign(**flags)


def history_flags(columns: EventColumns, history: dict) -> dict[str, np.ndarray]:
    """``add_history_flags`` of events read column by column (``EventColumns``, e.g. the FlagInputs of
    features.flags.flag_events): every history flag as a boolean array, each judged once per distinct
    (identity, address), (identity, client) or (identity, action) pair instead of once per event."""
    flags = no_history(columns.rows)
    if not history or not columns.rows:
        return flags
    users, names = columns.encoded("user")
    known = [None if name is None else history.get(("user", name)) for name in names]
    flags["new_identity"] = np.array([name is not None and record is None for name, record in zip(names, known)], dtype=bool)[users]
    identity = (users, known)
    judged = {
        "new_source_for_user": (columns.encoded("source_ip"), lambda record, ip: ip is not None and ip not in record.peers),
        "new_user_agent_for_user": (columns.encoded("user_agent"), lambda record, agent: agent is not None and agent not in record.user_agents),
        "new_client_family_for_user": (columns.encoded("user_agent"), lambda record, agent: user_agent_family(agent) not in record.ua_families),
        "new_action_for_user": (verb_resources(columns, np.arange(columns.rows)), lambda record, action: action not in record.verb_resources),
    }
    for name, (values, judge) in judged.items():
        combination, results = combine([identity, values], lambda record, value: record is not None and judge(record, value))
        flags[name] = np.array(results, dtype=bool)[combination]
    return flags


def no_history(rows: int) -> dict[str, np.ndarray]:
    """Every history flag False: their value where no history is judged (the features stage)."""
    return {name: np.zeros(rows, dtype=bool) for name in HISTORY_FLAG_NAMES}


def history_score(events: pd.DataFrame) -> np.ndarray:
    """How much novelty adds to an event's score (weights declared in HISTORY_FLAGS)."""
    return sum(events[f.name].to_numpy(dtype=float) * f.event_weight for f in HISTORY_FLAGS)
