"""The pure terminal formatting: cells, widths, tables, the fork tree."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepline import tables, tree
from stepline.tables import cell, cut, display_width, fit_widths, table

# ------------------------------------------------------------------ cells


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (1 / 3, 4, "0.3333"),
        (1 / 3, 6, "0.333333"),
        (123456.0, 4, "1.235e+05"),
        (2.0, 4, "2"),
        (-0.0, 4, "-0"),
        (3e-4, None, "0.0003"),
        (0.1 + 0.2, None, "0.30000000000000004"),  # exact: repr
        (math.nan, 4, "NaN"),
        (math.inf, None, "Infinity"),
        (-math.inf, 6, "-Infinity"),
        (12345678901, 4, "12345678901"),  # ints are never rounded
        (True, 4, "true"),
        (False, 4, "false"),
        (None, 4, "null"),
        ("plain", 4, "plain"),
        ("two\nlines\tand\x1b", 4, "two\\nlines\\tand\\x1b"),
        ([0.9, 0.99], 4, "[0.9, 0.99]"),
    ],
)
def test_cell(value: object, digits: int | None, text: str) -> None:
    assert cell(value, digits) == text


def test_timestamp_is_local_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30, to see the minutes move
    time.tzset()
    try:
        assert tables.timestamp(0.0) == "1970-01-01 05:30"
        assert tables.timestamp(1_700_000_059.9) == "2023-11-15 03:44"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_display_width_counts_wide_and_combining_characters() -> None:
    assert display_width("abc") == 3
    assert display_width("漢字") == 4
    assert display_width("e\u0301") == 1  # e + combining acute
    assert display_width("") == 0


@pytest.mark.parametrize(
    ("text", "width", "out"),
    [
        ("hello", 5, "hello"),
        ("hello", 4, "hel…"),
        ("hello", 1, "…"),
        ("hello", 0, ""),
        ("漢字漢字", 5, "漢字…"),  # a wide character never straddles the edge
        ("漢字漢字", 4, "漢…"),
    ],
)
def test_cut(text: str, width: int, out: str) -> None:
    assert cut(text, width) == out
    assert display_width(cut(text, width)) <= width


# ----------------------------------------------------------------- widths


def test_fit_widths_leaves_a_fitting_table_alone() -> None:
    assert fit_widths([3, 10, 4], None) == [3, 10, 4]
    assert fit_widths([3, 10, 4], 21) == [3, 10, 4]  # 17 + two gaps of 2


def test_fit_widths_shrinks_the_widest_first() -> None:
    # 40 wide, 3 gaps: 34 for [2, 30, 8, 20]; cap 12 gives 2+12+8+12 = 34.
    assert fit_widths([2, 30, 8, 20], 40) == [2, 12, 8, 12]
    # Leftover from the cap goes to capped columns, left first: room 35.
    assert fit_widths([2, 30, 8, 20], 41) == [2, 13, 8, 12]


def test_fit_widths_shrinks_flexible_columns_first() -> None:
    # Room 36: the other columns (8 and 20) stay whole.
    assert fit_widths([2, 30, 8, 20], 42, flexible={1}) == [2, 6, 8, 20]
    # Room 34 would leave the flexible one 4: it stops at 5, and the others give one.
    assert fit_widths([2, 30, 8, 20], 40, flexible={1}) == [2, 5, 8, 19]
    # Too little for the flexible ones at the minimum: they take it, the rest shrink.
    assert fit_widths([2, 30, 8, 20], 30, flexible={1}) == [2, 5, 8, 9]


def test_fit_widths_never_goes_below_the_minimum() -> None:
    assert fit_widths([3, 30, 30], 10) == [3, 5, 5]


@given(
    st.lists(st.integers(0, 60), min_size=1, max_size=12),
    st.integers(1, 200),
    st.one_of(st.none(), st.sets(st.integers(0, 11))),
)
def test_fit_widths_properties(natural: list[int], width: int, flexible: set[int] | None) -> None:
    out = fit_widths(natural, width, flexible=flexible)
    assert len(out) == len(natural)
    assert all(o <= n for o, n in zip(out, natural, strict=True))
    assert all(o >= min(n, tables.MIN_WIDTH) for o, n in zip(out, natural, strict=True))
    gaps = tables.GAP * (len(natural) - 1)
    if sum(min(n, tables.MIN_WIDTH) for n in natural) + gaps <= width:
        assert sum(out) + gaps <= width
    if sum(natural) + gaps <= width:
        assert out == natural


# ----------------------------------------------------------------- tables


def test_table_aligns_and_right_aligns() -> None:
    lines = table(
        [["a", "1"], ["longer", "12345"]],
        header=["NAME", "N"],
        right={1},
    )
    assert lines == [
        "NAME        N",
        "a           1",
        "longer  12345",
    ]


def test_table_strips_trailing_space_and_cuts_to_width() -> None:
    rows = [["x", "a very long value indeed"], ["yy", ""]]
    assert table(rows) == ["x   a very long value indeed", "yy"]
    assert table(rows, width=14) == ["x   a very lo…", "yy"]


def test_table_lines_fit_even_when_columns_cannot() -> None:
    lines = table([["a" * 20] * 10], width=30)
    assert lines == [cut("  ".join(["a" * 4 + "…"] * 10), 30)]
    assert display_width(lines[0]) == 30


def test_table_counts_wide_characters_as_two_columns() -> None:
    assert table([["漢字", "x"], ["ab", "y"]]) == ["漢字  x", "ab    y"]


@given(
    st.lists(st.lists(st.text(max_size=30), min_size=3, max_size=3), min_size=1, max_size=8),
    st.integers(12, 120),
)
def test_every_line_fits(rows: list[list[str]], width: int) -> None:
    rows = [[tables.printable(c) for c in r] for r in rows]
    for line in table(rows, header=["A", "B", "C"], width=width):
        assert display_width(line) <= width


def test_layout_takes_widths_measured_elsewhere() -> None:
    layout = tables.Layout(["k", "v"], right={1}, natural=[5, 3])
    layout.fit(None)
    assert layout.line(["ab", "1"]) == "ab       1"
    assert list(layout.lines([["x", "22"]])) == ["k        v", "x       22"]


def test_pairs_indents_and_continues() -> None:
    out = tables.pairs([("config", "a"), ("", "b"), ("longer", "c")], None, indent="  ")
    assert out == ["  config  a", "          b", "  longer  c"]


# ------------------------------------------------------------------- tree


def node(id: str, run_no: int, state: str, last: int, step: int | None = None) -> tree.Node:
    return tree.Node(id, run_no, state, last, step)


def test_tree_draw() -> None:
    root = node("root", 1, "archived", 99)
    child = node("child", 2, "finished", 59, 39)
    child.children = [node("grand", 3, "crashed", 54, 49), node("g2", 5, "running", -1, 50)]
    root.children = [child, node("root", 4, "finished", 60, 49)]
    assert tree.draw(root, mark=3) == [
        "root (archived by rewind, last step 99)",
        "├── child @39 (finished, last step 59)",
        "│   ├── grand @49 (crashed, last step 54) *",
        "│   └── g2 @50 (running, no steps)",
        "└── root @49 (finished, last step 60)",
    ]
    assert tree.draw(node("solo", 7, "finished", 0), mark=7) == ["solo (finished, last step 0) *"]


def test_tree_draw_deep_chains_without_recursion() -> None:
    root = n = node("r0", 0, "finished", 10)
    for i in range(1, 3000):
        n.children = [node(f"r{i}", i, "finished", 10, i)]
        n = n.children[0]
    lines = tree.draw(root)
    assert len(lines) == 3000
    assert lines[-1] == "    " * 2998 + "└── r2999 @2999 (finished, last step 10)"
