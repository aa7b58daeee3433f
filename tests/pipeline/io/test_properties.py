"""Properties of readers + archive over generated inputs: whatever the mix of good events and garbage,
in whatever order, dealt to one to three files in any supported format, every good event is archived
exactly once and every bad record is counted exactly once: in quarantine, or, for an event cut after
the fields that make it usable, salvaged (archived once with its ``salvage`` marker)."""
from __future__ import annotations

import gzip
import json
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.stages.archive import archive_inputs, read_archive
from tests.factory import T0, envelope, event

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")
RESOURCES = ("pods", "secrets", "configmaps", "deployments", "serviceaccounts", "nodes")
TRUNCATABLE = json.dumps(event(audit_id="cut-000000000", verb="create"))
NON_OBJECTS = ("42", '"text"', "null", "true", "[]", "[1, 2]", "-0.5e3")
DOCUMENT_OPENERS = ("[", "{", "[{", '{"kind": "EventList", "items": [', '[{"kind": "Event",')


@st.composite
def good_events(draw) -> list[dict]:
    """1-40 factory events with unique auditIDs over a day, some with repairable oddities
    (code as a string, an empty user as failed logins carry)."""
    items = []
    for index in range(draw(st.integers(1, 40))):
        override = {"verb": draw(st.sampled_from(VERBS)),
                    "objectRef": {"resource": draw(st.sampled_from(RESOURCES)), "namespace": "web", "name": f"obj-{index}"}}
        if draw(st.booleans()):
            override["responseStatus"] = {"code": draw(st.sampled_from([200, 201, "403", 401, 101]))}
        if draw(st.integers(0, 9)) == 0:
            override["user"] = {}
        items.append(event(T0 + timedelta(seconds=draw(st.integers(0, 86_399))), audit_id=f"prop-{index:03d}", **override))
    return items


def bad_records(as_text: bool):
    """One bad record: random bytes (JSON lines) or text (a CloudWatch message), an event cut short
    with or without CloudWatch's ``[Truncated...]`` mark (salvaged when the cut leaves its auditID,
    verb, user and a time: its own, or a Firehose envelope's), JSON that is not an object, or a line
    that opens a JSON document (first in a file, it makes the reader try one).

    A JSON line is never blank (blank lines are not records) and never holds two JSON values glued
    together (``}{``: the reader decodes each, by design for Firehose without newlines)."""
    cut = st.integers(1, len(TRUNCATABLE) - 1).map(lambda n: TRUNCATABLE[:n])
    structured = st.one_of(cut, cut.map(lambda text: text + "[Truncated...]"), st.sampled_from(NON_OBJECTS),
                           st.sampled_from(DOCUMENT_OPENERS))
    if as_text:
        return st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=80), structured)
    noise = st.binary(min_size=1, max_size=80).map(lambda data: data.replace(b"\n", b" "))
    return st.one_of(noise, structured.map(str.encode)).filter(lambda line: line.strip() and b"}{" not in line)


@st.composite
def mixed_inputs(draw) -> tuple[dict[str, bytes], list[dict], int]:
    """(files, good events, number of bad records): records shuffled and dealt to 1-3 files of one format."""
    good = draw(good_events())
    fmt = draw(st.sampled_from(["jsonl", "gzip", "firehose"]))
    bad = [numbered(record, index) for index, record in enumerate(draw(st.lists(bad_records(as_text=fmt == "firehose"), max_size=25)))]
    records = [(True, json.dumps(e)) for e in good] + [(False, b) for b in bad]
    records = [records[i] for i in draw(st.permutations(range(len(records))))]
    cuts = sorted(draw(st.lists(st.integers(0, len(records)), max_size=2)))
    chunks = [records[a:b] for a, b in zip([0, *cuts], [*cuts, len(records)])]
    files = {}
    if fmt == "firehose":
        for index, chunk in enumerate(c for c in chunks if c):
            files[f"firehose-{index}"] = firehose_object(draw, [text for _, text in chunk], index)
    else:
        for index, chunk in enumerate(each_with_an_event(chunks)):
            data = b"".join((text.encode() if good_record else text) + b"\n" for good_record, text in chunk)
            assume(not one_document(data))
            files[f"audit-{index}.jsonl.gz" if fmt == "gzip" else f"audit-{index}.jsonl"] = gzip.compress(data, mtime=0) if fmt == "gzip" else data
    return files, good, len(bad)


