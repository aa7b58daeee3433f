"""The one scanner for JSON that is not parsed whole (pipeline/jsonscan.py): over generated values whose
strings hold what confuses a naive splitter (``}{``, quotes, backslashes, brackets), it finds exactly the
values orjson would, in one piece or cut anywhere into several, and reads an object's fields one by one."""
from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.io.jsonscan import ValueScanner, blank_escapes, object_fields, split_values

TRICKY = st.text(st.sampled_from(list('}{][",:\\ ab\n\u00e9')), max_size=12)
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), TRICKY)
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TRICKY, inner, max_size=4)),
                      max_leaves=20)
CONTAINERS = st.one_of(st.lists(VALUES, max_size=4), st.dictionaries(TRICKY, VALUES, max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.lists(CONTAINERS, min_size=1, max_size=5), st.sampled_from(["", " ", "\n"]))
def test_glued_values_split_exactly_where_they_end(values, separator):
    text = separator.join(json.dumps(value) for value in values).encode()
    split = split_values(text)
    assert [orjson.loads(piece) for piece in split.pieces(text)] == values
    assert split.rest == len(text) and split.several(text) is (len(values) > 1)


@settings(max_examples=300, deadline=None)
@given(CONTAINERS, st.lists(st.integers(1, 40), max_size=6))
def test_a_value_fed_in_pieces_ends_where_it_ends_whole(value, cuts):
    """Resumable: the state (depth, inside a string, a backslash ending a piece) carries over."""
    text = json.dumps(value).encode() + b' {"next": 1}'
    scanner, offset, end = ValueScanner(), 0, -1
    for size in cuts + [len(text)]:
        piece = text[offset:offset + size]
        end = scanner.end(blank_escapes(piece, scanner.escaped), 0)
        if end >= 0:
            end += offset
            break
        offset += len(piece)
    assert end == len(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TRICKY, VALUES, min_size=1, max_size=6), st.data())
def test_an_object_cut_anywhere_keeps_exactly_its_complete_fields(fields, data):
    """A value the cut goes through is not read (``20`` may have been ``200``); every field before it is."""
    text = json.dumps(fields).encode()
    cut = data.draw(st.integers(0, len(text)))
    read = object_fields(text[:cut])
    assert read is not None or cut == 0
    if cut == len(text):
        assert read.values == fields and read.complete and read.regular
        return
    if read is None:
        return
    items = list(fields.items())
    ends = [len(json.dumps(dict(items[:k + 1]))) - 1 for k in range(len(items))]  # just past each field's value
    assert not read.complete and not read.damaged
    assert read.values == dict(items[:len(read.values)])
    assert len(read.values) in (sum(end < cut for end in ends), sum(end <= cut for end in ends)), \
        "every field that ends before the cut is read (a number ending at the cut may have been longer)"


def test_a_value_that_does_not_decode_is_skipped_and_reading_goes_on():
    text = (b'{"a": 1, "deep": ' + b"[" * 1100 + b"]" * 1100 + b', "inf": 1e400, "s": "\\ud800", "raw": "\xff", '
            b'"big": ' + b"9" * 5000 + b', "b": "}{", "c": 20')
    read = object_fields(text)
    assert read.values == {"a": 1, "b": "}{"}
    assert read.damaged == ["deep", "inf", "s", "raw", "big"]
    assert not read.complete, "the text ends in c's number: it may have been longer"


def test_a_duplicated_name_keeps_its_last_value_and_a_misplaced_comma_is_irregular():
    """Last wins, as orjson, msgspec and Go's encoding/json decide; a last value that does not decode leaves the
    field damaged rather than falling back to the earlier one."""
    read = object_fields(b'{"user": {"username": "decoy"}, "n": 1e400, "user": {"username": "alice"}, "v": 1, "v": 1e400}')
    assert read.values == {"user": {"username": "alice"}} and read.damaged == ["n", "v"] and read.complete and read.regular
    for text in (b'{"a": 1,, "b": 2}', b'{, "a": 1}', b'{"a": 1,}', b'{"a": 1 "b": 2}'):
        read = object_fields(text)
        assert read.complete and not read.regular, text
