"""Choosing which rows a chart shows: pure, on rows already read."""

from __future__ import annotations

from typing import Any


def decimate(rows: list[dict[str, Any]], keys: list[str], samples: int) -> list[int]:
    """Indices of at most ``samples`` rows, ascending: the first, the last, and
    per bucket of steps the rows holding each key's minimum and maximum.

    When ``samples`` cannot hold one bucket's extremes, evenly spaced rows.
    """
    if len(rows) <= samples:
        return list(range(len(rows)))
    metrics = [k for k in keys if k != "_step"] or ["_step"]
    buckets = (samples - 2) // (2 * len(metrics))
    if buckets < 1:
        return pick(len(rows), samples)
    first, width = rows[0]["_step"], rows[-1]["_step"] - rows[0]["_step"] + 1
    keep = {0, len(rows) - 1}
    # (bucket, key) -> [min value, its row, max value, its row]
    best: dict[tuple[int, str], list[Any]] = {}
    bucket_start: dict[int, int] = {}
    for i, row in enumerate(rows):
        b = (row["_step"] - first) * buckets // width
        bucket_start.setdefault(b, i)
        for k in metrics:
            v = row.get(k)
            if (type(v) is not int and type(v) is not float) or v != v:  # not NaN, not bool
                continue
            cur = best.get((b, k))
            if cur is None:
                best[(b, k)] = [v, i, v, i]
                continue
            if v < cur[0]:
                cur[0], cur[1] = v, i
            if v > cur[2]:
                cur[2], cur[3] = v, i
    picked = set()
    for (b, _), (_, lo_i, _, hi_i) in best.items():
        keep.update((lo_i, hi_i))
        picked.add(b)
    # A bucket with nothing numeric (strings, NaN) still shows up once.
    keep.update(i for b, i in bucket_start.items() if b not in picked)
    return sorted(keep)


def pick(n: int, samples: int) -> list[int]:
    if n <= samples:
        return list(range(n))
    # Evenly spaced indices from 0 to n-1 inclusive; integer arithmetic keeps it
    # deterministic across machines.
    return [i * (n - 1) // (samples - 1) for i in range(samples)]
