"""A ``log`` batch, checked: shape, steps, types and the operator's limits.

Pure: no I/O. The client packs each row's values once; here they are decoded
only to be checked, then stored exactly as received. Consecutive rows of a
training run almost always share their keys, so the checks run column by
column, in a few C-level passes, and go value by value only to name a culprit.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any

import msgpack

from stepline.errors import RequestError, StepOrderError
from stepline.rows import MAX_KEY_LEN, MAX_KEYS_PER_ROW, RESERVED_KEYS, STEP_MAX

# One stored row as the store takes it: its step and its values.
StepRow = tuple[int, dict[str, Any]]


def check_row(values: Any) -> str | None:
    """Why a row received on the wire is not storable, or None if it is."""
    if not isinstance(values, dict):
        return f"row must be a map, got {type(values).__name__}"
    if len(values) > MAX_KEYS_PER_ROW + len(RESERVED_KEYS):
        return f"row has {len(values)} keys; the maximum is {MAX_KEYS_PER_ROW}"
    for key, value in values.items():
        if type(key) is not str:
            return f"row key {key!r} is {type(key).__name__}, not str"
        if len(key) > MAX_KEY_LEN or not key:
            return f"row key {key[:40]!r} is empty or longer than {MAX_KEY_LEN} characters"
        t = type(value)
        if not (t is float or t is int or t is str or t is bool or value is None):
            return f"value for {key!r} has type {t.__name__}"
    return None


def column_chunks(
    rows: Sequence[Mapping[str, Any]],
) -> Iterator[tuple[int, list[str], Iterable[Sequence[Any]]]]:
    """Split rows into runs with the same keys; yield (start index, keys, columns).

    Consecutive rows of a training run almost always share their keys, so work
    that would be a Python step per value becomes a few C-level passes per column.
    """
    i, n = 0, len(rows)
    if n > 1 and len(rows[0]) > 1:
        # The usual case, checked in C: every row has the first row's keys and no
        # other (same length, and the getter finds them all).
        names = list(rows[0])
        if len(set(map(len, rows))) == 1:
            try:
                tuples = list(map(itemgetter(*names), rows))
            except (KeyError, TypeError):
                pass
            else:
                yield 0, names, zip(*tuples, strict=True)
                return
    while i < n:
        keys = rows[i].keys()
        j = i + 1
        while j < n and rows[j].keys() == keys:
            j += 1
        names = list(keys)
        chunk = rows[i:j]
        if len(names) == 1:
            yield i, names, ([r[names[0]] for r in chunk],)
        elif names:
            yield i, names, zip(*map(itemgetter(*names), chunk), strict=True)
        i = j


# (start index, keys, one tuple of values per key) for each run of same-keyed rows.
Chunks = list[tuple[int, list[str], list[Sequence[Any]]]]


def chunks_of(rows: Sequence[Mapping[str, Any]]) -> Chunks:
    """``column_chunks`` materialised, to be checked once and folded once."""
    return [(start, names, list(cols)) for start, names, cols in column_chunks(rows)]


_SCALARS = frozenset({float, int, str, bool, type(None)})


def check_rows(rows: Sequence[Any], chunks: Chunks | None = None) -> tuple[int, str] | None:
    """``check_row`` over many decoded rows: (index, reason) of the first bad one.

    Checks each run of same-keyed rows column by column (``chunks``, if the
    caller already has them); only when that finds a problem does it go row by
    row, to name the first bad row exactly.
    """
    if not all(type(r) is dict for r in rows):
        return _first_bad(rows, 0)
    for start, names, columns in chunks if chunks is not None else column_chunks(rows):
        ok = len(names) <= MAX_KEYS_PER_ROW + len(RESERVED_KEYS) and all(
            type(k) is str and 0 < len(k) <= MAX_KEY_LEN for k in names
        )
        if ok:
            ok = all(_SCALARS.issuperset(map(type, col)) for col in columns)
        if not ok:
            return _first_bad(rows, start)
    return None


def _first_bad(rows: Sequence[Any], start: int) -> tuple[int, str] | None:
    for i in range(start, len(rows)):
        why = check_row(rows[i])
        if why:
            return i, why
    return None


def check_step(step: Any) -> str | None:
    if type(step) is not int or not 0 <= step <= STEP_MAX:
        return f"step {step!r} is not an integer in [0, 2**63)"
    return None


Checked = tuple[list[StepRow], list[bytes] | None, Chunks | None]


def check_rows_form(raw: Any, values_checked: bool = False) -> Checked:
    """Shape, types and order of a ``log`` batch; raises naming the first bad row."""
    if not isinstance(raw, list) or not raw:
        raise RequestError("log: rows must be a non-empty list of [step, {key: value}]")
    rows: list[StepRow] = []
    prev = -1
    for i, item in enumerate(raw):
        if type(item) is not list or len(item) != 2:
            raise RequestError(f"log: row {i} must be [step, {{key: value}}]")
        step = item[0]
        if type(step) is not int or not prev < step <= STEP_MAX:
            why = check_step(step)
            if why:
                raise RequestError(f"log: row {i}: {why}; the batch is refused whole")
            raise StepOrderError(
                f"log: step {step} (row {i}) does not follow step {prev}; steps must strictly "
                "increase, so the batch is refused whole"
            )
        prev = step
        rows.append((step, item[1]))
    if values_checked:
        return rows, None, None
    values, packed = _decode_values([v for _, v in rows])
    chunks = _check_values(values)
    return [(step, v) for (step, _), v in zip(rows, values, strict=True)], packed, chunks


def _check_values(values: list[Any]) -> Chunks | None:
    """Check every row's values; return them by column for the summary fold."""
    chunks = chunks_of(values) if all(type(v) is dict for v in values) else None
    bad = check_rows(values, chunks)
    if bad is not None:
        raise RequestError(f"log: row {bad[0]}: {bad[1]}; the batch is refused whole")
    return chunks


