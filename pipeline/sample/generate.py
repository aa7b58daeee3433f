"""Write the sample: one gzipped JSON-lines file of audit events per UTC day, plus labels.

Events are generated an hour at a time, merged with the attack events, sorted by
stageTimestamp (when the API server emitted them) and filed under that day; a long-running
request whose ResponseComplete falls after midnight lands in the next day's file, as it does
in CloudWatch. Only one hour of events is in memory at a time.
"""

from __future__ import annotations

import bisect
import pathlib
import zlib
from datetime import datetime, timedelta, timezone

import orjson

from .attacks import Attacks
from .background import Background
from .cluster import Cluster
from .emit import DAY, HOUR
from .lookalikes import LookAlikes
from .people import People

try:
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - isal is a declared dependency; zlib is the slower fallback
    _deflate = zlib
LEVEL = 1

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FLUSH_BYTES = 4 << 20


def default_end(seed: int) -> datetime:
    """Midnight UTC of a date fixed by the seed, so output never depends on the clock."""
    return datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(days=seed % 20)


def sample_clock(out_dir: pathlib.Path) -> datetime:
    """The run clock that scores a sample's last day: the ``end`` its labels.json records (``--now`` for
    ``auditsift run``), so a run over sample data is the same whatever day it runs on."""
    labels = orjson.loads((pathlib.Path(out_dir) / "labels.json").read_bytes())
    return datetime.fromisoformat(labels["end"].replace("Z", "+00:00"))


def iso(t: int) -> str:
    return (EPOCH + timedelta(microseconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DayWriter:
    """One day's file: lines go into a reusable buffer, compressed to gzip in large chunks.

    A single gzip member with mtime 0 and no file name, so identical input gives identical bytes.
    """

    def __init__(self, path: pathlib.Path):
        self.f = open(path, "wb")
        self.z = _deflate.compressobj(LEVEL, _deflate.DEFLATED, 31)
        self.buf = bytearray(FLUSH_BYTES + (1 << 20))
        self.pos = 0
        self.count = 0

    def write(self, line) -> None:
        n = len(line)
        pos = self.pos
        end = pos + n + 1
        if end > len(self.buf):
            self.flush()
            pos, end = 0, n + 1
            if end > len(self.buf):
                self.buf.extend(bytes(end - len(self.buf)))
        buf = self.buf
        buf[pos:end - 1] = line
        buf[end - 1] = 10
        self.pos = end
        self.count += 1
        if end > FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.pos:
            with memoryview(self.buf) as mv:
                self.f.write(self.z.compress(mv[:self.pos]))
            self.pos = 0

    def close(self) -> None:
        self.flush()
        self.f.write(self.z.flush())
        self.f.close()


class HourMerger:
    """Merges each hour's background lines with the attack lines and the lines carried over
    from earlier hours (long-running requests that completed later), in stageTimestamp order."""

    def __init__(self, attack_events: list[tuple[int, bytes]], start: int, end: int):
        self.attacks, self.next_attack = attack_events, 0
        self.start, self.end = start, end
        self.carry: list[tuple[int, int, bytes]] = []
        self.seq = 0

    def _tag(self) -> int:
        """A unique negative sort key for lines held outside the emitter's buffer."""
        self.seq -= 1
        return self.seq

    def flush(self, em, h1: int, writer: DayWriter) -> None:
        """Write every line emitted before `h1`; keep the rest for later hours."""
        entries: list = em.index
        entries.extend(self.carry)
        attacks = self.attacks
        while self.next_attack < len(attacks) and attacks[self.next_attack][0] < h1:
            t, line = attacks[self.next_attack]
            entries.append((t, self._tag(), line))
            self.next_attack += 1
        entries.sort()
        cut = bisect.bisect_left(entries, (h1,))
        self.carry = []
        with memoryview(em.buf) as mv:
            write = writer.write
            for t, p, x in entries[:cut]:
                if t >= self.start:
                    write(mv[p:p + x] if p >= 0 else x)
            for t, p, x in entries[cut:]:
                if t < self.end:
                    self.carry.append((t, self._tag(), bytes(mv[p:p + x])) if p >= 0 else (t, p, x))
        em.reset()


def generate_sample(out_dir: pathlib.Path, days: int = 4, seed: int = 0, scale: float = 1.0,
                    end: datetime | None = None) -> dict:
    """Write `days` days of audit logs ending at `end` into `out_dir`; return a summary.

    Files: `audit-YYYY-MM-DD.jsonl.gz` (one audit.k8s.io/v1 Event per line, sorted by
    stageTimestamp) and `labels.json` (the injected attack scenarios, all in the last day, each
    with its category, acting `user` (null when the requests carried no valid credential),
    connection `source_ip`, start, end and every auditID it produced). `end` defaults to a
    midnight UTC fixed by the seed; a naive `end` is read as UTC. Same arguments give
    byte-identical files. `scale` multiplies the machine background (scale 1 is a four-node
    cluster, about 100-120k events a day); engineers, CI and internet noise keep their rate.
    The summary names the files, events per day, the total and the scenario ids.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if scale <= 0:
        raise ValueError("scale must be positive")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    end_dt = end or default_end(seed)
    end_dt = end_dt.replace(tzinfo=timezone.utc) if end_dt.tzinfo is None else end_dt.astimezone(timezone.utc)
    end_us = (end_dt - EPOCH) // timedelta(microseconds=1)
    start_us = end_us - days * DAY
    cluster = Cluster(seed, scale, start_us, end_us)
    bg = Background(cluster, seed)
    people = People(cluster, bg, seed)
    lookalikes = LookAlikes(cluster, bg, seed)
    attacks = Attacks(cluster, bg, seed, end_us - DAY, end_us)
    attack_events = attacks.plan()
    merger = HourMerger(attack_events, start_us, end_us)
    files, per_day = [], {}
    for d in range(days):
        d0 = start_us + d * DAY
        name = f"audit-{iso(d0)[:10]}.jsonl.gz"
        writer = DayWriter(out_dir / name)
        for h0 in range(d0, d0 + DAY, HOUR):
            bg.hour(h0, h0 + HOUR)
            people.hour(h0, h0 + HOUR)
            lookalikes.hour(h0, h0 + HOUR)
            merger.flush(bg.em, h0 + HOUR, writer)
        writer.close()
        files.append(name)
        per_day[iso(d0)[:10]] = writer.count
    labels = {"seed": seed, "days": days, "scale": scale, "start": iso(start_us), "end": iso(end_us),
              "cluster": cluster.name, "region": cluster.region,
              "scenarios": [{"id": s.id, "category": s.category, "description": s.description, "user": s.user,
                             "source_ip": s.source_ip, "start": iso(s.start), "end": iso(s.end),
                             "audit_ids": s.audit_ids} for s in attacks.scenarios]}
    (out_dir / "labels.json").write_bytes(orjson.dumps(labels, option=orjson.OPT_INDENT_2))
    return {"out_dir": str(out_dir), "files": files + ["labels.json"], "events_per_day": per_day,
            "total_events": sum(per_day.values()), "attack_events": len(attack_events),
            "scenarios": [s.id for s in attacks.scenarios], "start": labels["start"], "end": labels["end"]}
