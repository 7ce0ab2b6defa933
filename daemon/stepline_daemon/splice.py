"""Reply frames built from stored rows without decoding them.

Rows are stored as the msgpack maps clients packed; a read that hands them
back whole splices each map into the reply with ``_step`` added as its first
key, so the daemon never decodes and re-encodes a row it only forwards.
"""

from __future__ import annotations

from typing import Any

import msgpack

from stepline import protocol
from stepline.errors import ProtocolError

# A fixmap with room for one more key, one entry larger; and the key "_step"
# followed by the uint64 marker (the step's 8 big-endian bytes follow, which
# are the stored key's last 8 bytes).
_FIXMAP_PLUS_ONE = {b: bytes((b + 1,)) for b in range(0x80, 0x8F)}
_STEP_U64 = b"\xa5_step\xcf"
_HEADER = protocol.HEADER


def _header(n: int, fix: int, wide: bytes) -> bytes:
    """A msgpack array (``fix`` 0x90) or map (0x80) header for ``n`` items;
    ``wide`` holds the 16- and 32-bit type bytes."""
    if n < 16:
        return bytes((fix | n,))
    if n < 1 << 16:
        return wide[:1] + n.to_bytes(2, "big")
    return wide[1:] + n.to_bytes(4, "big")


def _array_header(n: int) -> bytes:
    return _header(n, 0x90, b"\xdc\xdd")


def _map_header(n: int) -> bytes:
    return _header(n, 0x80, b"\xde\xdf")


def _uint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 1 << 8:
        return b"\xcc" + bytes((n,))
    if n < 1 << 16:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


_STEP_KEY = b"\xa5_step"


def step_row_parts(step: int, packed_map: bytes) -> tuple[bytes, bytes, bytes, memoryview]:
    """A stored row (a packed map) as the parts of that map with ``_step`` first.

    Lets the daemon answer a scan without decoding and re-encoding every row.
    """
    b0 = packed_map[0]
    if b0 & 0xF0 == 0x80:
        n, skip = b0 & 0x0F, 1
    elif b0 == 0xDE:
        n, skip = int.from_bytes(packed_map[1:3], "big"), 3
    elif b0 == 0xDF:
        n, skip = int.from_bytes(packed_map[1:5], "big"), 5
    else:
        raise ValueError("a stored row is not a msgpack map")
    return _map_header(n + 1), _STEP_KEY, _uint(step), memoryview(packed_map)[skip:]


def encode_rows_result(
    rid: Any, row_parts: list[Any], count: int, next_step: int | None, paged: bool = True
) -> bytes:
    """``{"op": "ok", "rid": rid, "result": {"rows": [...], "next": next_step}}``
    from rows already encoded (see :func:`step_row_parts`); without ``next``
    when not ``paged`` (a sample is one whole answer)."""
    head: bytes = msgpack.packb({"op": "ok", "rid": rid}, use_bin_type=True)
    tail = [b"\xa4next", msgpack.packb(next_step)] if paged else []
    payload = b"".join(
        [
            bytes((head[0] + 1,)),
            head[1:],
            b"\xa6result\x82\xa4rows" if paged else b"\xa6result\x81\xa4rows",
            _array_header(count),
            *row_parts,
            *tail,
        ]
    )
    if len(payload) > protocol.MAX_FRAME_SIZE:
        raise ProtocolError(
            "frame_too_large", f"reply of {len(payload)} bytes exceeds {protocol.MAX_FRAME_SIZE}"
        )
    return _HEADER.pack(len(payload)) + payload


def row_parts(items: list[tuple[bytes, bytes]]) -> list[Any]:
    """Stored (key, packed map) pairs as reply parts, ``_step`` spliced in.

    The hottest read loop: the key's own bytes become ``_step`` (msgpack uint64)
    for the usual small row, decoding nothing.
    """
    parts: list[Any] = []
    add = parts.extend
    plus_one, step_u64 = _FIXMAP_PLUS_ONE, _STEP_U64
    for key, value in items:
        b0 = value[0]
        if 0x80 <= b0 < 0x8F:  # fixmap with room for one more key
            add((plus_one[b0], step_u64, key[8:], memoryview(value)[1:]))
        else:
            add(step_row_parts(int.from_bytes(key[8:], "big"), value))
    return parts


def rows_frame(
    rid: Any, items: list[tuple[bytes, bytes]], next_step: int | None, paged: bool = True
) -> bytes:
    """The reply frame for a page (or a sample) of stored rows."""
    return encode_rows_result(rid, row_parts(items), len(items), next_step, paged)