_BYTES = frozenset({bytes})
_INTS = frozenset({int})


def check_columns(steps: Any, values: Any) -> Checked:
    """A ``log`` batch sent as columns (the client's form), checked in a few C passes;
    only a failing check goes value by value to name the culprit."""
    if type(steps) is not list or type(values) is not list or not steps:
        raise RequestError("log: steps and values must be non-empty lists")
    if len(steps) != len(values):
        raise RequestError(f"log: {len(steps)} steps but {len(values)} values")
    if not (
        _INTS.issuperset(map(type, steps))
        and steps[0] >= 0
        and steps[-1] <= STEP_MAX
        and all(map(operator.lt, steps, itertools.islice(steps, 1, None)))
    ):
        # Name the first bad step, with the same words as the row form.
        check_rows_form([[step, None] for step in steps], values_checked=True)
        raise RequestError("log: steps must be strictly increasing integers in [0, 2**63)")
    decoded, packed = _decode_values(values)
    chunks = _check_values(decoded)
    return list(zip(steps, decoded, strict=True)), packed, chunks


def check_limits(
    rows: list[StepRow], packed: list[bytes] | None, max_keys: int, max_value_len: int
) -> None:
    """The operator's limits (settings), on rows that already passed the protocol's."""
    if max_keys < MAX_KEYS_PER_ROW:
        for i, (_, values) in enumerate(rows):
            if len(values) - sum(k in values for k in RESERVED_KEYS) > max_keys:
                raise RequestError(
                    f"log: row {i} has {len(values)} keys; this daemon takes at most "
                    f"{max_keys}; the batch is refused whole"
                )
    # A packed row no longer than the limit holds no string longer than it.
    if packed is not None and max(map(len, packed)) <= max_value_len:
        return
    for i, (_, values) in enumerate(rows):
        for key, value in values.items():
            if type(value) is str and len(value) > max_value_len:
                raise RequestError(
                    f"log: row {i}: value for {key!r} is {len(value)} characters; this daemon "
                    f"takes at most {max_value_len}; the batch is refused whole"
                )


def _decode_values(raw: list[Any]) -> tuple[list[Any], list[bytes] | None]:
    """Row values as maps, plus the bytes to store when every row came packed.

    Rows normally arrive as msgpack bytes, packed by the client: they are
    decoded here only to be checked, and stored exactly as received. A raw client
    may send plain maps instead; those are re-packed by the store.
    """
    if _BYTES.issuperset(map(type, raw)):
        try:
            return list(map(msgpack.unpackb, raw)), raw
        except Exception:
            pass
    values = []
    for i, v in enumerate(raw):
        if type(v) is bytes:
            try:
                v = msgpack.unpackb(v, raw=False, strict_map_key=False)
            except Exception as exc:
                raise RequestError(f"log: row {i}: values are not one msgpack map: {exc}") from None
        values.append(v)
    return values, raw if _BYTES.issuperset(map(type, raw)) else None


def check_batch(msg: dict[str, Any], max_keys: int, max_value_len: int) -> Checked:
    """A ``log`` batch in either form (columns from our client, rows from raw
    ones), with the operator's limits."""
    if "steps" in msg:
        checked = check_columns(msg["steps"], msg.get("values"))
    else:
        checked = check_rows_form(msg.get("rows"))
    check_limits(checked[0], checked[1], max_keys, max_value_len)
    return checked
