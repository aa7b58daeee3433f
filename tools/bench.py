"""``make bench``: auditsift's whole daily run against the parsing floor, a naive pandas version and DuckDB.

For each data set, four days of sample logs in the real format (``pipeline.sample``, the background
scaled to reach the size) or a production-shaped profile (``tools.bench_profiles``: a busy day, an
identity spray) are generated once, then every phase runs in its own subprocess on the same files, so
each phase's peak RSS is its own:

- ``floor``: gunzip (python-isal) and ``orjson.loads`` every line, nothing else: the cost of
  merely reading the events in Python;
- ``archive``, ``features``, ``train``, ``score``, ``report``: the real stage functions (``run_archive``,
  ``run_features``, ``run_train``, ``pipeline.stages.score.run_score``, ``pipeline.report.run_report``), one
  process each, in order on one fresh workdir;
- ``run``: the whole daily run as ``auditsift run`` makes it (``run_pipeline``, every stage in one
  process) on a workdir of its own: the figure the targets judge;
- ``naive``: ``naive_features``, the per-entity hourly features the way a pandas user writes
  them first (``json.loads``, ``pandas.json_normalize``, groupby), checked against auditsift's;
- ``duckdb``: ``duckdb_partials``, DuckDB's ``read_json`` and one SQL GROUP BY computing the same
  per-window request counts and distinct-value sets, checked against auditsift's;
- ``detectors``: fit each detector on the training rows of the feature table ``features``
  produced, then score ``--score-rows`` rows drawn from it;
- ``features_map``, ``one_process`` (with ``--phases``): how the features stage's time divides, and
  archive + features with ``workers: 1``.

The scored day ends where the data ends (passed to every stage, never read from the clock). The
issue's targets (``targets``) and linear fits (``linear_fits``) are computed from the figures and
printed with pass or fail; no test asserts a time. Results go to ``<out>/bench.json`` and a Markdown
summary to ``<out>/bench.md``.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.commands import command_facts
from features.events import COMMAND_COLUMNS, COMMAND_SUBRESOURCES, EVENT_COLUMNS
from features.flags import flag_reads
from pipeline.launch import WORKER_COMMANDS
from pipeline.stages.workers import start, start_fork_server, stop_fork_server, usable_cores, worker_context

SAMPLE_DAYS = 4
EVENTS_PER_SCALE_DAY = 116_000
NAIVE_CHUNK_LINES = 100_000
# the flags whose value depends on a written object's body, which the naive version does not reduce to facts
BODY_FLAGS = tuple(name for name, columns in flag_reads().items() if columns & {c.name for c in EVENT_COLUMNS if c.read == "body"})


# --------------------------------------------------------------------------- the naive version
def naive_features(paths: list[str], window_minutes: int = 60, entity_types=("user", "source_ip"),
                   chunk_lines: int = NAIVE_CHUNK_LINES) -> pd.DataFrame:
    """Per-entity window counts and distinct-value sets, written the way a pandas user would first
    write them: ``json.loads`` per line, ``pandas.json_normalize``, the flag registry, groupby.

    Reads ``chunk_lines`` lines at a time (a day at once does not fit in memory at these
    sizes) and merges the chunks' groups. A request whose stages fall in two chunks counts in both
    (its RequestReceived row is dropped only beside its other stage), so counts equal auditsift's
    only when no request straddles a chunk. Request bodies are not reduced to facts, so the flags
    that read them (``BODY_FLAGS``) stay false; everything else equals auditsift's partials.
    """
    from features.addresses import AddressBook, load_ip_ranges
    from features.aggregate import LONG_RUNNING_SUBRESOURCES, LONG_RUNNING_VERBS, SET_COLUMNS
    from features.flags import FLAG_NAMES, FlagContext, add_flags
    from pipeline.config import load_config

    config = load_config()
    ranges = config.features.ip_ranges_file
    context = FlagContext(AddressBook(load_ip_ranges(Path(ranges).read_bytes()) if ranges else []),
                          frozenset(config.rules.allow_identities))
    chunks = []
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            while lines := list(itertools.islice(handle, chunk_lines)):
                frame = pd.json_normalize([json.loads(line) for line in lines])
                events = add_flags(_naive_events(frame), context)
                events["window_start"] = events["time"].dt.floor(f"{window_minutes}min")
                # a long-running request (watch, exec...) received in an earlier window counted there
                long_running = events["verb"].isin(LONG_RUNNING_VERBS) | events["subresource"].isin(LONG_RUNNING_SUBRESOURCES)
                crossing = (events["stage"].eq("ResponseComplete") & long_running
                            & (events["received_time"].dt.floor(f"{window_minutes}min") < events["window_start"]))
                events = events[~crossing.fillna(False)].copy()
                request = ["audit_id", "window_start"]
                keep = events["stage"].ne("RequestReceived") | ~events.duplicated(subset=request, keep=False)
                events = events[keep].drop_duplicates(subset=request)
                events["object_key"] = (events["resource"].fillna("") + "/" + events["namespace"].fillna("") + "/"
                                        + events["name"].fillna("")).where(events["name"].notna())
                events["uri_path"] = events["request_uri"].fillna("").str.split("?").str[0]
                events["verb_resource"] = events["verb"].fillna("") + " " + events["resource"].fillna(events["uri_path"])
                for entity_type in entity_types:
                    events["entity"] = events[entity_type]
                    events["peer"] = events["source_ip" if entity_type == "user" else "user"]
                    grouped = events.dropna(subset=["entity"]).groupby(["entity", "window_start"])
                    part = grouped[list(FLAG_NAMES)].sum().add_prefix("n_")
                    part["n"] = grouped.size()
                    for name, (source, flag) in SET_COLUMNS.items():
                        values = events[source].where(events[flag]) if flag else events[source]
                        part[name] = values.groupby([events["entity"], events["window_start"]]).agg(lambda s: set(s.dropna()))
                    chunks.append(part.reset_index().assign(entity_type=entity_type))
    merged = pd.concat(chunks, ignore_index=True)
    grouped = merged.groupby(["entity_type", "entity", "window_start"])
    result = grouped[[c for c in merged.columns if c == "n" or c.startswith("n_")]].sum()
    for name in SET_COLUMNS:
        result[name] = grouped[name].agg(lambda sets: sorted(set().union(*sets)))
    result = result.reset_index()
    result["window_start"] = result["window_start"].dt.as_unit("us")
    return result


def _naive_events(frame: pd.DataFrame) -> pd.DataFrame:
    """json_normalize's dotted columns renamed to the archive's, with the usual pandas idioms."""
    def column(name):
        return frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)

    ips = column("sourceIPs")
    uri = column("requestURI")
    subresource = column("objectRef.subresource")
    events = pd.DataFrame({
        "time": pd.to_datetime(column("stageTimestamp"), utc=True, format="ISO8601"),
        "received_time": pd.to_datetime(column("requestReceivedTimestamp"), utc=True, format="ISO8601"),
        "audit_id": column("auditID"), "stage": column("stage"), "user": column("user.username"),
        "impersonated_user": column("impersonatedUser.username"),
        "source_ip": ips.str[-1], "user_agent": column("userAgent"), "verb": column("verb"),
        "resource": column("objectRef.resource"), "subresource": subresource,
        # a create's objectRef completed from its body's metadata, as features.events does
        "namespace": column("objectRef.namespace").where(column("objectRef.namespace").fillna("") != "",
                                                          column("requestObject.metadata.namespace").where(column("verb") == "create")),
        "name": column("objectRef.name").where(column("objectRef.name").fillna("") != "",
                                                column("requestObject.metadata.name").where(column("verb") == "create")), "code": column("responseStatus.code").astype("Int32"),
        "decision": column("annotations.authorization.k8s.io/decision"), "request_uri": uri,
    })
    # exec/attach argv and proxy targets: the archive's decoder (features.commands) on the same rare rows
    decoded = [command_facts(u) if s in COMMAND_SUBRESOURCES else {} for u, s in zip(uri.fillna(""), subresource)]
    for name in COMMAND_COLUMNS:
        events[name] = [facts.get(name) for facts in decoded]
    # body facts are not read (BODY_FLAGS are not compared); every line of the bench's data decodes whole, so nothing is salvaged
    for name in [c.name for c in EVENT_COLUMNS if c.read == "body"] + ["salvage"]:
        events[name] = None
    return events


def compare_naive(naive: pd.DataFrame, partials: pd.DataFrame) -> dict:
    """Which of the naive version's columns equal auditsift's partial aggregates (body flags aside)."""
    from features.aggregate import SET_NAMES

    counts = [c for c in partials.columns if c == "n" or (c.startswith("n_") and c.removeprefix("n_") not in BODY_FLAGS)]
    return {**compare_partials(naive, partials, counts, list(SET_NAMES)), "not_compared": [f"n_{f}" for f in BODY_FLAGS]}


def compare_partials(frame: pd.DataFrame, partials: pd.DataFrame, counts: list[str], sets: list[str]) -> dict:
    """Whether ``frame`` has auditsift's windows (entity type, entity, window start) and, in them, the same
    ``counts`` and the same sorted ``sets``."""
    key = ["entity_type", "entity", "window_start"]
    left = frame.assign(window_start=_micros(frame["window_start"])).set_index(key).sort_index()
    right = partials.assign(window_start=_micros(partials["window_start"])).set_index(key).sort_index()
    same_keys = left.index.equals(right.index)
    return {
        "same_windows": bool(same_keys),
        "counts_equal": bool(same_keys and (left[counts].to_numpy() == right[counts].to_numpy()).all()),
        "sets_equal": bool(same_keys and all(list(a) == list(b) for n in sets for a, b in zip(left[n], right[n]))),
    }


def _micros(times: pd.Series) -> pd.Series:
    return pd.to_datetime(times, utc=True).dt.as_unit("us").astype("int64")


# --------------------------------------------------------------------------- the DuckDB anchor
DUCKDB_COLUMNS = {
    "auditID": "VARCHAR", "stage": "VARCHAR", "verb": "VARCHAR", "requestURI": "VARCHAR", "userAgent": "VARCHAR",
    "user": "STRUCT(username VARCHAR)", "sourceIPs": "VARCHAR[]", "stageTimestamp": "TIMESTAMPTZ",
    "requestReceivedTimestamp": "TIMESTAMPTZ",
    "objectRef": "STRUCT(resource VARCHAR, subresource VARCHAR, namespace VARCHAR, name VARCHAR)", "requestObject": "JSON",
}


def duckdb_partials(paths: list[str], window_minutes: int = 60, entity_types=("user", "source_ip")) -> pd.DataFrame:
    """The per-window request counts and every distinct-value set of auditsift's partial aggregates, by DuckDB:
    ``read_json`` reads the gzipped JSON lines itself and one SQL statement groups them. Requests count once
    per window as in ``features.aggregate`` (a RequestReceived row yields to its other stages; a long-running
    request's ResponseComplete does not count again in a later window). ``ua_families`` calls the archive's
    ``user_agent_family`` through an Arrow UDF, once per distinct client in each batch. The flag counts
    (``n_<flag>``) are not computed: writing the flag registry again in SQL would declare every flag twice."""
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc

    from features.addresses import user_agent_family
    from features.aggregate import LONG_RUNNING_SUBRESOURCES, LONG_RUNNING_VERBS, SET_COLUMNS
    from features.flags import READ_VERBS

    def families(agents):  # no annotations: DuckDB evaluates them, and pyarrow is imported here only
        encoded = pc.dictionary_encode(agents.combine_chunks() if isinstance(agents, pa.ChunkedArray) else agents)
        names = pa.array([user_agent_family(a) for a in encoded.dictionary.to_pylist()], pa.string())
        return pc.fill_null(pc.take(names, encoded.indices), user_agent_family(None))

    connection = duckdb.connect()
    connection.create_function("ua_family", families, ["VARCHAR"], "VARCHAR", type="arrow", null_handling="special")
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in DUCKDB_COLUMNS.items()) + "}"
    files = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"
    window = f"INTERVAL {int(window_minutes)} MINUTE"
    origin = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
    quoted = lambda values: ", ".join(f"'{v}'" for v in values)  # noqa: E731 - constants of features.aggregate
    peers = {"user": "source_ip", "source_ip": "user"}
    entities = " UNION ALL ".join(
        f"SELECT '{kind}' AS entity_type, {kind} AS entity, {peers[kind]} AS peer, * FROM requests WHERE {kind} IS NOT NULL"
        for kind in entity_types)
    # SET_COLUMNS' sources, and the two flags that filter sets (secret_read, list_or_watch) as features.flags reads them
    sets = {
        "namespaces": ("namespace", None), "resources": ("resource", None), "object_names": ("object_key", None),
        "uris": ("uri_path", None), "secret_names": ("object_key", f"resource = 'secrets' AND verb IN ({quoted(READ_VERBS)})"),
        "listed_resources": ("resource", "verb IN ('list', 'watch')"), "user_agents": ("user_agent", None),
        "ua_families": ("ua_family(user_agent)", None), "verb_resources": ("verb_resource", None), "peers": ("peer", None),
    }
    aggregates = ", ".join(
        f"coalesce(list_sort(list(DISTINCT {value}) FILTER (WHERE {value} IS NOT NULL{f' AND {where}' if where else ''})), []) AS {name}"
        for name, (value, where) in sets.items())
    query = f"""
    WITH raw AS (
        SELECT stageTimestamp AS time, time_bucket({window}, stageTimestamp, {origin}) AS window_start,
               time_bucket({window}, requestReceivedTimestamp, {origin}) AS received_window,
               auditID AS audit_id, stage, nullif("user".username, '') AS user, nullif(sourceIPs[-1], '') AS source_ip,
               nullif(userAgent, '') AS user_agent, nullif(verb, '') AS verb, nullif(objectRef.resource, '') AS resource,
               nullif(objectRef.subresource, '') AS subresource,
               -- a create's objectRef is completed from its body's metadata, as features.events does (and kube-apiserver)
               coalesce(nullif(objectRef.namespace, ''), CASE WHEN verb = 'create'
                        THEN nullif(json_extract_string(requestObject, '$.metadata.namespace'), '') END) AS namespace,
               coalesce(nullif(objectRef.name, ''), CASE WHEN verb = 'create'
                        THEN nullif(json_extract_string(requestObject, '$.metadata.name'), '') END) AS name,
               nullif(requestURI, '') AS request_uri
        FROM read_json({files}, format = 'newline_delimited', compression = 'gzip', columns = {columns})
    ), requests AS (
        SELECT *, CASE WHEN name IS NOT NULL THEN coalesce(resource, '') || '/' || coalesce(namespace, '') || '/' || name END AS object_key,
               split_part(coalesce(request_uri, ''), '?', 1) AS uri_path,
               coalesce(verb, '') || ' ' || coalesce(resource, split_part(coalesce(request_uri, ''), '?', 1)) AS verb_resource
        FROM raw
        WHERE NOT coalesce(stage = 'ResponseComplete' AND (verb IN ({quoted(LONG_RUNNING_VERBS)})
                                                           OR subresource IN ({quoted(LONG_RUNNING_SUBRESOURCES)}))
                           AND received_window < window_start, false)
        QUALIFY row_number() OVER (PARTITION BY audit_id, window_start ORDER BY stage = 'RequestReceived', time, stage) = 1
    )
    SELECT entity_type, entity, window_start, count(*) AS n, {aggregates}
    FROM ({entities}) GROUP BY entity_type, entity, window_start
    """
    assert set(sets) == set(SET_COLUMNS), "every set of features.aggregate.SET_COLUMNS has its SQL here"
    frame = connection.sql(query).df()
    connection.close()
    return frame


# --------------------------------------------------------------------------- phases (run in subprocesses)
def _inputs(data: str) -> list[str]:
    return sorted(glob.glob(os.path.join(data, "*.jsonl.gz")))


def _context(work: str, args=None, workers: int | None = None):
    """A run context on ``work`` with the default configuration and the ``--set`` overrides."""
    from pipeline.config import load_config
    from pipeline.context import RunContext
    from pipeline.io.storage import LocalStorage

    config = load_config(overrides=config_overrides(args.settings if args is not None else []))
    if workers is not None:
        config = config.model_copy(update={"archive": config.archive.model_copy(update={"workers": workers}),
                                           "features": config.features.model_copy(update={"workers": workers})})
    return RunContext(LocalStorage(work), config, "bench")


def _clock(args):
    """The run's clock: the data's end, passed explicitly, so the scored day never depends on when the bench runs."""
    from pipeline.stages.clock import parse_iso

    return parse_iso(args.now, "--now") if args.now else None


def phase_floor(data: str, work: str, args) -> dict:
    import orjson
    from isal import igzip

    events = 0
    loads = orjson.loads
    for path in _inputs(data):
        with igzip.open(path, "rb") as handle:
            for line in handle:
                loads(line)
                events += 1
    return {"events": events}


def phase_archive(data: str, work: str, args) -> dict:
    from pipeline.stages.archive import run_archive

    counts = run_archive(_context(work, args), [data], _clock(args))
    return {"events": counts["events"], "quarantined": counts["quarantined"], "duplicates": counts["duplicates"],
            "hours": counts["hours_written"]}


def phase_features(data: str, work: str, args) -> dict:
    from pipeline.stages.features import run_features
    from pipeline.stages.ranges import resolve_ranges

    ctx = _context(work, args)
    counts = run_features(ctx, resolve_ranges(ctx, now=_clock(args)))
    return {"rows": counts["rows"], "score_rows": counts["score_rows"], "hours": counts["hours"], "timings": dict(ctx.timings)}


def phase_train(data: str, work: str, args) -> dict:
    from pipeline.stages.train import run_train

    model = run_train(_context(work, args))
    return {"train_rows": model["train_rows"]}


def phase_score(data: str, work: str, args) -> dict:
    from pipeline.stages.score import run_score

    summary = run_score(_context(work, args))
    return {key: summary[key] for key in ("records", "flagged", "written", "quiet_left_out", "events_scored")}


def phase_report(data: str, work: str, args) -> dict:
    from pipeline.stages.report import report_target, run_report

    ctx = _context(work, args)
    run_report(ctx)
    folder = Path(work) / report_target(ctx, None)[1]
    return {"bytes": {path.name: path.stat().st_size for path in sorted(folder.iterdir())}}


def phase_run(data: str, work: str, args) -> dict:
    """The whole daily run as ``auditsift run`` makes it (``run_pipeline``: archive, features, train, score,
    report, in one process) on a workdir of its own; the stages' wall times are the run's own (``ctx.timings``)."""
    from pipeline.stages.run import run_pipeline

    ctx = _context(f"{work}-run", args)  # made empty, and removed after, by bench_data: no deletion in the time
    result = run_pipeline(ctx, [data], now=_clock(args))
    return {"events": result["counts"]["events"], "records": result["records"], "flagged": result["flagged"],
            "timings": dict(ctx.timings)}


def phase_one_process(data: str, work: str, args) -> dict:
    """archive and features with ``workers: 1`` (everything in this process), on a workdir of their own:
    what the parallel workers add, and what one core does alone."""
    from pipeline.stages.archive import run_archive
    from pipeline.stages.features import run_features
    from pipeline.stages.ranges import resolve_ranges

    work = f"{work}-one-process"
    shutil.rmtree(work, ignore_errors=True)
    ctx = _context(work, args, workers=1)
    out = {}
    now = _clock(args)
    for name, run in (("archive", lambda: run_archive(ctx, [data], now)),
                      ("features", lambda: run_features(ctx, resolve_ranges(ctx, now=now)))):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        out[f"{name}_seconds"] = round(time.perf_counter() - wall, 2)
        out[f"{name}_cpu_seconds"] = round(time.process_time() - cpu, 2)
    shutil.rmtree(work, ignore_errors=True)
    return out


def phase_features_map(data: str, work: str, args) -> dict:
    """The map step's own code alone (flags and partial aggregates per archived hour, no cache, no
    rule evaluation), to show how the features stage's time divides."""
    from features.aggregate import partial_table
    from features.events import conform_events
    from features.flags import flag_events
    from pipeline.stages.archive import list_archive_hours
    from pipeline.stages.features import flag_context

    ctx = _context(work, args)
    flags = flag_context(ctx)
    cfg = ctx.config.features
    read = mapped = 0.0
    rows = 0
    for _, _, key in list_archive_hours(ctx.storage, ctx.cluster):
        started = time.process_time()
        events = conform_events(ctx.storage.read_parquet(key))
        loaded = time.process_time()
        rows += len(partial_table(flag_events(events, flags), cfg.window_minutes, cfg.entity_types))
        read += loaded - started
        mapped += time.process_time() - loaded
    return {"partial_rows": rows, "read_cpu_seconds": round(read, 2), "flags_and_aggregates_cpu_seconds": round(mapped, 2)}


