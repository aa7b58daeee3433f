"""One scanner for JSON text that is not parsed whole: where values end, and the top-level fields of
an object that does not decode (damaged, or cut short by CloudWatch).

It follows only string/escape state and nesting depth and never builds a value, so it reads each
byte once whatever the text holds: a ``}{`` inside a string is no boundary, a 100,000-deep array is
two regular-expression steps, and a value it has not finished when its input ends is reported as
incomplete, never guessed at. Parsing stays with orjson, one value at a time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson

# Inside a container: everything up to the next bracket, whole strings included (in blanked text a
# string holds no quote), or up to a string the text ends inside. A run of brackets is one step.
_SKIP = re.compile(rb'(?:[^"\[\]{}]++|"[^"]*+")*+')
_BRACKETS = re.compile(rb"[\[{]+|[\]}]+")
_SPACE = re.compile(rb"[ \t\r\n]*")
_SCALAR = re.compile(rb"[^\s,:\[\]{}\"]+")
_QUOTE, _COMMA, _CLOSE = 0x22, 0x2C, 0x7D
_OPENERS = b"{["


def blank_escapes(data: bytes, escaped: bool = False) -> bytes:
    """``data`` with every escaped backslash and escaped quote replaced by two underscores (the same
    length, so positions carry over): in what is left, every quote opens or closes a string, and a
    string ends at the next quote (``bytes.replace`` and ``find``: C speed, where following escapes in
    Python would cost a step each). ``escaped``: the first byte is escaped by a backslash that ended
    the previous piece of the same text."""
    if escaped:
        return b"_" + blank_escapes(data[1:])
    return data.replace(b"\\\\", b"__").replace(b'\\"', b"__")


class ValueScanner:
    """The end of a JSON container or string, from text given in one piece or several.

    ``end(blanked, pos)`` scans ``blank_escapes`` of the text from ``pos``, where a value starts (or
    where the previous piece of the same value stopped), and returns the index just past the value's
    end, or -1 when the text ends first; its state (depth, inside a string, a backslash ending the
    piece) carries over to the next piece. ``scanned`` counts the bytes looked at: the work done.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.scanned = 0

    def end(self, blanked: bytes, pos: int = 0) -> int:
        size = len(blanked)
        begin = pos
        self.escaped = False
        while True:
            if self.in_string:
                close = blanked.find(b'"', pos)
                if close < 0:
                    self.escaped = blanked.endswith(b"\\")
                    pos = size
                    break
                pos = close + 1
                self.in_string = False
                if self.depth == 0:
                    self.scanned += pos - begin
                    return pos
            if self.depth:
                pos = _SKIP.match(blanked, pos).end()
            if pos >= size:
                break
            if blanked[pos] == _QUOTE:
                self.in_string = True
                pos += 1
                continue
            found = _BRACKETS.match(blanked, pos)
            if found is None:  # at the top level, where no value starts: nothing to end
                break
            start, pos = found.span()
            if blanked[start] in _OPENERS:
                self.depth += pos - start
            elif pos - start >= self.depth:
                pos = start + self.depth
                self.depth = 0
                self.scanned += pos - begin
                return pos
            else:
                self.depth -= pos - start
        self.scanned += pos - begin
        return -1


def skip_space(data: bytes, pos: int) -> int:
    return _SPACE.match(data, pos).end()


@dataclass
class Values:
    """How a text divides into JSON values: the spans of the complete objects or arrays it starts with
    and where the rest (an unfinished value, or text that starts none) begins (``len(data)`` if none)."""

    spans: list[tuple[int, int]]
    rest: int

    def pieces(self, data: bytes) -> list[bytes]:
        """Each complete value, then the rest if it is not blank."""
        pieces = [data[a:b] for a, b in self.spans]
        if data[self.rest:].strip():
            pieces.append(data[self.rest:])
        return pieces

    def several(self, data: bytes) -> bool:
        """Whether the text holds more than one value: at least two complete ones, or one and the start
        of another (``{`` or ``[``). Text that is one damaged value is one record, not several."""
        if len(self.spans) >= 2:
            return True
        return len(self.spans) == 1 and data[self.rest:self.rest + 1] in (b"{", b"[")


