"""Differential fuzzing of the C decoder (features._fastnorm) against msgspec's block path.

Realistic audit lines (the factory's events, kube-apiserver's compact field order, the shared EKS
fixtures) are damaged in the ways hostile or broken inputs are: cut short, bytes that are not UTF-8,
huge numbers, deep nesting, NULs, duplicated and escaped keys, lone surrogates, fields of another JSON
type. Both decoders must accept the same lines and give the same rows (so the per-line path, and the
quarantine, see the same rest), and every Arrow array the C decoder's buffers become must validate.

The suite runs a few thousand seeded mutations against the normal build (test_native_decoder.py);
``make fuzz`` runs many more against an ASan+UBSan build of fastnorm.c:

    python -m tests.features.native_fuzz --module build/sanitized/_fastnorm.so --count 200000
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import pyarrow as pa

import features.events as events_module
from tests.factory import SHARED_FIXTURES, T0, apiserver_line, event, events

# Paths normalisation reads, and values of every JSON type to put there.
READ_PATHS = (("auditID",), ("stage",), ("verb",), ("requestURI",), ("userAgent",), ("sourceIPs",), ("user",), ("user", "username"),
              ("user", "groups"), ("user", "extra"), ("user", "extra", "arn"), ("objectRef",), ("objectRef", "resource"),
              ("objectRef", "subresource"), ("responseStatus",), ("responseStatus", "code"), ("annotations",),
              ("annotations", "audit.k8s.io/truncated"), ("impersonatedUser",), ("stageTimestamp",), ("kind",), ("apiVersion",),
              ("requestObject",))
ODD_VALUES = (None, True, 0, -1, 404, 1000, 2 ** 63, -(2 ** 63) - 1, 1.5, 1e300, "", "x", "true", [], [None], ["a", 1], {}, {"a": []})
RAW_NUMBERS = (b"1e400", b"-1e400", b"123456789012345678901234567890", b"-0", b"0.0", b"1E2", b"18446744073709551616")
BAD_BYTES = (b"\x00", b"\xff", b"\xc3", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")
ESCAPES = (b"\\ud800", b"\\udc00", b"\\u0000", b"\\ud83d\\ude00", b"\\u0022", b"\\\\", b"\\/")


def seed_lines() -> list[bytes]:
    """Well-formed lines shaped like real ones."""
    items = events(6, step=timedelta(seconds=7))
    items += [event(T0, verb="create", objectRef={"resource": "pods", "subresource": "exec", "namespace": "web", "name": "api-0"},
                    requestURI="/api/v1/namespaces/web/pods/api-0/exec?command=sh&command=-c&command=id", responseStatus={"code": 101}),
              event(T0, user={"username": "system:anonymous", "groups": ["system:unauthenticated"]}, responseStatus={"code": 401},
                    sourceIPs=["198.51.100.7", "10.0.0.1"]),
              event(T0, verb="patch", objectRef={"resource": "leases", "namespace": "kube-node-lease", "name": "n1"},
                    requestObject={"spec": {"holderIdentity": "n1"}}),
              event(T0, verb="create", objectRef={"resource": "pods", "namespace": "web"}, requestObject={"spec": {"containers": []}})]
    lines = [json.dumps(item).encode() for item in items] + [apiserver_line(item) for item in items[:4]]
    if SHARED_FIXTURES.exists():
        lines += [json.dumps(json.loads(path.read_text())).encode() for path in sorted(SHARED_FIXTURES.glob("*.json"))[:40]]
    return lines


def _set(item: dict, path: tuple[str, ...], value) -> None:
    node = item
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def mutate(line: bytes, rng: random.Random) -> bytes:
    """One damaged copy of ``line`` (one to three mutations)."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.randrange(10)
        if kind == 0 and line:  # cut short, as CloudWatch cuts at 256 KB
            line = line[:rng.randrange(len(line))]
        elif kind == 1 and line:  # bytes that are not UTF-8, or a NUL, anywhere (inside strings most of the time)
            at = rng.randrange(len(line))
            line = line[:at] + rng.choice(BAD_BYTES) + line[at + rng.randint(0, 1):]
        elif kind == 2:  # a read field of another JSON type
            try:
                item = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(item, dict):
                _set(item, rng.choice(READ_PATHS), rng.choice(ODD_VALUES))
                line = json.dumps(item).encode()
        elif kind == 3:  # a number beyond double or int64 where a read or skipped number is
            line = line.replace(b'"code": 200', b'"code": ' + rng.choice(RAW_NUMBERS), 1).replace(
                b'"code":200', b'"code":' + rng.choice(RAW_NUMBERS), 1)
            line = line[:-1] + b', "n": ' + rng.choice(RAW_NUMBERS) + b"}" if line.endswith(b"}") else line
        elif kind == 4 and line.endswith(b"}"):  # deep nesting around the 1,000-opener and orjson's 1,024 limits
            depth = rng.choice((10, 999, 1000, 1023, 1024, 1100))
            opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
            line = line[:-1] + b', "deep": ' + opener * depth + b"1" + closer * depth + b"}"
        elif kind == 5:  # a duplicated read field, top level or nested
            key = rng.choice((b'"verb"', b'"auditID"', b'"user"', b'"username"', b'"resource"', b'"code"', b'"stageTimestamp"'))
            at = line.find(key)
            if at > 0:
                end = line.find(b",", at)
                if end > 0:
                    line = line[:end] + b"," + line[at:end] + line[end:]
        elif kind == 6:  # an escape sequence inside a string: surrogates, NUL, quote
            at = line.find(b'"', rng.randrange(max(len(line), 1)))
            if at > 0:
                line = line[:at] + rng.choice(ESCAPES) + line[at:]
        elif kind == 7:  # a key spelt with an escape (\u0076erb is "verb")
            key = rng.choice((b'"verb"', b'"user"', b'"auditID"', b'"code"'))
            line = line.replace(key, b'"\\u00' + b"%02x" % key[1] + key[2:], 1)
        elif kind == 8:  # structural damage
            at = rng.randrange(len(line) + 1)
            line = line[:at] + rng.choice((b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b" ", b"\t", b"\r")) + line[at:]
        else:  # glued or padded lines
            line = rng.choice((b"  " + line + b" \r", line + line, line + b"x", b"\xef\xbb\xbf" + line))
    return line


