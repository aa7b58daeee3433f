"""Factory events as the archive holds them, for unit tests of features/."""
from __future__ import annotations

import pyarrow as pa

from features.addresses import AddressBook, load_threat_list
from features.events import EventTableBuilder, normalize_event
from features.flags import FlagContext

# 52.95.0.0/16 stands for AWS-owned space (ip-ranges.json), 203.0.113.0/24 for the user's threat list.
ADDRESSES = AddressBook(load_threat_list("52.95.0.0/16\n"), load_threat_list("203.0.113.0/24\n"))
CONTEXT = FlagContext(ADDRESSES, frozenset({"eks:addon-manager"}))


def event_table(raws: list[dict]) -> pa.Table:
    """Raw audit events (tests.factory.event) normalised into an archive table (EVENT_SCHEMA), in order."""
    builder = EventTableBuilder()
    for raw in raws:
        builder.append(normalize_event(raw))
    table, bad = builder.build()
    assert not bad, f"events with unparseable timestamps: {bad}"
    return table
