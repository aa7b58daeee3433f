"""The bench's production-shaped inputs: a busy day and an identity spray, written as variations of sample requests.

The sample generator (``pipeline.sample``) simulates every request and writes about 60,000 events a
second, too slow for an hour at 1,000 requests a second. Both profiles therefore start from four days of
sample logs (the history the model trains on, with the sample's attacks on the last day) and add one hour
on the last day built from that day's own requests, re-emitted as fresh requests:

- every copy gets a new auditID (a version-4 UUID from a seeded stream) and new timestamps: received
  at its place in the hour, each stage as far after that as in the original (a watch's ResponseComplete
  minutes later, as EKS writes it); every other field is the original's bytes;
- **busy day**: ``peak_events`` events in the hour, drawn from the day's requests (the attacks left out)
  in their mix of nodes, controllers, service accounts and people. Control-plane identities (``eks:``,
  ``system:kube-``, ``system:apiserver``, anonymous) stay as they are; every other identity is spread
  over ``variants`` copies (node ``ip-10-0-…`` becomes ``ip-10-k-…`` with its address ``10.k.…``, a
  service account ``name`` becomes ``name-k``, a person ``alice@`` becomes ``alice.k@``), so several
  hundred identities share the hour as they do on a large cluster;
- **identity spray**: ``identities`` service accounts that were never seen before
  (``system:serviceaccount:ci-NNNN:job-NNNNNN``), each making ``requests_per_identity`` ordinary
  requests taken from the day's service-account traffic, from a pool of ``SPRAY_ADDRESSES`` pod
  addresses: an hour of token spraying, or of a CI system creating a service account per job.

The hour is written as ``parts`` files of consecutive minutes (as Firehose or an export delivers an hour
in several objects), beside hard links to the sample's day files. Same arguments and same generator code, same
bytes: a data directory is reused by name while its summary records the generator it was made with
(``generator_digest``), and made again when the generator has changed.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import random
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import orjson

import pipeline.sample
from pipeline.sample.emit import DAY, HOUR, Emitter
from pipeline.sample.generate import EPOCH, DayWriter, generate_sample
from pipeline.sources import source_digest

PEAK_HOUR = 14  # the hour of the last day the profiles fill (UTC); its sample traffic stays in it too
SPRAY_ADDRESSES = 4096
CONTROL_PLANE = re.compile(r"^(?:eks:|system:kube-|system:apiserver|system:anonymous|system:unauthenticated)")
_NODE = re.compile(r"^system:node:ip-10-(\d+)-")
_MARKS = {"auditID": "@@audit@@", "requestReceivedTimestamp": "@@received@@", "stageTimestamp": "@@stage@@"}


@functools.cache
def generator_digest() -> str:
    """``source_digest`` (first 16 hex digits) of the code that writes the bench's data: the sample generator and
    this module."""
    return source_digest(Path(pipeline.sample.__file__).parent, Path(__file__))[:16]


def _made(summary_path: Path) -> bool:
    """Whether the data beside ``summary_path`` was made by this generator (``generator_digest``): reused if so."""
    return summary_path.exists() and json.loads(summary_path.read_text()).get("generator") == generator_digest()


def base_sample(out: Path, events: int, seed: int, days: int, events_per_scale_day: int) -> tuple[Path, dict]:
    """Four days of sample logs of about ``events`` events, generated once per size, seed and generator."""
    target = out / f"data-{events}-seed{seed}"
    summary_path = _summary_path(target)
    if not _made(summary_path):
        shutil.rmtree(target, ignore_errors=True)
        scale = max(events / (days * events_per_scale_day), 0.05)
        summary = generate_sample(target, days=days, seed=seed, scale=scale)
        summary_path.write_text(json.dumps({"scale": scale, "total_events": summary["total_events"],
                                            "start": summary["start"], "end": summary["end"], "generator": generator_digest()}))
    return target, json.loads(summary_path.read_text())


def busy_day(out: Path, base: Path, seed: int, peak_events: int, variants: int = 16, parts: int = 12) -> tuple[Path, dict]:
    """The base sample plus ``peak_events`` events in hour PEAK_HOUR of its last day (see the module doc)."""
    target = out / f"busy-{peak_events}-v{variants}-seed{seed}-on-{base.name}"
    return _profile(target, base, lambda requests, rng: _busy_hour(requests, rng, peak_events, variants),
                    {"profile": "busy_day", "peak_events": peak_events, "identity_variants": variants}, seed, parts)


def identity_spray(out: Path, base: Path, seed: int, identities: int, requests_per_identity: int = 2,
                   parts: int = 4) -> tuple[Path, dict]:
    """The base sample plus an hour in which ``identities`` new service accounts each make a few requests."""
    target = out / f"spray-{identities}x{requests_per_identity}-seed{seed}-on-{base.name}"
    return _profile(target, base, lambda requests, rng: _spray_hour(requests, rng, identities, requests_per_identity),
                    {"profile": "identity_spray", "identities": identities, "requests_per_identity": requests_per_identity},
                    seed, parts)


def _summary_path(data: Path) -> Path:
    """Beside the data directory, not in it: the archive reads every JSON file of a directory it is given."""
    return data.parent / f"{data.name}.summary.json"


def _profile(target: Path, base: Path, plan, about: dict, seed: int, parts: int) -> tuple[Path, dict]:
    summary_path = _summary_path(target)
    if not _made(summary_path):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        sample = json.loads(_summary_path(base).read_text())
        days = sorted(p for p in base.glob("audit-*.jsonl.gz"))
        for path in days:
            _link(path, target / path.name)
        rng = random.Random(seed)
        end_us = _micros(sample["end"])
        hour_start = end_us - DAY + PEAK_HOUR * HOUR
        labels = json.loads((base / "labels.json").read_text())
        attacks = {audit_id for scenario in labels["scenarios"] for audit_id in scenario["audit_ids"]}
        requests = _requests(days[-1], end_us - DAY, attacks)
        written = _write_hour(target, hour_start, plan(requests, rng), Emitter(seed), parts)
        summary = {**about, "base": base.name, "base_events": sample["total_events"], "hour_start": _iso(hour_start),
                   **written, "total_events": sample["total_events"] + written["hour_events"],
                   "start": sample["start"], "end": sample["end"], "generator": generator_digest()}
        summary_path.write_text(json.dumps(summary))
    return target, json.loads(summary_path.read_text())


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)


class Request:
    """One sample request as templates: each stage's line with its auditID, timestamps, username and
    last source address replaced by %-format slots, and the stage's delay after the request was received."""

    __slots__ = ("user", "address", "lines")

    def __init__(self, events: list[dict]):
        self.user = (events[0].get("user") or {}).get("username")
        ips = events[0].get("sourceIPs") or []
        self.address = ips[-1] if ips else None
        self.lines = []
        for event in events:
            delay = _micros(event["stageTimestamp"]) - _micros(event["requestReceivedTimestamp"])
            event = {**event, **_MARKS}
            if self.user is not None:
                event["user"] = {**event["user"], "username": "@@user@@"}
            if self.address is not None:
                event["sourceIPs"] = [*event["sourceIPs"][:-1], "@@address@@"]
            line = orjson.dumps(event).decode().replace("%", "%%")
            for slot in (*_MARKS.values(), "@@user@@", "@@address@@"):
                line = line.replace(slot, f"%({slot.strip('@')})s")
            self.lines.append((delay, line))


