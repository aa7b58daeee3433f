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
import pyarrow as pa
import pyarrow.compute as pc

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


def _encode(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, -1 where missing; distinct values) with codes numbered in sorted value order,
    so codes sort exactly as the values do."""
    encoded = pc.dictionary_encode(values)
    uniques = encoded.dictionary.to_pylist()
    order = sorted(range(len(uniques)), key=uniques.__getitem__)
    rank = np.empty(len(uniques) + 1, dtype=np.int64)
    rank[order] = np.arange(len(uniques))
    rank[-1] = -1
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    return rank[codes], np.array([uniques[i] for i in order], dtype=object)


# Requests the API server treats as long-running log ResponseStarted when the response begins
# and ResponseComplete when it ends, possibly hours later (k8s BasicLongRunningRequestCheck).
LONG_RUNNING_VERBS = ("watch", "proxy")
LONG_RUNNING_SUBRESOURCES = ("attach", "exec", "log", "portforward", "proxy")


def _request_rows(events: pd.DataFrame, step: int) -> np.ndarray:
    """Positions of one row per request, so that each request counts in exactly one window.

    Within a partial, a request's RequestReceived row yields to its other stages and the first
    remaining row counts. Across partials, a long-running request's ResponseComplete row does not
    count when the request was received in an earlier window: its ResponseStarted row, logged when
    the response began, counted it there (an exec session crossing the hour counts once)."""
    if "stage" not in events:
        return np.arange(len(events))
    ids = pc.dictionary_encode(pa.array(events["audit_id"], from_pandas=True), null_encoding="encode").indices.to_numpy()
    repeated = np.bincount(ids)[ids] > 1
    stage = events["stage"]
    received = (stage == "RequestReceived").fillna(False).to_numpy(dtype=bool)
    keep = ~received | ~repeated
    if "received_time" in events:
        long_running = (events["verb"].isin(LONG_RUNNING_VERBS) | events["subresource"].isin(LONG_RUNNING_SUBRESOURCES)).to_numpy(dtype=bool)
        completes = (stage == "ResponseComplete").fillna(False).to_numpy(dtype=bool) & long_running
        if completes.any():
            started = events["received_time"].to_numpy(dtype="datetime64[us]")
            ended = events["time"].to_numpy(dtype="datetime64[us]")
            known = ~np.isnat(started)
            earlier = np.zeros(len(events), dtype=bool)
            earlier[known] = started[known].view(np.int64) // step < ended[known].view(np.int64) // step
            keep &= ~(completes & earlier)
    kept = np.flatnonzero(keep)
    _, first = np.unique(ids[kept], return_index=True)
    return kept[np.sort(first)]


def partial_aggregates(events: pd.DataFrame, window_minutes: int, entity_types: Iterable[str]) -> pd.DataFrame:
    """Map step: flagged events (see features.flags.add_flags) -> partial aggregates per key.

    Vectorised: rows are grouped by integer codes of (entity, window) and distinct values
    are collected as unique (group, value code) pairs, so the cost is a few array passes per
    hour instead of a pandas groupby per set. Same table as a plain pandas groupby would give
    (tests/test_fast_paths.py holds that reference).
    """
    step = window_minutes * 60_000_000
    rows = _request_rows(events, step)
    if len(rows) == 0:
        return empty_partials()
    taken = pa.array(rows)

    def column(name: str) -> pa.Array:
        return pa.array(events[name], from_pandas=True).take(taken).cast(pa.string())

    micros = events["time"].to_numpy(dtype="datetime64[us]").view(np.int64)[rows]
    windows = micros // step * step
    resource, namespace, name = column("resource"), column("namespace"), column("name")
    uris = pc.dictionary_encode(pc.fill_null(column("request_uri"), ""))
    uri_path = pa.array([uri.split("?", 1)[0] for uri in uris.dictionary.to_pylist()], pa.string()).take(uris.indices)
    object_key = pc.if_else(pc.is_valid(name), pc.binary_join_element_wise(
        pc.fill_null(resource, ""), pc.fill_null(namespace, ""), pc.fill_null(name, ""), "/"), pa.scalar(None, pa.string()))
    sources = {
        "namespace": namespace, "resource": resource, "object_key": object_key, "uri_path": uri_path,
        "user_agent": column("user_agent"), "ua_family": column("ua_family"),
        "verb_resource": pc.binary_join_element_wise(pc.fill_null(column("verb"), ""), pc.coalesce(resource, uri_path), " "),
    }
    encoded = {key: _encode(values) for key, values in sources.items()}
    people = {c: _encode(column(c)) for c in set(ENTITY_COLUMNS.values())}
    flags = events[list(FLAG_NAMES)].to_numpy(dtype=np.uint8)[rows]
    filters = {None: None, **{f: flags[:, FLAG_NAMES.index(f)].astype(bool) for _, f in SET_COLUMNS.values() if f}}
    frames = []
    for entity_type in entity_types:
        entity_column = ENTITY_COLUMNS[entity_type]
        entity_codes, entity_values = people[entity_column]
        present = np.flatnonzero(entity_codes >= 0)
        if len(present) == 0:
            continue
        span = int(windows.max() - windows.min()) // step + 1
        group_key = entity_codes[present] * span + (windows[present] - windows.min()) // step
        keys, group = np.unique(group_key, return_inverse=True)
        order = np.argsort(group, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
        sizes = np.diff(np.r_[starts, len(order)])
        frame = {
            "entity_type": entity_type,
            "entity": pd.array(entity_values[keys // span], dtype="str"),
            "window_start": _utc(keys % span * step + windows.min()),
            "n": sizes.astype(np.int64),
        }
        counts = np.add.reduceat(flags[present[order]], starts, axis=0, dtype=np.int64)
        for index, flag in enumerate(FLAG_NAMES):
            frame[f"n_{flag}"] = counts[:, index]
        times = micros[present][order]
        frame["first_time"] = _utc(np.minimum.reduceat(times, starts))
        frame["last_time"] = _utc(np.maximum.reduceat(times, starts))
        peers = people[ENTITY_COLUMNS["source_ip" if entity_type == "user" else "user"]]
        for set_name, (source, flag) in SET_COLUMNS.items():
            codes, values = peers if source == "peer" else encoded[source]
            frame[set_name] = _distinct_lists(group, codes[present], values, len(keys), None if flag is None else filters[flag][present])
        frames.append(pd.DataFrame(frame))
    if not frames:
        return empty_partials()
    return pd.concat(frames, ignore_index=True)[PARTIAL_COLUMNS]


def _distinct_lists(group: np.ndarray, codes: np.ndarray, values: np.ndarray, groups: int, keep: np.ndarray | None) -> list[list]:
    """Per group, the sorted distinct non-missing values (``codes`` are numbered in value order)."""
    mask = codes >= 0 if keep is None else (codes >= 0) & keep
    pairs = np.unique(group[mask] * (len(values) + 1) + codes[mask])
    owners, value_codes = np.divmod(pairs, len(values) + 1)
    lists: list[list] = [[] for _ in range(groups)]
    if len(pairs):
        bounds = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1], True])
        chosen = values[value_codes].tolist()
        for begin, end in zip(bounds[:-1], bounds[1:]):
            lists[owners[begin]] = chosen[begin:end]
    return lists


def _utc(micros: np.ndarray) -> pd.Series:
    return pd.Series(micros.astype("datetime64[us]")).dt.tz_localize("UTC")


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
