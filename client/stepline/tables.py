"""Terminal tables: values to cells, cells to aligned lines. Pure, no I/O.

Widths are display widths (a CJK character takes two columns). When a table is
wider than the terminal, the columns the caller marks flexible (names, tags,
text) give way first, the widest of them first, down to ``MIN_WIDTH``; then the
others. A cell that no longer fits ends in an ellipsis. Tables that are
too long to hold in memory are laid out in two passes: :class:`Layout` measures
every row, then :meth:`Layout.line` formats them one at a time.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from typing import Any

ELLIPSIS = "…"
GAP = 2  # spaces between columns
MIN_WIDTH = 5  # a column is squeezed no narrower than this (if it was wider)


# ------------------------------------------------------------------ cells


def number(value: float, digits: int | None = 4) -> str:
    """A float as W&B writes its specials; ``digits`` significant digits, or exact if None."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value) if digits is None else f"{value:.{digits}g}"


def cell(value: Any, digits: int | None = 4) -> str:
    """One value as a table cell: compact floats, JSON-style ``true``/``null``, one line."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float):
        return number(value, digits)
    if isinstance(value, int):
        return str(value)
    return printable(value if isinstance(value, str) else repr(value))


def printable(text: str) -> str:
    """``text`` with control characters (newlines, tabs, escapes) shown as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def timestamp(seconds: float) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM``."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def display_width(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(_char_width(c) for c in text)


def _char_width(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def cut(text: str, width: int, ellipsis: str = ELLIPSIS) -> str:
    """``text`` if it fits in ``width`` columns, else its start and an ellipsis."""
    if display_width(text) <= width:
        return text
    room = width - display_width(ellipsis)
    if room < 0:
        return ellipsis[: max(width, 0)]
    out, used = [], 0
    for c in text:
        w = _char_width(c)
        if used + w > room:
            break
        out.append(c)
        used += w
    return "".join(out) + ellipsis


# ----------------------------------------------------------------- tables


def fit_widths(
    natural: Sequence[int],
    width: int | None,
    gap: int = GAP,
    minimum: int = MIN_WIDTH,
    flexible: Collection[int] | None = None,
) -> list[int]:
    """Column widths whose total, gaps included, fits ``width`` (None: no limit).

    The ``flexible`` columns (default: all) give way first: the widest of them
    shrink to a common cap, never below ``minimum``, and what the cap leaves
    over goes back to them, left first. If that is not enough, they stay at
    ``minimum`` and the other columns shrink the same way. If even ``minimum``
    does not fit, every wide column gets ``minimum`` and the caller cuts the line.
    """
    widths = list(natural)
    if width is None or not widths:
        return widths
    room = width - gap * (len(widths) - 1)
    first = (
        range(len(widths)) if flexible is None else [i for i in range(len(widths)) if i in flexible]
    )
    rest = [i for i in range(len(widths)) if i not in first]
    for group, others in ((first, rest), (rest, first)):
        capped = _capped([widths[i] for i in group], room - sum(widths[i] for i in others), minimum)
        if capped is not None:
            for i, w in zip(group, capped, strict=True):
                widths[i] = w
            return widths
        for i in group:
            widths[i] = min(widths[i], minimum)
    return widths


def _capped(widths: list[int], room: int, minimum: int) -> list[int] | None:
    """``widths`` capped to fill at most ``room``, or None if ``minimum`` is too much."""
    if sum(widths) <= room:
        return widths
    if not widths:
        return None

    def total(cap: int) -> int:
        return sum(min(w, cap) for w in widths)

    lo, hi = minimum, max(widths)
    if total(lo) > room:
        return None
    while lo < hi:  # the largest cap that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if total(mid) <= room else (lo, mid - 1)
    out = [min(w, lo) for w in widths]
    spare = room - sum(out)
    for i, w in enumerate(widths):
        if spare == 0:
            break
        if w > lo:
            out[i] += 1
            spare -= 1
    return out


class Layout:
    """Column widths measured over rows of cells, then lines formatted one by one."""

    def __init__(
        self,
        header: Sequence[str] | None = None,
        right: Collection[int] = (),
        natural: Sequence[int] = (),
        flexible: Collection[int] | None = None,
    ) -> None:
        """``right``: right-aligned columns; ``natural``: widths measured already (say,
        per key during a first pass); ``flexible``: the columns to shrink first."""
        self.header = list(header) if header is not None else None
        self.right = frozenset(right)
        self.flexible = None if flexible is None else frozenset(flexible)
        self.natural: list[int] = list(natural)
        if header is not None:
            self.measure(header)
        self.widths: list[int] = []
        self.width: int | None = None

    def measure(self, cells: Sequence[str]) -> None:
        natural = self.natural
        for i, c in enumerate(cells):
            w = display_width(c)
            if i >= len(natural):
                natural.append(w)
            elif w > natural[i]:
                natural[i] = w

    def fit(self, width: int | None) -> None:
        """Fix the widths for a terminal ``width`` columns wide (None: unlimited)."""
        self.width = width
        self.widths = fit_widths(self.natural, width, flexible=self.flexible)

    def line(self, cells: Sequence[str]) -> str:
        parts = []
        for i, (c, w) in enumerate(zip(cells, self.widths, strict=False)):
            text = cut(c, w)
            pad = " " * (w - display_width(text))
            parts.append(pad + text if i in self.right else text + pad)
        out = (" " * GAP).join(parts).rstrip()
        return out if self.width is None else cut(out, self.width)

    def lines(self, rows: Iterable[Sequence[str]]) -> Iterable[str]:
        if self.header is not None:
            yield self.line(self.header)
        for cells in rows:
            yield self.line(cells)


def table(
    rows: Sequence[Sequence[str]],
    header: Sequence[str] | None = None,
    width: int | None = None,
    right: Collection[int] = (),
    flexible: Collection[int] | None = None,
) -> list[str]:
    """Rows of cells as aligned lines, each at most ``width`` columns wide."""
    layout = Layout(header, right, flexible=flexible)
    for cells in rows:
        layout.measure(cells)
    layout.fit(width)
    return list(layout.lines(rows))


def pairs(items: Iterable[tuple[str, str]], width: int | None, indent: str = "") -> list[str]:
    """A two-column ``key  value`` listing (a key may repeat, or be blank to continue)."""
    room = None if width is None else width - len(indent)
    rows = [[k, v] for k, v in items]
    return [indent + line for line in table(rows, width=room, flexible={1})]
