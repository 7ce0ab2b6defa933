"""Reading a run's rows: walks over the segments a fork-resolved view is made of.

A view is a list of :class:`Segment` (see ``lineage.segments``); every function
here reads rows within ``[min_step, max_step)`` of it, in step order, without
copying or decoding anything it does not hand out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import lmdb

from stepline.rows import STEP_MAX
from stepline_daemon.store.layout import U64x2, hkey, hkey_step, seek_before
from stepline_daemon.store.records import Store

# (key, packed values) of one stored row; the key's last 8 bytes are the step.
Item = tuple[bytes, bytes]


@dataclass(frozen=True)
class Segment:
    """Steps ``lo..hi`` (inclusive) of run ``run_no``'s own rows."""

    run_no: int
    lo: int
    hi: int


def bounds(segs: list[Segment], min_step: int, max_step: int | None) -> list[tuple[int, int, int]]:
    """(run_no, lo, hi) of each segment clipped to ``[min_step, max_step)``."""
    hi_limit = STEP_MAX if max_step is None else max_step - 1
    out = []
    for seg in segs:
        lo, hi = max(seg.lo, min_step), min(seg.hi, hi_limit)
        if lo <= hi:
            out.append((seg.run_no, lo, hi))
    return out


def _spans(
    cur: lmdb.Cursor, segs: list[Segment], min_step: int, max_step: int | None, values: bool
) -> Iterator[tuple[Iterator[Any], bytes]]:
    """The one forward walk: per segment, the cursor placed at its first row
    (iterating (key, value) pairs, or keys alone without reading values) and
    the segment's last key. Callers stop at a key past it: raw big-endian keys
    compare in step order, nothing decoded, the per-row loop theirs."""
    for run_no, lo, hi in bounds(segs, min_step, max_step):
        if cur.set_range(hkey(run_no, lo)):
            walk: Iterator[Any] = cur.iternext(keys=True, values=values)  # type: ignore[call-overload]
            yield walk, hkey(run_no, hi)


def items(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    min_step: int = 0,
    max_step: int | None = None,
) -> Iterator[Item]:
    """(key, packed values) over the segments, in step order; max exclusive."""
    for walk, end in _spans(txn.cursor(db=store.history), segs, min_step, max_step, True):
        for item in walk:
            if item[0] > end:
                break
            yield item


def iter_rows(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    min_step: int = 0,
    max_step: int | None = None,
) -> Iterator[tuple[int, bytes]]:
    """(step, packed values) over the segments, in step order; max exclusive."""
    for key, value in items(store, txn, segs, min_step, max_step):
        yield hkey_step(key), value


def iter_keys(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    min_step: int,
    max_step: int | None,
) -> Iterator[bytes]:
    """History keys only, without reading values: for counting and sampling."""
    for walk, end in _spans(txn.cursor(db=store.history), segs, min_step, max_step, False):
        for key in walk:
            if key > end:
                break
            yield key


def iter_rows_back(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    min_step: int = 0,
    max_step: int | None = None,
) -> Iterator[tuple[int, bytes]]:
    """``iter_rows`` from the last step down."""
    cur = txn.cursor(db=store.history)
    for run_no, lo, hi in reversed(bounds(segs, min_step, max_step)):
        found = seek_before(cur, hkey(run_no, hi + 1))
        while found:
            key_run, step = U64x2.unpack(cur.key())
            if key_run != run_no or step < lo:
                break
            yield step, cast(bytes, cur.value())
            found = cur.prev()


def page(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    min_step: int,
    max_step: int | None,
    limit: int,
    max_bytes: int,
) -> tuple[list[Item], int | None]:
    """At most ``limit`` rows (fewer past ``max_bytes`` of values), as stored,
    and the step the next page starts at (None at the end)."""
    out: list[Item] = []
    add = out.append
    size = 0
    # The hottest read loop (every scan): its own loop over each span.
    for walk, end in _spans(txn.cursor(db=store.history), segs, min_step, max_step, True):
        for item in walk:
            key = item[0]
            if key > end:
                break
            if len(out) == limit or size > max_bytes:
                return out, hkey_step(key)
            size += len(item[1])
            add(item)
    return out, None


def edges(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    min_step: int,
    max_step: int | None,
) -> tuple[int, int] | None:
    """The first and last step of the view within ``[min_step, max_step)``."""
    first = next(iter_keys(store, txn, segs, min_step, max_step), None)
    if first is None:
        return None
    last, _ = next(iter_rows_back(store, txn, segs, min_step, max_step))
    return hkey_step(first), last


def sample_keys(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    min_step: int,
    max_step: int | None,
    samples: int,
) -> list[bytes] | None:
    """Keys of the rows nearest ``samples`` evenly spaced steps, first and last
    included, found by seeking: O(samples * log n), not O(n).

    None when seeking cannot stand for index sampling: fewer distinct rows came
    back than asked for, so the range may hold rows the step grid skipped.
    """
    spans = bounds(segs, min_step, max_step)
    cur = txn.cursor(db=store.history)

    def at_or_after(step: int, start: int) -> bytes | None:
        for run_no, lo, hi in spans[start:]:
            if cur.set_range(hkey(run_no, max(step, lo))):
                key = cast(bytes, cur.key())
                key_run, key_step = U64x2.unpack(key)
                if key_run == run_no and key_step <= hi:
                    return key
        return None

    def last_key() -> bytes | None:
        for run_no, lo, hi in reversed(spans):
            if seek_before(cur, hkey(run_no, hi + 1)):
                key = cast(bytes, cur.key())
                key_run, key_step = U64x2.unpack(key)
                if key_run == run_no and key_step >= lo:
                    return key
        return None

    first, last = at_or_after(0, 0), last_key()
    if first is None or last is None:
        return []
    lo_step, hi_step = hkey_step(first), hkey_step(last)
    if hi_step - lo_step + 1 <= samples:
        return None  # small enough that the range holds at most `samples` rows
    out = [first]
    seg = 0
    for i in range(1, samples - 1):
        target = lo_step + i * (hi_step - lo_step) // (samples - 1)
        while spans[seg][2] < target:
            seg += 1
        key = at_or_after(target, seg)
        if key is not None and key != out[-1] and key != last:
            out.append(key)
    out.append(last)
    return out if len(out) == samples else None
