"""The features stage: per-hour partial aggregates (cached per archived hour), reduced into the
window feature table, the entities' histories and the rule hits."""
from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import features
from features.addresses import AddressBook, load_ip_ranges, load_threat_list
from features.aggregate import (
    AGGREGATE_COLUMNS,
    REQUEST_COLUMNS,
    combine_partials,
    combine_rule_partials,
    empty_partials,
    hit_counts,
    hour_requests,
    partial_table,
    partials_as_frame,
    reduce_tables,
)
from features.columns import MICROS, EventColumns, pandas_types
from features.entities import entity_group
from features.events import COLUMN_NAMES, EVENT_SCHEMA
from features.flags import FlagContext, FlagInputs, flag_columns, flag_events
from features.novelty import no_history
from features.rules import AggregateGroups, RulePack
from features.windows import NOVELTY_SETS, SET_NAMES, finalise
from pipeline.catalog import load_rule_pack
from pipeline.context import RunContext
from pipeline.errors import ConfigError, StageError
from pipeline.io.storage import safe_segment
from pipeline.sources import source_digest
from pipeline.stages.archive import hour_digest, list_archive_hours, manifest_key
from pipeline.stages.ranges import Ranges, overlaps
from pipeline.stages.workers import ordered_map, usable_cores

log = logging.getLogger(__name__)
UTC = timezone.utc


def flag_context(ctx: RunContext) -> FlagContext:
    """Address intelligence and the allow-list, loaded once per run from the configured files."""
    cfg = ctx.config.features
    aws_nets, threat_nets = [], []
    if cfg.ip_ranges_file:
        aws_nets = load_ip_ranges(_read_config_file(cfg.ip_ranges_file, "features.ip_ranges_file"))
    if cfg.threat_list_file:
        try:
            threat_nets = load_threat_list(_read_config_file(cfg.threat_list_file, "features.threat_list_file").decode())
        except ValueError as error:
            raise ConfigError(f"features.threat_list_file: {error}", hint="one address or CIDR per line") from None
    return FlagContext(AddressBook(aws_nets, threat_nets), frozenset(ctx.config.rules.allow_identities))


def _read_config_file(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path}: {error.strerror}", hint="point it at an existing file") from None


