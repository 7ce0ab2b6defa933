"""Reply frames spliced from stored rows (``stepline_daemon.splice``)."""

from __future__ import annotations

import math
import struct

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stepline import protocol
from stepline_daemon import render, splice
from stepline_daemon.readmodel import Rows


@pytest.mark.parametrize("n_keys", [0, 1, 14, 15, 16, 65534, 65535, 70_000])
@pytest.mark.parametrize("step", [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
def test_step_row_parts_splice_step_first(n_keys: int, step: int) -> None:
    values = {f"k{i}": float(i) for i in range(n_keys)}
    parts = splice.step_row_parts(step, msgpack.packb(values, use_bin_type=True))
    row = msgpack.unpackb(b"".join(parts), raw=False)
    assert row == {"_step": step, **values}
    assert next(iter(row)) == "_step"


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17])
@pytest.mark.parametrize("next_step", [None, 0, 17, 2**63 - 1])
def test_encode_rows_result_decodes_like_a_plain_reply(count: int, next_step: int | None) -> None:
    stored = [(s, {"a": s * 0.5, "nan": math.nan}) for s in range(count)]
    parts = [p for s, v in stored for p in splice.step_row_parts(s, msgpack.packb(v))]
    frame = splice.encode_rows_result(7, parts, count, next_step)
    dec = protocol.Decoder()
    dec.feed(frame)
    msg = dec.next_message()
    assert msg is not None and dec.next_message() is None
    assert msg["op"] == "ok" and msg["rid"] == 7 and msg["result"]["next"] == next_step
    rows = msg["result"]["rows"]
    assert [r["_step"] for r in rows] == list(range(count))
    assert all(r["a"] == r["_step"] * 0.5 and math.isnan(r["nan"]) for r in rows)


def test_step_row_parts_refuses_a_non_map() -> None:
    with pytest.raises(ValueError, match="not a msgpack map"):
        splice.step_row_parts(1, msgpack.packb([1, 2]))


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=20),
)
_keys = st.one_of(st.just("_step"), st.text(min_size=1, max_size=8))
_rows = st.lists(
    st.dictionaries(_keys, _values, max_size=20),
    max_size=30,
)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@example(rows=[{"_step": None}, {"a": 1.0}], first=0, paged=False)
@given(rows=_rows, first=st.integers(0, 2**63 - 100), paged=st.booleans())
def test_a_spliced_reply_decodes_to_what_the_rows_say(
    rows: list[dict[str, object]], first: int, paged: bool
) -> None:
    """The socket splices stored rows; JSON and CSV decode them: the two agree."""
    items = [
        (struct.pack(">QQ", 7, first + i), msgpack.packb(v, use_bin_type=True))
        for i, v in enumerate(rows)
    ]
    result = Rows(packed=items, next=first + len(rows) if paged else None, paged=paged)
    frame = render.render(("frame", 3), result)
    dec = protocol.Decoder()
    dec.feed(frame)
    reply = dec.next_message()
    assert reply is not None and reply["op"] == "ok" and reply["rid"] == 3
    assert _same(reply["result"], result.plain())
    # A row stored with its own "_step" (a raw client may send one) keeps it, as
    # when rows were decoded and re-encoded; every other row carries its key's step.
    want = [r.get("_step", first + i) for i, r in enumerate(rows)]
    assert _same([r["_step"] for r in reply["result"]["rows"]], want)
