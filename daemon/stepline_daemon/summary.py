"""Per-key running statistics, and the run summary derived from them. Pure.

A run keeps one ``Stats`` map for its own rows and one for the rows it inherits
from its fork point, so a summary never needs a history scan on read. Stats of
consecutive stretches of history merge, which is what lets a fork at the
parent's last step inherit them in O(keys).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

from stepline_daemon.batches import Chunks, chunks_of

# Per key: [first, last, min, max, sum, count]. min/max/sum/count cover finite
# non-bool numbers only; first/last cover every value.
FIRST, LAST, MIN, MAX, SUM, COUNT = range(6)
Stats = dict[str, list[Any]]

MODES = frozenset({"min", "max", "mean", "first", "last", "none"})


def _numeric(v: Any) -> bool:
    t = type(v)
    return t is int or (t is float and math.isfinite(v))


_NUMBERS = frozenset({int, float})


def update(stats: Stats, row: Mapping[str, Any]) -> None:
    for key, value in row.items():
        _update_value(stats, key, value)


def _update_value(stats: Stats, key: str, value: Any) -> None:
    s = stats.get(key)
    if s is None:
        if _numeric(value):
            # The sum is a float: int sums would outgrow what msgpack can store.
            stats[key] = [value, value, value, value, float(value), 1]
        else:
            stats[key] = [value, value, None, None, 0, 0]
        return
    s[LAST] = value
    if _numeric(value):
        if s[COUNT] == 0:
            s[MIN] = s[MAX] = value
        else:
            if value < s[MIN]:
                s[MIN] = value
            if value > s[MAX]:
                s[MAX] = value
        s[SUM] += float(value)
        s[COUNT] += 1


def update_batch(stats: Stats, rows: Sequence[Mapping[str, Any]]) -> None:
    """``update`` for many rows, column by column: an all-numeric, all-finite
    column is folded with ``min``/``max``/``sum`` in C instead of a Python step
    per value (this runs in the writer for every stored row)."""
    update_chunks(stats, chunks_of(rows), 0, len(rows))


def update_chunks(stats: Stats, chunks: Chunks, lo: int, hi: int) -> None:
    """Fold rows ``lo:hi`` of a batch, given as its column chunks, into ``stats``."""
    for start, names, columns in chunks:
        a, b = max(lo, start) - start, min(hi, start + len(columns[0])) - start
        if a >= b:
            continue
        whole = a == 0 and b == len(columns[0])
        for key, col in zip(names, columns, strict=True):
            _update_column(stats, key, col if whole else col[a:b])


def _update_column(stats: Stats, key: str, col: Sequence[Any]) -> None:
    # A finite sum means every value is finite (a NaN or an infinity would
    # propagate), so one pass checks and sums; overflow just takes the slow path.
    total = float(sum(col)) if _NUMBERS.issuperset(map(type, col)) else math.nan
    if not math.isfinite(total):
        for value in col:
            _update_value(stats, key, value)
        return
    lo, hi = min(col), max(col)
    s = stats.get(key)
    if s is None:
        stats[key] = [col[0], col[-1], lo, hi, total, len(col)]
        return
    s[LAST] = col[-1]
    if s[COUNT]:
        s[MIN] = min(s[MIN], lo)
        s[MAX] = max(s[MAX], hi)
    else:
        s[MIN], s[MAX] = lo, hi
    s[SUM] += total
    s[COUNT] += len(col)


def merge(before: Stats, after: Stats) -> Stats:
    """Stats of ``before``'s rows followed by ``after``'s rows."""
    out: Stats = {k: list(v) for k, v in before.items()}
    for key, b in after.items():
        a = out.get(key)
        if a is None:
            out[key] = list(b)
            continue
        a[LAST] = b[LAST]
        if b[COUNT]:
            if a[COUNT]:
                a[MIN] = min(a[MIN], b[MIN])
                a[MAX] = max(a[MAX], b[MAX])
            else:
                a[MIN], a[MAX] = b[MIN], b[MAX]
            a[SUM] += b[SUM]
            a[COUNT] += b[COUNT]
    return out


def mode_for(key: str, metrics: Mapping[str, str]) -> str:
    mode = metrics.get(key)
    if mode is not None:
        return mode
    for pattern, m in metrics.items():
        if ("*" in pattern or "?" in pattern) and fnmatch.fnmatchcase(key, pattern):
            return m
    return "last"


def render(
    stats: Stats, metrics: Mapping[str, str], explicit: Mapping[str, Any], last_step: int
) -> dict[str, Any]:
    """The summary users see: per-key aggregate by mode; explicit values win."""
    out: dict[str, Any] = {}
    for key, s in stats.items():
        mode = mode_for(key, metrics)
        if mode == "none":
            continue
        if mode == "last":
            out[key] = s[LAST]
        elif mode == "first":
            out[key] = s[FIRST]
        elif s[COUNT] == 0:
            continue  # min/max/mean of a key that never held a number
        elif mode == "min":
            out[key] = s[MIN]
        elif mode == "max":
            out[key] = s[MAX]
        else:
            out[key] = s[SUM] / s[COUNT]
    if last_step >= 0:
        out["_step"] = last_step
    out.update(explicit)
    return out
