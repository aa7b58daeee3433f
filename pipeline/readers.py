"""Readers: turn any supported input object into decoded audit events, quarantining the rest.

Formats are detected per file from its first bytes, no flag needed:
- JSON lines of audit.k8s.io Events (``.jsonl``/``.json``/``.log``, optionally gzip);
- one JSON document: an ``EventList``, a JSON array of events, or a single (pretty-printed) Event;
- CloudWatch Logs export lines (CreateExportTask): ``<ISO time> <event JSON>``;
- CloudWatch Logs subscription envelopes as Firehose writes them to S3: gzip, possibly several
  members, envelopes concatenated with or without newlines; ``CONTROL_MESSAGE`` skipped.

A reader never raises on content: every line that cannot become an event is reported
to the ``Quarantine`` with a reason, and reading continues.
"""
from __future__ import annotations

import glob
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import orjson

from pipeline.errors import InputError

try:
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - isal is a declared dependency; stdlib gzip is the slower fallback
    import gzip as _gzip

GZIP_MAGIC = b"\x1f\x8b"
TRUNCATED_MARK = b"[Truncated...]"
_EXPORT_LINE = re.compile(rb"^\d{4}-\d{2}-\d{2}T[0-9:.]+Z? ")
_INPUT_SUFFIXES = (".jsonl", ".json", ".log", ".gz", ".txt", "")
SAMPLE_CHARS = 300


@dataclass(frozen=True)
class InputRef:
    """One input object: a display name and a way to open it as bytes."""

    name: str
    open: Callable[[], BinaryIO]
    size: int | None = None


_SECRET_BODY = re.compile(r'"(?:data|stringData|binaryData)"\s*:')
_CREDENTIAL = re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{12,}|-----BEGIN [A-Z ]*PRIVATE KEY-----")


def redact(sample: str) -> str:
    """A quarantine sample without secret material: everything from a Secret/ConfigMap body on is cut,
    and access keys or private keys elsewhere are masked. Bad lines are evidence, not a leak."""
    body = _SECRET_BODY.search(sample)
    if body:
        sample = sample[: body.start()] + "[redacted]"
    return _CREDENTIAL.sub("[redacted]", sample)


