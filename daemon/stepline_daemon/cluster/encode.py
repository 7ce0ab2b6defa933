"""History rows as ClickHouse's TabSeparated input: pure, no I/O.

TabSeparated, not JSON: it carries NaN and the infinities, which a metric may
hold and JSON may not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from stepline_daemon.cluster.schema import (
    KIND_BOOL,
    KIND_FLOAT,
    KIND_INT,
    KIND_NULL,
    KIND_STR,
    KIND_UINT,
)

_INT64_MAX = (1 << 63) - 1
_TSV_ESCAPES = str.maketrans(
    {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "\b": "\\b", "\f": "\\f"}
)


def tsv(text: str) -> str:
    return text.translate(_TSV_ESCAPES)


def _float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def value_fields(value: Any) -> tuple[int, str, str, str]:
    """(kind, f, i, s) of one stored value, as TabSeparated fields."""
    t = type(value)
    if value is None:
        return KIND_NULL, "0", "0", ""
    if t is bool:
        return KIND_BOOL, "0", "1" if value else "0", ""
    if t is float:
        return KIND_FLOAT, _float(value), "0", ""
    if t is int:
        if value > _INT64_MAX:
            return KIND_UINT, "0", "0", str(value)
        return KIND_INT, "0", str(value), ""
    if t is str:
        return KIND_STR, "0", "0", tsv(value)
    raise TypeError(f"a history value of type {t.__name__} is not stored")


def history_lines(
    project: str, timeline: str, rows: Iterable[tuple[int, Mapping[str, Any]]]
) -> Iterator[str]:
    """One TabSeparated line per (key, step) of ``rows`` ((step, values) pairs)."""
    head = f"{tsv(project)}\t{tsv(timeline)}\t"
    for step, values in rows:
        for key, value in values.items():
            kind, f, i, s = value_fields(value)
            yield f"{head}{tsv(key)}\t{step}\t{kind}\t{f}\t{i}\t{s}\n"


def decode_value(kind: int, f: float, i: int, s: str) -> Any:
    """The stored value back from its columns (``kind`` says which)."""
    if kind == KIND_NULL:
        return None
    if kind == KIND_FLOAT:
        return f
    if kind == KIND_INT:
        return i
    if kind == KIND_BOOL:
        return bool(i)
    if kind == KIND_UINT:
        return int(s)
    return s
