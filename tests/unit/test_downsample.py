"""Min/max decimation for charts (``sampling.decimate``), against its contract."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stepline_daemon.sampling import decimate
from stepline_daemon.store import Store, reads
from tests import storeops

VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
KEYS = ["a", "b", "c"]


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    steps = sorted(draw(st.sets(st.integers(0, 10_000), min_size=1, max_size=300)))
    rows = []
    for step in steps:
        row: dict[str, Any] = {"_step": step}
        for k in draw(st.lists(st.sampled_from(KEYS), min_size=1, unique=True)):
            row[k] = draw(VALUES)
        rows.append(row)
    return rows


def _numbers(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows if type(r.get(key)) in (int, float) and not math.isnan(r[key])]


@given(histories(), st.lists(st.sampled_from(KEYS), min_size=1, unique=True), st.integers(2, 80))
def test_decimate_keeps_ends_extremes_and_bound(
    rows: list[dict[str, Any]], keys: list[str], samples: int
) -> None:
    picked = decimate(rows, keys, samples)
    assert picked == sorted(set(picked)), "ascending, each row once"
    assert len(picked) <= samples
    assert picked == decimate(rows, keys, samples), "deterministic"
    if len(rows) <= samples:
        assert picked == list(range(len(rows)))
        return
    assert picked[0] == 0 and picked[-1] == len(rows) - 1, "first and last kept"
    if samples >= 2 + 2 * len(keys):
        kept = [rows[i] for i in picked]
        for k in keys:
            numbers = _numbers(rows, k)
            if numbers:
                assert min(numbers) in _numbers(kept, k), f"lost the minimum of {k}"
                assert max(numbers) in _numbers(kept, k), f"lost the maximum of {k}"


def test_a_spike_between_even_samples_survives() -> None:
    rows = [{"_step": i, "loss": 1.0} for i in range(10_000)]
    rows[4321]["loss"] = 1e9  # one step of 10,000: even spacing would skip it
    kept = [rows[i]["_step"] for i in decimate(rows, ["loss"], 100)]
    assert 4321 in kept and kept[0] == 0 and kept[-1] == 9999
    assert len(kept) <= 100


# --------------------------------------------- downsample on a real store, strided


@st.composite
def sparse_runs(draw: st.DrawFn) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """A parent's rows and a fork step; keys appear on some rows only."""
    steps = sorted(draw(st.sets(st.integers(0, 3_000), min_size=1, max_size=120)))
    rows = []
    for step in steps:
        row = {k: draw(st.floats(-5, 5)) for k in KEYS if draw(st.integers(0, 3)) == 0}
        rows.append((step, row))
    return rows, draw(st.integers(0, 3_000))


@settings(max_examples=60, deadline=None)
@given(
    run=sparse_runs(),
    keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True),
    samples=st.integers(2, 12),
    require_all=st.booleans(),
    window=st.tuples(st.integers(0, 3_000), st.none() | st.integers(0, 3_001)),
)
def test_strided_downsample_keeps_first_last_and_only_matching_rows(
    run: tuple[list[tuple[int, dict[str, Any]]], int],
    keys: list[str],
    samples: int,
    require_all: bool,
    window: tuple[int, int | None],
) -> None:
    rows, fork_at = run
    min_step, max_step = window
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        store = Store(Path(tmp) / "d", map_size=32 * 1024 * 1024)
        try:
            with store.env.begin(write=True) as txn:
                parent = storeops.init_run(store, txn, {"project": "p", "id": "a"}, "c")
                storeops.append(store, txn, parent["run_no"], rows, "c", 1)
            at = min(fork_at, rows[-1][0])
            with store.env.begin(write=True) as txn:
                child = storeops.init_run(
                    store, txn, {"project": "p", "id": "b", "fork_from": ["a", at]}, "c"
                )
                storeops.append(
                    store, txn, child["run_no"], [(at + 1 + s, r) for s, r in rows[:20]], "c", 1
                )
            view = [(s, r) for s, r in rows if s <= at] + [(at + 1 + s, r) for s, r in rows[:20]]
            want = [
                {"_step": s, **{k: r[k] for k in keys if k in r}}
                for s, r in view
                if min_step <= s
                and (max_step is None or s < max_step)
                and (all(k in r for k in keys) if require_all else any(k in r for k in keys))
            ]
            with store.env.begin() as txn:
                rec = store.find(txn, "p", "b")
                segs = storeops.segments(store, txn, rec)
                # Force the strided read (the dense one is checked by the model test).
                got = _strided_downsample(
                    store, txn, segs, keys, min_step, max_step, samples, require_all
                )
        finally:
            store.close()
    assert len(got) <= samples
    if not want:
        assert got == []
        return
    in_range = [s for s, _ in view if min_step <= s and (max_step is None or s < max_step)]
    if len(in_range) <= samples:
        assert got == want, "a range of at most `samples` rows comes back whole"
    assert got[0] == want[0] and got[-1] == want[-1], "first and last matching rows"
    it = iter(want)
    assert all(any(g == w for w in it) for g in got), "an ordered subset of the matching rows"


def _strided_downsample(*args: Any) -> list[dict[str, Any]]:
    saved = reads.READ_PER_SAMPLE
    reads.READ_PER_SAMPLE = 1  # ranges over `samples` steps count as long: strided
    try:
        return reads.downsample(*args)
    finally:
        reads.READ_PER_SAMPLE = saved
