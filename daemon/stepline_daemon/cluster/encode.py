"""Run records and history rows as ClickHouse's TabSeparated input, and back:
pure, no I/O.

TabSeparated, not JSONEachRow: it carries NaN and the infinities, which a
metric may hold and JSON may not, and raw bytes. Single values travel as
Python's JSON (``NaN``, ``Infinity``), which ``json.loads`` reads back exactly,
types and all; whole rows as msgpack, read back as RowBinary (``rows_page``).
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from stepline_daemon.cluster.schema import level_of, timeline

_TSV_ESCAPES = str.maketrans(
    {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "\b": "\\b", "\f": "\\f"}
)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def tsv(text: str) -> str:
    return text.translate(_TSV_ESCAPES)


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def value_json(value: Any) -> str:
    """One stored value as JSON text that ``json.loads`` turns back into it."""
    t = type(value)
    if t is float:
        return repr(value) if math.isfinite(value) else _dumps(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if value is None:
        return "null"
    if t is str:
        return _dumps(value)
    raise TypeError(f"a history value of type {t.__name__} is not stored")


def history_lines(
    project: str, tl: int, rows: Iterable[tuple[int, Mapping[str, Any]]], root: int | None = None
) -> Iterator[str]:
    """The history table's lines for ``rows`` ((step, values) pairs) of
    timeline ``tl``: one per value. ``root``: the root timeline of ``tl``'s
    fork tree (``tl`` itself by default)."""
    return packed_history_lines(project, tl, packed(rows), root)


def row_lines(
    project: str, tl: int, rows: Iterable[tuple[int, Mapping[str, Any]]], root: int | None = None
) -> Iterator[bytes]:
    """The rows table's lines for ``rows`` ((step, values) pairs), as ``history_lines``."""
    return packed_row_lines(project, tl, packed(rows), root)


def packed(rows: Iterable[tuple[int, Mapping[str, Any]]]) -> Iterator[tuple[int, bytes]]:
    """(step, values) pairs as the node stores them: (step, msgpack map)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return ((step, pack(v)) for step, v in rows)


def packed_history_lines(
    project: str, tl: int, rows: Iterable[tuple[int, bytes]], root: int | None = None
) -> Iterator[str]:
    """``history_lines`` for rows as the node stores them (msgpack maps).

    The shipper's hot loop (every value of every row it ships): each key's
    pieces are made once, and a finite float, the usual value, is one ``repr``.
    """
    head = f"{tsv(project)}\t{tl}\t"
    tail = f"\t{tl if root is None else root}\n"
    keys: dict[str, str] = {}  # key -> the start of its lines
    unpack = msgpack.unpackb
    for step, blob in rows:
        at = f"\t{step}\t"
        for key, value in unpack(blob).items():
            start = keys.get(key)
            if start is None:
                start = keys[key] = head + tsv(key)
            t = type(value)
            if t is float and value - value == 0:  # finite (NaN and infinities are not)
                text = repr(value)
                yield f"{start}{at}1\t{text}\t{text}{tail}"
            elif t is float or t is int:
                yield f"{start}{at}1\t{_number(float(value))}\t{value_json(value)}{tail}"
            else:
                yield f"{start}{at}0\t0\t{tsv(value_json(value))}{tail}"


def packed_row_lines(
    project: str, tl: int, rows: Iterable[tuple[int, bytes]], root: int | None = None
) -> Iterator[bytes]:
    """The rows table's lines for rows as the node stores them: per row one at
    level 0, and one more on the ladder when its step has a level there."""
    head = f"{tsv(project)}\t{tl}\t".encode()
    tail = f"\t{tl if root is None else root}\n".encode()
    for step, blob in rows:
        v = tsv_bytes(stepped(step, blob))
        yield b"%s0\t%d\t%s%s" % (head, step, v, tail)
        level = level_of(step)
        if level:
            yield b"%s%d\t%d\t%s%s" % (head, level, step, v, tail)


def tsv_bytes(data: bytes) -> bytes:
    """Raw bytes as a TabSeparated field: ClickHouse takes every other byte as it is."""
    return data.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")


_STEP_KEY = msgpack.packb("_step")


def stepped(step: int, blob: bytes) -> bytes:
    """A stored row (a msgpack map) with ``_step`` first: decoded, it is the row
    as users see it (``readmodel.select_values`` with no keys), a row's own
    ``_step`` (later in the map) winning as it does there."""
    head = blob[0]
    if head & 0xF0 == 0x80:
        n, body = head & 0x0F, blob[1:]
    elif head == 0xDE:
        n, body = int.from_bytes(blob[1:3], "big"), blob[3:]
    elif head == 0xDF:
        n, body = int.from_bytes(blob[1:5], "big"), blob[5:]
    else:
        raise ValueError(f"a stored row is a msgpack map, not one starting {head:#x}")
    n += 1
    if n < 16:
        size = bytes((0x80 | n,))
    elif n < 1 << 16:
        size = b"\xde" + n.to_bytes(2, "big")
    else:
        size = b"\xdf" + n.to_bytes(4, "big")
    return size + _STEP_KEY + msgpack.packb(step) + body


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A LEB128 number (RowBinary's lengths) at ``pos``, and the position after it."""
    out = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        out |= (byte & 0x7F) << shift
        if byte < 0x80:
            return out, pos
        shift += 7


