"""Read results as bytes for clients: JSON (W&B's NaN tokens), columns, CSV,
protocol frames. Pure, and picklable by name, so a read worker process renders
its own results and hands the daemon bytes.

A *spec* says how: ``("json",)``, ``("rows", fmt, keys)`` for history pages,
``("csv", columns, header)``, ``("frame", rid)`` for a socket reply, ``("frame_page", rid)`` for
one page of a streamed scan (the frame and the next page's step), or ``None``
for the plain result.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from stepline import protocol
from stepline.errors import ProtocolError
from stepline.export import csv_cell  # one spelling of NaN, booleans, None for every CSV
from stepline_daemon import replies, splice
from stepline_daemon.readmodel import Rows, plain

Spec = tuple[Any, ...] | None


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def to_columns(rows: list[dict[str, Any]], keys: list[str] | None) -> dict[str, list[Any]]:
    """Rows as ``{"_step": [...], key: [...]}``, None where a row lacks a key."""
    if keys is None:
        names: dict[str, None] = {}
        for row in rows:
            names.update(dict.fromkeys(row))
        keys = list(names)
    cols: dict[str, list[Any]] = {"_step": [r["_step"] for r in rows]}
    for k in keys:
        if k != "_step":
            cols[k] = [r.get(k) for r in rows]
    return cols


def csv_text(rows: list[dict[str, Any]], keys: list[str], header: bool) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    if header:
        w.writerow(["_step", *keys])
    for row in rows:
        w.writerow([row["_step"], *(csv_cell(row.get(k)) for k in keys)])
    return out.getvalue().encode()


def render(spec: Spec, result: Any) -> Any:
    """``result`` (plain data, or :class:`Rows`) as ``spec`` asks."""
    if spec is None:
        return plain(result)
    kind = spec[0]
    if kind == "frame":
        return _frame(spec[1], result)
    if kind == "frame_page":  # one page of a stream: the frame, and where the next starts
        return _frame(spec[1], result), result.next
    if kind == "json":
        return dumps(plain(result))
    rows = result.dicts() if isinstance(result, Rows) else result["rows"]
    nxt = result.next if isinstance(result, Rows) else result.get("next")
    if kind == "rows":  # a history page, as rows or as columns
        _, fmt, keys = spec
        if fmt == "columns":
            return dumps({**to_columns(rows, keys), "next": nxt})
        return dumps({"rows": rows, "next": nxt})
    if kind == "csv":
        _, columns, header = spec
        return csv_text(rows, columns, header), nxt
    raise ValueError(f"unknown render spec {spec!r}")


def _frame(rid: Any, result: Any) -> bytes:
    if isinstance(result, Rows) and result.packed is not None:
        # Stored rows spliced into the reply, never decoded here.
        try:
            return splice.rows_frame(rid, result.packed, result.next, result.paged)
        except ProtocolError as exc:  # a reply over the frame limit: say so instead
            reply = replies.error(exc, {"rid": rid})
            return protocol.encode(reply | {"code": "reply_too_large"})
    return replies.frame({"op": "ok", "rid": rid, "result": plain(result)})
