"""features.columns: events read column by column, whatever shape the archive hands them over in."""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa

from features.addresses import AddressBook
from features.columns import EventColumns, in_sorted, sorted_distinct
from features.events import EVENT_SCHEMA, normalize_event, rows_table
from features.flags import FlagContext, add_flags
from pipeline.stages.features import events_frame
from tests.factory import T0, event


def _hour(n: int) -> pa.Table:
    """``n`` events of one hour as the archive holds them, a few users, a few addresses."""
    rows = [normalize_event(event(T0 + timedelta(seconds=i), user={"username": f"user-{i % 7}"}, sourceIPs=[f"10.0.0.{i % 5}"],
                                  verb=("get", "list", "create")[i % 3]))
            for i in range(n)]
    table = rows_table(rows)
    return table.set_column(0, EVENT_SCHEMA.field(0), table["time"].cast(EVENT_SCHEMA.field(0).type)) \
        .set_column(1, EVENT_SCHEMA.field(1), table["received_time"].cast(EVENT_SCHEMA.field(1).type))


def test_a_frame_read_from_several_row_groups_flags_as_one_read_whole():
    """An hour file of more than archive.merge_rows rows is written in several row groups and reads back as a
    multi-chunk table; pandas then backs each text column with several Arrow chunks. The flags must see the
    same events either way (this crashed the score stage of every run holding such an hour)."""
    whole = _hour(300)
    chunked = pa.concat_tables([whole.slice(0, 100), whole.slice(100, 120), whole.slice(220)])
    assert chunked["user"].num_chunks == 3
    context = FlagContext(AddressBook())
    one = add_flags(events_frame(whole), context)
    several = add_flags(events_frame(chunked), context)
    assert list(one.columns) == list(several.columns)
    for name in one.columns:
        assert one[name].equals(several[name]), name


def test_codes_of_a_multi_chunk_column_are_those_of_the_combined_column():
    whole = _hour(50)
    chunked = pa.concat_tables([whole.slice(0, 10), whole.slice(10)])
    frame = events_frame(chunked)
    codes, values = EventColumns(frame).encoded("user")
    assert [values[c] for c in codes] == whole["user"].to_pylist()
    assert np.array_equal(EventColumns(chunked).codes("verb"), EventColumns(whole).codes("verb"))


def test_in_sorted_is_isin_over_sorted_distinct_hashes():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 2**63, 5_000, dtype=np.int64).view(np.uint64)
    ordered = sorted_distinct(np.r_[values[::7], rng.integers(0, 2**63, 500, dtype=np.int64).view(np.uint64)])
    assert np.array_equal(in_sorted(values, ordered), np.isin(values, ordered)) and in_sorted(values, ordered).sum() >= 5_000 // 7
    assert not in_sorted(values, ordered[:0]).any() and len(in_sorted(values[:0], ordered)) == 0
    assert in_sorted(np.array([ordered[-1] + np.uint64(1)]), ordered).tolist() == [False], "past the last value"
