"""Export's pure parts: column discovery and types, CSV cells; the progress line."""

from __future__ import annotations

import csv
import io
import math

import pytest

from stepline.export import Columns, csv_cell, write_csv
from stepline.progress import Progress


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-(2**63), str(-(2**63))),
        (2**64 - 1, str(2**64 - 1)),
        (0.1, "0.1"),
        (-0.0, "-0.0"),
        (1e300, "1e+300"),
        (5e-324, "5e-324"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        ("a,b\n", "a,b\n"),  # the csv module quotes it
    ],
)
def test_csv_cell(value: object, text: str) -> None:
    assert csv_cell(value) == text
    if type(value) is float and math.isfinite(value):
        assert float(text) == value and math.copysign(1, float(text)) == math.copysign(1, value)


def columns(*rows: dict[str, object]) -> Columns:
    c = Columns()
    for i, r in enumerate(rows):
        c.add({"_step": i, **r})
    return c


def test_columns_in_key_order_with_wall_clock_last() -> None:
    c = columns({"b": 1, "_timestamp": 1.0, "_runtime": 0.1}, {"a": 2, "late": 3})
    assert c.names == ["_step", "a", "b", "late", "_runtime", "_timestamp"]
    assert c.rows == 2
    assert columns().names == ["_step"]


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([1, 2, None], "int64"),
        ([-(2**63), 2**63 - 1], "int64"),
        ([2**63, 1], "uint64"),
        ([2**63, -1], "string"),  # no 64-bit integer type holds both
        ([1.5, None, math.nan], "float64"),
        ([1, 2.5], "float64"),
        ([2**53 + 1, 2.5], "string"),  # a double would round the int
        ([-(2**53) - 1, 2.5], "string"),
        ([True, None], "bool"),
        ([True, 1], "string"),
        (["a", 1], "string"),
        ([None, None], "string"),
    ],
)
def test_parquet_kinds_hold_every_value_exactly(values: list[object], kind: str) -> None:
    c = columns(*({"k": v} for v in values))
    assert c.kind("k") == kind
    assert c.kind("_step") == "int64"


def test_numeric_columns() -> None:
    c = columns({"f": 1.0, "i": 1, "s": "x", "b": True}, {"f": None, "i": 2.5})
    assert [k for k in ("f", "i", "s", "b") if c.numeric(k)] == ["f", "i"]
    assert c.numeric("_step") and not c.numeric("absent")


def test_write_csv_missing_and_quoted() -> None:
    out = io.StringIO()
    rows = [{"_step": 0, "a": 1.0, "s": 'x,"y"'}, {"_step": 5, "b": None}]
    assert write_csv(out, ["_step", "a", "b", "s"], rows) == 2
    assert out.getvalue() == '_step,a,b,s\n0,1.0,,"x,""y"""\n5,,,\n'
    assert list(csv.reader(io.StringIO(out.getvalue())))[1] == ["0", "1.0", "", 'x,"y"']


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_silent_off_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(out)
    assert not p.active
    assert list(p.count(range(5000), str)) == list(range(5000))
    p.show("x")
    p.done("finished")
    assert out.getvalue() == ""
    assert not Progress(None).active


def test_progress_redraws_one_line_then_ends_it() -> None:
    out = Terminal()
    p = Progress(out)
    assert list(p.count(range(3000), lambda n: f"{n} rows")) == list(range(3000))
    # The first redraw is immediate; later ones wait for the interval.
    assert out.getvalue().startswith("\r1024 rows\x1b[K")
    assert "\n" not in out.getvalue()
    p.done("3000 rows, done")
    assert out.getvalue().endswith("\r3000 rows, done\x1b[K\n")
    p.done()
    assert out.getvalue().endswith("\r\x1b[K")