def phase_naive(data: str, work: str, args) -> dict:
    started = time.perf_counter()
    naive = naive_features(_inputs(data), chunk_lines=args.naive_chunk_lines)
    seconds = round(time.perf_counter() - started, 2)
    return {"rows": int(len(naive)), "compute_seconds": seconds, "check": compare_naive(naive, _auditsift_partials(work))}


def phase_duckdb(data: str, work: str, args) -> dict:
    from features.aggregate import COUNT_COLUMNS, SET_NAMES

    cfg = _context(work, args).config.features
    started = time.perf_counter()
    frame = duckdb_partials(_inputs(data), cfg.window_minutes, cfg.entity_types)
    seconds = round(time.perf_counter() - started, 2)
    check = compare_partials(frame, _auditsift_partials(work), ["n"], list(SET_NAMES))
    return {"rows": int(len(frame)), "compute_seconds": seconds, "check": {**check, "not_compared": [c for c in COUNT_COLUMNS if c != "n"]}}


def _auditsift_partials(work: str) -> pd.DataFrame:
    from features.aggregate import reduce_partials
    from pipeline.stages.features import is_partials_file, partials_frame, read_cache

    storage = _context(work).storage
    keys = [k for k in storage.list("features/") if "/partials/" in k and is_partials_file(k)]
    return reduce_partials([partials_frame(read_cache(storage.read_bytes(k)) for k in keys)])