def features_fingerprint(ctx: RunContext) -> str:
    """What an hour's partials depend on besides the hour's file: the window, the entities, the address
    intelligence, the allow-list, the rule pack and the code that maps an hour (``map_code_digest``). Partials are
    cached per fingerprint, so a change to any of them, an upgrade included, maps every hour again."""
    cfg = ctx.config.features
    material = orjson.dumps({
        "window": cfg.window_minutes, "entities": list(cfg.entity_types),
        "ip_ranges": _file_digest(cfg.ip_ranges_file), "threats": _file_digest(cfg.threat_list_file),
        "allow": sorted(ctx.config.rules.allow_identities), "rules": _file_digest(str(ctx.config.rules_pack_path())),
        "disabled": sorted(ctx.config.rules.disabled), "code": map_code_digest(),
    }, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(material).hexdigest()[:12]


# The source of the map step: every module of the features package, and this one (which reads the hour files).
MAP_CODE = (Path(features.__file__).parent, Path(__file__))


@functools.cache
def map_code_digest() -> str:
    """The ``MAP_CODE`` modules' ``source_digest``. Any edit to them changes the fingerprint, an upgrade's included;
    an edit elsewhere (the report, the detectors) does not."""
    return source_digest(*MAP_CODE)


def _file_digest(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).exists() else None


def events_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow events to pandas with nullable columns kept nullable (code stays Int32, not float)."""
    return table.to_pandas(types_mapper=pandas_types)


# An hour's cache files are Arrow IPC files, LZ4-compressed: some hundred columns of a few hundred rows each, so a
# cost per compressed buffer dominates. For the 192 files of the 0.25M bench data, writing and reading back took
# 0.21 CPU s with LZ4 (6.6 MB), 0.87 s with zstd (5.3 MB) and 0.03 s uncompressed (13.6 MB); Parquet took longer
# than zstd IPC. Files written with another codec read the same. Only auditsift reads them.
PARTIALS_SUFFIX = ".arrow"
RULES_SUFFIX = ".rules.arrow"
REQUESTS_SUFFIX = ".requests.arrow"  # a busy hour's ``BusyHour.judged``, which the score stage reads too


def rules_cache_key(cache_key: str) -> str:
    """Where an hour's rule-hit partials are cached: beside its window partials."""
    return cache_key.removesuffix(PARTIALS_SUFFIX) + RULES_SUFFIX


def requests_cache_key(cache_key: str) -> str:
    """Where what is judged over a busy hour (``BusyHour.judged``) is cached: beside its window partials."""
    return cache_key.removesuffix(PARTIALS_SUFFIX) + REQUESTS_SUFFIX


def is_partials_file(name: str) -> bool:
    """Whether a cache file's name is that of an hour's window partials (not its rule hits or requests)."""
    return name.endswith(PARTIALS_SUFFIX) and not name.endswith((RULES_SUFFIX, REQUESTS_SUFFIX))


class MappedHour(NamedTuple):
    """``map_hour_file``'s result: an hour's window partials and rule hits, and for a busy hour what was judged
    over it (``BusyHour.judged``), cached so that the score stage need not judge it again."""

    partials: pa.Table
    hits: pa.Table
    requests: pa.Table | None = None


def cache_bytes(table: pa.Table) -> bytes:
    """A cache file's bytes (``PARTIALS_SUFFIX``)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_cache(data: bytes) -> pa.Table:
    return pa.ipc.open_file(pa.BufferReader(data)).read_all()


def is_cached(ctx: RunContext, cache_key: str) -> bool:
    return ctx.storage.exists(cache_key) and ctx.storage.exists(rules_cache_key(cache_key))


def hour_partials(ctx: RunContext, flags: FlagContext, pack: RulePack, archive_key: str, cache_key: str) -> tuple[pa.Table, pa.Table]:
    """Map step for one archived hour, cached under the hour file's digest: its window partials and
    rule hits as Arrow tables (``partials_frame`` and ``rules_frame`` turn many hours into frames at once)."""
    if is_cached(ctx, cache_key):
        return read_cache(ctx.storage.read_bytes(cache_key)), read_cache(ctx.storage.read_bytes(rules_cache_key(cache_key)))
    cfg = ctx.config.features
    mapped = map_hour_file(ctx.storage.read_bytes(archive_key), flags, pack, cfg.window_minutes, cfg.entity_types, cfg.batch_rows)
    write_cached(ctx, cache_key, encode_partials(mapped))
    return mapped.partials, mapped.hits


def map_hour_file(data: bytes, flags: FlagContext, pack: RulePack, window_minutes: int, entity_types,
                  batch_rows: int | None = None) -> MappedHour:
    """``map_hour`` of an archived hour file's bytes, of which only the ``map_columns`` are read. An hour of more
    than ``batch_rows`` events is mapped in batches of that many to the same tables, holding one batch at a time
    (``BusyHour``); the groups of the rules with aggregate thresholds (``AggregateGroups``) are counted over every
    batch first."""
    columns = map_columns(pack, entity_types)
    hour = busy_hour(data, window_minutes, batch_rows)
    if hour is None:
        return MappedHour(*map_hour(read_hour_events(data, columns), flags, pack, window_minutes, entity_types))
    groups = AggregateGroups(pack)
    for batch, _, judged in hour.batches(threshold_columns(pack)):
        events = flag_events(batch, flags, judged, only=pack.threshold_flags)
        groups.add(events, no_history(events.rows))
    partials, hits = [], []
    for batch, counted, judged in hour.batches(columns):
        events = flag_events(batch, flags, judged)
        partials.append(partial_table(events, window_minutes, entity_types, np.flatnonzero(counted)))
        hits.append(rule_partials(pack, events, window_minutes, entity_types, groups))
    return MappedHour(combine_partials(partials, entity_types), combine_rule_partials(hits, entity_types, [rule.id for rule in pack.active]),
                      hour.judged())


@dataclass
class BusyHour:
    """An archived hour of more than ``batch_rows`` events, read ``batch_rows`` at a time (``hour_batches``), with
    what is judged over the whole hour (``features.aggregate.hour_requests``): per event, whether it is the row
    its request counts in (``request_rows``) and the ``audit_id_reused`` flag."""

    data: bytes
    batch_rows: int
    counted: np.ndarray
    reused: np.ndarray

    def batches(self, columns: list[str]) -> Iterator[tuple[pa.Table, np.ndarray, dict[str, np.ndarray]]]:
        """(batch, which of its rows count their request, its flags judged over the hour) for each batch, in order."""
        offset = 0
        for batch in hour_batches(self.data, columns, self.batch_rows):
            end = offset + len(batch)
            yield batch, self.counted[offset:end], {"audit_id_reused": self.reused[offset:end]}
            offset = end

    def judged(self) -> pa.Table:
        """What was judged over the hour, one row per event: whether it counts its request, and ``audit_id_reused``."""
        return pa.table({"counted": self.counted, "reused": self.reused})


def busy_hour(data: bytes, window_minutes: int, batch_rows: int | None, judged: pa.Table | None = None) -> BusyHour | None:
    """The hour file ``data`` as a ``BusyHour`` when it holds more than ``batch_rows`` events; None when it does not,
    or when two of its requests or auditIDs share a hash (``hour_requests``): then it is read at once. ``judged``: the
    hour's ``BusyHour.judged`` as the features map cached it (``requests_cache_key``), used when it has a row per
    event; else the hour is judged here (5.5 s for 3.5 million events)."""
    rows = pq.read_metadata(pa.BufferReader(data)).num_rows
    if batch_rows is None or rows <= batch_rows:
        return None
    if judged is not None and judged.num_rows == rows:
        return BusyHour(data, batch_rows, *(judged[name].to_numpy(zero_copy_only=False) for name in ("counted", "reused")))
    judged = hour_requests(lambda: hour_batches(data, list(REQUEST_COLUMNS), batch_rows), window_minutes)
    if judged is None:
        return None
    counted = np.zeros(rows, dtype=bool)
    counted[judged[0]] = True
    return BusyHour(data, batch_rows, counted, judged[1])


def map_columns(pack: RulePack, entity_types) -> list[str]:
    """The event columns ``map_hour`` reads, in archive order: the flags' (traced from their registry), the
    aggregates' (features.aggregate), the rule pack's and the entities' (``rule_partials``)."""
    wanted = flag_columns() | AGGREGATE_COLUMNS | pack.event_columns | {"time", *entity_types}
    return [name for name in COLUMN_NAMES if name in wanted]


def threshold_columns(pack: RulePack) -> list[str]:
    """The event columns, in archive order, that a busy hour's first pass reads: the threshold rules' flags'
    (``RulePack.threshold_flags``, traced) and their own (``RulePack.threshold_columns``)."""
    wanted = flag_columns(pack.threshold_flags) | pack.threshold_columns
    return [name for name in COLUMN_NAMES if name in wanted]


def read_hour_events(data: bytes, columns: list[str]) -> pa.Table:
    """The named columns of an archived hour file, in that order. Text columns are read as the file's
    dictionaries (features.columns encodes every column it reads anyway); a column the file predates
    reads as nulls of its EVENT_SCHEMA type, as features.events.conform_events fills it."""
    file, read = _hour_file(data, columns)
    # The bytes wrapped without a copy (not a Python file object), and no thread pool: an hour's columns decode in
    # a few ms, and the stage's workers already keep the cores busy.
    return _with_absent(file.read(columns=read, use_threads=False), columns)


def hour_batches(data: bytes, columns: list[str], batch_rows: int, wanted: set[int] | None = None) -> Iterator[pa.Table]:
    """``read_hour_events`` in tables of at most ``batch_rows`` rows, in row order: the whole hour at once when it
    holds no more (every hour of an ordinary day). A busier hour's file holds row groups of ``archive.merge_rows``
    rows; consecutive ones are read together up to ``batch_rows``, and a larger one in slices. ``wanted``: the
    numbers of the batches to read, in order; the others are not read (all are when None)."""
    file, read = _hour_file(data, columns)
    number = -1
    for groups, slices in _batch_plan(file.metadata, batch_rows):
        if slices is None:
            number += 1
            if wanted is None or number in wanted:
                yield _with_absent(file.read_row_groups(groups, columns=read, use_threads=False), columns)
            continue
        numbers = range(number + 1, number + 1 + slices)
        number += slices
        if wanted is None or not wanted.isdisjoint(numbers):
            for sliced, batch in zip(numbers, file.iter_batches(batch_size=batch_rows, row_groups=groups, columns=read, use_threads=False)):
                if wanted is None or sliced in wanted:
                    yield _with_absent(pa.Table.from_batches([batch]), columns)


def _batch_plan(metadata: pq.FileMetaData, batch_rows: int) -> Iterator[tuple[list[int], int | None]]:
    """``hour_batches``' batches: (row groups, None) read together, or (one row group, the number of slices it is read in)."""
    group, groups = 0, metadata.num_row_groups
    if metadata.num_rows <= batch_rows:
        yield list(range(groups)), None
        return
    while group < groups:
        rows = metadata.row_group(group).num_rows
        if rows > batch_rows:
            yield [group], -(-rows // batch_rows)
            group += 1
            continue
        end, rows = group, 0
        while end < groups and rows + metadata.row_group(end).num_rows <= batch_rows:
            rows += metadata.row_group(end).num_rows
            end += 1
        yield list(range(group, end)), None
        group = end


def _hour_file(data: bytes, columns: list[str]) -> tuple[pq.ParquetFile, list[str]]:
    """An archived hour file opened with its text columns read as dictionaries, and which of ``columns`` it holds."""
    metadata = pq.read_metadata(pa.BufferReader(data))
    present = set(metadata.schema.names)
    texts = [name for name in columns if name in present and EVENT_SCHEMA.field(name).type == pa.string()]
    return pq.ParquetFile(pa.BufferReader(data), metadata=metadata, read_dictionary=texts), [name for name in columns if name in present]


def _with_absent(table: pa.Table, columns: list[str]) -> pa.Table:
    present = set(table.column_names)  # built once: the property makes a new list at every call (1 ms an hour file)
    for name in columns:
        if name not in present:
            table = table.append_column(EVENT_SCHEMA.field(name), pa.nulls(len(table), EVENT_SCHEMA.field(name).type))
    return table.select(columns)


def map_hour(table: pa.Table, flags: FlagContext, pack: RulePack, window_minutes: int, entity_types) -> tuple[pa.Table, pa.Table]:
    """One archived hour's window partials and rule hit counts as Arrow tables (no I/O). ``table`` holds at
    least the ``map_columns`` (``read_hour_events`` reads just those); only they are selected, so a column
    read without being listed fails here rather than reading as nulls. Flags, aggregates and rules read the
    Arrow columns through one dictionary encoding each (features.columns), never a DataFrame of the hour;
    both tables are built from arrays."""
    events = flag_events(table.select(map_columns(pack, entity_types)), flags)
    return partial_table(events, window_minutes, entity_types), rule_partials(pack, events, window_minutes, entity_types)


def encode_partials(mapped: MappedHour) -> tuple[bytes, bytes, bytes | None]:
    """An hour's cache files as bytes: (window partials, rule hits, a busy hour's requests). Worker processes encode
    their own hours, so this process only writes bytes."""
    return cache_bytes(mapped.partials), cache_bytes(mapped.hits), cache_bytes(mapped.requests) if mapped.requests is not None else None


def write_cached(ctx: RunContext, cache_key: str, encoded: tuple[bytes, bytes, bytes | None]) -> None:
    """The window partials last: ``is_cached`` asks for them and the rule hits, so an hour is cached only whole."""
    partial_bytes, rules_bytes, requests_bytes = encoded
    if requests_bytes is not None:
        ctx.storage.write_bytes(requests_cache_key(cache_key), requests_bytes)
    ctx.storage.write_bytes(rules_cache_key(cache_key), rules_bytes)
    ctx.storage.write_bytes(cache_key, partial_bytes)


def cached_requests(ctx: RunContext, cache_key: str) -> bytes | None:
    """A busy hour's cached ``BusyHour.judged`` (``requests_cache_key``), None when the features map did not write one."""
    key = requests_cache_key(cache_key)
    return ctx.storage.read_bytes(key) if ctx.storage.exists(key) else None


# workers need the fork server's imports (0.65 s, overlapping the CLI's when `auditsift` started it: pipeline.launch);
# an hour costs 30-90 ms to map and encode
MIN_ROWS_PER_WORKER = 100_000


def hour_rows(ctx: RunContext, archive_keys: list[str]) -> list[int | None]:
    """Each archived hour's event count, from its manifest; None where the manifest is missing."""
    return [ctx.storage.read_json_or(manifest_key(key), {}).get("rows") for key in archive_keys]


def hour_workers(ctx: RunContext, rows: list[int | None]) -> int:
    """How many worker processes to read archived hours of these event counts (``hour_rows``) with (features map,
    score pass): ``features.workers``, at most one per usable core and per hour, and one per ``MIN_ROWS_PER_WORKER``
    events (an hour without a count counts as that many). Below 2, the caller works alone."""
    workers = min(ctx.config.features.workers, usable_cores(), len(rows))
    if workers > 1:
        workers = min(workers, sum(MIN_ROWS_PER_WORKER if count is None else count for count in rows) // MIN_ROWS_PER_WORKER)
    return workers


def map_hours(ctx: RunContext, flags: FlagContext, pack: RulePack, keys: list[tuple[str, str]]) -> Iterator[tuple[pa.Table, pa.Table]]:
    """``hour_partials`` for every (archive key, cache key), in order. Hours not cached yet are mapped
    by ``features.workers`` processes when they hold enough events (``MIN_ROWS_PER_WORKER`` per
    worker, from the hour manifests); the workers read the hours (``hour_file_source``), this process
    writes the caches and yields the results in hour order, so everything downstream is unchanged."""
    cfg = ctx.config.features
    todo = [(archive_key, cache_key) for archive_key, cache_key in keys if not is_cached(ctx, cache_key)]
    workers = hour_workers(ctx, hour_rows(ctx, [archive_key for archive_key, _ in todo]))
    if workers < 2:
        for archive_key, cache_key in keys:
            yield hour_partials(ctx, flags, pack, archive_key, cache_key)
        return
    pending = {cache_key for _, cache_key in todo}
    computed = ordered_map(_map_hour_bytes, (hour_file_source(ctx, a) for a, c in keys if c in pending), workers,
                           setup=_map_hour_setup, setup_args=(flags, pack, cfg.window_minutes, tuple(cfg.entity_types), cfg.batch_rows),
                           name="auditsift-features")
    try:
        for archive_key, cache_key in keys:
            if cache_key not in pending:
                yield hour_partials(ctx, flags, pack, archive_key, cache_key)
                continue
            streams, encoded = next(computed)
            write_cached(ctx, cache_key, encoded)
            yield tuple(pa.ipc.open_stream(stream).read_all() for stream in streams)
    finally:
        computed.close()


def _map_hour_setup(flags: FlagContext, pack: RulePack, window_minutes: int, entity_types: tuple, batch_rows: int) -> tuple:
    return flags, pack, window_minutes, entity_types, batch_rows


def hour_file_source(ctx: RunContext, archive_key: str) -> str | bytes:
    """What a worker maps an archived hour from: the file's path when the workdir is local (the worker reads it, so
    a busy hour's file is neither held here nor pickled through the queue: 150 MB for 3.85M events), else its bytes."""
    path = ctx.storage.local_path(archive_key)
    return str(path) if path is not None else ctx.storage.read_bytes(archive_key)


def _map_hour_bytes(state: tuple, source: str | bytes) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes, bytes | None]]:
    """Worker side of ``map_hours``: an archived hour file (its path or bytes, ``hour_file_source``) to its
    (partials, rule hits) tables, as Arrow IPC streams, and their cache files' bytes. An hour's tables cost 1.9 ms
    to pickle and 1.2 ms to unpickle (seventy-odd columns, each its own pickled arrays); as IPC streams 0.2 and 0.3 ms."""
    mapped = map_hour_file(Path(source).read_bytes() if isinstance(source, str) else source, *state)
    return (_ipc_stream(mapped.partials), _ipc_stream(mapped.hits)), encode_partials(mapped)


def _ipc_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def partials_frame(tables: Iterable[pa.Table]) -> pd.DataFrame:
    """Window partials of many hours (cache files or ``map_hour`` output) as one frame for
    ``reduce_partials``: one concatenation and one conversion, where a frame per hour cost
    16 ms an hour in pandas overhead. Set columns become lists."""
    tables = list(tables)
    return partials_as_frame(_concat(tables)) if tables else empty_partials()


def rules_frame(tables: Iterable[pa.Table]) -> pd.DataFrame:
    """Rule hits of many hours as one frame."""
    return _concat(tables).to_pandas()


def _concat(tables: Iterable[pa.Table]) -> pa.Table:
    """Hours' tables as one. A cache file written from a DataFrame by an older release may carry null-typed
    columns for an hour with no rows (no values to type them), so types are unified."""
    return pa.concat_tables(list(tables), promote_options="default")


def partial_key(ctx: RunContext, fingerprint: str, date: str, hour: int, archive_key: str) -> str:
    """Cache key of an hour's partials: changes when the features config or the archived hour changes."""
    digest = hour_digest(ctx.storage, archive_key)[:16]
    return f"{ctx.cluster_key('features')}/partials/{fingerprint}/date={date}/hour={hour:02d}/{digest}{PARTIALS_SUFFIX}"


def run_features(ctx: RunContext, ranges: Ranges) -> dict:
    """Feature table for [train_from, score_to): map per archived hour (cached), reduce, finalise."""
    with ctx.timed("features"):
        fingerprint = features_fingerprint(ctx)
        flags = flag_context(ctx)
        hours = [
            (d, h, k) for d, h, k in list_archive_hours(ctx.storage, ctx.cluster) if overlaps(d, h, ranges.train_from, ranges.score_to)
        ]
        if not hours:
            raise StageError("no archived events in the requested ranges", hint="check --train-from/--score-to against `auditsift archive` output")
        pack = load_rule_pack(ctx.config)
        handle = ctx.progress("features (hours)", len(hours))
        partials, rules = [], []
        for partial, hits in map_hours(ctx, flags, pack, [(k, partial_key(ctx, fingerprint, d, h, k)) for d, h, k in hours]):
            partials.append(partial)
            rules.append(hits)
            handle.advance()
        handle.close()
        rules = rules_frame(rules)
        merged = reduce_tables(partials)
        del partials  # the hours' tables: as large again as the reduced frame with many identities
        merged = merged[(merged["window_start"] >= pd.Timestamp(ranges.train_from)) & (merged["window_start"] < pd.Timestamp(ranges.score_to))]
        table = finalise(merged.reset_index(drop=True), ctx.config.features.window_minutes)
        table["split"] = np.where(table["window_start"] >= pd.Timestamp(ranges.score_from), "score",
                                  np.where(table["window_start"] >= pd.Timestamp(warmup_end(ranges)), "train", "warmup"))
        table["entity_group"] = [entity_group(t, e, flags.addresses) for t, e in zip(table["entity_type"], table["entity"])]
        history = entity_history(merged[merged["window_start"] < pd.Timestamp(ranges.score_from)])
        base = f"{ctx.cluster_key('features')}/runs/{safe_segment(ctx.run_id)}"
        ctx.storage.write_parquet(f"{base}/features.parquet", pa.Table.from_pandas(table.drop(columns=list(SET_NAMES)), preserve_index=False))
        ctx.storage.write_parquet(f"{base}/history.parquet", pa.Table.from_pandas(history, preserve_index=False))
        trained = rules[(rules["window_start"] >= pd.Timestamp(ranges.train_from)) & (rules["window_start"] < pd.Timestamp(ranges.score_from))]
        ctx.storage.write_parquet(f"{base}/rule_history.parquet", pa.Table.from_pandas(rule_history(trained), preserve_index=False))
        counts = {
            "rows": int(len(table)), "train_rows": int((table["split"] == "train").sum()),
            "score_rows": int((table["split"] == "score").sum()), "hours": len(hours),
            "entities": int(table[["entity_type", "entity"]].drop_duplicates().shape[0]),
        }
        ctx.update_state("features", {"run_id": ctx.run_id, "key": base, "ranges": ranges.as_dict(), **counts})
    return counts


WARMUP = timedelta(hours=24)


def warmup_end(ranges: Ranges) -> datetime:
    """Training windows before this only seed the entities' histories: in the first day every
    entity looks new, and training on that would teach the model that novelty is normal.
    At most half the training range is spent this way."""
    return ranges.train_from + min(WARMUP, (ranges.train_to - ranges.train_from) / 2)


def entity_history(train_partials: pd.DataFrame) -> pd.DataFrame:
    """What each entity did in the training range: the sets event-level novelty is judged against."""
    if train_partials.empty:
        return pd.DataFrame({"entity_type": [], "entity": [], **{n: [] for n in NOVELTY_SETS}, "windows": []})
    grouped = train_partials.groupby(["entity_type", "entity"], sort=True)
    history = grouped.size().rename("windows").to_frame()
    for name in NOVELTY_SETS:
        history[name] = grouped[name].agg(lambda lists: sorted(set().union(*map(set, lists))))
    return history.reset_index()


def load_features(ctx: RunContext) -> tuple[pd.DataFrame, pd.DataFrame, Ranges]:
    state = ctx.read_state().get("features")
    if not state:
        raise StageError("no feature table in this workdir", hint="run `auditsift features` first")
    table = ctx.storage.read_parquet(f"{state['key']}/features.parquet").to_pandas()
    history = partials_from_history(ctx.storage.read_parquet(f"{state['key']}/history.parquet"))
    return table, history, Ranges.from_dict(state["ranges"])


def partials_from_history(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    for name in NOVELTY_SETS:
        frame[name] = frame[name].map(lambda v: set(v) if v is not None else set())
    return frame


RULE_PARTIAL_SCHEMA = pa.schema([("entity_type", pa.large_string()), ("entity", pa.large_string()), ("window_start", MICROS),
                                 ("rule", pa.large_string()), ("count", pa.int64())])


def rule_partials(pack: RulePack, events: pd.DataFrame | FlagInputs, window_minutes: int, entity_types,
                  groups: AggregateGroups | None = None) -> pa.Table:
    """Rule hit counts per (entity_type, entity, window_start, rule): which rules each entity triggers, and when,
    as an Arrow table of ``RULE_PARTIAL_SCHEMA`` (``rules_frame`` makes frames of them).
    ``events`` is a flagged DataFrame or the FlagInputs of ``flag_events``. History flags are all False here
    (no history is judged in the map step), so rules that need them never count as an entity's routine.
    ``groups``: for a batch of an hour, the aggregate rules' groups over the whole hour (``RulePack.hits``)."""
    columns = events if isinstance(events, EventColumns) else EventColumns(events)
    hits = pack.hits(events, no_history(columns.rows), groups)
    fired = [rule for rule, matched in hits.items() if matched.any()]
    batches = []
    if fired:
        # Grouped by integer codes (entity, window), numbered in sorted order; rows come out as
        # groupby(sort=True).sum().melt() gave them: rule by rule, groups in order, zero counts dropped.
        step = window_minutes * 60_000_000
        windows, window_codes = np.unique(columns.micros("time") // step * step, return_inverse=True)
        rule_names = pa.array(fired, pa.large_string())
        for entity_type in entity_types:
            entity_codes, entities = columns.ranked(entity_type)
            rows = np.flatnonzero(entity_codes >= 0)
            groups, sums = hit_counts(entity_codes[rows] * max(len(windows), 1) + window_codes[rows], [hits[rule][rows] for rule in fired])
            rule_index, group_index = np.nonzero(sums.T > 0)
            picked = groups[group_index]
            batches.append(pa.record_batch([
                pa.array(np.full(len(picked), entity_type, dtype=object), pa.large_string()),
                pa.array(entities[picked // max(len(windows), 1)], pa.large_string()),
                pa.array(windows[picked % max(len(windows), 1)], MICROS),
                rule_names.take(rule_index), sums[group_index, rule_index],
            ], schema=RULE_PARTIAL_SCHEMA))
    return pa.Table.from_batches(batches, schema=RULE_PARTIAL_SCHEMA)


def rule_history(rules: pd.DataFrame) -> pd.DataFrame:
    """Per entity and rule: in how many training windows the entity triggered it (its routine)."""
    if rules.empty:
        return pd.DataFrame({"entity_type": [], "entity": [], "rule": [], "windows": []})
    return rules.groupby(["entity_type", "entity", "rule"]).size().rename("windows").reset_index()


def load_rule_history(ctx: RunContext) -> dict[tuple[str, str, str], int]:
    state = ctx.read_state().get("features") or {}
    key = f"{state.get('key')}/rule_history.parquet"
    if not state or not ctx.storage.exists(key):
        return {}
    table = ctx.storage.read_parquet(key).to_pandas()
    return {(t, e, r): int(w) for t, e, r, w in zip(table["entity_type"], table["entity"], table["rule"], table["windows"])}
