"""Downsampling a view of the cluster store in SQL: ``ClusterReads.sample``.

Never all the rows pulled to sample them. A keyless downsample of a long view
reads the rows table's ladder (``schema.ROWS``); a short one picks the first
row of even buckets of steps. A keyed one finds each key's extremes per bucket
in the narrow history lines and makes the rows it keeps from them, as
``sampling.decimate`` does over rows read; a range of at most EXACT_PER_SAMPLE
rows a sample is read whole and decimated, exactly as LmdbReads answers.
"""

from __future__ import annotations

import bisect
import json
from typing import Any, Protocol

from stepline_daemon import describe
from stepline_daemon.cluster import sql
from stepline_daemon.cluster.encode import RawRows
from stepline_daemon.cluster.schema import LADDER_MIN, LADDER_TOP
from stepline_daemon.cluster.views import EVERY_ROW, View, Wanted, where
from stepline_daemon.describe import Span
from stepline_daemon.readmodel import select_values
from stepline_daemon.sampling import decimate

# A keyed downsample of a range of at most this many rows per sample is exact:
# every row read and decimated, as LmdbReads does below its own READ_PER_SAMPLE.
EXACT_PER_SAMPLE = 4
# Steps per ``step IN (...)`` list: far inside 18.16's 256 KiB max_query_size.
STEPS_PER_QUERY = 8000
# A keyless downsample reads the ladder when its view spans this many steps per
# sample or more, and from its rungs about this many rows per sample: enough
# that the rows it keeps lie near even steps.
LADDER_SPAN = 1 << (LADDER_MIN + 1)
LADDER_PER_SAMPLE = 2
INT64_LIMIT = 1 << 63


class Source(Protocol):
    """What a downsample reads through: ``ClusterReads``."""

    db: str

    def query(self, text: str) -> list[list[str]]: ...

    def lines(self, subquery: str) -> RawRows: ...

    def fetch(
        self, project: str, spans: list[Span], wanted: Wanted, limit: int = 0, extra: str = ""
    ) -> RawRows: ...

    def qualifying(self, project: str, spans: list[Span], wanted: Wanted) -> str: ...


def bucket(first: int, width: int, buckets: int) -> str:
    """``sampling.decimate``'s bucket of a step, in SQL: exact in Int64, or
    (a range too wide for that) by a stride, which makes no more buckets."""
    if (width - 1) * buckets < INT64_LIMIT:
        return f"intDiv((step - {first}) * {buckets}, {width})"
    return f"intDiv(step - {first}, {-(-width // buckets)})"