def phase_detectors(data: str, work: str, args) -> dict:
    from features.windows import FEATURE_NAMES, feature_matrix
    from training.registry import make_detector

    ctx = _context(work, args)
    table = ctx.storage.read_parquet(f"{ctx.read_state()['features']['key']}/features.parquet").to_pandas()
    train = feature_matrix(table[table["split"] == "train"])
    rows = np.random.default_rng(0).choice(len(table), size=args.score_rows, replace=True)
    scored = feature_matrix(table.iloc[rows])
    results = {}
    model = ctx.config.model
    for name in args.detectors:
        params = {"iforest": model.iforest, "rcf-local": model.rcf_local}[name].model_dump()
        params.update(threshold_method=model.threshold.method, threshold_q=model.threshold.quantile)
        detector = make_detector(name, params, model.seed)
        started = time.perf_counter()
        detector.fit(train, list(FEATURE_NAMES))
        fitted = time.perf_counter()
        detector.score(scored)
        done = time.perf_counter()
        results[name] = {"train_rows": int(len(train)), "fit_seconds": round(fitted - started, 2),
                         "score_rows": int(len(scored)), "score_seconds": round(done - fitted, 2)}
    return {"detectors": results}


PHASES = {"floor": phase_floor, "archive": phase_archive, "features": phase_features, "train": phase_train,
          "score": phase_score, "report": phase_report, "run": phase_run, "naive": phase_naive, "duckdb": phase_duckdb,
          "detectors": phase_detectors, "features_map": phase_features_map, "one_process": phase_one_process}