def split_values(data: bytes) -> Values:
    """The objects and arrays ``data`` holds one after another (Firehose glues CloudWatch envelopes with
    no separator, ``jq .`` prints events one after another), found in one pass."""
    spans = []
    pos = skip_space(data, 0)
    blanked = blank_escapes(data)
    while pos < len(data) and data[pos] in _OPENERS:
        end = ValueScanner().end(blanked, pos)
        if end < 0:
            break
        spans.append((pos, end))
        pos = skip_space(data, end)
    return Values(spans, pos)


@dataclass
class Fields:
    """The top-level fields of an object read one by one: ``values`` decoded, ``damaged`` the names
    whose value is complete but does not decode, ``complete`` whether the object's closing brace was
    reached (False: the text ends, or its structure breaks, before it), ``end`` where reading stopped
    (just past that brace) and ``regular`` whether every comma between fields was where JSON puts one
    (False: a comma missing, doubled, leading or trailing). A duplicated name keeps its last value, as
    orjson, msgspec and Go's encoding/json do."""

    values: dict = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)
    complete: bool = False
    end: int = 0
    regular: bool = True


def object_fields(data: bytes) -> Fields | None:
    """Every top-level field of the object ``data`` starts with that can be read, each value parsed on
    its own: a value that does not parse (a number out of range, a lone surrogate, nesting deeper
    than orjson's 1,024 levels, bytes that are not UTF-8) is skipped to its end and reading goes on
    after it; a value the text ends inside (a cut line) is not read at all, and nor is anything after
    a break in the object's own structure. None if ``data`` does not start with an object."""
    pos = skip_space(data, 0)
    if data[pos:pos + 1] != b"{":
        return None
    fields = Fields()
    blanked = blank_escapes(data)
    pos += 1
    size = len(data)
    after_value = after_comma = False
    while True:
        pos = fields.end = skip_space(data, pos)
        if pos >= size:
            return fields
        byte = data[pos]
        if byte == _CLOSE:
            fields.complete, fields.end = True, pos + 1
            fields.regular = fields.regular and not after_comma
            return fields
        if byte == _COMMA:
            fields.regular = fields.regular and after_value
            after_value, after_comma = False, True
            pos += 1
            continue
        if byte != _QUOTE:
            return fields
        fields.regular = fields.regular and not after_value
        after_value, after_comma = True, False
        key_end = _string_end(blanked, pos)
        if key_end < 0:
            return fields
        try:
            key = orjson.loads(data[pos:key_end])
        except orjson.JSONDecodeError:
            return fields
        pos = skip_space(data, key_end)
        if data[pos:pos + 1] != b":":
            return fields
        pos = skip_space(data, pos + 1)
        end = _value_end(blanked, pos)
        if end < 0:
            return fields
        try:
            fields.values[key] = orjson.loads(data[pos:end])
        except orjson.JSONDecodeError:
            fields.values.pop(key, None)
            fields.damaged.append(key)
        pos = end


def _string_end(blanked: bytes, pos: int) -> int:
    """Just past the string that starts at ``pos``, or -1 if the text ends inside it."""
    close = blanked.find(b'"', pos + 1)
    return close + 1 if close >= 0 else -1


def _value_end(blanked: bytes, pos: int) -> int:
    """Just past the value that starts at ``pos``, or -1 if the text ends inside it or no value starts
    there. A number or literal is complete only when something follows it: ``20`` at the end of a cut
    line may have been ``200``."""
    if pos >= len(blanked):
        return -1
    if blanked[pos] in _OPENERS or blanked[pos] == _QUOTE:
        return ValueScanner().end(blanked, pos)
    scalar = _SCALAR.match(blanked, pos)
    if scalar is None or scalar.end() >= len(blanked):
        return -1
    return scalar.end()