def mutated_lines(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    seeds = seed_lines()
    return [mutate(rng.choice(seeds), rng) for _ in range(count)]


def archived(path: Path, native) -> tuple:
    """(events, quarantine counts, quarantined samples, repairs) of the archive's block path over ``path``, with
    ``native`` as the C decoder (None: msgspec's). Lines a decoder leaves go through the per-line path, as in a run."""
    from pipeline.io.readers import Quarantine, read_blocks
    from pipeline.io.storage import resolve_inputs
    from pipeline.stages.archive import normalise_blocks

    saved = events_module._fastnorm
    events_module._fastnorm = native
    try:
        ref = resolve_inputs([str(path)])[0]
        quarantine, repairs = Quarantine(), {}
        tables = [table for table, _ in normalise_blocks(read_blocks(ref, quarantine), quarantine, ref.name, 7, repairs)]
    finally:
        events_module._fastnorm = saved
    table = pa.concat_tables(tables) if tables else events_module.EVENT_SCHEMA.empty_table()
    return table, quarantine.counts, sorted((e["reason"], e["sample"]) for e in quarantine.entries), repairs


def differential(lines: list[bytes], native, workdir: Path) -> int:
    """``lines`` archived with ``native`` and with msgspec's decoder: the same events, the same quarantine and the
    same repairs; and every array the C decoder's buffers became validates in full. Returns how many lines the
    C decoder took."""
    saved = events_module._fastnorm
    events_module._fastnorm = native
    try:
        rows, positions = events_module.normalize_json_lines(lines)
    finally:
        events_module._fastnorm = saved
    for column in rows.columns:
        for chunk in column.chunks:
            chunk.validate(full=True)
    path = workdir / "mutated.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    ours, theirs = archived(path, native), archived(path, None)
    if len(ours) == 1 or len(theirs) == 1:
        assert ours == theirs, f"one archive raised: {ours[:1]} vs {theirs[:1]}"
        return len(positions)
    assert ours[1:] == theirs[1:], "quarantine or repairs differ"
    if not ours[0].equals(theirs[0]):
        a, b = ours[0].to_pylist(), theirs[0].to_pylist()
        first = next((x, y) for x, y in zip(a, b) if x != y) if len(a) == len(b) else (len(a), len(b))
        raise AssertionError(f"archived events differ: {first}")
    return len(positions)


def load_module(path: str):
    """A build of fastnorm.c at ``path`` (e.g. the sanitizer build) as the module it stands in for."""
    spec = importlib.util.spec_from_file_location("features._fastnorm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", help="a build of fastnorm.c to test (default: the installed features._fastnorm)")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--block", type=int, default=5_000, help="lines decoded together")
    args = parser.parse_args(argv)
    native = load_module(args.module) if args.module else events_module._fastnorm
    if native is None:
        raise SystemExit("features._fastnorm is not built and no --module was given")
    accepted = 0
    with tempfile.TemporaryDirectory() as workdir:
        for start in range(0, args.count, args.block):
            accepted += differential(mutated_lines(min(args.block, args.count - start), args.seed + start), native, Path(workdir))
    print(f"{args.count:,} mutated lines (seed {args.seed}): both decoders gave the same rows; {accepted:,} taken by the block path")


if __name__ == "__main__":
    sys.exit(main())
