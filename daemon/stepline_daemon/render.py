"""Read results as bytes for clients: JSON (W&B's NaN tokens), columns, CSV,
protocol frames. Pure, and picklable by name, so a read worker process renders
its own results and hands the daemon bytes.

A *spec* says how: ``("json",)``, ``("rows", fmt, keys)`` for history pages,
``("csv", columns, header)``, ``("frame", rid)`` for a socket reply, or ``None``
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
    if spec is None:
        return result
    kind = spec[0]
    if kind == "json":
        return dumps(result)
    if kind == "rows":  # a history page, as rows or as columns
        _, fmt, keys = spec
        nxt = result.get("next")
        if fmt == "columns":
            return dumps({**to_columns(result["rows"], keys), "next": nxt})
        return dumps({"rows": result["rows"], "next": nxt})
    if kind == "csv":
        _, columns, header = spec
        return csv_text(result["rows"], columns, header), result.get("next")
    if kind == "frame":
        try:
            return protocol.encode({"op": "ok", "rid": spec[1], "result": result})
        except ProtocolError as exc:  # a reply over the frame limit: say so instead
            return protocol.encode(
                {"op": "error", "code": "reply_too_large", "message": exc.message, "rid": spec[1]}
            )
    raise ValueError(f"unknown render spec {spec!r}")