def _requests(day_file: Path, day_start: int, leave_out: set[str]) -> list[Request]:
    """Every whole request of a day file (its stages together, in order), the ``leave_out`` audit IDs aside:
    received that day, and either completed in it or a failed authentication (a lone ResponseStarted 401)."""
    stages: dict[str, list[dict]] = {}
    with gzip.open(day_file, "rb") as handle:
        for line in handle:
            event = orjson.loads(line)
            if event["auditID"] not in leave_out and _micros(event["requestReceivedTimestamp"]) >= day_start:
                stages.setdefault(event["auditID"], []).append(event)
    return [Request(events) for events in stages.values()
            if events[-1]["stage"] == "ResponseComplete" or (len(events) == 1 and events[0]["responseStatus"].get("code") == 401)]


def _busy_hour(requests: list[Request], rng: random.Random, events: int, variants: int):
    """(request, user, address) in hour order until ``events`` lines: the day's requests drawn at random,
    each identity outside the control plane given to one of ``variants`` copies of it."""
    names: dict[tuple[str | None, str | None, int], tuple] = {}
    written = 0
    while written < events:
        request = requests[rng.randrange(len(requests))]
        copy = 0 if request.user is None or CONTROL_PLANE.match(request.user) else rng.randrange(variants)
        key = (request.user, request.address, copy)
        if key not in names:
            names[key] = (_variant_user(request.user, copy), _variant_address(request.address, copy))
        yield request, *names[key]
        written += len(request.lines)


