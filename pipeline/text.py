"""Log-derived text made safe for a terminal and for CSV cells.

Usernames, user agents, object names and request URIs are chosen by whoever sends the request.
Printed raw, an ESC sequence in a username rewrites the analyst's terminal (moves the cursor,
hides lines, sets the window title) and a right-to-left override reorders what a table shows;
the same bytes in findings.csv do it again in every viewer that opens the file. ``printable`` is
the one function every terminal and CSV writer passes such text through (Markdown and HTML have
their own escaping in ``pipeline.report.render``).
"""
from __future__ import annotations

import re

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(value) -> str:
    """``value`` as text with C0 and C1 control characters (ESC, DEL, line breaks, tabs) and the
    bidirectional overrides, isolates and marks (U+202A-202E, U+2066-2069, U+200E, U+200F, U+061C)
    replaced by visible escapes such as ``\\x1b``, ``\\n`` and ``\\u202e``; every other character is kept."""
    return _UNPRINTABLE.sub(_escape, "" if value is None else str(value))


def _escape(match: re.Match) -> str:
    char = match[0]
    return _SHORT_ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


FORMULA_PREFIXES = ("=", "+", "-", "@")  # a leading tab or CR is already an escape (printable)


def safe_cell(value) -> str:
    """A CSV cell that spreadsheets will not evaluate and terminals will not obey: control characters and
    bidirectional overrides become visible escapes (``printable``), then formula-leading text gets a quote
    prefix (numbers stay numbers, so a score of -0.6 is not turned into text)."""
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = printable(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text
