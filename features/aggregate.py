"""Map and reduce steps of feature extraction: events -> partial aggregates -> merged partials.

- ``partial_table``: flagged events of any shard -> counts and distinct-value sets per
  (entity_type, entity, window_start), as an Arrow table (``partial_aggregates``: as a DataFrame);
- ``reduce_partials``: partials of any shards -> one row per key (counts add, sets union).
Partials of any split of the events reduce to the same table, so hours, files or
Processing-job instances can be mapped independently (features.windows.finalise follows).
"""
from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.columns import MICROS, EventColumns, combine, in_sorted, rank_values, run_heads, sorted_distinct
from features.events import REQUEST_IDENTITY
from features.flags import FLAG_NAMES, FlagInputs

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
# Event columns ``partial_table`` reads beside the flags' (features.flags.flag_columns): the request's
# identity, stage and times (``_request_rows``, windows), the entities, and the columns the sets are built
# from (uri_path from request_uri, object_key from resource/namespace/name, verb_resource from verb and
# resource or request_uri, ua_family from user_agent).
AGGREGATE_COLUMNS = frozenset({
    "audit_id", "stage", "time", "received_time", "verb", "subresource", *ENTITY_COLUMNS.values(),
    "namespace", "resource", "name", "request_uri", "user_agent",
})


# Requests the API server treats as long-running log ResponseStarted when the response begins
# and ResponseComplete when it ends, possibly hours later (k8s BasicLongRunningRequestCheck).
LONG_RUNNING_VERBS = ("watch", "proxy")
LONG_RUNNING_SUBRESOURCES = ("attach", "exec", "log", "portforward", "proxy")


# What ``_request_rows`` reads: the request's identity (features.events.REQUEST_IDENTITY), its stage, times and kind
REQUEST_COLUMNS = tuple(dict.fromkeys(REQUEST_IDENTITY + ("stage", "time", "verb", "subresource")))


def request_rows(events: pa.Table, window_minutes: int) -> np.ndarray:
    """``_request_rows`` of a table of at least the ``REQUEST_COLUMNS``: one row per request."""
    return _request_rows(EventColumns(events), window_minutes * 60_000_000)


def _request_rows(columns: EventColumns, step: int) -> np.ndarray:
    """Positions of one row per request, so that each request counts in exactly one window.

    A request is its auditID and what its stages share (``EventColumns.requests``): two requests a
    client sent under one Audit-ID both count. Within a partial, a request's RequestReceived row
    yields to its other stages and the first remaining row counts. Across partials, a long-running request's ResponseComplete row does not
    count when the request was received in an earlier window: its ResponseStarted row, logged when
    the response began, counted it there (an exec session crossing the hour counts once)."""
    if "stage" not in columns:
        return np.arange(columns.rows)
    ids = columns.requests()
    return _one_per_request(ids, np.bincount(ids)[ids] > 1, *_stage_marks(columns, step))


