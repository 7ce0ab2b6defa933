"""Inherited summary stats, read through snapshots, equal stats folded over the view."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stepline_daemon import summary
from stepline_daemon.store import Store
from tests import storeops

VALUES = st.one_of(
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6),  # bounded, so sums cannot overflow in one order only
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.sampled_from(["a", "b", None, True]),
)
ROW = st.dictionaries(st.sampled_from(["x", "y", "z"]), VALUES, min_size=1, max_size=3)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b)


@settings(max_examples=60, deadline=None)
@given(
    every=st.integers(1, 5),
    chain=st.lists(
        st.tuples(st.lists(ROW, max_size=12), st.integers(0, 40)), min_size=1, max_size=4
    ),
    data=st.data(),
)
def test_view_stats_match_a_fold(
    every: int, chain: list[tuple[list[dict[str, Any]], int]], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        store = Store(Path(tmp) / "d", map_size=32 * 1024 * 1024, snapshot_every=every)
        try:
            view: list[tuple[int, dict[str, Any]]] = []  # the naive model: copied rows
            prev: str | None = None
            for i, (rows, fork_at) in enumerate(chain):
                req: dict[str, Any] = {"project": "p", "id": f"r{i}"}
                if prev is not None:
                    last = view[-1][0] if view else -1
                    if last < 0:
                        break
                    at = min(fork_at, last)
                    req["fork_from"] = [prev, at]
                    view = [(s, r) for s, r in view if s <= at]
                with store.env.begin(write=True) as txn:
                    info = storeops.init_run(store, txn, req, "c")
                start = info["start_step"]
                batch = [(start + j, r) for j, r in enumerate(rows)]
                if batch:
                    with store.env.begin(write=True) as txn:
                        storeops.append(store, txn, info["run_no"], batch, "c", 1)
                view += batch
                prev = f"r{i}"
                with store.env.begin() as txn:
                    rec = store.find(txn, "p", prev)
                    if not view:
                        continue
                    step = data.draw(st.integers(0, view[-1][0]), label="step")
                    got = storeops.inherited_stats(store, txn, rec, step)
                want: summary.Stats = {}
                summary.update_batch(want, [r for s, r in view if s <= step])
                assert set(got) == set(want)
                for k in want:
                    g, w = got[k], want[k]
                    # Sums of segments add in another order than one fold: close, not equal.
                    g_sum, w_sum = g.pop(summary.SUM), w.pop(summary.SUM)
                    assert _same(g, w), (k, g, w)
                    assert math.isclose(g_sum, w_sum, rel_tol=1e-9, abs_tol=1e-9), (k, g_sum, w_sum)
        finally:
            store.close()