STAGES = ("archive", "features", "train", "score", "report")
DEFAULT_PHASES = ("floor", *STAGES, "run", "naive", "duckdb", "detectors")
# Imported before a phase's clock starts: `auditsift run` imports them once, and a stage measured alone must
# not be charged 1-2 s of imports the whole run pays only once (``startup_seconds`` measures that once).
STAGE_MODULES = ("pipeline.stages.run",)


def run_phase(name: str, data: str, work: str, args) -> dict:
    """Run one phase in this process and measure it: wall and CPU seconds (its own, and its worker
    processes'), its peak RSS, and the peak memory of it and its workers together, sampled: their PSS summed (pages
    they share, such as the fork server's imports, counted once), and their RSS summed beside it."""
    import importlib
    import threading

    import psutil

    startup = None
    if name in (*STAGES, "run"):
        started = time.perf_counter()
        if name in WORKER_COMMANDS:  # as the `auditsift` executable does for the command of the same name
            start_fork_server()
        for module in STAGE_MODULES:
            importlib.import_module(module)
        if name in WORKER_COMMANDS:
            fork_server_ready()
        startup = round(time.perf_counter() - started, 2)
    peak = {"tree": 0, "tree_rss": 0}
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.wait(0.1):
            try:
                tree = [me, *me.children(recursive=True)]
                pss = sum(process.memory_full_info().pss for process in tree)
                rss = sum(process.memory_info().rss for process in tree)
            except psutil.Error:
                continue
            peak["tree"], peak["tree_rss"] = max(peak["tree"], pss), max(peak["tree_rss"], rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    result = PHASES[name](data, work, args)
    seconds, cpu = round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)
    stop.set()
    sampler.join()
    stop_fork_server()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = _own_peak_mb()
    measured = {**result, "seconds": seconds, "cpu_seconds": cpu, "worker_cpu_seconds": round(children.ru_utime + children.ru_stime, 2),
                "peak_rss_mb": own, "peak_rss_with_workers_mb": max(own, round(peak["tree"] / 2**20)),
                "peak_rss_sum_with_workers_mb": round(peak["tree_rss"] / 2**20)}
    return measured if startup is None else {**measured, "startup_seconds": startup}