def _uint64s(data: bytes, pos: int) -> tuple[list[int], int]:
    """A RowBinary Array(UInt64) at ``pos``, and the position after it."""
    n, pos = _varint(data, pos)
    out = array("Q")
    out.frombytes(data[pos : pos + 8 * n])
    if sys.byteorder == "big":
        out.byteswap()  # RowBinary is little-endian
    return out.tolist(), pos + 8 * n


# What ``rows_page`` reads: rows of a subquery with ``step`` and ``v`` columns.
PAGE_COLUMNS = "groupArray(step), groupArray(length(v)), arrayStringConcat(groupArray(v))"


DECODE_ROWS = 1000


@dataclass(frozen=True)
class RawRows:
    """Rows read from the rows table, in step order, not decoded yet: their
    steps, the size of each one's msgpack map, and the maps back to back. One
    msgpack call decodes them all, at C speed, when (and where) they are used:
    a reader finds where a page ends from the steps alone."""

    steps: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    blob: bytes = b""

    def __len__(self) -> int:
        return len(self.steps)

    def decode(self) -> list[dict[str, Any]]:
        """Each row as users see it (``_step`` first).

        In slices of DECODE_ROWS: one msgpack call holds the GIL throughout,
        and between slices a scan's read-ahead thread gets to take its reply.
        """
        out: list[dict[str, Any]] = []
        if not self.steps:
            return out
        ends = list(itertools.accumulate(self.sizes))
        start = 0
        for i in range(0, len(ends), DECODE_ROWS):
            end = ends[min(i + DECODE_ROWS, len(ends)) - 1]
            count = min(DECODE_ROWS, len(ends) - i)
            head = b"\xdd" + count.to_bytes(4, "big")
            out += msgpack.unpackb(head + self.blob[start:end], raw=False)
            start = end
        return out

    def take(self, indices: Iterable[int]) -> RawRows:
        """The rows at ``indices`` (ascending)."""
        starts = [0, *itertools.accumulate(self.sizes)]
        picked = list(indices)
        return RawRows(
            [self.steps[i] for i in picked],
            [self.sizes[i] for i in picked],
            b"".join(self.blob[starts[i] : starts[i + 1]] for i in picked),
        )

    def head(self, n: int) -> RawRows:
        """The first ``n`` rows."""
        return RawRows(self.steps[:n], self.sizes[:n], self.blob[: sum(self.sizes[:n])])

    @staticmethod
    def join(parts: Iterable[RawRows]) -> RawRows:
        """Parts in step order, one after another."""
        parts = list(parts)
        if len(parts) == 1:
            return parts[0]
        return RawRows(
            [s for p in parts for s in p.steps],
            [n for p in parts for n in p.sizes],
            b"".join(p.blob for p in parts),
        )


def rows_page(data: bytes) -> RawRows:
    """The rows of a RowBinary answer of ``SELECT PAGE_COLUMNS FROM (...)``."""
    if not data:
        return RawRows()
    steps, pos = _uint64s(data, 0)
    sizes, pos = _uint64s(data, pos)
    size, pos = _varint(data, pos)
    raw = RawRows(steps, sizes, data[pos : pos + size])
    if steps != sorted(steps):
        # groupArray keeps its sorted subquery's order in practice; should it
        # not, the three arrays still agree with one another.
        raw = raw.take(sorted(range(len(steps)), key=steps.__getitem__))
    return raw


# ------------------------------------------------------------ run records


def cluster_record(record: Mapping[str, Any], store_id: int, node: str) -> dict[str, Any]:
    """A node's run record with every run_no in it made a cluster timeline."""
    out = dict(record)
    out["run_no"] = timeline(store_id, record["run_no"])
    parent = record.get("parent")
    if parent is not None:
        out["parent"] = [timeline(store_id, parent[0]), parent[1]]
    origin = record.get("origin")
    if origin is not None:  # continues a timeline of another node: already a cluster one
        out["parent"] = [origin["timeline"], origin["step"]]
    if record.get("archived_by") is not None:
        out["archived_by"] = timeline(store_id, record["archived_by"])
    out["node"] = node
    return out


def runs_line(
    project: str,
    tl: int,
    record: Mapping[str, Any] | None,
    node: str,
    current: bool,
    version: int,
    root: int | None = None,
) -> str:
    """The runs table's line for one timeline; ``record`` None: purged.
    ``root``: the root timeline of its fork tree (``tl`` itself by default)."""
    root = tl if root is None else root
    if record is None:
        return f"{tsv(project)}\t{tl}\t\t{tsv(node)}\t0\t2\t0\t\t{version}\t{root}\n"
    blob = base64.b64encode(msgpack.packb(record, use_bin_type=True)).decode()
    deleted = 1 if record.get("deleted") else 0
    return (
        f"{tsv(project)}\t{tl}\t{tsv(record['id'])}\t{tsv(node)}\t{int(current)}\t{deleted}\t"
        f"{_number(float(record['updated']))}\t{blob}\t{version}\t{root}\n"
    )


def record_of(blob: str) -> dict[str, Any]:
    out: dict[str, Any] = msgpack.unpackb(base64.b64decode(blob), raw=False)
    return out
