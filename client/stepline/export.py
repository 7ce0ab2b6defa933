"""History rows as files: the columns of a stream of rows, CSV cells, parquet.

Keys can first appear anywhere in a run, and a CSV header or a parquet schema
must come first, so writers take a :class:`Columns` gathered by an earlier pass
over the same rows. Values are written exactly: floats as their shortest
round-tripping repr, NaN and infinities as W&B writes them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

STEP = "_step"
PARQUET_BATCH = 65_536  # rows per parquet row group; a batch is held in memory
_INT64_MAX = (1 << 63) - 1
_FLOAT_EXACT = 1 << 53  # ints beyond this lose digits as float64


class Columns:
    """The keys seen in rows, first-seen order, with the value types under each."""

    def __init__(self) -> None:
        self.types: dict[str, set[type]] = {}
        self._wide: set[str] = set()  # keys holding an int beyond +-2**53
        self._unsigned: set[str] = set()  # keys holding an int beyond int64
        self._negative: set[str] = set()  # keys holding a negative int
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        types = self.types
        for key, value in row.items():
            t = type(value)
            seen = types.get(key)
            if seen is None:
                types[key] = seen = set()
            if t not in seen:
                seen.add(t)
            if t is int:
                if value < 0:
                    self._negative.add(key)
                    if value < -_FLOAT_EXACT:
                        self._wide.add(key)
                elif value > _FLOAT_EXACT:
                    self._wide.add(key)
                    if value > _INT64_MAX:
                        self._unsigned.add(key)

    @property
    def names(self) -> list[str]:
        """``_step``, the user's keys by name, then ``_``-prefixed ones (``_runtime``,
        ``_timestamp``): the order of the daemon's HTTP CSV export."""
        return [STEP, *sorted((k for k in self.types if k != STEP), key=key_order)]

    def numeric(self, key: str) -> bool:
        """Whether every value under ``key`` is a number (ints and floats, not bools)."""
        kinds = self.types.get(key, set()) - {type(None)}
        return bool(kinds) and kinds <= {int, float}

    def kind(self, key: str) -> str:
        """The parquet column type for ``key``: exact for every value it holds.

        int64, uint64, float64 (floats, or ints that fit a double exactly), bool,
        string; anything mixed is a string column of the CSV text of each value.
        """
        if key == STEP:
            return "int64"
        kinds = self.types.get(key, set()) - {type(None)}
        if kinds == {int}:
            if key not in self._unsigned:
                return "int64"
            return "string" if key in self._negative else "uint64"
        if kinds == {float} or (kinds == {int, float} and key not in self._wide):
            return "float64"
        if kinds == {bool}:
            return "bool"
        return "string"


def key_order(key: str) -> tuple[bool, str]:
    return key.startswith("_"), key


def csv_cell(value: Any) -> str:
    """One value as CSV text: missing and None are empty; NaN, Infinity, -Infinity."""
    t = type(value)
    if t is float:
        if math.isfinite(value):
            return repr(value)
        if value != value:
            return "NaN"
        return "Infinity" if value > 0 else "-Infinity"
    if value is None:
        return ""
    if t is bool:
        return "true" if value else "false"
    return str(value)


def write_csv(out: IO[str], columns: list[str], rows: Iterable[dict[str, Any]]) -> int:
    """The header, then one line per row; the number of rows written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    n = 0
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])
        n += 1
    return n


def write_parquet(path: Path, columns: Columns, rows: Iterable[dict[str, Any]]) -> int:
    """Rows as a parquet file, a row group per ``PARQUET_BATCH`` rows; the rows written.

    Needs pyarrow; the caller imports it first, to fail before reading anything.
    """
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    arrow = {
        "int64": pa.int64(),
        "uint64": pa.uint64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "string": pa.string(),
    }
    names = columns.names
    kinds = [columns.kind(c) for c in names]
    schema = pa.schema([(c, arrow[k]) for c, k in zip(names, kinds, strict=True)])
    n = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in _batches(rows, PARQUET_BATCH):
            arrays = []
            for c, k in zip(names, kinds, strict=True):
                values = [row.get(c) for row in batch]
                if k == "string":
                    values = [None if v is None else csv_cell(v) for v in values]
                arrays.append(pa.array(values, type=arrow[k]))
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            n += len(batch)
    return n


def _batches(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
