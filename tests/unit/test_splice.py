"""Reply frames spliced from stored rows (``stepline_daemon.splice``)."""

from __future__ import annotations

import math

import msgpack
import pytest

from stepline import protocol
from stepline_daemon import splice


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
