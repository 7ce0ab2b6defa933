"""The column-wise batch checks agree with the row-by-row ones they speed up."""

from __future__ import annotations

import itertools
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stepline_daemon import summary
from stepline_daemon.batches import check_row, check_rows, chunks_of, column_chunks

GOOD = st.one_of(
    st.floats(allow_nan=True),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
)
BAD = st.one_of(
    st.lists(st.integers(), max_size=2),
    st.binary(max_size=2),
    st.dictionaries(st.text(max_size=1), st.integers(), max_size=1),
)
KEYS = st.one_of(st.sampled_from(["a", "b", "c"]), st.sampled_from(["", 5, "k" * 300]))
ROW = st.dictionaries(KEYS, st.one_of(GOOD, GOOD, GOOD, BAD), max_size=4)
# Mostly same-keyed runs, as training produces, with the odd different row.
ROWS = st.lists(
    st.one_of(ROW, st.just({"a": 1.0, "b": 2.0}), st.just({"b": 3.0, "a": math.nan})), max_size=12
)


def row_by_row(rows: list[Any]) -> tuple[int, str] | None:
    for i, r in enumerate(rows):
        why = check_row(r)
        if why:
            return i, why
    return None


@settings(max_examples=400, deadline=None)
@given(rows=st.lists(st.one_of(ROW, st.just({"a": 1.0, "b": 2.0}), st.just(5)), max_size=12) | ROWS)
def test_check_rows_matches_check_row(rows: list[Any]) -> None:
    assert check_rows(rows) == row_by_row(rows)


@settings(max_examples=300, deadline=None)
@given(rows=ROWS.filter(lambda rs: row_by_row(rs) is None))
def test_batch_stats_match_row_by_row(rows: list[dict[str, Any]]) -> None:
    one: summary.Stats = {}
    for r in rows:
        summary.update(one, r)
    batch: summary.Stats = {}
    summary.update_batch(batch, rows)
    assert set(one) == set(batch)
    for k in one:
        a, b = one[k], batch[k]
        assert math.isclose(a[summary.SUM], b[summary.SUM], rel_tol=1e-9, abs_tol=1e-6) or (
            math.isinf(a[summary.SUM]) and a[summary.SUM] == b[summary.SUM]
        )
        for field in (summary.FIRST, summary.LAST, summary.MIN, summary.MAX, summary.COUNT):
            x, y = a[field], b[field]
            assert (x == y and type(x) is type(y)) or (x != x and y != y), (k, field, x, y)


def test_chunks_follow_key_order_not_dict_order() -> None:
    rows = [{"a": 1, "b": 2}, {"b": 4, "a": 3}]
    [(start, names, cols)] = list(column_chunks(rows))
    assert start == 0 and dict(zip(names, map(list, cols), strict=True)) == {
        "a": [1, 3],
        "b": [2, 4],
    }


@settings(max_examples=200, deadline=None)
@given(
    rows=ROWS.filter(lambda rs: row_by_row(rs) is None),
    cuts=st.lists(st.integers(0, 12), max_size=4),
)
def test_folding_chunks_in_pieces_matches_one_fold(
    rows: list[dict[str, Any]], cuts: list[int]
) -> None:
    whole: summary.Stats = {}
    summary.update_batch(whole, rows)
    chunks = chunks_of(rows)
    pieces: summary.Stats = {}
    bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        summary.update_chunks(pieces, chunks, lo, hi)
    assert set(whole) == set(pieces)
    for k in whole:
        a, b = whole[k], pieces[k]
        assert math.isclose(a[summary.SUM], b[summary.SUM], rel_tol=1e-9, abs_tol=1e-6)
        for field in (summary.FIRST, summary.LAST, summary.MIN, summary.MAX, summary.COUNT):
            x, y = a[field], b[field]
            assert (x == y and type(x) is type(y)) or (x != x and y != y), (k, field, x, y)