def _variant_user(user: str | None, copy: int) -> str | None:
    if user is None or copy == 0:
        return user
    if _NODE.match(user):
        return _NODE.sub(lambda m: f"system:node:ip-10-{(int(m.group(1)) + copy) % 256}-", user)
    if user.startswith("system:serviceaccount:"):
        return f"{user}-{copy}"
    local, at, domain = user.partition("@")
    return f"{local}.{copy}{at}{domain}" if at else f"{user}-{copy}"


def _variant_address(address: str | None, copy: int) -> str | None:
    """A VPC address 10.a.b.c moved to 10.(a+copy).b.c (a node's address follows its name); others kept."""
    if address is None:
        return None
    octets = address.split(".")
    if copy and len(octets) == 4 and octets[0] == "10" and octets[1].isdigit():
        octets[1] = str((int(octets[1]) + copy) % 256)
    return ".".join(octets)


def _spray_hour(requests: list[Request], rng: random.Random, identities: int, per_identity: int):
    """Each of ``identities`` new service accounts makes ``per_identity`` single-stage service-account requests
    of the day (gets, lists, updates) from one of SPRAY_ADDRESSES pod addresses; identities in random order."""
    pool = [r for r in requests if r.user and r.user.startswith("system:serviceaccount:") and len(r.lines) == 1]
    order = list(range(identities * per_identity))
    rng.shuffle(order)
    for slot in order:
        number = slot // per_identity
        pod = number % SPRAY_ADDRESSES
        address = f"10.{64 + pod // 65536}.{pod // 256 % 256}.{pod % 256}"
        yield pool[rng.randrange(len(pool))], f"system:serviceaccount:ci-{number // 100:04d}:job-{number:06d}", address


def _write_hour(target: Path, hour_start: int, planned, ids: Emitter, parts: int) -> dict:
    """The planned requests spread evenly over the hour (received in plan order), written to ``parts`` files."""
    planned = list(planned)
    step = HOUR / max(len(planned), 1)
    per_part = -(-len(planned) // parts)
    lines = in_hour = 0
    users, addresses = set(), set()
    for part in range(parts):
        first = part * per_part
        name = f"audit-{_iso(hour_start)[:13]}-part{part:02d}.jsonl.gz"
        writer = DayWriter(target / name)
        for index in range(first, min(first + per_part, len(planned))):
            request, user, address = planned[index]
            received = hour_start + int(index * step)
            values = {"audit": ids.uid(), "received": ids.ts(received), "user": user, "address": address}
            users.add(user)
            addresses.add(address)
            for delay, line in request.lines:
                values["stage"] = ids.ts(received + delay)
                writer.write((line % values).encode())
                in_hour += received + delay < hour_start + HOUR
            lines += len(request.lines)
        writer.close()
    users.discard(None)
    addresses.discard(None)
    return {"hour_events": lines, "hour_events_in_hour": in_hour, "hour_requests": len(planned),
            "hour_identities": len(users), "hour_addresses": len(addresses), "hour_parts": parts}


def _micros(text: str) -> int:
    return (datetime.fromisoformat(text.replace("Z", "+00:00")) - EPOCH) // timedelta(microseconds=1)


def _iso(micros: int) -> str:
    return (EPOCH + timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%SZ")
