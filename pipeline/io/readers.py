"""Readers: turn any supported input object into decoded audit events, quarantining the rest.

Formats are detected per file from its first bytes (after a UTF-8 byte-order mark), no flag needed:
- JSON lines of audit.k8s.io Events (``.jsonl``/``.json``/``.log``, optionally gzip);
- one JSON document: an ``EventList``, a JSON array of events, or a single (pretty-printed) Event;
  a file that only looked like one from its first lines is read as JSON lines after all;
- CloudWatch Logs export lines (CreateExportTask): ``<ISO time> <event JSON>``;
- CloudWatch Logs subscription envelopes as Firehose writes them to S3: gzip, possibly several
  members, envelopes concatenated with or without newlines; ``CONTROL_MESSAGE`` skipped.

A reader never raises on content: every line that cannot become an event is reported
to the ``Quarantine`` with a reason, and reading continues. A line that does not decode whole
is split into its glued values or read field by field and salvaged (``_decode_record``), the
same way whichever format or source it came in; reading is linear in the input, holds at most
about ``max_line_bytes`` of one line, and stops a gzip bomb (docs/reliability.md).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import orjson

from features.events import BadEvent, SalvagedEvent
from pipeline.errors import InputError
from pipeline.io.jsonscan import ValueScanner, blank_escapes, object_fields, skip_space, split_values
from pipeline.io.storage import InputRef

try:
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a declared dependency; stdlib gzip is the slower fallback
    import gzip as _gzip
    import zlib as _zlib

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
TRUNCATED_MARK = b"[Truncated...]"
_EXPORT_LINE = re.compile(rb"^\d{4}-\d{2}-\d{2}T[0-9:.]+Z? ")
SAMPLE_CHARS = 300


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
    """Counts and samples of everything that did not become an event, and counts of the events salvaged
    from lines that did not decode whole (``salvaged``, by marker). Nothing is silently dropped."""

    counts: dict[str, int] = field(default_factory=dict)
    entries: list[dict] = field(default_factory=list)
    max_entries: int = 10_000
    skipped: dict[str, int] = field(default_factory=dict)
    salvaged: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, source: str, line_no: int, sample: bytes | str | None = None, size: int | None = None) -> None:
        """Count one record under ``reason`` and keep its first characters; ``size`` is its length when
        ``sample`` is only its start (a record too long to hold)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.entries) < self.max_entries:
            if isinstance(sample, bytes):
                length = len(sample)
                sample = sample[:SAMPLE_CHARS].decode("utf-8", "backslashreplace")
            else:
                length = len(sample or "")
                # a lone surrogate (a CloudWatch message) cannot be written as JSON: keep it as its escape
                sample = (sample or "")[:SAMPLE_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
            self.entries.append({"reason": reason, "source": source, "line": line_no, "bytes": length if size is None else size,
                                 "sample": redact(sample)})

    def skip(self, reason: str) -> None:
        """Count input that is deliberately not an event (control messages, non-audit streams)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def salvage(self, marker: str, count: int = 1) -> None:
        """Count events archived with a ``salvage`` marker (``features.events.SALVAGE_MARKERS``)."""
        self.salvaged[marker] = self.salvaged.get(marker, 0) + count

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


def _open_decompressed(ref: InputRef, max_ratio: float | None = None) -> BinaryIO:
    raw = ref.open()
    head = raw.read(2)
    if hasattr(raw, "seek") and getattr(raw, "seekable", lambda: False)():
        raw.seek(0)
    else:
        raw = _Prefixed(head, raw)
    if head == GZIP_MAGIC:
        guard = _DecompressionGuard(max_ratio, ref.size) if max_ratio and ref.size is not None else None
        return _GzipInput(raw, ref.open, guard)
    return raw


class _Prefixed(io.RawIOBase):
    """A non-seekable stream with bytes already read put back in front."""

    def __init__(self, prefix: bytes, stream: BinaryIO):
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        """The prefix and what follows it in one read, so a first ``peek`` sees more than the prefix."""
        prefix, self._prefix = self._prefix[: len(buffer)], self._prefix[len(buffer):]
        data = prefix + self._stream.read(len(buffer) - len(prefix)) if len(prefix) < len(buffer) else prefix
        buffer[: len(data)] = data
        return len(data)


class DamagedGzip(OSError):
    """A gzip member that is cut short or corrupt (or bytes after the last member that are not one)."""


class DecompressionLimit(OSError):
    """A gzip input that decompresses to more than ``archive.max_decompression_ratio`` times its size."""


GZIP_READ_BYTES = 256 << 10
GZIP_FEED_BYTES = 64 << 10
GZIP_PIECE_BYTES = 1 << 20
# An input may always decompress to this much, whatever its size: a small file of repeated events is no bomb.
RATIO_FLOOR_BYTES = 64 << 10


class _DecompressionGuard:
    """Stops a gzip input once it has decompressed to more than ``max_ratio`` times its size (an input
    under ``RATIO_FLOOR_BYTES`` counts as that much). A gzip bomb (deflate reaches about 1,000:1) then
    costs a bounded read, not hours of decompression; the events read before the limit are kept
    (``archive.max_decompression_ratio``)."""

    def __init__(self, max_ratio: float, size: int):
        self.max_ratio = max_ratio
        self.limit = max_ratio * max(size, RATIO_FLOOR_BYTES)

    def check(self, returned: int) -> None:
        if returned > self.limit:
            raise DecompressionLimit(f"decompressed to more than {self.max_ratio:g} times its size; the rest is not read")


class _GzipInput(io.BufferedIOBase):
    """A gzip input read by isal's gzip reader, at its speed; read again member by member if that fails.

    isal's reader raises on a damaged member before returning what the complete members read in the
    same call decompressed to (up to ~1 MB of good events of a Firehose object whose last member is
    cut), and raises isal's own error type for corrupt deflate data. So at its first error the input
    is opened again and read by ``_GzipMembers`` past the bytes already returned: the rest of what
    the members before the damage hold comes out, then ``DamagedGzip``.
    """

    def __init__(self, stream: BinaryIO, reopen: Callable[[], BinaryIO], guard: _DecompressionGuard | None = None):
        self._guard = guard
        self._stream = stream
        self._reopen = reopen
        self._reader: BinaryIO = _gzip.GzipFile(fileobj=stream, mode="rb")
        self._returned = 0
        self._exact = False

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        data = self._reading("read1", size)
        self._returned += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        data = self._reading("read", size)
        self._returned += len(data)
        return data

    def peek(self, size: int = 0) -> bytes:
        return self._reading("peek", size)

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
            self._stream.close()
        super().close()

    def _reading(self, method: str, size: int | None) -> bytes:
        if self._guard is not None:
            self._guard.check(self._returned)
        try:
            return getattr(self._reader, method)(size)
        except (EOFError, OSError, _zlib.error):
            if self._exact:
                raise
        self._read_again_exactly()
        return getattr(self._reader, method)(size)

    def _read_again_exactly(self) -> None:
        self._reader.close()
        self._stream.close()
        self._stream = self._reopen()
        self._reader, self._exact = _GzipMembers(self._stream), True
        to_skip = self._returned
        while to_skip > 0 and (data := self._reader.read1(min(to_skip, GZIP_PIECE_BYTES))):
            to_skip -= len(data)


class _GzipMembers(io.BufferedIOBase):
    """Gzip input decompressed member by member (one member, or many as Firehose writes them, a
    member per record): all that the members before a damaged one hold is returned, and what the
    damaged one gave up to the damage, before ``DamagedGzip`` is raised.

    The decompressor is fed at most ``GZIP_FEED_BYTES`` at a time so that starting each of many small
    members does not copy the rest of a large read.
    """

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._input = b""
        self._offset = 0
        self._member = None
        self._peeked = b""
        self._damage: DamagedGzip | None = None

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        if self._peeked:
            size = len(self._peeked) if size < 0 else size
            data, self._peeked = self._peeked[:size], self._peeked[size:]
            return data
        return self._next_piece(GZIP_PIECE_BYTES if size < 0 else size)

    def read(self, size: int | None = -1) -> bytes:
        parts = []
        wanted = -1 if size is None else size
        while wanted:
            try:
                data = self.read1(wanted)
            except DamagedGzip:
                if parts:
                    break
                raise
            if not data:
                break
            parts.append(data)
            wanted = wanted - len(data) if wanted > 0 else wanted
        return b"".join(parts)

    def peek(self, size: int = 0) -> bytes:
        """At least ``size`` bytes ahead (fewer when the input ends or is damaged first); nothing is consumed."""
        while len(self._peeked) < max(size, 1):
            try:
                piece = self._next_piece(GZIP_PIECE_BYTES)
            except DamagedGzip:
                if self._peeked:
                    break
                raise
            if not piece:
                break
            self._peeked += piece
        return self._peeked

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()

    def _next_piece(self, limit: int) -> bytes:
        """The next decompressed bytes (at most ``limit``); empty at the end of the input."""
        if self._damage is not None:
            raise self._damage
        try:
            while (data := self._decompress(limit)) is not None:
                if data:
                    return data
        except DamagedGzip as damage:
            self._damage = damage
            raise
        return b""

    def _decompress(self, limit: int) -> bytes | None:
        """Up to ``limit`` decompressed bytes (none when more input is needed), None after the last member.
        Zero bytes between or after members are padding, as gzip allows."""
        if self._offset == len(self._input):
            self._input, self._offset = self._stream.read(GZIP_READ_BYTES), 0
            if not self._input:
                return self._finish(limit)
        if self._member is None:
            if self._input[self._offset] == 0:
                rest = self._input[self._offset:]
                self._offset += len(rest) - len(rest.lstrip(b"\0"))
                return b""
            self._member = _zlib.decompressobj(31)
        member = self._member
        fed = memoryview(self._input)[self._offset:self._offset + GZIP_FEED_BYTES]
        try:
            data = member.decompress(fed, limit)
        except _zlib.error as error:
            raise DamagedGzip(f"damaged gzip member: {error}") from None
        if member.eof:
            self._offset += len(fed) - len(member.unused_data)
            self._member = None
        else:
            self._offset += len(fed) - len(member.unconsumed_tail)
        return data

    def _finish(self, limit: int) -> bytes | None:
        """At the end of the input: what the last member still holds back, or the damage if it is cut short."""
        if self._member is None:
            return None
        try:
            data = self._member.decompress(b"", limit)
        except _zlib.error as error:
            raise DamagedGzip(f"damaged gzip member: {error}") from None
        if self._member.eof:
            self._member = None
        elif not data:
            raise DamagedGzip("gzip member cut short: the input ends inside it")
        return data


Event = tuple[object, str | None]
BLOCK_BYTES = 2 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class LineBlock:
    """Consecutive records of one input as JSON texts, for the vectorised normaliser.

    ``lines[i]`` is one record's JSON text (a line of a JSON-lines or export file, or a
    CloudWatch message) and ``decode(i)`` the per-line path: exactly the decoded events
    ``read_events`` yields for that record, with anything undecodable salvaged or quarantined.
    ``messages`` holds an envelope's (message, event id, log time) and ``log_times`` the time
    prefix of export lines (whose JSON text is in ``lines`` without it).
    """

    lines: list[bytes]
    line_nos: Sequence[int]
    source: str
    quarantine: Quarantine
    messages: list[tuple[str, str | None, str | None]] | None = None
    log_times: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def cw_ids(self) -> list[str | None] | None:
        """CloudWatch event ids, one per line, for the messages of an envelope."""
        return [event_id for _, event_id, _ in self.messages] if self.messages is not None else None

    def decode(self, index: int) -> Iterator[Event]:
        if self.messages is not None:
            message, event_id, log_time = self.messages[index]
            return _decode_message(message, event_id, log_time, self.source, self.line_nos[index], self.quarantine)
        log_time = self.log_times[index] if self.log_times is not None else None
        return _decode_line(self.lines[index], self.source, self.line_nos[index], self.quarantine, log_time)


def read_events(ref: InputRef, quarantine: Quarantine, max_line_bytes: int = 4 * 1024 * 1024,
                max_ratio: float | None = None) -> Iterator[Event]:
    """Yield ``(decoded_event, cloudwatch_event_id)`` for every event in ``ref``; quarantine the rest.

    The decoded event is whatever JSON value the line held (a ``SalvagedEvent`` for a line that
    did not decode whole); shape checks happen in normalisation so every reason is counted in
    one place.
    """
    for item in read_blocks(ref, quarantine, max_line_bytes, max_ratio=max_ratio):
        if isinstance(item, LineBlock):
            for index in range(len(item)):
                yield from item.decode(index)
        else:
            yield item


def read_blocks(ref: InputRef, quarantine: Quarantine, max_line_bytes: int = 4 * 1024 * 1024,
                block_bytes: int = BLOCK_BYTES, max_ratio: float | None = None) -> Iterator[LineBlock | Event]:
    """The records of ``ref`` in input order: runs of JSON texts as ``LineBlock``s of about
    ``block_bytes``, and the events of whole-document inputs already decoded.

    JSON and export lines are not decoded here (the normaliser parses a whole block at
    once); a line holding a CloudWatch envelope is, and its messages become a block.
    A UTF-8 byte-order mark before the first line is dropped. A line longer than
    ``max_line_bytes`` is skipped without being held; a gzip input stops being read once it has
    decompressed to more than ``max_ratio`` times its size (``_DecompressionGuard``).
    """
    try:
        stream = _open_decompressed(ref, max_ratio)
    except OSError as error:
        raise InputError(f"cannot open {ref.name}: {error}", hint="check the path and permissions") from None
    reader = io.BufferedReader(stream, buffer_size=1 << 20) if not isinstance(stream, io.BufferedIOBase) else stream
    source = ref.name
    try:
        if reader.peek(len(UTF8_BOM))[: len(UTF8_BOM)] == UTF8_BOM:
            reader.read(len(UTF8_BOM))
        head = _peek_head(reader)
        if not head:
            quarantine.skip("empty_input")
            return
        if _starts_a_document(head):
            yield from _read_document(reader, source, quarantine, max_line_bytes, block_bytes)
            return
        yield from _read_lines(_text_chunks(reader, min(block_bytes, max_line_bytes // 2), max_line_bytes), source, quarantine,
                               max_line_bytes)
    except (EOFError, OSError, ValueError) as error:
        quarantine.add(_damage_reason(error), source, 0, str(error))
    finally:
        reader.close()


def _damage_reason(error: Exception) -> str:
    """The quarantine reason of an input that stopped being read."""
    return "decompression_ratio" if isinstance(error, DecompressionLimit) else "gzip_damaged"


class _TooLong:
    """A record longer than ``max_line_bytes``, skipped: its first bytes (the quarantine sample) and its length."""

    def __init__(self, head: bytes, size: int):
        self.head = head
        self.size = size


class _InputCut(Exception):
    """Reading stopped at a decompression error; ``tail`` is what was read after the last whole line
    (``too_long`` instead when that line was already longer than ``max_line_bytes``)."""

    def __init__(self, error: Exception, tail: bytes, too_long: _TooLong | None = None):
        super().__init__(str(error))
        self.reason = _damage_reason(error)
        self.tail = tail
        self.too_long = too_long


def _read_lines(runs: Iterable[bytes | _TooLong], source: str, quarantine: Quarantine,
                max_line_bytes: int) -> Iterator[LineBlock | Event]:
    """JSON lines, export lines and envelope lines from runs of whole lines (``_text_chunks``); when the
    input breaks off, the complete values of its last, cut line are read and the damage is counted."""
    line_no = 0
    block = LineBlock([], [], source, quarantine, log_times=[])
    try:
        for text in runs:
            if isinstance(text, _TooLong):
                line_no += 1
                quarantine.add("line_too_long", source, line_no, text.head, size=text.size)
                continue
            if _plain(text, max_line_bytes):
                lines = _split_lines(text)
                yield LineBlock(lines, range(line_no + 1, line_no + 1 + len(lines)), source, quarantine)
                line_no += len(lines)
                continue
            lines = text.split(b"\n")
            has_envelopes = b'"logEvents"' in text
            for line in lines:
                line_no += 1
                if len(line) >= max_line_bytes:
                    quarantine.add("line_too_long", source, line_no, line)
                    continue
                stripped = line.strip()
                if not stripped:
                    continue
                stripped, log_time = _export_time(stripped)
                if has_envelopes and b'"logEvents"' in stripped:
                    if block.lines:
                        yield block
                        block = LineBlock([], [], source, quarantine, log_times=[])
                    yield from _expand_line(stripped, source, line_no, quarantine)
                    continue
                block.lines.append(stripped)
                block.line_nos.append(line_no)
                block.log_times.append(log_time)
            if block.lines:
                yield block
                block = LineBlock([], [], source, quarantine, log_times=[])
    except _InputCut as cut:
        if cut.too_long is not None:
            quarantine.add("line_too_long", source, line_no + 1, cut.too_long.head, size=cut.too_long.size)
        else:
            yield from _read_cut_line(cut.tail, source, line_no + 1, quarantine)
        quarantine.add(cut.reason, source, line_no + 1, str(cut))


def _export_time(line: bytes) -> tuple[bytes, str | None]:
    """A CloudWatch export line's JSON text and the time prefix CreateExportTask wrote before it; any
    other line as it is."""
    if line[:1] != b"{" and (prefix := _EXPORT_LINE.match(line)):
        return line[prefix.end():], line[:prefix.end() - 1].decode("ascii")
    return line, None


LINE_READ_BYTES = 1 << 20


def _text_chunks(reader: BinaryIO, block_bytes: int, max_line_bytes: int) -> Iterator[bytes | _TooLong]:
    """The input in runs of whole lines of about ``block_bytes`` (without the last newline). A line that
    grows past ``block_bytes`` is read on its own by a ``_LongLine``: the values glued in it come out as
    runs as they end, and a record longer than ``max_line_bytes`` as a ``_TooLong``, so no more than
    about ``max_line_bytes`` of one line is held and each byte is scanned once. At a decompression
    error, the whole lines read before it are yielded and ``_InputCut`` is raised."""
    rest = b""
    parts: list[bytes] = []
    size = 0
    long_line: _LongLine | None = None
    try:
        while data := reader.read1(LINE_READ_BYTES):
            if long_line is not None:
                newline = data.find(b"\n")
                yield from long_line.feed(data if newline < 0 else data[:newline])
                if newline < 0:
                    continue
                yield from long_line.finish()
                long_line, data = None, data[newline + 1:]
            parts.append(data)
            size += len(data)
            if size >= block_bytes:
                buffer = rest + b"".join(parts)
                parts, size = [], 0
                cut = buffer.rfind(b"\n")
                rest = buffer[cut + 1:]
                if cut >= 0:
                    yield buffer[:cut]
                if len(rest) >= block_bytes:
                    long_line = _LongLine(max_line_bytes)
                    yield from long_line.feed(rest)
                    rest = b""
    except (EOFError, OSError, ValueError) as error:
        if long_line is not None:
            held = long_line.release()
            if isinstance(held, _TooLong):
                raise _InputCut(error, b"", held) from None
            raise _InputCut(error, held) from None
        buffer = rest + b"".join(parts)
        cut = buffer.rfind(b"\n")
        if cut >= 0:
            yield buffer[:cut]
        raise _InputCut(error, buffer[cut + 1:]) from None
    if long_line is not None:
        yield from long_line.finish()
    buffer = rest + b"".join(parts)
    if buffer:
        yield buffer[:-1] if buffer.endswith(b"\n") else buffer


class _LongLine:
    """One line that has grown past the block size, fed a piece at a time until its newline.

    Firehose's default delivery glues CloudWatch envelopes with no newline, so one line can be a
    whole object of megabytes: a line that starts with ``{`` or ``[`` is split into its values by
    one ``ValueScanner`` as they end (a ``}{`` inside a string is no boundary). Only the value being
    read is held; once it is longer than ``max_line_bytes`` only its first bytes and its length are
    kept until it ends, and it comes out as one ``_TooLong``. Text after the values that starts none,
    and a line that does not start with a value, is one record to the newline.
    """

    def __init__(self, max_line_bytes: int):
        self.max_line_bytes = max_line_bytes
        self.scanner = ValueScanner()
        self.held: list[bytes] = []
        self.held_size = 0
        self.skipped: _TooLong | None = None
        self.splitting: bool | None = None
        self.in_value = False

    def feed(self, data: bytes) -> Iterator[bytes | _TooLong]:
        values = []
        pos, size = 0, len(data)
        blanked = blank_escapes(data, self.scanner.escaped) if self.splitting is not False else data
        while pos < size:
            if not self.in_value:
                pos = skip_space(data, pos)
                if pos >= size:
                    break
                self.splitting = data[pos] in b"{[" and self.splitting is not False
                self.in_value = True
            end = self.scanner.end(blanked, pos) if self.splitting else -1
            stop = end if end >= 0 else size
            self._hold(data, pos, stop)
            pos = stop
            if end >= 0:
                self.in_value = False
                value = self.release()
                if isinstance(value, _TooLong):
                    if values:
                        yield b"\n".join(values)
                        values = []
                    yield value
                else:
                    values.append(value)
        if values:
            yield b"\n".join(values)

    def finish(self) -> Iterator[bytes | _TooLong]:
        """At the newline: what is held (a value the line ends inside, or text that is no value) is one record."""
        held = self.release()
        if isinstance(held, _TooLong) or held.strip():
            yield held

    def release(self) -> bytes | _TooLong:
        """The record held so far, and start a new one."""
        if self.skipped is not None:
            held, self.skipped = self.skipped, None
            return held
        held, self.held, self.held_size = b"".join(self.held), [], 0
        return held

    def _hold(self, data: bytes, start: int, stop: int) -> None:
        if self.skipped is not None:
            self.skipped.size += stop - start
        elif self.held_size + stop - start >= self.max_line_bytes:
            head = b"".join(self.held)[:SAMPLE_CHARS] + data[start:start + SAMPLE_CHARS]
            self.skipped = _TooLong(head[:SAMPLE_CHARS], self.held_size + stop - start)
            self.held, self.held_size = [], 0
        else:
            self.held.append(data[start:stop])
            self.held_size += stop - start


def _plain(text: bytes, max_line_bytes: int) -> bool:
    """Whether a run of lines can go to the normaliser as it is, with no look at each line: JSON
    lines (not export lines, not envelopes) none of which can be too long. Blank lines and any
    odd line in it take the per-line path (``_decode_line``), which skips or quarantines them."""
    first_line_end = text.find(b"\n")
    return (text[:1] == b"{" and len(text) < max_line_bytes
            and text.find(b'"logEvents"', 0, first_line_end if first_line_end >= 0 else len(text)) < 0)


def _split_lines(text: bytes) -> list[bytes]:
    """``text.split(b"\\n")``, each line but the last keeping its newline (JSON whitespace). ``readlines``
    finds newlines with memchr, where ``split`` compares byte by byte: 0.5 against 1.7 us a 1.8 KB line."""
    lines = io.BytesIO(text).readlines()
    if text.endswith(b"\n"):
        lines.append(b"")
    return lines


def _decode_line(line: bytes, source: str, line_no: int, quarantine: Quarantine, log_time: str | None = None) -> Iterator[Event]:
    """The per-line path: one line's JSON value(s), as the line reader has always decoded them
    (a blank line is nothing, an export line's timestamp prefix is its log time)."""
    stripped = line.strip()
    if not stripped:
        return
    stripped, prefix_time = _export_time(stripped)
    yield from _decode_record(stripped, source, line_no, quarantine, log_time or prefix_time)


def _decode_record(text: bytes, source: str, line_no: int, quarantine: Quarantine, log_time: str | None = None,
                   event_id: str | None = None, expand: bool = True) -> Iterator[Event]:
    """One record's JSON text as events: an envelope's messages, an EventList's items, or the value
    itself (always, when not ``expand``: a CloudWatch message is one event).

    Text that does not decode whole is either several values glued together (Firehose without
    newlines; never in a message), each decoded on its own, or one damaged record, read field by field
    (``_salvage``).
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        values = split_values(text)
        if expand and values.several(text):
            for piece in values.pieces(text):
                yield from _decode_record(piece, source, line_no, quarantine, log_time, event_id, expand)
        else:
            yield from _salvage(text, source, line_no, quarantine, log_time, event_id)
        return
    if expand and isinstance(value, dict) and "messageType" in value and "logEvents" in value:
        yield from _read_envelope(value, source, line_no, quarantine)
    elif expand and isinstance(value, dict) and value.get("kind") == "EventList":
        yield from _read_event_list(value, source, line_no, quarantine)
    else:
        yield value, event_id


def _salvage(text: bytes, source: str, line_no: int, quarantine: Quarantine, log_time: str | None,
             event_id: str | None) -> Iterator[Event]:
    """A record that does not decode whole, read field by field (``jsonscan.object_fields``): an intact
    object whose damage lies only in fields the archive never reads is the event a whole decode gives
    (a plain dict); otherwise a ``SalvagedEvent`` when it holds SALVAGE_REQUIRED and a time, else
    quarantined under its decode reason (``cloudwatch_truncated``, ``not_utf8``, ``invalid_json``). Text
    after the event's closing brace is a record of its own, quarantined."""
    reason = _classify_json_error(text)
    body = text.rstrip()
    cut = body.endswith(TRUNCATED_MARK)
    body = body[: -len(TRUNCATED_MARK)] if cut else body
    fields = object_fields(body)
    if fields is None:
        quarantine.add(reason, source, line_no, text)
        return
    event = SalvagedEvent(fields.values, fields.damaged, cut or not fields.complete, log_time, reason, text)
    if not event.cut and fields.regular and event.marker(_resource(fields.values)) is None:
        # The block decoders skip these fields and decide the whole line; so does normalize_event with this dict.
        yield dict(fields.values), event_id
    else:
        try:
            event.check_usable()
        except BadEvent:
            quarantine.add(reason, source, line_no, text)
            return
        yield event, event_id
    if fields.complete and (rest := body[fields.end:]).strip():
        quarantine.add(_classify_json_error(rest), source, line_no, rest)


def _resource(values: dict):
    """The resource a whole decode of ``values`` reads (objectRef.resource), for ``SalvagedEvent.marker``."""
    resource = values["objectRef"].get("resource") if isinstance(values.get("objectRef"), dict) else None
    return resource if isinstance(resource, str) else None


def _expand_line(stripped: bytes, source: str, line_no: int, quarantine: Quarantine) -> Iterator[LineBlock | Event]:
    """A line that may hold a CloudWatch envelope: its messages as one block; anything else per line."""
    try:
        value = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        yield from _decode_record(stripped, source, line_no, quarantine)
        return
    if isinstance(value, dict) and "messageType" in value and "logEvents" in value:
        messages = list(_envelope_messages(value, source, line_no, quarantine))
        if messages:
            lines = [message.encode("utf-8", "surrogatepass").strip() for message, _, _ in messages]
            yield LineBlock(lines, [line_no] * len(lines), source, quarantine, messages)
    elif isinstance(value, dict) and value.get("kind") == "EventList":
        yield from _read_event_list(value, source, line_no, quarantine)
    else:
        yield value, None


def _peek_head(reader: io.BufferedReader) -> bytes:
    """The buffered start of the input from its first non-blank byte on (a buffer of blanks only is
    consumed); empty at the end of the input."""
    data = reader.peek(65536)
    while data:
        stripped = data.lstrip()
        if stripped:
            return stripped
        reader.read(len(data))
        data = reader.peek(65536)
    return b""


def _starts_a_document(head: bytes) -> bool:
    """Whether an input beginning with ``head`` is one JSON document (an array, an ``EventList``, a
    pretty-printed Event) rather than JSON lines, judged from its first two lines.

    Pretty-printers break a document's lines after ``{``, ``[`` or ``,``. A first line that ends
    otherwise is a JSON-lines record (damaged, or a whole value with more lines after it), and so is a
    first ``{...`` line followed by a line that starts an object. A document that does not parse after
    all is read as JSON lines by ``_read_document``; deciding here keeps big JSON-lines files streamed.
    """
    first, newline, rest = head.partition(b"\n")
    first = first.strip()
    if first in (b"[", b"{") or (first[:1] == b"[" and not newline):
        return True
    if first[:1] == b"[" and _is_json(first):
        return not rest.strip()
    if not newline or not first.endswith((b"{", b"[", b",")):
        return False
    return first[:1] == b"[" or not rest.lstrip().startswith(b"{")


def _is_json(text: bytes) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _read_document(reader: io.BufferedReader, source: str, quarantine: Quarantine, max_line_bytes: int,
                   block_bytes: int) -> Iterator[LineBlock | Event]:
    """The input read whole as one JSON document. One that does not parse is read as JSON lines after
    all (its first lines only looked like a document's) or as JSON values one after another (events
    pretty-printed in a row, as ``jq .`` writes them; a document cut short): whichever gives more
    objects, so every good line is kept and a damaged document is one quarantined record, not one a line.
    """
    data, damage = _read_all(reader)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        def as_lines(into: Quarantine) -> Iterator[LineBlock | Event]:
            runs = _text_chunks(_Replay(data, damage), min(block_bytes, max_line_bytes // 2), max_line_bytes)
            return _read_lines(runs, source, into, max_line_bytes)

        def as_values(into: Quarantine) -> Iterator[Event]:
            return _read_values(data.strip(), source, into, cut_short=damage is not None)

        if _objects(as_lines(Quarantine())) > _objects(as_values(Quarantine())):
            yield from as_lines(quarantine)
            return
        yield from as_values(quarantine)
    else:
        yield from _document_events(value, source, quarantine)
    if damage is not None:
        quarantine.add(_damage_reason(damage), source, 1, str(damage))


def _read_all(reader: BinaryIO) -> tuple[bytes, Exception | None]:
    """All of the input, or what was read of it before a decompression error, and that error."""
    parts = []
    try:
        while data := reader.read1(1 << 20):
            parts.append(data)
    except (EOFError, OSError, ValueError) as error:
        return b"".join(parts), error
    return b"".join(parts), None


class _Replay(io.BytesIO):
    """Input already read into memory, read again; it ends with the error that stopped the first reading."""

    def __init__(self, data: bytes, error: Exception | None):
        super().__init__(data)
        self._error = error

    def read1(self, size: int = -1) -> bytes:
        data = super().read1(size)
        if not data and self._error is not None:
            raise self._error
        return data


def _objects(items: Iterable[LineBlock | Event]) -> int:
    """How many JSON objects a reading of an input yields."""
    count = 0
    for item in items:
        if isinstance(item, LineBlock):
            count += sum(isinstance(value, dict) for index in range(len(item)) for value, _ in item.decode(index))
        else:
            count += isinstance(item[0], dict)
    return count


def _document_events(value: object, source: str, quarantine: Quarantine) -> Iterator[Event]:
    if isinstance(value, list):
        for item in value:
            yield item, None
    elif isinstance(value, dict) and value.get("kind") == "EventList":
        yield from _read_event_list(value, source, 1, quarantine)
    elif isinstance(value, dict) and "messageType" in value:
        yield from _read_envelope(value, source, 1, quarantine)
    else:
        yield value, None


def _read_cut_line(tail: bytes, source: str, line_no: int, quarantine: Quarantine) -> Iterator[Event]:
    """What was read of the last line before the input broke off: its complete JSON values are read
    (Firehose envelopes one after another with no newline); the cut one is part of the damage."""
    stripped, log_time = _export_time(tail.strip())
    values = split_values(stripped)
    for start, end in values.spans:
        yield from _decode_record(stripped[start:end], source, line_no, quarantine, log_time)


def _read_values(data: bytes, source: str, quarantine: Quarantine, cut_short: bool = False) -> Iterator[Event]:
    """JSON values one after another (events pretty-printed in a row, as ``jq .`` writes them): each
    complete one decoded on its own; what follows them is one damaged record, or, when the input was
    ``cut_short``, part of that damage."""
    values = split_values(data)
    for start, end in values.spans:
        yield from _decode_record(data[start:end], source, 1, quarantine)
    rest = data[values.rest:]
    if rest.strip() and not cut_short:
        yield from _decode_record(rest, source, 1, quarantine)


def _read_event_list(value: dict, source: str, line_no: int, quarantine: Quarantine) -> Iterator[Event]:
    items = value.get("items")
    if not isinstance(items, list):
        quarantine.add("eventlist_without_items", source, line_no, str(value)[:SAMPLE_CHARS])
        return
    for item in items:
        yield item, None


def _read_envelope(envelope: dict, source: str, line_no: int, quarantine: Quarantine) -> Iterator[Event]:
    """A CloudWatch Logs subscription envelope: one audit event per logEvents[].message."""
    for message, event_id, log_time in _envelope_messages(envelope, source, line_no, quarantine):
        yield from _decode_message(message, event_id, log_time, source, line_no, quarantine)


def _envelope_messages(envelope: dict, source: str, line_no: int,
                       quarantine: Quarantine) -> Iterator[tuple[str, str | None, str | None]]:
    """(message, event id, log time) of every logEvent of a DATA_MESSAGE from an audit stream; the rest
    skipped or quarantined."""
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
        yield message, str(event_id) if event_id is not None else None, log_time_of(log_event.get("timestamp"))


def log_time_of(milliseconds) -> str | None:
    """A CloudWatch log event's timestamp (epoch milliseconds) as the time of a salvaged event; None if it is not one."""
    if not isinstance(milliseconds, int) or isinstance(milliseconds, bool):
        return None
    try:
        moment = _EPOCH + timedelta(milliseconds=milliseconds)
    except OverflowError:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode_message(message: str, event_id: str | None, log_time: str | None, source: str, line_no: int,
                    quarantine: Quarantine) -> Iterator[Event]:
    """One CloudWatch log event's message as one audit event (salvaged or quarantined as a line is)."""
    text = message.encode("utf-8", "surrogatepass")
    yield from _decode_record(text, source, line_no, quarantine, log_time, event_id, expand=False)


def parse_cloudwatch_message(message: str, event_id: str | None, source: str, quarantine: Quarantine,
                             timestamp: int | None = None) -> Iterator[Event]:
    """One CloudWatch log event's message (from FilterLogEvents, with its ``timestamp``) as an audit event."""
    yield from _decode_message(message, event_id, log_time_of(timestamp), source, 0, quarantine)

