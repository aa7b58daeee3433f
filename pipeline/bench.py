"""``make bench``: auditsift's archive and features stages against the parsing floor and a naive pandas version.

For each size, sample data in the real format (``pipeline.sample``, four days, the background
scaled to reach the size) is generated once, then every phase runs in its own subprocess on
the same files, so each phase's peak RSS is its own:

- ``floor``: gunzip (python-isal) and ``orjson.loads`` every line, nothing else: the cost of
  merely reading the events in Python;
- ``archive``, ``features``: the real stage functions (``run_archive``, ``run_features``) on a
  fresh workdir, as ``auditsift run`` calls them;
- ``naive``: ``naive_features``, the per-entity hourly features the way a pandas user writes
  them first (``json.loads``, ``pandas.json_normalize``, groupby), checked against auditsift's;
- ``detectors``: fit each detector on the training rows of the feature table ``features``
  produced, then score ``--score-rows`` rows drawn from it.

Results go to ``<out>/bench.json`` and a Markdown table to ``<out>/bench.md``.
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
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

SAMPLE_DAYS = 4
EVENTS_PER_SCALE_DAY = 116_000
NAIVE_CHUNK_LINES = 100_000
BODY_FLAGS = ("configmap_credentials", "admin_binding", "anonymous_binding", "default_sa_binding", "dangerous_role",
              "privileged_workload", "nodeport_service", "webhook_external_url", "webhook_weakened")


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
        "resource": column("objectRef.resource"), "subresource": subresource, "namespace": column("objectRef.namespace"),
        "name": column("objectRef.name"), "code": column("responseStatus.code").astype("Int32"),
        "decision": column("annotations.authorization.k8s.io/decision"), "request_uri": uri,
        "exec_command": [" ".join(parse_qs(urlsplit(u).query).get("command", [])) or None if s in ("exec", "attach") else None
                         for u, s in zip(uri.fillna(""), subresource)],
    })
    for name in ("configmap_credentials", "role_ref", "subjects", "role_verbs", "role_resources", "pod_privileged",
                 "pod_host_namespaces", "pod_host_paths", "pod_capabilities", "service_type", "webhook_targets", "webhook_weakened"):
        events[name] = None
    return events


def compare_naive(naive: pd.DataFrame, partials: pd.DataFrame) -> dict:
    """Which of the naive version's columns equal auditsift's partial aggregates (body flags aside)."""
    from features.aggregate import SET_NAMES

    key = ["entity_type", "entity", "window_start"]
    left = naive.set_index(key).sort_index()
    right = partials.set_index(key).sort_index()
    same_keys = left.index.equals(right.index)
    counts = [c for c in right.columns if c == "n" or (c.startswith("n_") and c.removeprefix("n_") not in BODY_FLAGS)]
    return {
        "same_windows": bool(same_keys),
        "counts_equal": bool(same_keys and (left[counts].to_numpy() == right[counts].to_numpy()).all()),
        "sets_equal": bool(same_keys and all(list(a) == list(b) for n in SET_NAMES for a, b in zip(left[n], right[n]))),
        "not_compared": [f"n_{f}" for f in BODY_FLAGS],
    }


# --------------------------------------------------------------------------- phases (run in subprocesses)
def _inputs(data: str) -> list[str]:
    return sorted(glob.glob(os.path.join(data, "*.jsonl.gz")))


def _context(work: str, args=None, workers: int | None = None):
    """A run context on ``work`` with the default configuration and the ``--set`` overrides."""
    from pipeline.config import load_config
    from pipeline.context import RunContext
    from pipeline.storage import LocalStorage

    config = load_config(overrides=config_overrides(args.settings if args is not None else []))
    if workers is not None:
        config = config.model_copy(update={"archive": config.archive.model_copy(update={"workers": workers}),
                                           "features": config.features.model_copy(update={"workers": workers})})
    return RunContext(LocalStorage(work), config, "bench")


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
    from pipeline.sample import sample_clock
    from pipeline.stages import run_archive

    counts = run_archive(_context(work, args), [data], sample_clock(Path(data)))
    return {"events": counts["events"], "quarantined": counts["quarantined"], "hours": counts["hours_written"]}


def phase_features(data: str, work: str, args) -> dict:
    from pipeline.sample import sample_clock
    from pipeline.stages import resolve_ranges, run_features

    ctx = _context(work, args)
    counts = run_features(ctx, resolve_ranges(ctx, now=sample_clock(Path(data))))
    return {"rows": counts["rows"], "hours": counts["hours"], "timings": dict(ctx.timings)}


def phase_one_process(data: str, work: str, args) -> dict:
    """archive and features with ``workers: 1`` (everything in this process), on a workdir of their own:
    what the parallel workers add, and what one core does alone."""
    from pipeline.sample import sample_clock
    from pipeline.stages import resolve_ranges, run_archive, run_features

    work = f"{work}-one-process"
    shutil.rmtree(work, ignore_errors=True)
    ctx = _context(work, args, workers=1)
    out = {}
    now = sample_clock(Path(data))
    for name, run in (("archive", lambda: run_archive(ctx, [data], now)), ("features", lambda: run_features(ctx, resolve_ranges(ctx, now=now)))):
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
    from pipeline.archive import list_archive_hours
    from pipeline.stages import flag_context

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
    naive = naive_features(_inputs(data), chunk_lines=args.naive_chunk_lines)
    return {"rows": int(len(naive)), "check": compare_naive(naive, _auditsift_partials(work))}


def _auditsift_partials(work: str) -> pd.DataFrame:
    from features.aggregate import reduce_partials
    from pipeline.stages import partials_frame

    storage = _context(work).storage
    keys = [k for k in storage.list("features/") if "/partials/" in k and k.endswith(".parquet") and ".rules." not in k]
    return reduce_partials([partials_frame(storage.read_parquet(k) for k in keys)])


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


PHASES = {"floor": phase_floor, "archive": phase_archive, "features": phase_features, "features_map": phase_features_map,
          "one_process": phase_one_process, "naive": phase_naive, "detectors": phase_detectors}


def run_phase(name: str, data: str, work: str, args) -> dict:
    """Run one phase in this process and measure it: wall and CPU seconds (its own, and its worker
    processes'), its peak RSS, and the peak of the summed RSS of it and its workers (sampled)."""
    import threading

    import psutil

    peak = {"tree": 0}
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.wait(0.1):
            try:
                rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            peak["tree"] = max(peak["tree"], rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    result = PHASES[name](data, work, args)
    seconds, cpu = round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)
    stop.set()
    sampler.join()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {**result, "seconds": seconds, "cpu_seconds": cpu, "worker_cpu_seconds": round(children.ru_utime + children.ru_stime, 2),
            "peak_rss_mb": own, "peak_rss_with_workers_mb": max(own, round(peak["tree"] / 2**20))}


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


def _in_subprocess(name: str, data: str, work: str, args) -> dict:
    command = [sys.executable, "-m", "pipeline.bench", "--phase", name, "--data", data, "--work", work,
               "--score-rows", str(args.score_rows), "--naive-chunk-lines", str(args.naive_chunk_lines),
               *(f"--set={setting}" for setting in args.settings), "--detectors", *args.detectors]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- driver
def sample_data(out: Path, events: int, seed: int) -> tuple[str, int]:
    """Four days of sample logs of about ``events`` events, generated once per size and seed."""
    from pipeline.sample import generate_sample

    target = out / f"data-{events}-seed{seed}"
    summary_path = target / "summary.json"
    if not summary_path.exists():
        shutil.rmtree(target, ignore_errors=True)
        scale = max(events / (SAMPLE_DAYS * EVENTS_PER_SCALE_DAY), 0.05)
        summary = generate_sample(target, days=SAMPLE_DAYS, seed=seed, scale=scale)
        summary_path.write_text(json.dumps({"scale": scale, "total_events": summary["total_events"]}))
    return str(target), json.loads(summary_path.read_text())["total_events"]


def bench_size(out: Path, events: int, args) -> dict:
    data, total = sample_data(out, events, args.seed)
    work = str(out / f"work-{events}")
    shutil.rmtree(work, ignore_errors=True)
    result = {"target_events": events, "events": total, "input_bytes": sum(os.path.getsize(p) for p in _inputs(data))}
    for name in PHASES:
        if name == "naive" and args.naive_max and total > args.naive_max:
            continue
        if name == "one_process" and args.one_process_max is not None and total > args.one_process_max:
            continue
        result[name] = _in_subprocess(name, data, work, args)
        print(f"{total:>9} events  {name:9s} {result[name]['seconds']:8.1f} s  {result[name]['peak_rss_mb']:6d} MB", flush=True)
    floor = result["floor"]["seconds"]
    stages = result["archive"]["seconds"] + result["features"]["seconds"]
    result["summary"] = {
        "floor_events_per_s": round(total / floor),
        "archive_events_per_s": round(total / result["archive"]["seconds"]),
        "features_events_per_s": round(total / result["features"]["seconds"]),
        "archive_plus_features_seconds": round(stages, 2),
        "auditsift_over_floor": round(stages / floor, 2),
        "archive_over_floor": round(result["archive"]["seconds"] / floor, 2),
        "naive_over_auditsift": round(result["naive"]["seconds"] / stages, 2) if "naive" in result else None,
        "peak_rss_mb": max(result[p]["peak_rss_with_workers_mb"] for p in ("archive", "features")),
    }
    if "one_process" in result:
        single = result["one_process"]["archive_seconds"] + result["one_process"]["features_seconds"]
        result["summary"]["one_process_seconds"] = round(single, 2)
        result["summary"]["one_process_over_floor"] = round(single / floor, 2)
    return result


def machine() -> dict:
    import psutil

    return {"cpu": platform.processor() or _cpu_model(), "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def markdown(report: dict) -> str:
    rows = ["| events | floor s (ev/s) | archive s | features s | archive+features / floor | one process: archive + features s (/ floor) "
            "| naive s | naive / auditsift | peak RSS archive / features / naive MB (with workers) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["sizes"]:
        s = r["summary"]
        naive = r.get("naive")
        one = r.get("one_process")
        single = (f"{one['archive_seconds']} + {one['features_seconds']} ({s['one_process_over_floor']})" if one else "-")
        rows.append(
            f"| {r['events']:,} | {r['floor']['seconds']} ({s['floor_events_per_s']:,}) | {r['archive']['seconds']} | "
            f"{r['features']['seconds']} | {s['auditsift_over_floor']} | {single} | {naive['seconds'] if naive else '-'} | "
            f"{s['naive_over_auditsift'] or '-'} | {r['archive']['peak_rss_with_workers_mb']} / {r['features']['peak_rss_with_workers_mb']} / "
            f"{naive['peak_rss_mb'] if naive else '-'} |")
    rows += ["", "CPU seconds (this process + its worker processes):", "",
             "| events | floor | archive | features | one process: archive + features | naive |", "|---:|---:|---:|---:|---:|---:|"]
    for r in report["sizes"]:
        one = r.get("one_process")
        cpu = {p: round(r[p]["cpu_seconds"] + r[p].get("worker_cpu_seconds", 0), 1) for p in ("floor", "archive", "features") if p in r}
        single = f"{one['archive_cpu_seconds']} + {one['features_cpu_seconds']}" if one else "-"
        naive_cpu = r["naive"]["cpu_seconds"] if "naive" in r else "-"
        rows.append(f"| {r['events']:,} | {cpu['floor']} | {cpu['archive']} | {cpu['features']} | {single} | {naive_cpu} |")
    rows += ["", "| events | detector | train rows | fit s | score rows | score s |", "|---:|---|---:|---:|---:|---:|"]
    for r in report["sizes"]:
        for name, d in r["detectors"]["detectors"].items():
            rows.append(f"| {r['events']:,} | {name} | {d['train_rows']:,} | {d['fit_seconds']} | {d['score_rows']:,} | {d['score_seconds']} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate and process (one size)")
    parser.add_argument("--sizes", type=int, nargs="+", help="several sizes, e.g. 250000 1000000 4000000 (overrides --events)")
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
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join([Path(sys.executable).name, "-m", "pipeline.bench", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "sizes": []}
    for events in args.sizes or [args.events]:
        report["sizes"].append(bench_size(out, events, args))
        (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