def fork_server_ready() -> None:
    """Wait until the fork server has imported the stages, as a stage run by `auditsift` finds it: the executable starts
    the server before its own imports (``pipeline.launch``), which take longer (0.8 s) than the server's (0.65 s). A
    phase's process has imported most modules before it starts the server, so without this wait its first stage
    would be charged the rest of the server's imports (about 0.4 s), which `auditsift` pays in no stage."""
    if usable_cores() > 1 and worker_context().get_start_method() == "forkserver":
        probe = worker_context().Process(target=os.getpid)  # a worker forks once the server has imported
        start([probe])
        probe.join()


def _own_peak_mb() -> int:
    """This process's peak RSS since it started its program: VmHWM, which exec resets. ru_maxrss is not reset
    by exec, so in a phase started by a large driver process it would report the driver's size."""
    try:
        with open("/proc/self/status") as status:
            return round(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024)
    except (OSError, StopIteration):  # not Linux
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def config_overrides(settings: list[str]) -> dict:
    """``--set SECTION.KEY=VALUE`` values as a config overrides mapping (the config's types parse the values)."""
    overrides: dict = {}
    for setting in settings:
        path, equals, value = setting.partition("=")
        section, dot, key = path.partition(".")
        if not (equals and dot and section and key):
            raise SystemExit(f"--set {setting}: expected SECTION.KEY=VALUE, e.g. archive.workers=1")
        overrides.setdefault(section, {})[key] = value
    return overrides


def _in_subprocess(name: str, data: str, work: str, args, now: str) -> dict:
    command = [sys.executable, "-m", "tools.bench", "--phase", name, "--data", data, "--work", work, "--now", now,
               "--score-rows", str(args.score_rows), "--naive-chunk-lines", str(args.naive_chunk_lines),
               *(f"--set={setting}" for setting in args.settings), "--detectors", *args.detectors]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- driver
