"""SQL literals for values the daemon stores, safe inside any query.

ClickHouse 18.16 has no query parameters, so values are escaped on the client;
everything a query holds goes through here.
"""

from __future__ import annotations

import math
from typing import Any

_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\0": "\\0",
    "\b": "\\b",
    "\f": "\\f",
}


def string(text: str) -> str:
    """A single-quoted string literal: backslash escapes, UTF-8 as is."""
    return "'" + "".join(_ESCAPES.get(c, c) for c in text) + "'"


def number(value: float | int) -> str:
    """A numeric literal; NaN and the infinities as ClickHouse spells them."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return string(value)
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise TypeError(f"no SQL literal for a value of type {type(value).__name__}")
