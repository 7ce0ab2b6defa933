"""Min/max decimation for charts (``queries.decimate``), against its contract."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stepline_daemon.queries import decimate

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
