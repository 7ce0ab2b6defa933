"""Run records and history rows as ClickHouse's TabSeparated input, and back:
pure, no I/O.

TabSeparated, not JSONEachRow: it carries NaN and the infinities, which a
metric may hold and JSON may not. Values themselves travel as Python's JSON
(``NaN``, ``Infinity``), which ``json.loads`` reads back exactly, types and all.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgpack

from stepline_daemon.cluster.schema import ROW, timeline

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
    """Lines for ``rows`` ((step, values) pairs) of timeline ``tl``: one per
    value, and one per row holding the whole row. ``root``: the root timeline
    of ``tl``'s fork tree (``tl`` itself by default)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return packed_history_lines(project, tl, ((step, pack(v)) for step, v in rows), root)


def packed_history_lines(
    project: str, tl: int, rows: Iterable[tuple[int, bytes]], root: int | None = None
) -> Iterator[str]:
    """``history_lines`` for rows as the node stores them (msgpack maps).

    The whole-row line holds those bytes (base64): a reader decodes a row with
    one msgpack call, as from the node, several times faster than JSON.
    The shipper's hot loop (every value of every row it ships): each key's
    pieces are made once, and a finite float, the usual value, is one ``repr``.
    """
    head = f"{tsv(project)}\t{tl}\t"
    tail = f"\t{tl if root is None else root}\n"
    keys: dict[str, str] = {}  # key -> the start of its lines
    row_head = f"{head}{ROW}\t"
    unpack, b64 = msgpack.unpackb, base64.b64encode
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
        yield f"{row_head}{step}\t0\t0\t{b64(blob).decode()}{tail}"


def row_of(v: str) -> dict[str, Any]:
    """A whole-row line's values (its ``v``), as the node stored them."""
    out: dict[str, Any] = msgpack.unpackb(base64.b64decode(v), raw=False)
    return out


# ------------------------------------------------------------ run records


def cluster_record(record: Mapping[str, Any], store_id: int, node: str) -> dict[str, Any]:
    """A node's run record with every run_no in it made a cluster timeline."""
    out = dict(record)
    out["run_no"] = timeline(store_id, record["run_no"])
    parent = record.get("parent")
    if parent is not None:
        out["parent"] = [timeline(store_id, parent[0]), parent[1]]
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