@dataclass
class Quarantine:
    """Counts and samples of everything that did not become an event. Nothing is silently dropped."""

    counts: dict[str, int] = field(default_factory=dict)
    entries: list[dict] = field(default_factory=list)
    max_entries: int = 10_000
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, source: str, line_no: int, sample: bytes | str | None = None) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.entries) < self.max_entries:
            if isinstance(sample, bytes):
                size = len(sample)
                sample = sample[:SAMPLE_CHARS].decode("utf-8", "backslashreplace")
            else:
                size = len(sample or "")
                sample = (sample or "")[:SAMPLE_CHARS]
            self.entries.append({"reason": reason, "source": source, "line": line_no, "bytes": size, "sample": redact(sample)})

    def skip(self, reason: str) -> None:
        """Count input that is deliberately not an event (control messages, non-audit streams)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _classify_json_error(line: bytes) -> str:
    if line.rstrip().endswith(TRUNCATED_MARK):
        return "cloudwatch_truncated"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    return "invalid_json"


def resolve_local_inputs(spec: str) -> list[InputRef]:
    """A file, a directory (recursively, audit-looking files) or a glob, in sorted order."""
    path = Path(spec)
    if path.is_file():
        paths = [path]
    elif path.is_dir():
        paths = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name != "labels.json" and p.suffix in _INPUT_SUFFIXES
        )
    else:
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not paths:
            raise InputError(f"input not found: {spec}", hint="pass a file, a directory or a quoted glob such as 'logs/*.gz'")
    return [InputRef(str(p), (lambda p=p: open(p, "rb")), p.stat().st_size) for p in paths]


def resolve_inputs(specs: list[str], config=None) -> list[InputRef]:
    refs: list[InputRef] = []
    for spec in specs:
        if spec.startswith("s3://"):
            from pipeline.aws.s3 import list_s3_inputs

            refs.extend(list_s3_inputs(spec, config))
        else:
            refs.extend(resolve_local_inputs(spec))
    return refs


def _open_decompressed(ref: InputRef) -> BinaryIO:
    raw = ref.open()
    head = raw.read(2)
    if hasattr(raw, "seek") and getattr(raw, "seekable", lambda: False)():
        raw.seek(0)
    else:
        raw = _Prefixed(head, raw)
    if head == GZIP_MAGIC:
        return _gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


class _Prefixed(io.RawIOBase):
    """A non-seekable stream with bytes already read put back in front."""

    def __init__(self, prefix: bytes, stream: BinaryIO):
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


Event = tuple[object, str | None]
BLOCK_BYTES = 2 << 20


@dataclass
class LineBlock:
    """Consecutive records of one input as JSON texts, for the vectorised normaliser.

    ``lines[i]`` is one record's JSON text (a line of a JSON-lines or export file, or a
    CloudWatch message) and ``decode(i)`` the per-line path: exactly the decoded events
    ``read_events`` yields for that record, with anything undecodable quarantined.
    """

    lines: list[bytes]
    line_nos: Sequence[int]
    source: str
    quarantine: Quarantine
    messages: list[tuple[str, str | None]] | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def cw_ids(self) -> list[str | None] | None:
        """CloudWatch event ids, one per line, for the messages of an envelope."""
        return [event_id for _, event_id in self.messages] if self.messages is not None else None

    def decode(self, index: int) -> Iterator[Event]:
        if self.messages is not None:
            return _decode_message(*self.messages[index], self.source, self.line_nos[index], self.quarantine)
        return _decode_line(self.lines[index], self.source, self.line_nos[index], self.quarantine)


def read_events(ref: InputRef, quarantine: Quarantine, max_line_bytes: int = 4 * 1024 * 1024) -> Iterator[Event]:
    """Yield ``(decoded_event, cloudwatch_event_id)`` for every event in ``ref``; quarantine the rest.

    The decoded event is whatever JSON value the line held; shape checks happen in
    normalisation so every reason is counted in one place.
    """
    for item in read_blocks(ref, quarantine, max_line_bytes):
        if isinstance(item, LineBlock):
            for index in range(len(item)):
                yield from item.decode(index)
        else:
            yield item


def read_blocks(ref: InputRef, quarantine: Quarantine, max_line_bytes: int = 4 * 1024 * 1024,
                block_bytes: int = BLOCK_BYTES) -> Iterator[LineBlock | Event]:
    """The records of ``ref`` in input order: runs of JSON texts as ``LineBlock``s of about
    ``block_bytes``, and the events of whole-document inputs already decoded.

    JSON and export lines are not decoded here (the normaliser parses a whole block at
    once); a line holding a CloudWatch envelope is, and its messages become a block.
    """
    try:
        stream = _open_decompressed(ref)
    except OSError as error:
        raise InputError(f"cannot open {ref.name}: {error}", hint="check the path and permissions") from None
    reader = io.BufferedReader(stream, buffer_size=1 << 20) if not isinstance(stream, io.BufferedIOBase) else stream
    source = ref.name
    line_no = 0
    block = LineBlock([], [], source, quarantine)
    try:
        first = _peek_first_content(reader)
        if first is None:
            quarantine.skip("empty_input")
            return
        if first == b"[" or _is_multiline_document(reader):
            yield from _read_document(reader, source, quarantine)
            return
        for text in _text_chunks(reader, min(block_bytes, max_line_bytes // 2)):
            lines = text.split(b"\n")
            if _plain(text, lines[0], max_line_bytes):
                yield LineBlock(lines, range(line_no + 1, line_no + 1 + len(lines)), source, quarantine)
                line_no += len(lines)
                continue
            has_envelopes = b'"logEvents"' in text
            for line in lines:
                line_no += 1
                if len(line) >= max_line_bytes:
                    quarantine.add("line_too_long", source, line_no, line)
                    continue
                stripped = line.strip()
                if not stripped:
                    continue
                if stripped[:1] != b"{" and _EXPORT_LINE.match(stripped):
                    stripped = stripped.split(b" ", 1)[1]
                if has_envelopes and b'"logEvents"' in stripped:
                    if block.lines:
                        yield block
                        block = LineBlock([], [], source, quarantine)
                    yield from _expand_line(stripped, source, line_no, quarantine)
                    continue
                block.lines.append(stripped)
                block.line_nos.append(line_no)
            if block.lines:
                yield block
                block = LineBlock([], [], source, quarantine)
    except (EOFError, OSError, ValueError) as error:
        if block.lines:
            yield block
        quarantine.add("gzip_damaged", source, line_no, str(error))
    finally:
        reader.close()


def _text_chunks(reader: BinaryIO, block_bytes: int) -> Iterator[bytes]:
    """The input in runs of whole lines of about ``block_bytes`` (without the last newline); the
    whole lines read before a decompression error are yielded before it propagates."""
    rest = b""
    parts: list[bytes] = []
    size = 0
    try:
        while data := reader.read1(1 << 20):
            parts.append(data)
            size += len(data)
            if size >= block_bytes:
                buffer = rest + b"".join(parts)
                parts, size = [], 0
                cut = buffer.rfind(b"\n")
                rest = buffer[cut + 1:]
                if cut >= 0:
                    yield buffer[:cut]
    except (EOFError, OSError, ValueError):
        buffer = rest + b"".join(parts)
        if buffer.rfind(b"\n") >= 0:
            yield buffer[:buffer.rfind(b"\n")]
        raise
    buffer = rest + b"".join(parts)
    if buffer:
        yield buffer[:-1] if buffer.endswith(b"\n") else buffer


def _plain(text: bytes, first_line: bytes, max_line_bytes: int) -> bool:
    """Whether a run of lines can go to the normaliser as it is, with no look at each line: JSON
    lines (not export lines, not envelopes) none of which can be too long. Blank lines and any
    odd line in it take the per-line path (``_decode_line``), which skips or quarantines them."""
    return text[:1] == b"{" and len(text) < max_line_bytes and b'"logEvents"' not in first_line


def _decode_line(line: bytes, source: str, line_no: int, quarantine: Quarantine) -> Iterator[Event]:
    """The per-line path: one line's JSON value(s), as the line reader has always decoded them
    (a blank line is nothing, an export line's timestamp prefix is dropped)."""
    stripped = line.strip()
    if not stripped:
        return
    if stripped[:1] != b"{" and _EXPORT_LINE.match(stripped):
        stripped = stripped.split(b" ", 1)[1]
    try:
        value = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        if b"}{" in stripped and stripped[:1] == b"{":
            yield from _read_concatenated(stripped, source, line_no, quarantine)
        else:
            quarantine.add(_classify_json_error(stripped), source, line_no, stripped)
        return
    if isinstance(value, dict) and "messageType" in value and "logEvents" in value:
        yield from _read_envelope(value, source, line_no, quarantine)
    elif isinstance(value, dict) and value.get("kind") == "EventList":
        yield from _read_event_list(value, source, line_no, quarantine)
    else:
        yield value, None


def _expand_line(stripped: bytes, source: str, line_no: int, quarantine: Quarantine) -> Iterator[LineBlock | Event]:
    """A line that may hold a CloudWatch envelope: its messages as one block; anything else per line."""
    try:
        value = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        yield from _decode_line(stripped, source, line_no, quarantine)
        return
    if isinstance(value, dict) and "messageType" in value and "logEvents" in value:
        messages = list(_envelope_messages(value, source, line_no, quarantine))
        if messages:
            lines = [message.encode("utf-8", "surrogatepass").strip() for message, _ in messages]
            yield LineBlock(lines, [line_no] * len(lines), source, quarantine, messages)
    elif isinstance(value, dict) and value.get("kind") == "EventList":
        yield from _read_event_list(value, source, line_no, quarantine)
    else:
        yield value, None


def _peek_first_content(reader: io.BufferedReader) -> bytes | None:
    data = reader.peek(4096)
    while data:
        stripped = data.lstrip()
        if stripped:
            return stripped[:1]
        reader.read(len(data))
        data = reader.peek(4096)
    return None


def _is_multiline_document(reader: io.BufferedReader) -> bool:
    """A single JSON document spread over lines (pretty-printed Event or EventList). A damaged first
    line followed by a line that starts a JSON object is JSON lines, not a document."""
    head = reader.peek(65536).lstrip()
    lines = head.split(b"\n", 2)
    first_line = lines[0].strip()
    if first_line == b"{":
        return True
    if not first_line.startswith(b"{") or first_line.endswith((b"}", TRUNCATED_MARK)) or len(lines) < 2:
        return False
    return not lines[1].lstrip().startswith(b"{")


def _read_document(reader: io.BufferedReader, source: str, quarantine: Quarantine) -> Iterator[Event]:
    data = reader.read()
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        yield from _read_concatenated(data.strip(), source, 1, quarantine)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield item, None
    elif isinstance(value, dict) and value.get("kind") == "EventList":
        yield from _read_event_list(value, source, 1, quarantine)
    elif isinstance(value, dict) and "messageType" in value:
        yield from _read_envelope(value, source, 1, quarantine)
    else:
        yield value, None


def _read_concatenated(data: bytes, source: str, line_no: int, quarantine: Quarantine) -> Iterator[Event]:
    """JSON values concatenated with no separator (Firehose without newline delimiting)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        quarantine.add("not_utf8", source, line_no, data)
        return
    decoder = json.JSONDecoder()
    position = 0
    while position < len(text):
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            rest = text[position:]
            quarantine.add(_classify_json_error(rest.encode("utf-8", "surrogateescape")), source, line_no, rest)
            return
        if isinstance(value, dict) and "messageType" in value:
            yield from _read_envelope(value, source, line_no, quarantine)
        elif isinstance(value, dict) and value.get("kind") == "EventList":
            yield from _read_event_list(value, source, line_no, quarantine)
        else:
            yield value, None


def _read_event_list(value: dict, source: str, line_no: int, quarantine: Quarantine) -> Iterator[Event]:
    items = value.get("items")
    if not isinstance(items, list):
        quarantine.add("eventlist_without_items", source, line_no, str(value)[:SAMPLE_CHARS])
        return
    for item in items:
        yield item, None


def _read_envelope(envelope: dict, source: str, line_no: int, quarantine: Quarantine) -> Iterator[Event]:
    """A CloudWatch Logs subscription envelope: one audit event per logEvents[].message."""
    for message, event_id in _envelope_messages(envelope, source, line_no, quarantine):
        yield from _decode_message(message, event_id, source, line_no, quarantine)


def _envelope_messages(envelope: dict, source: str, line_no: int, quarantine: Quarantine) -> Iterator[tuple[str, str | None]]:
    """(message, event id) of every logEvent of a DATA_MESSAGE from an audit stream; the rest skipped or quarantined."""
    if envelope.get("messageType") == "CONTROL_MESSAGE":
        quarantine.skip("control_message")
        return
    events = envelope.get("logEvents")
    if not isinstance(events, list):
        quarantine.add("envelope_without_log_events", source, line_no, str(envelope)[:SAMPLE_CHARS])
        return
    stream = envelope.get("logStream")
    if isinstance(stream, str) and not stream.startswith("kube-apiserver-audit"):
        quarantine.skip("non_audit_stream")
        return
    for log_event in events:
        message = log_event.get("message") if isinstance(log_event, dict) else None
        if not isinstance(message, str):
            quarantine.add("envelope_event_without_message", source, line_no, str(log_event)[:SAMPLE_CHARS])
            continue
        event_id = log_event.get("id")
        yield message, str(event_id) if event_id is not None else None


def _decode_message(message: str, event_id: str | None, source: str, line_no: int, quarantine: Quarantine) -> Iterator[Event]:
    try:
        value = orjson.loads(message)
    except orjson.JSONDecodeError:
        quarantine.add(_classify_json_error(message.encode("utf-8", "surrogateescape")), source, line_no, message)
        return
    yield value, event_id


def parse_cloudwatch_message(message: str, event_id: str | None, source: str, quarantine: Quarantine) -> Iterator[Event]:
    """One CloudWatch log event's message (from FilterLogEvents) as an audit event."""
    try:
        yield orjson.loads(message), event_id
    except orjson.JSONDecodeError:
        quarantine.add(_classify_json_error(message.encode("utf-8", "surrogateescape")), source, 0, message)


def input_size(refs: list[InputRef]) -> int:
    return sum(ref.size or 0 for ref in refs)

