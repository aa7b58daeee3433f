"""Map and reduce steps of feature extraction: events -> partial aggregates -> merged partials.

- ``partial_aggregates``: flagged events of any shard -> counts and distinct-value sets per
  (entity_type, entity, window_start);
- ``reduce_partials``: partials of any shards -> one row per key (counts add, sets union).
Partials of any split of the events reduce to the same table, so hours, files or
Processing-job instances can be mapped independently (features.windows.finalise follows).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from features.flags import FLAG_NAMES

KEY = ["entity_type", "entity", "window_start"]

ENTITY_COLUMNS = {"user": "user", "source_ip": "source_ip"}

# Distinct-value sets kept per window: name -> (column or builder, which flag filters rows, or None).
SET_COLUMNS: dict[str, tuple[str, str | None]] = {
    "namespaces": ("namespace", None),
    "resources": ("resource", None),
    "object_names": ("object_key", None),
    "uris": ("uri_path", None),
    "secret_names": ("object_key", "secret_read"),
    "listed_resources": ("resource", "list_or_watch"),
    "user_agents": ("user_agent", None),
    "ua_families": ("ua_family", None),
    "verb_resources": ("verb_resource", None),
    "peers": ("peer", None),
}
COUNT_COLUMNS = ("n",) + tuple(f"n_{name}" for name in FLAG_NAMES)
SET_NAMES = tuple(SET_COLUMNS)


def _request_rows(events: pd.DataFrame) -> pd.DataFrame:
    """One row per request: exec-style requests log ResponseStarted and ResponseComplete; count them once."""
    if "stage" not in events or events.empty:
        return events
    keep = events["stage"].ne("RequestReceived") | ~events["audit_id"].duplicated(keep=False)
    events = events[keep.to_numpy()]
    return events[~events.duplicated(subset=["audit_id"], keep="first").to_numpy()]


def partial_aggregates(events: pd.DataFrame, window_minutes: int, entity_types: Iterable[str]) -> pd.DataFrame:
    """Map step: flagged events (see features.flags.add_flags) -> partial aggregates per key."""
    events = _request_rows(events)
    if events.empty:
        return empty_partials()
    window = events["time"].dt.floor(f"{window_minutes}min")
    uri_path = events["request_uri"].fillna("").str.split("?", n=1).str[0]
    derived = pd.DataFrame({
        "window_start": window,
        "object_key": _object_key(events),
        "uri_path": uri_path,
        "verb_resource": events["verb"].fillna("") + " " + events["resource"].fillna(uri_path),
        "namespace": events["namespace"],
        "resource": events["resource"],
        "user_agent": events["user_agent"],
        "ua_family": events["ua_family"],
        "time": events["time"],
    })
    flags = events[list(FLAG_NAMES)].astype(np.int64)
    frames = []
    for entity_type in entity_types:
        column = ENTITY_COLUMNS[entity_type]
        entity = events[column]
        peer = events["source_ip" if entity_type == "user" else "user"]
        frame = pd.concat([derived.assign(entity=entity, peer=peer), flags], axis=1)
        frame = frame[frame["entity"].notna().to_numpy()]
        if frame.empty:
            continue
        grouped = frame.groupby(["entity", "window_start"], sort=True, observed=True)
        counts = grouped[list(FLAG_NAMES)].sum()
        counts.columns = [f"n_{c}" for c in counts.columns]
        counts.insert(0, "n", grouped.size())
        counts["first_time"] = grouped["time"].min()
        counts["last_time"] = grouped["time"].max()
        for set_name, (source, flag) in SET_COLUMNS.items():
            rows = frame if flag is None else frame[frame[flag].to_numpy(dtype=bool)]
            pairs = rows[["entity", "window_start", source]].dropna().drop_duplicates()
            lists = pairs.groupby(["entity", "window_start"], sort=True)[source].agg(lambda s: sorted(s))
            counts[set_name] = lists.reindex(counts.index)
            counts[set_name] = counts[set_name].map(lambda v: v if isinstance(v, list) else [])
        counts = counts.reset_index()
        counts.insert(0, "entity_type", entity_type)
        frames.append(counts)
    if not frames:
        return empty_partials()
    return pd.concat(frames, ignore_index=True)[PARTIAL_COLUMNS]


def _object_key(events: pd.DataFrame) -> pd.Series:
    return (events["resource"].fillna("") + "/" + events["namespace"].fillna("") + "/" + events["name"].fillna("")).where(
        events["name"].notna(), None
    )


PARTIAL_COLUMNS = KEY + list(COUNT_COLUMNS) + ["first_time", "last_time"] + list(SET_NAMES)


def empty_partials() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="int64") for c in COUNT_COLUMNS})
    frame.insert(0, "window_start", pd.Series(dtype="datetime64[us, UTC]"))
    frame.insert(0, "entity", pd.Series(dtype="str"))
    frame.insert(0, "entity_type", pd.Series(dtype="str"))
    frame["first_time"] = pd.Series(dtype="datetime64[us, UTC]")
    frame["last_time"] = pd.Series(dtype="datetime64[us, UTC]")
    for name in SET_NAMES:
        frame[name] = pd.Series(dtype="object")
    return frame[PARTIAL_COLUMNS]


def reduce_partials(partials: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Reduce step: merge partials from any shards; counts add, sets union, times min/max."""
    frames = [p for p in partials if len(p)]
    if not frames:
        return empty_partials()
    merged = pd.concat(frames, ignore_index=True)
    duplicated = merged.duplicated(subset=KEY, keep=False).to_numpy()
    if duplicated.any():
        single = merged[~duplicated]
        multi = merged[duplicated]
        grouped = multi.groupby(KEY, sort=False)
        combined = grouped[list(COUNT_COLUMNS)].sum()
        combined["first_time"] = grouped["first_time"].min()
        combined["last_time"] = grouped["last_time"].max()
        for name in SET_NAMES:
            combined[name] = grouped[name].agg(lambda lists: sorted(set().union(*map(set, lists))))
        merged = pd.concat([single, combined.reset_index()[PARTIAL_COLUMNS]], ignore_index=True)
    merged["window_start"] = pd.to_datetime(merged["window_start"], utc=True)
    for name in SET_NAMES:
        merged[name] = merged[name].map(lambda v: sorted(v) if v is not None else [])
    return merged.sort_values(KEY, kind="stable").reset_index(drop=True)[PARTIAL_COLUMNS]
