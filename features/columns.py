"""Events column by column, each column dictionary-encoded once, for the map step's flags, aggregates and rules.

An archived hour holds tens of thousands of rows but only a few hundred distinct users,
addresses, clients, verbs and resources. ``EventColumns`` encodes a column the first time
anything reads it, so a predicate runs once per distinct value and is broadcast to the rows
by code, and groupings reuse the same codes. It reads an Arrow table (the archive's form,
no pandas conversion) or a DataFrame (``features.flags.add_flags`` and its callers).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.events import REQUEST_IDENTITY

MICROS = pa.timestamp("us", tz="UTC")
SMALL_DICTIONARY = 256  # distinct values up to which a dictionary is checked as a Python set (EventColumns._dictionary)


def pandas_types(arrow_type: pa.DataType):
    """Arrow to pandas with nullable integers kept nullable (``code`` stays Int32, not float)."""
    return pd.Int32Dtype() if arrow_type == pa.int32() else None


class EventColumns:
    """Read-only columns of ``events`` (a pa.Table or a DataFrame), plus columns derived from them.
    ``read`` names the event columns read so far: what a step needs from the archive."""

    def __init__(self, events: pa.Table | pd.DataFrame):
        self.events = events
        self.rows = len(events)
        self.names = frozenset(events.column_names if isinstance(events, pa.Table) else events.columns)
        self.read: set[str] = set()
        self._arrays: dict[str, pa.Array] = {}
        self._codes: dict[str, tuple[np.ndarray, pa.Array, list | None]] = {}
        self._missing: dict[str, np.ndarray] = {}
        self._micros: dict[str, np.ndarray] = {}
        self._encoded: dict[str, tuple[np.ndarray, list]] = {}
        self._ranked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._answers: dict[tuple, np.ndarray] = {}
        self._derived: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.names or name in self._encoded

    def array(self, name: str) -> pa.Array:
        self.read.add(name)
        if name not in self._arrays:
            column = self.events[name]
            if isinstance(column, pa.ChunkedArray):
                self._arrays[name] = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            else:
                array = pa.array(column, from_pandas=True)
                # a pandas column backed by several Arrow chunks (an hour read in row groups) converts to a ChunkedArray
                self._arrays[name] = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
        return self._arrays[name]

    def codes(self, name: str) -> np.ndarray:
        """An event column's code per row: equal codes for equal values; missing values share the highest code."""
        return self._dictionary(name)[0]

    def _dictionary(self, name: str) -> tuple[np.ndarray, pa.Array, list | None]:
        """(code per row, distinct values, the same as a list when at hand). A column read as a file's dictionary
        (``pq.read_table(read_dictionary=)``) is used as it is: its indices are the codes when its values are distinct
        (a file's dictionary page holds each value once), else they are renumbered over its distinct values; missing
        values get the code ``len(values)``. A small dictionary is checked as a Python set of the list ``encoded``
        needs anyway; a large one (audit ids, of which only codes are read) by encoding it, without the list."""
        if name not in self._codes:
            array = self.array(name)
            if pa.types.is_dictionary(array.type):
                dictionary, indices, values, encoded = array.dictionary, array.indices, None, None
                if len(dictionary) <= SMALL_DICTIONARY and (pa.types.is_string(dictionary.type) or pa.types.is_large_string(dictionary.type)):
                    values = dictionary.to_pylist()
                    distinct = len(set(values)) == len(values)
                else:
                    encoded = pc.dictionary_encode(dictionary)
                    distinct = len(encoded.dictionary) == len(dictionary)
                if distinct:
                    self._codes[name] = (_filled(indices, len(dictionary)).astype(np.int64), dictionary, values)
                else:
                    encoded = encoded if encoded is not None else pc.dictionary_encode(dictionary)
                    renumber = np.append(encoded.indices.to_numpy(), len(encoded.dictionary))
                    self._codes[name] = (renumber[_filled(indices, len(dictionary))], encoded.dictionary, None)
            else:
                encoded = pc.dictionary_encode(array)
                self._codes[name] = (_filled(encoded.indices, len(encoded.dictionary)), encoded.dictionary, None)
        return self._codes[name]

    def hashes(self, name: str, function: Callable[[object], int]) -> np.ndarray:
        """``function`` (a 64-bit hash) of each row's value as uint64, computed once per distinct value; without the
        list of values ``encoded`` keeps (a column of ids has nearly as many values as rows)."""
        codes, dictionary, values = self._dictionary(name)
        values = dictionary.to_pylist() if values is None else values
        return np.array([function(value) for value in values] + [function(None)], dtype=np.int64).view(np.uint64)[codes]

    def encoded(self, name: str) -> tuple[np.ndarray, list]:
        """(code per row, values): ``values[code]`` is the row's value. For an event column the last
        value is None, the code of every missing value; a derived column may repeat values."""
        if name not in self._encoded:
            codes, dictionary, values = self._dictionary(name)
            self._encoded[name] = (codes, (dictionary.to_pylist() if values is None else values) + [None])
        return self._encoded[name]

    def derive(self, name: str, source: str, function: Callable[[object], object]) -> None:
        """Add column ``name``: ``function`` of ``source``'s value (None when missing), run once per distinct value."""
        codes, values = self.encoded(source)
        self._encoded[name] = (codes, [function(value) for value in values])
        self._derived.add(name)

    def where(self, name: str, predicate: Callable[[object], bool], key: tuple | None = None) -> np.ndarray:
        """``predicate(value)`` for every row; a missing value is passed as None. Calls with the
        same ``key`` (a test that several callers share) are answered once."""
        if key is not None and (name, key) in self._answers:
            return self._answers[(name, key)]
        codes, values = self.encoded(name)
        result = np.array([bool(predicate(value)) for value in values], dtype=bool)[codes]
        if key is not None:
            self._answers[(name, key)] = result
        return result

    def missing(self, name: str) -> np.ndarray:
        """An event column's missing values (computed once; read-only)."""
        if name not in self._missing:
            valid = _valid(self.array(name))
            missing = np.zeros(self.rows, dtype=bool) if valid is None else ~valid
            missing.flags.writeable = False
            self._missing[name] = missing
        return self._missing[name]

    def ranked(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(code per row numbered in sorted value order, -1 where missing; the sorted distinct values),
        so codes sort exactly as the values do."""
        if name not in self._ranked:
            if name in self.names and name not in self._derived and _is_text(self.array(name).type):
                # an event column's distinct values sorted by Arrow (UTF-8 bytes sort as Python sorts str), not as a list
                codes, dictionary, _ = self._dictionary(name)
                order = pc.array_sort_indices(dictionary).to_numpy()
                rank = np.full(len(dictionary) + 1, -1, dtype=np.int64)
                rank[order] = np.arange(len(order))
                self._ranked[name] = rank[codes], dictionary.take(order).to_numpy(zero_copy_only=False).astype(object)
            else:
                codes, values = self.encoded(name)
                self._ranked[name] = rank_values(codes, values)
        return self._ranked[name]

    def micros(self, name: str) -> np.ndarray:
        """A timestamp column as int64 microseconds since the epoch (NaT's integer where missing; computed once, read-only)."""
        if name not in self._micros:
            micros = pc.cast(self.array(name), MICROS, safe=False).to_numpy(zero_copy_only=False).view(np.int64)
            micros.flags.writeable = False
            self._micros[name] = micros
        return self._micros[name]

    def requests(self) -> np.ndarray:
        """A code per row, equal for the rows of one request (its stages) and different for different requests:
        the auditID's code, and where requests share an auditID (a client sets the Audit-ID header), a new code per
        distinct ``REQUEST_IDENTITY`` among them. Every identity column is read, so a step tracing ``read`` asks for them."""
        if ("requests",) not in self._answers:
            ids = self.codes("audit_id")
            others = [self.micros(name) if pa.types.is_timestamp(self.array(name).type) else self.codes(name)
                      for name in REQUEST_IDENTITY[1:]]
            codes = ids
            repeated = np.flatnonzero(np.bincount(ids)[ids] > 1) if self.rows else ids
            if len(repeated):
                rows = repeated[np.argsort(ids[repeated], kind="stable")]
                values = np.column_stack([ids[rows]] + [column[rows] for column in others])
                if np.any((values[1:] != values[:-1]).any(axis=1) & (values[1:, 0] == values[:-1, 0])):
                    _, inverse = np.unique(values, axis=0, return_inverse=True)
                    codes = ids.copy()
                    codes[rows] = ids.max() + 1 + inverse.ravel()
            self._answers[("requests",)] = codes
        return self._answers[("requests",)]

    def series(self, name: str) -> pd.Series:
        """One column as pandas gives it from the whole table (``str``, ``Int32``, timestamps with their zone)."""
        if name in self._encoded and name not in self.names:
            codes, values = self._encoded[name]
            return pd.Series(np.array(values, dtype=object)[codes], dtype="str")
        if isinstance(self.events, pd.DataFrame):
            return self.events[name]
        return pa.table({name: _plain(self.array(name))}).to_pandas(types_mapper=pandas_types)[name]  # Array.to_pandas takes a slower path for strings

    def frame(self) -> pd.DataFrame:
        """The events as a DataFrame (the source itself, or the table converted as a whole)."""
        if isinstance(self.events, pd.DataFrame):
            return self.events
        return pa.table({name: _plain(column) for name, column in zip(self.events.column_names, self.events.columns)}).to_pandas(
            types_mapper=pandas_types)


def _is_text(arrow_type: pa.DataType) -> bool:
    value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    return pa.types.is_string(value_type) or pa.types.is_large_string(value_type)


def _valid(array: pa.Array) -> np.ndarray | None:
    """Which values of ``array`` are present, from its validity bitmap; None when all are."""
    if array.null_count == 0:
        return None
    bitmap = array.buffers()[0]
    if bitmap is None:  # a null-typed array
        return np.zeros(len(array), dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), count=array.offset + len(array), bitorder="little")
    return bits[array.offset:].view(bool)


def _filled(indices: pa.Array, missing: int) -> np.ndarray:
    """Integer ``indices`` as numpy, ``missing`` where null (``pc.fill_null(indices, missing).to_numpy()``)."""
    valid = _valid(indices)
    if valid is not None and indices.buffers()[1] is None:
        return np.full(len(indices), missing, dtype=indices.type.to_pandas_dtype())
    values = indices.to_numpy(zero_copy_only=False) if valid is None else \
        np.frombuffer(indices.buffers()[1], dtype=indices.type.to_pandas_dtype(), count=len(indices), offset=indices.offset * indices.type.byte_width)
    return values if valid is None else np.where(valid, values, missing).astype(values.dtype)


def _plain(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A column read as a file's dictionary, decoded to its value type (pandas would make it categorical)."""
    return pc.cast(column, column.type.value_type) if pa.types.is_dictionary(column.type) else column


def combine(parts: list[tuple[np.ndarray, list]], function: Callable[..., object]) -> tuple[np.ndarray, list]:
    """``function(*values)`` of each row's values of ``parts`` ((code per row, values), as ``EventColumns.encoded``
    gives them), run once per distinct combination of values: (combination per row, result per combination).
    Combinations are numbered with integer keys, never strings."""
    combination, first = combinations([(codes, len(values)) for codes, values in parts])
    results = [function(*row) for row in zip(*([values[code] for code in codes[first].tolist()] for codes, values in parts))]
    return combination, results


def combinations(parts: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """For rows with a code in each part ((code per row, 0 <= code < size)): (the number of each row's combination of
    codes, numbered in sorted order; the first row of each combination)."""
    key, size = np.zeros(len(parts[0][0]), dtype=np.int64), 1
    for codes, count in parts:
        if size * count >= 2 ** 62:  # renumber the combinations so far densely before the key overflows
            key = np.unique(key, return_inverse=True)[1].astype(np.int64)
            size = int(key.max()) + 1
        key, size = key * count + codes, size * count
    _, first, combination = np.unique(key, return_index=True, return_inverse=True)
    return combination, first


def run_heads(ordered: np.ndarray) -> np.ndarray:
    """For sorted keys: whether each position starts a run of equal keys."""
    heads = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=heads[1:])
    return heads


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by a sort: numpy 2's hash-table unique takes 60 times as long on millions of distinct
    64-bit integers (3.2 s against 0.05 s for 3 million)."""
    ordered = np.sort(values)
    return ordered[run_heads(ordered)]


def in_sorted(values: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """``np.isin(values, ordered)`` for ``ordered`` sorted and distinct (``sorted_distinct``), by binary search:
    np.isin takes numpy 2's hash-table path, as slow as its unique on millions of 64-bit integers."""
    if not len(ordered):
        return np.zeros(len(values), dtype=bool)
    position = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return ordered[position] == values


def rank_values(codes: np.ndarray, values: list) -> tuple[np.ndarray, np.ndarray]:
    """``codes`` into ``values`` (which may repeat, None for missing) renumbered in sorted order of the
    distinct values, -1 for None; and those sorted distinct values."""
    distinct = sorted({value for value in values if value is not None})
    rank = {value: index for index, value in enumerate(distinct)}
    lookup = np.array([-1 if value is None else rank[value] for value in values], dtype=np.int64)
    return lookup[codes], np.array(distinct, dtype=object)
