"""The rows table's encoding, pure: a row with ``_step`` first, TabSeparated
bytes, and RowBinary pages (``encode.rows_page``) decoded as users see rows."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from stepline_daemon.cluster import encode
from stepline_daemon.readmodel import select_values

_VALUES = st.one_of(
    st.floats(allow_nan=True),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.text(max_size=8),
    st.none(),
)
_ROWS = st.dictionaries(st.text(max_size=6), _VALUES, max_size=20)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(st.integers(0, 2**64 - 1), _ROWS)
def test_a_stepped_row_decodes_as_select_values_shows_it(step: int, row: dict[str, Any]) -> None:
    blob = msgpack.packb(row, use_bin_type=True)
    got = msgpack.unpackb(encode.stepped(step, blob), raw=False)
    assert _same(got, select_values(row, step, None))


@given(st.binary(max_size=64))
def test_bytes_as_a_tsv_field_hold_no_tab_or_newline_and_read_back(data: bytes) -> None:
    field = encode.tsv_bytes(data)
    assert b"\t" not in field and b"\n" not in field
    # What ClickHouse reads: an escape is a backslash and the next byte.
    out, i = bytearray(), 0
    while i < len(field):
        if field[i : i + 1] == b"\\":
            out += {b"t": b"\t", b"n": b"\n", b"\\": b"\\"}[field[i + 1 : i + 2]]
            i += 2
        else:
            out.append(field[i])
            i += 1
    assert bytes(out) == data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _answer(rows: list[tuple[int, dict[str, Any]]]) -> bytes:
    """What ClickHouse sends for ``SELECT PAGE_COLUMNS FROM (...) FORMAT RowBinary``."""
    blobs = [encode.stepped(s, msgpack.packb(r, use_bin_type=True)) for s, r in rows]
    out = _varint(len(rows)) + b"".join(struct.pack("<Q", s) for s, _ in rows)
    out += _varint(len(rows)) + b"".join(struct.pack("<Q", len(b)) for b in blobs)
    return out + _varint(sum(map(len, blobs))) + b"".join(blobs)


@given(st.dictionaries(st.integers(0, 2**64 - 1), _ROWS, max_size=40), st.randoms())
def test_a_page_decodes_in_step_order_in_whatever_order_it_came(
    by_step: dict[int, dict[str, Any]], rnd: Any
) -> None:
    rows = list(by_step.items())
    rnd.shuffle(rows)
    raw = encode.rows_page(_answer(rows))
    want = [select_values(by_step[s], s, None) for s in sorted(by_step)]
    assert raw.steps == sorted(by_step)
    assert all(_same(a, b) for a, b in zip(raw.decode(), want, strict=True))
    n = len(want) // 2
    assert all(_same(a, b) for a, b in zip(raw.head(n).decode(), want[:n], strict=True))
    odd = list(range(1, len(want), 2))
    assert all(_same(a, want[i]) for a, i in zip(raw.take(odd).decode(), odd, strict=True))
    joined = encode.RawRows.join([raw.head(n), raw.take(range(n, len(want)))])
    assert joined.steps == raw.steps and joined.blob == raw.blob


def test_a_page_decodes_in_slices_as_in_one_piece() -> None:
    rows = [(i, {"loss": i / 3, "tag": str(i)}) for i in range(3 * encode.DECODE_ROWS + 7)]
    raw = encode.rows_page(_answer(rows))
    assert raw.decode() == [select_values(r, s, None) for s, r in rows]


def test_an_empty_answer_is_no_rows() -> None:
    assert len(encode.rows_page(b"")) == 0
    assert encode.rows_page(_answer([])).decode() == []