def _stage_marks(columns: EventColumns, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: is it a RequestReceived row; is it the ResponseComplete row of a long-running request received in an
    earlier window (``_request_rows``)."""
    received = columns.where("stage", lambda v: v == "RequestReceived")
    late = np.zeros(columns.rows, dtype=bool)
    if "received_time" in columns:
        long_running = (columns.where("verb", lambda v: v in LONG_RUNNING_VERBS)
                        | columns.where("subresource", lambda v: v in LONG_RUNNING_SUBRESOURCES))
        completes = columns.where("stage", lambda v: v == "ResponseComplete") & long_running
        if completes.any():
            started = columns.micros("received_time")
            known = ~columns.missing("received_time")
            late[known] = started[known] // step < columns.micros("time")[known] // step
            late &= completes
    return received, late


def _one_per_request(ids: np.ndarray, repeated: np.ndarray, received: np.ndarray, late: np.ndarray, size: int | None = None) -> np.ndarray:
    """The first row of each request (equal ``ids``; given ``size``, the ids are numbers below it) that is neither a
    RequestReceived row of a request with other rows (``repeated``) nor ``late``."""
    kept = np.flatnonzero((~received | ~repeated) & ~late)
    if size is None:
        _, first = np.unique(ids[kept], return_index=True)
        return kept[np.sort(first)]
    first = np.full(size, len(ids), dtype=np.int64)
    np.minimum.at(first, ids[kept], kept)
    return np.sort(first[first < len(ids)])


_id_hash = hash  # Python's string hash: keyed per process, so no input can choose its collisions


def hour_requests(batches: Callable[[], Iterable[pa.Table]], window_minutes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """For an hour read in batches (``batches()`` yields its tables of the ``REQUEST_COLUMNS`` in row order), what is
    judged over the whole hour: ``request_rows``, and per row whether its auditID has more than one request (the
    ``audit_id_reused`` flag).

    A request is its ``REQUEST_IDENTITY`` (``EventColumns.requests``), held as a 64-bit hash of its values
    (``_id_hash``), and each auditID as a hash of it; beside each, a second hash of the same values
    (``_check_hash``). Rows that share the first hash but not the second are different values that collide, and
    then None is returned: the caller reads the hour at once, where requests are compared exactly. Different values
    that share both hashes go unnoticed with a chance of 2**-64 a pair, which no input can raise: both are keyed per
    process. 32 bytes an event, where the ids of a busy hour take hundreds of MB; comparing the values behind every
    hash met in two batches instead made this take 28 s and 1.2 GB for the bench's 3.5-million-event hour."""
    step = window_minutes * 60_000_000
    found: dict[str, list] = {"request": [], "request_check": [], "id": [], "id_check": [], "received": [], "late": []}
    for table in batches():
        columns = EventColumns(table)
        for suffix, function in (("", _id_hash), ("_check", _check_hash)):
            ids = columns.hashes("audit_id", function)
            requests = ids
            for name in REQUEST_IDENTITY[1:]:
                values = columns.micros(name).view(np.uint64) if pa.types.is_timestamp(columns.array(name).type) else columns.hashes(name, function)
                requests = _mix(requests, values)
            found["id" + suffix].append(ids)
            found["request" + suffix].append(requests)
        for name, marks in zip(("received", "late"), _stage_marks(columns, step)):
            found[name].append(marks)
    requests, checks = (np.concatenate(found.pop(name)) for name in ("request", "request_check"))  # the batches' arrays freed as joined
    order = np.argsort(requests, kind="stable")
    heads = run_heads(requests[order])
    if _collide(heads, checks[order]):
        return None
    del requests, checks
    starts = np.flatnonzero(heads)
    group = np.empty(len(order), dtype=np.int64)
    group[order] = np.cumsum(heads) - 1
    counts = np.diff(np.r_[starts, len(order)])
    rows = _one_per_request(group, counts[group] > 1, np.concatenate(found.pop("received")), np.concatenate(found.pop("late")), len(counts))
    ids, checks = (np.concatenate(found.pop(name)) for name in ("id", "id_check"))
    by_id = np.argsort(ids, kind="stable")
    if _collide(run_heads(ids[by_id]), checks[by_id]):
        return None
    # a request's hash is a function of its auditID's, so an auditID with two request hashes has two requests
    owners = np.sort(ids[order[starts]])
    return rows, in_sorted(ids, sorted_distinct(owners[1:][owners[1:] == owners[:-1]]))


def _check_hash(value) -> int:
    """A second 64-bit hash, independent of ``_id_hash``: the same keyed hash of another message (the value behind a
    NUL character), so two values that share their ``_id_hash`` share this one only by chance."""
    return hash("\x00" + value) if isinstance(value, str) else hash((0, value))


def _collide(heads: np.ndarray, checks: np.ndarray) -> bool:
    """Whether a run of equal keys (``heads``, over rows sorted by key) holds two different check hashes."""
    return bool(np.any(~heads[1:] & (checks[1:] != checks[:-1])))


def hit_counts(keys: np.ndarray, hits: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct key of the rows some of ``hits`` (boolean columns) mark: (those keys, sorted; the number of rows
    each column marks per key, one column each). Rows no column marks are never grouped: hits are sparse."""
    rows = np.flatnonzero(np.logical_or.reduce(hits)) if hits else np.zeros(0, dtype=np.int64)
    found, group = np.unique(keys[rows], return_inverse=True)
    counts = [np.bincount(group, weights=hit[rows], minlength=len(found)) for hit in hits]
    return found, np.column_stack(counts).astype(np.int64) if counts else np.zeros((len(found), 0), dtype=np.int64)


def _mix(state: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A hash of (state, value) per row from two 64-bit hashes (a multiply-xorshift step; arithmetic wraps at 2**64)."""
    with np.errstate(over="ignore"):
        mixed = (state ^ values) * np.uint64(0x9E3779B97F4A7C15) + (state >> np.uint64(29))
        return mixed ^ (mixed >> np.uint64(32))


def _combined(parts: list[tuple[np.ndarray, list]], join: Callable[..., str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Ranked codes (see ``EventColumns.ranked``) of ``join(*values)`` per row, where ``parts`` are
    (code per row, values) as ``EventColumns.encoded`` gives them: the join runs once per distinct
    combination of values (``features.columns.combine``)."""
    return rank_values(*combine(parts, join))


def _object_key(resource, namespace, name) -> str | None:
    return None if name is None else f"{resource or ''}/{namespace or ''}/{name}"


def _uri_path(uri: str | None) -> str:
    return (uri or "").split("?", 1)[0]


def _verb_resource(verb, target) -> str:
    return f"{verb or ''} {target}"


def verb_resources(columns: EventColumns, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What each of ``rows`` did, as ranked codes (``EventColumns.ranked``) of "verb resource", or "verb /uri/path"
    for a request without a resource: the values of the ``verb_resources`` set, and what ``new_action_for_user``
    (features.novelty) judges against an identity's history."""
    if "uri_path" not in columns:
        columns.derive("uri_path", "request_uri", _uri_path)
    return _combined(_verb_target(columns, rows), _verb_resource)


def _verb_target(columns: EventColumns, rows: np.ndarray) -> list[tuple[np.ndarray, list]]:
    """(verb, resource or else the URI path) at ``rows``, as ``_combined`` parts."""
    resources, resource_values = columns.encoded("resource")
    paths, path_values = columns.encoded("uri_path")
    missing = resources[rows] == len(resource_values) - 1
    target = np.where(missing, len(resource_values) + paths[rows], resources[rows])
    verbs, verb_values = columns.encoded("verb")
    return [(verbs[rows], verb_values), (target, resource_values + path_values)]


def partial_aggregates(events: pd.DataFrame | FlagInputs, window_minutes: int, entity_types: Iterable[str]) -> pd.DataFrame:
    """``partial_table`` as a DataFrame (``partials_as_frame``)."""
    return partials_as_frame(partial_table(events, window_minutes, entity_types))


def partial_table(events: pd.DataFrame | FlagInputs, window_minutes: int, entity_types: Iterable[str],
                  rows: np.ndarray | None = None) -> pa.Table:
    """Map step: flagged events (a DataFrame from features.flags.add_flags, or the FlagInputs of
    ``flag_events``) -> partial aggregates per key, as an Arrow table of ``PARTIAL_SCHEMA``.

    Vectorised: rows are grouped by integer codes of (entity, window) and distinct values
    are collected as unique (group, value code) pairs, so the cost is a few array passes per
    hour instead of a pandas groupby per set; string values are built once per distinct value,
    and the table is assembled from arrays, never through a DataFrame.
    Same table as a plain pandas groupby would give (tests/test_fast_paths.py holds that reference).
    ``rows`` are the positions of one row per request (``request_rows``), when a piece of an hour is mapped
    with the requests judged over the whole hour.
    """
    if isinstance(events, FlagInputs):
        columns, flag_values = events, events.flags
    else:
        columns, flag_values = EventColumns(events), {name: events[name].to_numpy(dtype=bool) for name in FLAG_NAMES}
    step = window_minutes * 60_000_000
    rows = _request_rows(columns, step) if rows is None else rows
    if len(rows) == 0:
        return PARTIAL_SCHEMA.empty_table()
    micros = columns.micros("time")[rows]
    windows = micros // step * step
    columns.derive("uri_path", "request_uri", _uri_path)
    sources = {
        "namespace": columns.ranked("namespace"), "resource": columns.ranked("resource"), "uri_path": columns.ranked("uri_path"),
        "user_agent": columns.ranked("user_agent"), "ua_family": columns.ranked("ua_family"),
    }
    sources = {name: (codes[rows], values) for name, (codes, values) in sources.items()}
    sources["object_key"] = _combined([(codes[rows], values) for codes, values in map(columns.encoded, ("resource", "namespace", "name"))],
                                      _object_key)
    sources["verb_resource"] = verb_resources(columns, rows)
    people = {c: (columns.ranked(c)[0][rows], columns.ranked(c)[1]) for c in set(ENTITY_COLUMNS.values())}
    # The distinct values of every set source and of the peers, one Arrow array (each source at its base), so the
    # values of all ten set columns are taken at once per entity type: a take has a fixed cost whatever its size.
    value_arrays = [pa.array(values, pa.string()) for _, values in (*sources.values(), *people.values())]
    bases = np.cumsum([0] + [len(values) for values in value_arrays])
    all_values = pa.concat_arrays(value_arrays)
    sources = {name: (codes, int(base), len(values)) for (name, (codes, values)), base in zip(sources.items(), bases)}
    peer_values = {c: (int(base), len(values)) for (c, (_, values)), base in zip(people.items(), bases[len(sources):])}
    flag_rows = [np.flatnonzero(flag_values[name][rows]) for name in FLAG_NAMES]  # flags are sparse: count the rows that have each
    flag_of_row, flagged_rows = np.repeat(np.arange(len(FLAG_NAMES)), [len(r) for r in flag_rows]), np.concatenate(flag_rows)
    filters = {f: flag_values[f][rows] for _, f in SET_COLUMNS.values() if f}
    batches = []
    for entity_type in entity_types:
        entity_codes, entity_values = people[ENTITY_COLUMNS[entity_type]]
        present = np.flatnonzero(entity_codes >= 0)
        if len(present) == 0:
            continue
        span = int(windows.max() - windows.min()) // step + 1
        group_key = entity_codes[present] * span + (windows[present] - windows.min()) // step
        order = np.argsort(group_key, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(group_key[order]) != 0])
        keys = group_key[order[starts]]
        group = np.empty(len(present), dtype=np.int64)
        group[order] = np.cumsum(np.r_[True, np.diff(group_key[order]) != 0]) - 1
        group_of_row = np.full(len(rows), -1, dtype=np.int64)
        group_of_row[present] = group
        times = micros[present][order]
        batch = {
            "entity_type": pa.array(np.full(len(keys), entity_type, dtype=object), pa.large_string()),
            "entity": pa.array(entity_values[keys // span], pa.large_string()),
            "window_start": pa.array(keys % span * step + windows.min(), MICROS),
            "n": np.diff(np.r_[starts, len(order)]).astype(np.int64),
            "first_time": pa.array(np.minimum.reduceat(times, starts), MICROS),
            "last_time": pa.array(np.maximum.reduceat(times, starts), MICROS),
        }
        # every flag's count per group by one bincount over (flag, group), made one Arrow array of which each
        # count column is a slice: a bincount and a numpy-to-Arrow conversion per flag cost more
        owner = group_of_row[flagged_rows]
        counted = owner >= 0
        counts = pa.array(np.bincount(flag_of_row[counted] * len(keys) + owner[counted], minlength=len(FLAG_NAMES) * len(keys)).astype(np.int64))
        for index, flag in enumerate(FLAG_NAMES):
            batch[f"n_{flag}"] = counts.slice(index * len(keys), len(keys))
        peer_column = ENTITY_COLUMNS["source_ip" if entity_type == "user" else "user"]
        peers = (people[peer_column][0], *peer_values[peer_column])
        lists = {}
        for set_name, (source, flag) in SET_COLUMNS.items():
            codes, base, size = peers if source == "peer" else sources[source]
            offsets, value_codes = _distinct_lists(group, codes[present], size, len(keys), None if flag is None else filters[flag][present])
            lists[set_name] = (offsets, value_codes + base)
        taken = all_values.take(np.concatenate([value_codes for _, value_codes in lists.values()]))
        start = 0
        for set_name, (offsets, value_codes) in lists.items():
            batch[set_name] = pa.ListArray.from_arrays(offsets, taken.slice(start, len(value_codes)))
            start += len(value_codes)
        batches.append(pa.record_batch([batch[name] for name in PARTIAL_COLUMNS], schema=PARTIAL_SCHEMA))
    return pa.Table.from_batches(batches, schema=PARTIAL_SCHEMA)


def _distinct_lists(group: np.ndarray, codes: np.ndarray, size: int, groups: int, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the sorted distinct non-missing values (``codes`` into ``size`` values, numbered in value order),
    as a list array's (offsets, value codes)."""
    mask = codes >= 0 if keep is None else (codes >= 0) & keep
    pairs = group[mask] * (size + 1) + codes[mask]
    space = groups * (size + 1)
    if space <= 4 * len(pairs) + 65_536:  # few possible pairs: mark them in a table, which comes out sorted, no sort
        seen = np.zeros(space, dtype=bool)
        seen[pairs] = True
        pairs = np.flatnonzero(seen)
    else:
        pairs = sorted_distinct(pairs)
    owners, value_codes = np.divmod(pairs, size + 1)
    offsets = np.zeros(groups + 1, dtype=np.int32)
    np.cumsum(np.bincount(owners, minlength=groups), out=offsets[1:])
    return offsets, value_codes


def combine_partials(tables: list[pa.Table], entity_types: Iterable[str]) -> pa.Table:
    """``partial_table`` of pieces of one hour (every request in one piece) as ``partial_table`` of the whole hour
    gives it: per key, counts add, first and last times are the least and the greatest, sets unite; rows and set
    values in the same order (entity types as listed, then entity and window, values sorted)."""
    tables = [table for table in tables if len(table)]
    if len(tables) < 2:
        return tables[0] if tables else PARTIAL_SCHEMA.empty_table()
    return _reduced(pa.concat_tables(tables), entity_types)


def reduce_tables(tables: Iterable[pa.Table]) -> pd.DataFrame:
    """``reduce_partials`` of the partials of many hours as Arrow tables (``partial_table``, cache files), reduced in
    Arrow before one conversion: the same frame, without a Python list per set and window made twice."""
    tables = [table if table.schema == PARTIAL_SCHEMA else table.select(PARTIAL_COLUMNS).cast(PARTIAL_SCHEMA)
              for table in tables if len(table)]
    if not tables:
        return empty_partials()
    table = _reduced(pa.concat_tables(tables), sorted(ENTITY_COLUMNS))
    frame = table.drop_columns(list(SET_NAMES)).to_pandas()
    for name in SET_NAMES:
        frame[name] = _python_lists(table[name].combine_chunks())
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    return frame[PARTIAL_COLUMNS]


def _python_lists(lists: pa.ListArray) -> list[list]:
    """A list array (no nulls) as Python lists that share one str per distinct value: a window's sets repeat the
    same few values, and a str per cell (``to_pylist``) holds every repeat again (docs/performance.md)."""
    encoded = pc.dictionary_encode(lists.flatten())
    flat = iter(np.array(encoded.dictionary.to_pylist(), dtype=object)[encoded.indices.to_numpy(zero_copy_only=False)].tolist())
    return [list(islice(flat, length)) for length in np.diff(lists.offsets.to_numpy()).tolist()]


def _reduced(table: pa.Table, entity_types: Iterable[str]) -> pa.Table:
    """``table``'s rows combined per key (``combine_partials``) and ordered by entity type as listed, entity, window.
    Columns are combined one at a time (a table of many hours is in many chunks)."""
    order, starts, group = _key_order(table, entity_types, [])
    columns = {name: table[name].take(pa.array(order[starts])) for name in KEY}
    for name in COUNT_COLUMNS:
        columns[name] = pa.array(np.add.reduceat(table[name].to_numpy()[order], starts))
    for name, reduce in (("first_time", np.minimum), ("last_time", np.maximum)):
        columns[name] = pa.array(reduce.reduceat(table[name].cast(pa.int64()).to_numpy()[order], starts), MICROS)
    for name in SET_NAMES:
        lists = table[name].combine_chunks()
        codes, distinct = _sorted_codes(lists.flatten())
        offsets, value_codes = _distinct_lists(group[pc.list_parent_indices(lists).to_numpy()], codes, len(distinct), len(starts), None)
        columns[name] = pa.ListArray.from_arrays(offsets, distinct.cast(pa.string()).take(value_codes))
    return pa.table([columns[name] for name in PARTIAL_COLUMNS], schema=PARTIAL_SCHEMA)


def combine_rule_partials(tables: list[pa.Table], entity_types: Iterable[str], rules: list[str]) -> pa.Table:
    """Rule hit counts (``pipeline.stages.rule_partials``) of pieces of one hour as those of the whole hour: counts
    add per (entity_type, entity, window_start, rule); rows ordered by entity type as listed, then rule as in
    ``rules``, entity and window."""
    filled = [table for table in tables if len(table)]
    if len(filled) < 2:
        return filled[0] if filled else tables[0]
    table = pa.concat_tables(filled).combine_chunks()
    order, starts, _ = _key_order(table, entity_types, rules)
    columns = [table[name].take(pa.array(order[starts])) for name in (*KEY, "rule")]
    return pa.table(columns + [pa.array(np.add.reduceat(table["count"].to_numpy()[order], starts))], schema=table.schema)


def _sorted_codes(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(code per value numbered in sorted order, the sorted distinct values) of text without nulls; sorted by Arrow,
    whose order of UTF-8 bytes is Python's order of str."""
    encoded = pc.dictionary_encode(values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
    order = pc.array_sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[encoded.indices.to_numpy(zero_copy_only=False)], encoded.dictionary.take(pa.array(order))


def _key_order(table: pa.Table, entity_types: Iterable[str], rules: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``table`` ordered by (entity type as listed, [rule as listed,] entity, window): (order, where each
    key starts in it, the key's number per row)."""
    types = pc.index_in(table["entity_type"], value_set=pa.array(list(entity_types), pa.large_string())).to_numpy(zero_copy_only=False)
    entities = _sorted_codes(table["entity"])[0]
    windows = table["window_start"].cast(pa.int64()).to_numpy()
    keys = [windows, entities]
    if rules:
        keys.append(pc.index_in(table["rule"], value_set=pa.array(rules, pa.large_string())).to_numpy(zero_copy_only=False))
    order = np.lexsort(keys + [types])
    changed = np.zeros(len(order), dtype=bool)
    changed[0] = True
    for key in keys + [types]:
        changed[1:] |= key[order][1:] != key[order][:-1]
    group = np.empty(len(order), dtype=np.int64)
    group[order] = np.cumsum(changed) - 1
    return order, np.flatnonzero(changed), group


PARTIAL_COLUMNS = KEY + list(COUNT_COLUMNS) + ["first_time", "last_time"] + list(SET_NAMES)
PARTIAL_SCHEMA = pa.schema(
    [("entity_type", pa.large_string()), ("entity", pa.large_string()), ("window_start", MICROS)]
    + [(name, pa.int64()) for name in COUNT_COLUMNS] + [("first_time", MICROS), ("last_time", MICROS)]
    + [(name, pa.list_(pa.string())) for name in SET_NAMES]
)


def partials_as_frame(table: pa.Table) -> pd.DataFrame:
    """Partials as an Arrow table (``partial_table``, or many of them concatenated) -> the DataFrame
    ``reduce_partials`` reads: one conversion, set columns as lists."""
    frame = table.to_pandas()
    for name in SET_NAMES:
        frame[name] = frame[name].map(lambda v: list(v) if v is not None else [])
    return frame


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
