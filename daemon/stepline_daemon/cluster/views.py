"""What a cluster read asks of ClickHouse's tables, as SQL: the steps of a
view (``View``, ``where``) and the rows that qualify for its keys (``Wanted``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stepline_daemon.cluster import sql
from stepline_daemon.cluster.encode import RawRows
from stepline_daemon.describe import Span
from stepline_daemon.readmodel import select_values

# Lines of the rows table: every row once (level 0), or the ladder's rungs.
EVERY_ROW = "level = 0"


@dataclass(frozen=True)
class View:
    """A read's rows: its project, its spans (``describe.clip``ped), how many
    rows a step holds on average (a hint for how wide a window to read), and
    how many steps its spans cover up to their timelines' last steps (as the
    records tell: rows may have arrived beyond them)."""

    project: str
    spans: list[Span]
    density: float
    width: int


class Wanted:
    """Which rows qualify for a query's keys (``readmodel.select_values``), as SQL."""

    def __init__(self, keys: list[str] | None, require_all: bool) -> None:
        self.keys = keys
        self.require_all = require_all
        names = {k for k in keys or () if k != "_step"}
        # No stored row holds the key '' (the daemon refuses it; the history
        # table's whole-row lines use it), so it never qualifies a row.
        self.sql_keys = sorted(names - {""})
        self.everything = not names
        self.nothing = bool(names) and (("" in names and require_all) or not self.sql_keys)
        # A line of one wanted key does not qualify its row alone.
        self.by_each = require_all and len(self.sql_keys) > 1

    def steps(self, db: str, project: str, spans: list[Span]) -> str | None:
        """A subquery of the qualifying steps in ``spans`` (a step may come
        twice: for ``IN`` and extremes only); None: every row qualifies."""
        if self.everything:
            return None

        def holding(cond: str) -> str:
            return f"SELECT step FROM {db}.history WHERE {where(project, spans, cond)}"

        if not self.by_each:
            return holding(f"key IN ({', '.join(map(sql.string, self.sql_keys))})")
        # Steps of the first key that the others hold too: semi-joins cost far
        # less than grouping every step of the range.
        first, *rest = self.sql_keys
        out = holding(f"key = {sql.string(first)}")
        for k in rest:
            out += f" AND step IN ({holding(f'key = {sql.string(k)}')})"
        return out

    def rows(self, raw: RawRows) -> list[dict[str, Any]]:
        """Rows read, as users see them: those that qualify."""
        keys, every = self.keys, self.require_all
        if keys is None:
            return raw.decode()
        decoded = zip(raw.steps, raw.decode(), strict=True)
        return [r for s, v in decoded if (r := select_values(v, s, keys, every))]


def where(project: str, spans: list[Span], key_cond: str) -> str:
    """History lines of ``project`` under ``key_cond`` within ``spans``."""
    ranges = " OR ".join(
        f"(timeline = {tl} AND step BETWEEN {lo} AND {hi})" for tl, lo, hi in spans
    )
    return f"project = {sql.string(project)} AND {key_cond} AND ({ranges})"