class Downsample:
    """Downsamples through one ``ClusterReads``."""

    def __init__(self, reads: Source) -> None:
        self.reads = reads

    def rows(self, view: View, wanted: Wanted, samples: int) -> list[dict[str, Any]]:
        """At most ``samples`` of ``view``'s rows that qualify, as users see them."""
        project, spans = view.project, view.spans
        if wanted.keys is None and samples > 3 and view.width >= LADDER_SPAN * samples:
            laddered = self._ladder(view, samples)
            if laddered is not None:
                return wanted.rows(laddered)
        if wanted.keys is None:
            n, lo, hi = self._extent(project, spans, samples)
            if n <= samples:  # all of them: what LmdbReads returns too
                lines = self.reads.fetch(project, spans, wanted)
            else:
                every = self.reads.qualifying(project, spans, wanted)
                lines = self._evenly(project, spans, every, lo, hi, samples)
            return wanted.rows(lines)
        budget = samples * EXACT_PER_SAMPLE
        # More rows than the budget span more steps too (a step holds one row).
        if self._count(project, spans, budget) <= budget:
            # Few enough to read whole: exactly LmdbReads' answer.
            rows = wanted.rows(self.reads.fetch(project, spans, wanted))
        else:
            rows = self._extremes(project, spans, wanted, samples)
        if len(rows) > samples:
            rows = [rows[i] for i in decimate(rows, wanted.keys, samples)]
        return rows

    def _ladder(self, view: View, samples: int) -> RawRows | None:
        """At most ``samples`` rows of a long view: its first and last, and
        between them rows spread evenly over the ladder's rungs at a stride of
        steps that gives about LADDER_PER_SAMPLE rows per sample (contiguous
        lines, where evenly spaced single rows would each cost a compressed
        block). None: the ladder holds too few of the view's rows (steps that
        miss its strides): the caller picks from every row instead."""
        project, spans, db = view.project, view.spans, self.reads.db
        levels = self.reads.query(
            f"SELECT level, count(), min(step), max(step) FROM {db}.rows "
            f"WHERE {where(project, spans, f'level >= {LADDER_MIN}')} GROUP BY level"
        )
        # Rows per level (each step once, duplicates aside), from the top down.
        counts = sorted(((int(lv), int(n), int(a), int(b)) for lv, n, a, b in levels), reverse=True)
        total = sum(n for _, n, _, _ in counts)
        if total < samples:
            return None
        level, held, first, last = LADDER_TOP, 0, None, None
        for rung, n, a, b in counts:
            level, held = rung, held + n
            first = a if first is None else min(first, a)
            last = b if last is None else max(last, b)
            if held >= LADDER_PER_SAMPLE * samples:
                break
        assert first is not None and last is not None
        start, end = spans[0][1], spans[-1][2]
        rungs = (
            f"SELECT step, v FROM {db}.rows WHERE {where(project, spans, f'level >= {level}')} "
            "ORDER BY step LIMIT 1 BY step"
        )
        # The view's first and last rows lie before the first rung and after the
        # last: short ranges of every row.
        head = where(project, describe.clip(spans, start, first + 1), EVERY_ROW)
        foot = where(project, describe.clip(spans, last, end + 1), EVERY_ROW)
        ends = (
            f"SELECT step, v FROM {db}.rows WHERE {head} ORDER BY step LIMIT 1",
            f"SELECT step, v FROM {db}.rows WHERE {foot} ORDER BY step DESC LIMIT 1",
        )
        got = self.reads.lines(
            f"SELECT step, v FROM ({rungs}) UNION ALL SELECT step, v FROM ({ends[0]}) "
            f"UNION ALL SELECT step, v FROM ({ends[1]})"
        )
        # The ends may be rungs too: each step once.
        firsts: dict[int, int] = {}
        for i, step in enumerate(got.steps):
            firsts.setdefault(step, i)
        ordered = [firsts[s] for s in sorted(firsts)]
        if len(ordered) <= 2:
            return got.take(ordered)
        inner = [got.steps[i] for i in ordered[1:-1]]
        lo, hi = got.steps[ordered[0]], got.steps[ordered[-1]]
        chosen = set()
        for i in range(1, samples - 1):  # the rung nearest each even step between
            target = lo + (hi - lo) * i // (samples - 1)
            j = bisect.bisect_left(inner, target)
            if j == len(inner) or (j > 0 and target - inner[j - 1] <= inner[j] - target):
                j -= 1
            if j >= 0:
                chosen.add(j)
        return got.take([ordered[0], *(ordered[j + 1] for j in sorted(chosen)), ordered[-1]])

    def _extent(self, project: str, spans: list[Span], cap: int) -> tuple[int, int, int]:
        """How many rows ``spans`` hold (as ``_count``), and their first and
        last step (0 and 0 when none)."""
        cond = where(project, spans, EVERY_ROW)
        rows = self.reads.query(
            f"SELECT ({self._counting(cond, cap)}), min(step), max(step) "
            f"FROM {self.reads.db}.rows WHERE {cond}"
        )
        n, lo, hi = rows[0]
        return int(n), int(lo), int(hi)

    def _count(self, project: str, spans: list[Span], cap: int) -> int:
        """How many rows ``spans`` hold, counted up to ``cap + 1``."""
        return int(self.reads.query(self._counting(where(project, spans, EVERY_ROW), cap))[0][0])

    def _counting(self, where: str, cap: int) -> str:
        # A DISTINCT with a LIMIT stops reading at the limit.
        return (
            f"SELECT count() FROM (SELECT DISTINCT step FROM {self.reads.db}.rows WHERE {where} "
            f"LIMIT {cap + 1})"
        )

    def _evenly(
        self, project: str, spans: list[Span], steps: str, lo: int, hi: int, samples: int
    ) -> RawRows:
        """Rows at most ``samples``: the first of each of ``samples - 1`` even
        buckets of ``steps`` (a subquery) from ``lo`` to ``hi``, and the last."""
        by = bucket(lo, hi - lo + 1, samples - 1)
        firsts = f"SELECT min(step) FROM ({steps}) GROUP BY {by}"
        extra = f"(step IN ({firsts}) OR step = {hi})"
        return self.reads.fetch(project, spans, Wanted(None, True), extra=extra)

    def _extremes(
        self, project: str, spans: list[Span], wanted: Wanted, samples: int
    ) -> list[dict[str, Any]]:
        """``sampling.decimate`` of the qualifying rows, in SQL: the first and
        the last, and per bucket of steps each key's minimum and maximum, or
        the bucket's first row when it holds nothing numeric."""
        steps = self.reads.qualifying(project, spans, wanted)
        rows = self.reads.query(f"SELECT count(), min(step), max(step) FROM ({steps})")
        if rows[0][0] == "0":
            return []
        a, b = int(rows[0][1]), int(rows[0][2])
        metrics = [k for k in wanted.keys or () if k != "_step"] or ["_step"]
        buckets = (samples - 2) // (2 * len(metrics))
        if buckets < 1:
            return wanted.rows(self._evenly(project, spans, steps, a, b, samples))
        picks = self._picks(project, describe.clip(spans, a, b + 1), wanted, metrics, buckets)
        return self._keyed(project, spans, wanted, sorted(picks))

    def _keyed(
        self, project: str, spans: list[Span], wanted: Wanted, steps: list[int]
    ) -> list[dict[str, Any]]:
        """The rows at ``steps`` (qualifying ones) with the wanted keys only, as
        users see them, made from the narrow lines: the picks of a downsample
        lie all over a run, and a whole row costs its granule of whole rows."""
        values: dict[int, dict[str, Any]] = {}
        if not wanted.sql_keys:  # ``_step`` alone: every row qualifies, nothing to read
            values = {s: {} for s in steps}
        keys = ", ".join(map(sql.string, wanted.sql_keys))
        for i in range(0, len(steps) if wanted.sql_keys else 0, STEPS_PER_QUERY):
            chunk = steps[i : i + STEPS_PER_QUERY]
            part = describe.clip(spans, chunk[0], chunk[-1] + 1)
            cond = f"key IN ({keys}) AND step IN ({', '.join(map(str, chunk))})"
            for step, key, v in self.reads.query(
                f"SELECT step, key, v FROM {self.reads.db}.history WHERE {where(project, part, cond)} "
                "LIMIT 1 BY step, key"
            ):
                values.setdefault(int(step), {})[key] = json.loads(v)
        keys_, every = wanted.keys, wanted.require_all
        return [r for s in sorted(values) if (r := select_values(values[s], s, keys_, every))]

    def _picks(
        self, project: str, within: list[Span], wanted: Wanted, metrics: list[str], buckets: int
    ) -> set[int]:
        """The steps ``_extremes`` keeps, from one aggregate query; ``within``:
        the spans from the first qualifying step to the last."""
        a, b = within[0][1], within[-1][2]
        by = bucket(a, b - a + 1, buckets)
        numeric = sorted({k for k in metrics if k not in ("_step", "")})
        if numeric and not wanted.by_each:
            return self._picks_in_one_pass(project, within, numeric, by) | {a, b}
        steps = self.reads.qualifying(project, within, wanted)
        parts = [
            f"SELECT 0 AS kind, {by} AS b, '' AS k, min(step), max(step) FROM ({steps}) GROUP BY b"
        ]
        if numeric:
            cond = f"key IN ({', '.join(map(sql.string, numeric))}) AND num = 1 AND NOT isNaN(f)"
            qualified = f" AND step IN ({steps})" if wanted.by_each else ""
            parts.append(
                f"SELECT 1 AS kind, {by} AS b, key AS k, argMin(step, f), argMax(step, f) "
                f"FROM {self.reads.db}.history WHERE {where(project, within, cond)}{qualified} "
                "GROUP BY b, k"
            )
        picks, firsts, numeric_buckets = {a, b}, {}, set()
        for kind, bk, _, s0, s1 in self.reads.query(" UNION ALL ".join(parts)):
            if kind == "0":
                firsts[bk] = int(s0)
                if metrics != ["_step"]:
                    continue  # the bucket's first row, kept if nothing numeric
            picks.update((int(s0), int(s1)))
            numeric_buckets.add(bk)
        picks.update(s for bk, s in firsts.items() if bk not in numeric_buckets)
        return picks

    def _picks_in_one_pass(
        self, project: str, within: list[Span], keys: list[str], by: str
    ) -> set[int]:
        """``_picks`` where a row qualifies by holding any of ``keys``: each
        key's lines read once, for the buckets' first rows and extremes alike."""
        ok = "num = 1 AND NOT isNaN(f)"
        cond = f"key IN ({', '.join(map(sql.string, keys))})"
        picks: set[int] = set()
        firsts: dict[str, int] = {}
        numeric_buckets: set[str] = set()
        for bk, first, numbers, s0, s1 in self.reads.query(
            f"SELECT {by} AS b, min(step), countIf({ok}), argMinIf(step, f, {ok}), "
            f"argMaxIf(step, f, {ok}) FROM {self.reads.db}.history "
            f"WHERE {where(project, within, cond)} GROUP BY b, key"
        ):
            firsts[bk] = min(firsts.get(bk, int(first)), int(first))
            if numbers != "0":
                picks.update((int(s0), int(s1)))
                numeric_buckets.add(bk)
        # A bucket with nothing numeric shows its first row.
        picks.update(s for bk, s in firsts.items() if bk not in numeric_buckets)
        return picks
