"""Declaring the columns the request decoders derive (features.commands, features.writes, features.csr).

Each decoder module lists its columns once as ``DerivedColumn`` (name, Arrow type, the audit fields it
reads, why an analyst wants it); the archive schema, the docs and the tests read those lists. The
helpers here bound and join what an attacker wrote, so no decoder copies an unbounded string.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# A joined list column keeps at most this many characters; the cut is marked so nobody mistakes it for the whole.
MAX_JOINED_CHARS = 2_048
CUT_MARK = "…"


@dataclass(frozen=True)
class DerivedColumn:
    name: str
    type: pa.DataType
    reads: str
    why: str


def bounded(text: str | None, limit: int = MAX_JOINED_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters, ending in CUT_MARK when it was cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - len(CUT_MARK)] + CUT_MARK


def joined(values, limit: int = MAX_JOINED_CHARS) -> str | None:
    """Distinct non-empty values, sorted and comma-joined (bounded), or None when there are none."""
    items = sorted({str(v) for v in values if v not in (None, "")})
    return bounded(",".join(items), limit) if items else None


def text(value) -> str | None:
    """A scalar JSON value as a string (what a hand-written manifest may put where a string belongs), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def schema(columns: tuple[DerivedColumn, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type) for c in columns])