def bench_data(out: Path, label: str, data: Path, about: dict, args) -> dict:
    """Every chosen phase on one data set, each in its own subprocess, and the figures derived from them."""
    work = str(out / f"work-{data.name}")
    shutil.rmtree(work, ignore_errors=True)
    result = {"label": label, **about, "input_bytes": sum(os.path.getsize(p) for p in _inputs(str(data))),
              "load_at_start": round(os.getloadavg()[0], 1)}
    for name in args.phases:
        if name == "naive" and args.naive_max and about["events"] > args.naive_max:
            continue
        if name == "one_process" and args.one_process_max is not None and about["events"] > args.one_process_max:
            continue
        shutil.rmtree(f"{work}-run", ignore_errors=True)
        result[name] = _in_subprocess(name, str(data), work, args, about["end"])
        shutil.rmtree(f"{work}-run", ignore_errors=True)
        print(f"{label:>24}  {name:9s} {result[name]['seconds']:8.1f} s  {result[name]['peak_rss_with_workers_mb']:6d} MB", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    result["load_at_end"] = round(os.getloadavg()[0], 1)
    result["summary"] = summarise(result)
    return result


def summarise(r: dict) -> dict:
    """Ratios to the floor and the anchors, and each stage's wall, CPU and memory, for the tables and targets."""
    total = r["events"]
    floor = r["floor"]["seconds"] if "floor" in r else None
    stages = {name: {"seconds": r[name]["seconds"], "cpu_seconds": round(r[name]["cpu_seconds"] + r[name]["worker_cpu_seconds"], 2),
                     "peak_rss_mb": r[name]["peak_rss_with_workers_mb"]} for name in STAGES if name in r}
    summary: dict = {"stages": stages}
    if floor:
        summary["floor_events_per_s"] = round(total / floor)
    if "archive" in stages and "features" in stages:
        both = stages["archive"]["seconds"] + stages["features"]["seconds"]
        summary["archive_plus_features_seconds"] = round(both, 2)
        summary["archive_plus_features_over_floor"] = round(both / floor, 2) if floor else None
        if "naive" in r:
            summary["naive_over_auditsift"] = round(r["naive"]["compute_seconds"] / both, 2)
        if "duckdb" in r:
            summary["auditsift_over_duckdb"] = round(both / r["duckdb"]["compute_seconds"], 2)
    if len(stages) == len(STAGES):
        summary["stages_seconds"] = round(sum(s["seconds"] for s in stages.values()), 2)
        summary["stages_over_floor"] = round(summary["stages_seconds"] / floor, 2) if floor else None
    if "run" in r:
        summary["whole_run_seconds"] = r["run"]["seconds"]
        summary["whole_run_cpu_seconds"] = round(r["run"]["cpu_seconds"] + r["run"]["worker_cpu_seconds"], 2)
        summary["whole_run_over_floor"] = round(r["run"]["seconds"] / floor, 2) if floor else None
        if "duckdb" in r:
            summary["whole_run_over_duckdb"] = round(r["run"]["seconds"] / r["duckdb"]["compute_seconds"], 2)
    if floor:  # CPU against the floor's CPU: steadier than wall time when other work shares the cores
        floor_cpu = r["floor"]["cpu_seconds"]
        if "archive_plus_features_seconds" in summary:
            both = stages["archive"]["cpu_seconds"] + stages["features"]["cpu_seconds"]
            summary["archive_plus_features_cpu_over_floor"] = round(both / floor_cpu, 2)
        if "run" in r:
            summary["whole_run_cpu_over_floor"] = round(summary["whole_run_cpu_seconds"] / floor_cpu, 2)
    if "one_process" in r and floor:
        single = r["one_process"]["archive_seconds"] + r["one_process"]["features_seconds"]
        summary["one_process_seconds"] = round(single, 2)
        summary["one_process_over_floor"] = round(single / floor, 2)
    measured = [r[name]["peak_rss_with_workers_mb"] for name in (*STAGES, "run") if name in r]
    summary["peak_rss_mb"] = max(measured) if measured else None
    return summary


# The targets (issue 16), judged by the bench and never by a test.
WHOLE_RUN_OVER_FLOOR = 2.0  # all five stages, at 1M events and more
WHOLE_RUN_FROM_EVENTS = 1_000_000
ARCHIVE_FEATURES_OVER_FLOOR = 1.5  # at every size from 0.25M up
ARCHIVE_FEATURES_FROM_EVENTS = 250_000
BUSY_DAY_PEAK_RSS_MB = 2048
LINEAR_TOLERANCE = 1.25  # the largest point at most this much above the line through the smaller ones


def targets(report: dict) -> list[dict]:
    """Pass or fail per target and data set, for the data sets that have the phases a target reads."""
    out = []
    for r in report["data"]:
        s, nominal = r["summary"], r["nominal_events"]
        if nominal >= WHOLE_RUN_FROM_EVENTS and s.get("whole_run_over_floor") is not None:
            out.append(_target("whole run within 2x the floor", r["label"], s["whole_run_over_floor"], WHOLE_RUN_OVER_FLOOR))
        if nominal >= ARCHIVE_FEATURES_FROM_EVENTS and s.get("archive_plus_features_over_floor") is not None:
            out.append(_target("archive + features within 1.5x the floor", r["label"], s["archive_plus_features_over_floor"],
                               ARCHIVE_FEATURES_OVER_FLOOR))
        if r.get("kind") == "busy_day" and s.get("peak_rss_mb") is not None:
            out.append(_target("peak memory (PSS, with workers) under 2 GB on the busy day", r["label"], s["peak_rss_mb"], BUSY_DAY_PEAK_RSS_MB, "MB"))
    for fit in report["fits"]:
        if fit["extrapolation_ratio"] is not None:
            out.append(_target(f"{fit['measure']} linear in {fit['against']}", fit["series"], fit["extrapolation_ratio"],
                               LINEAR_TOLERANCE, "x the line"))
    return out


def _target(name: str, where: str, value: float, limit: float, unit: str = "x the floor") -> dict:
    return {"target": name, "data": where, "value": value, "limit": limit, "unit": unit, "pass": bool(value <= limit)}


def linear_fits(report: dict) -> list[dict]:
    """Whole-run time, CPU and peak memory against events over the sizes, and against identities over the sprays:
    a least-squares line (slope, intercept, r²), and the largest point against the line through the others
    (``extrapolation_ratio``: 1 is linear, more is worse than linear; judged from three points up)."""
    series = {
        "sizes": ("events", [r for r in report["data"] if r["kind"] == "size"], lambda r: r["events"]),
        "identity spray": ("identities", [r for r in report["data"] if r["kind"] == "spray"], lambda r: r["identities"]),
    }
    measures = {"whole-run seconds": lambda s: s.get("whole_run_seconds"), "whole-run CPU seconds": lambda s: s.get("whole_run_cpu_seconds"),
                "peak memory MB": lambda s: s.get("peak_rss_mb")}
    fits = []
    for name, (against, rows, x_of) in series.items():
        for measure, y_of in measures.items():
            points = sorted((x_of(r), y_of(r["summary"])) for r in rows if y_of(r["summary"]) is not None)
            if len(points) < 2:
                continue
            x, y = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
            slope, intercept = np.polyfit(x, y, 1)
            residual = y - (slope * x + intercept)
            spread = float(((y - y.mean()) ** 2).sum())
            ratio = None
            if len(points) >= 3:
                head_slope, head_intercept = np.polyfit(x[:-1], y[:-1], 1)
                ratio = round(float(y[-1] / max(head_slope * x[-1] + head_intercept, 1e-9)), 2)
            fits.append({"series": name, "against": against, "measure": measure, "points": [[int(a), b] for a, b in points],
                         "slope_per_million": round(float(slope) * 1e6, 3), "intercept": round(float(intercept), 2),
                         "r2": round(1 - float((residual ** 2).sum()) / spread, 4) if spread else None,
                         "extrapolation_ratio": ratio})
    return fits


def data_sets(out: Path, args) -> list[tuple[str, str, Path, dict]]:
    """(kind, label, directory, about) for every size and profile asked for; data is generated once and kept."""
    from tools.bench_profiles import base_sample, busy_day, identity_spray

    sets = []
    for events in args.sizes or ([args.events] if not (args.busy_day or args.spray) else []):
        data, summary = base_sample(out, events, args.seed, SAMPLE_DAYS, EVENTS_PER_SCALE_DAY)
        sets.append(("size", f"{events:,}", data, {"nominal_events": events, "events": summary["total_events"], "end": summary["end"]}))
    if args.busy_day or args.spray:
        base, _ = base_sample(out, args.profile_base, args.seed, SAMPLE_DAYS, EVENTS_PER_SCALE_DAY)
    if args.busy_day:
        data, summary = busy_day(out, base, args.seed, args.busy_day)
        sets.append(("busy_day", f"busy day ({args.busy_day:,} in the peak hour)", data,
                     {"nominal_events": summary["total_events"], "events": summary["total_events"], "end": summary["end"], "profile": summary}))
    for identities in args.spray or []:
        data, summary = identity_spray(out, base, args.seed, identities)
        sets.append(("spray", f"spray ({identities:,} identities)", data,
                     {"nominal_events": summary["total_events"], "events": summary["total_events"], "end": summary["end"],
                      "identities": identities, "profile": summary}))
    return sets


def machine() -> dict:
    import psutil

    return {"cpu": platform.processor() or _cpu_model(), "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def _cell(value, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,}{suffix}" if isinstance(value, int) else f"{value}{suffix}"


def markdown(report: dict) -> str:
    """bench.md: the whole run against the floor and the anchors, each stage's wall / CPU / memory, the
    targets, the linear fits and the detectors, every figure from bench.json."""
    rows = [f"Command: `{report['command']}`", "",
            "| data | events | floor s (ev/s) | whole run s (/ floor) | archive + features s (/ floor) | five stages alone s "
            "| naive s (/ auditsift) | DuckDB s (auditsift / DuckDB) | checks: naive, DuckDB | peak memory MB (PSS, with workers) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in report["data"]:
        s = r["summary"]
        floor = f"{r['floor']['seconds']} ({s['floor_events_per_s']:,})" if "floor" in r else "-"
        run = f"{s['whole_run_seconds']} ({_cell(s['whole_run_over_floor'])})" if "whole_run_seconds" in s else "-"
        both = f"{s['archive_plus_features_seconds']} ({_cell(s['archive_plus_features_over_floor'])})" if "archive_plus_features_seconds" in s else "-"
        naive = f"{r['naive']['compute_seconds']} ({_cell(s.get('naive_over_auditsift'))})" if "naive" in r else "-"
        duck = f"{r['duckdb']['compute_seconds']} ({_cell(s.get('auditsift_over_duckdb'))})" if "duckdb" in r else "-"
        checks = ", ".join(_check(r[p]["check"]) if p in r else "-" for p in ("naive", "duckdb"))
        rows.append(f"| {r['label']} | {r['events']:,} | {floor} | {run} | {both} | {_cell(s.get('stages_seconds'))} | {naive} | {duck} "
                    f"| {checks} | {_cell(s['peak_rss_mb'])} |")
    rows += ["", "CPU seconds (process + workers) against the floor's CPU seconds:", "",
             "| data | floor CPU s | whole run CPU s (/ floor) | archive + features CPU s (/ floor) | load average at start, end |",
             "|---|---:|---:|---:|---|"]
    for r in report["data"]:
        s = r["summary"]
        both = (f"{round(s['stages']['archive']['cpu_seconds'] + s['stages']['features']['cpu_seconds'], 2)} "
                f"({_cell(s.get('archive_plus_features_cpu_over_floor'))})") if "archive_plus_features_seconds" in s else "-"
        run = f"{s['whole_run_cpu_seconds']} ({_cell(s.get('whole_run_cpu_over_floor'))})" if "whole_run_cpu_seconds" in s else "-"
        load = ", ".join(str(r.get(k, "-")) for k in ("load_at_start", "load_at_end"))
        rows.append(f"| {r['label']} | {_cell(r.get('floor', {}).get('cpu_seconds'))} | {run} | {both} | {load} |")
    rows += ["", "Each stage alone (its own process, same workdir in order): wall s / CPU s (process + workers) / peak memory MB "
             "(process + workers, PSS); the whole run's own stage times in brackets:", "",
             "| data | " + " | ".join(STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
    for r in report["data"]:
        cells = []
        for name in STAGES:
            stage = r["summary"]["stages"].get(name)
            inside = r.get("run", {}).get("timings", {}).get(name)
            cells.append(f"{stage['seconds']} / {stage['cpu_seconds']} / {stage['peak_rss_mb']:,}" + (f" ({inside:.1f})" if inside is not None else "")
                         if stage else "-")
        rows.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    rows += ["", "Outputs of the whole run (`startup`: importing the stages, paid once by `auditsift run`, in no stage's time):", "",
             "| data | startup s | windows scored | flagged | written (quiet left out) | anomalies.jsonl bytes | report.html bytes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["data"]:
        score, files = r.get("score", {}), r.get("report", {}).get("bytes", {})
        left_out = sum((score.get("quiet_left_out") or {}).values())
        rows.append(f"| {r['label']} | {_cell(r.get('run', {}).get('startup_seconds'))} | {_cell(score.get('records'))} "
                    f"| {_cell(score.get('flagged'))} | {_cell(score.get('written'))} ({left_out:,}) | {_cell(files.get('anomalies.jsonl'))} "
                    f"| {_cell(files.get('report.html'))} |")
    if report.get("targets"):
        rows += ["", "| target | data | measured | limit | |", "|---|---|---:|---:|---|"]
        for t in report["targets"]:
            rows.append(f"| {t['target']} | {t['data']} | {t['value']} | {t['limit']} {t['unit']} | {'pass' if t['pass'] else '**FAIL**'} |")
    if report.get("fits"):
        rows += ["", "| series | measure | points | slope per million | intercept | r² | largest / line through the others |",
                 "|---|---|---|---:|---:|---:|---:|"]
        for f in report["fits"]:
            points = ", ".join(f"{x:,}: {y}" for x, y in f["points"])
            rows.append(f"| {f['series']} ({f['against']}) | {f['measure']} | {points} | {f['slope_per_million']} | {f['intercept']} "
                        f"| {_cell(f['r2'])} | {_cell(f['extrapolation_ratio'])} |")
    if any("one_process" in r or "features_map" in r for r in report["data"]):
        rows += ["", "| data | one process (workers: 1): archive + features s (/ floor) | features map: read / flags and aggregates CPU s |",
                 "|---|---:|---:|"]
        for r in report["data"]:
            one, fmap = r.get("one_process"), r.get("features_map")
            single = f"{one['archive_seconds']} + {one['features_seconds']} ({_cell(r['summary'].get('one_process_over_floor'))})" if one else "-"
            mapped = f"{fmap['read_cpu_seconds']} / {fmap['flags_and_aggregates_cpu_seconds']}" if fmap else "-"
            rows.append(f"| {r['label']} | {single} | {mapped} |")
    detectors = [(r, name, d) for r in report["data"] if "detectors" in r for name, d in r["detectors"]["detectors"].items()]
    if detectors:
        rows += ["", "| data | detector | train rows | fit s | score rows | score s |", "|---|---|---:|---:|---:|---:|"]
        for r, name, d in detectors:
            rows.append(f"| {r['label']} | {name} | {d['train_rows']:,} | {d['fit_seconds']} | {d['score_rows']:,} | {d['score_seconds']} |")
    return "\n".join(rows) + "\n"


def _check(check: dict) -> str:
    return "equal" if check["same_windows"] and check["counts_equal"] and check["sets_equal"] else \
        "DIFFER (" + ", ".join(k for k in ("same_windows", "counts_equal", "sets_equal") if not check[k]) + ")"


def render(paths: list[str], out: Path) -> dict:
    """Several bench runs as one report (``out``/bench.json and bench.md): every data set tagged with the command
    that measured it, the summaries, fits and targets computed again over all of them."""
    reports = [json.loads(Path(path).read_text()) for path in paths]
    if any("data" not in r for r in reports):
        raise SystemExit("--render: a bench.json from before the whole-run bench (it has no 'data' list) cannot be rendered again")
    report = {"command": " and ".join(r["command"] for r in reports), "machine": [r["machine"] for r in reports],
              "data": [{**d, "command": d.get("command", r["command"])} for r in reports for d in r["data"]]}
    for r in report["data"]:
        r["summary"] = summarise(r)
    report["fits"] = linear_fits(report)
    report["targets"] = targets(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate and process (one size)")
    parser.add_argument("--sizes", type=int, nargs="+", help="several sizes, e.g. 250000 1000000 4000000 (overrides --events)")
    parser.add_argument("--busy-day", type=int, default=0, metavar="EVENTS",
                        help="add the busy-day profile: this many events in its peak hour (the issue's: 3600000, 1,000 requests/s)")
    parser.add_argument("--spray", type=int, nargs="+", metavar="IDENTITIES",
                        help="add identity-spray profiles: an hour with this many new identities (several: a line is fitted)")
    parser.add_argument("--profile-base", type=int, default=250_000, help="events of the four-day sample the profiles add their hour to")
    parser.add_argument("--phases", nargs="+", choices=list(PHASES), default=list(DEFAULT_PHASES),
                        help="phases to run on each data set, in order (default: %(default)s)")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--detectors", nargs="+", default=["iforest", "rcf-local"])
    parser.add_argument("--score-rows", type=int, default=100_000, help="feature rows each detector scores")
    parser.add_argument("--naive-max", type=int, default=1_000_000, help="skip the naive version (about 1 ms an event) above this many events")
    parser.add_argument("--naive-chunk-lines", type=int, default=NAIVE_CHUNK_LINES,
                        help="lines the naive version reads at a time (more: more memory, fewer requests split between chunks)")
    parser.add_argument("--one-process-max", type=int, default=None,
                        help="skip the one-process run of archive + features (workers: 1) above this many events")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a configuration key in every phase, e.g. archive.workers=1 (repeatable)")
    parser.add_argument("--render", metavar="BENCH_JSON", nargs="+", help="recompute the summaries, fits and targets of one or more "
                        "bench.json files (their data sets together, each with its command) into --out (no phase runs)")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--now", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from pipeline.config import load_config
    from pipeline.errors import AuditsiftError

    try:  # a bad --set fails here, in one line, before any data is generated
        load_config(overrides=config_overrides(args.settings))
    except AuditsiftError as error:
        raise SystemExit(f"error: {error.message}" + (f" (hint: {error.hint})" if error.hint else "")) from None
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.data, args.work, args)))
        return
    if args.render:
        print(markdown(render(args.render, Path(args.out))))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join([Path(sys.executable).name, "-m", "tools.bench", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "data": [], "fits": [], "targets": []}
    for kind, label, data, about in data_sets(out, args):
        report["data"].append({"kind": kind, **bench_data(out, label, data, about, args)})
        report["fits"] = linear_fits(report)
        report["targets"] = targets(report)
        (out / "bench.json").write_text(json.dumps(report, indent=2))
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