def numbered(record: str | bytes, index: int) -> str | bytes:
    """A cut event with its own auditID (same length), so that salvaged copies are told apart."""
    mark = "cut-000000000" if isinstance(record, str) else b"cut-000000000"
    return record.replace(mark, mark[:-3] + (f"{index:03d}" if isinstance(record, str) else b"%03d" % index))


def each_with_an_event(chunks: list[list]) -> list[list]:
    """The chunks as files, a chunk without a good event joining a neighbour. A file in which no line
    is an event and whose first line could open a JSON document (``[``, ``{``, a line ending in ``,``)
    is read as one damaged document: one quarantined record, not one a line."""
    files: list[list] = []
    pending: list = []
    for chunk in chunks:
        records = pending + chunk
        if not any(is_good for is_good, _ in records):
            pending = records
            continue
        files.append(records)
        pending = []
    files[-1].extend(pending)
    return files


def one_document(data: bytes) -> bool:
    """Whether the lines of a file happen to make one JSON document over several lines (``[``, events,
    ``]``): the reader rightly reads that as a document, not as JSON lines."""
    try:
        json.loads(data)
    except ValueError:
        return False
    return b"\n" in data.strip()


def firehose_object(draw, messages: list[str], index: int) -> bytes:
    """Envelopes of 1-5 messages, newline-delimited or not, in one gzip member or a member each."""
    size = draw(st.integers(1, 5))
    envelopes = [json.dumps(envelope(messages[i:i + size], first_id=index * 1000 + i)) for i in range(0, len(messages), size)]
    separator = draw(st.sampled_from(["", "\n"]))
    if draw(st.booleans()):
        return gzip.compress(separator.join(envelopes).encode(), mtime=0)
    return b"".join(gzip.compress((text + separator).encode(), mtime=0) for text in envelopes)


SEEN = Counter()


@PROPERTY
@given(mixed_inputs())
def test_every_good_event_archived_once_and_every_bad_record_counted_once(record_property, generated):
    """Nothing is lost and nothing is invented, whatever surrounds a good event."""
    files, good, bad = generated
    SEEN.update(inputs=1, files=len(files), good=len(good), bad=bad)
    record_property("result", f"{SEEN['inputs']} generated inputs ({SEEN['files']} files, {SEEN['good']} good events, "
                              f"{SEEN['bad']} bad records)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        for name, data in files.items():
            (root / "in" / name).write_bytes(data)
        storage = LocalStorage(root / "work")
        result = archive_inputs(storage, resolve_inputs([str(root / "in")]), "demo", "prop")
        tables = list(read_archive(storage, "demo"))
        rows = pa.concat_tables(tables).select(["audit_id", "salvage"]).to_pylist() if tables else []
    archived = Counter(row["audit_id"] for row in rows if row["salvage"] is None)
    salvaged = Counter(row["audit_id"] for row in rows if row["salvage"] is not None)
    assert archived == Counter(e["auditID"] for e in good)
    assert all(audit_id.startswith("cut-") and count == 1 for audit_id, count in salvaged.items()), salvaged
    assert result.quarantine.total + sum(salvaged.values()) == bad, (result.quarantine.counts, salvaged)
    assert sum(result.quarantine.salvaged.values()) == sum(salvaged.values())
    assert result.duplicates == 0 and result.events_added == len(good) + sum(salvaged.values())
