"""The cluster's :class:`~stepline_daemon.readmodel.ReadModel`: reads over
ClickHouse that answer as the node's LMDB store does (``store.reads``), with
cluster timelines for run numbers and each run's ``node`` named.

Records come from ``runs FINAL``, filtered only on columns every version of a
timeline shares (project, timeline, id). Rows come from the rows table's level
0, one per step (a batch inserted twice lies there twice until a merge:
``LIMIT 1 BY step``), a window of steps at a time, a page as one RowBinary
answer decoded in one msgpack call (``encode.rows_page``). Which rows hold
which keys, and each key's extremes, come from the narrow history lines. A
downsample of a long run reads the rows table's ladder; downsampling runs in
SQL. Literals go through ``sql`` (18.16 has no query parameters), and nothing
needs what 18.16 lacks (named subqueries, window functions, ``UNION DISTINCT``).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from stepline.errors import ClusterUnavailable, DaemonError, RunNotFound
from stepline_daemon import describe
from stepline_daemon.cluster import sql
from stepline_daemon.cluster.client import ClickHouse, ClickHouseError, ClickHouseUnavailable
from stepline_daemon.cluster.encode import PAGE_COLUMNS, RawRows, record_of, rows_page
from stepline_daemon.cluster.schema import LADDER_MIN, LADDER_TOP
from stepline_daemon.describe import Record, Span
from stepline_daemon.names import check_project, check_run_id
from stepline_daemon.readmodel import (
    MAX_PAGE_BYTES,
    ReadModel,
    RowQuery,
    Rows,
    RunRef,
    select_values,
)
from stepline_daemon.sampling import decimate

# A keyed downsample of a range of at most this many rows per sample is exact:
# every row read and decimated, as LmdbReads does below its own READ_PER_SAMPLE.
EXACT_PER_SAMPLE = 4
# Windows a page reads before asking for the rest of the view at once: each
# widened from what the last held, so sparse rows cost a few round trips.
WINDOW_ROUNDS = 4
# Steps per ``step IN (...)`` list: far inside 18.16's 256 KiB max_query_size.
STEPS_PER_QUERY = 8000
_DATABASE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# A keyless downsample reads the ladder when its view spans this many steps per
# sample or more, and from its rungs about this many rows per sample: enough
# that the rows it keeps lie near even steps.
LADDER_SPAN = 1 << (LADDER_MIN + 1)
LADDER_PER_SAMPLE = 2
_INT64_LIMIT = 1 << 63
# Lines of the rows table: every row once (level 0), or the ladder's rungs.
_EVERY_ROW = "level = 0"


class Engine(Protocol):
    """What reads need of a ClickHouse: a SELECT's answer as bytes (RowBinary),
    or its rows as TabSeparated fields."""

    def select(self, sql: str) -> bytes: ...

    def query(self, sql: str) -> list[list[str]]: ...


class ProjectRecords:
    """:class:`describe.Records` of one project: fetched as asked, then kept.

    A lookup by id or timeline reads one primary-key range; the children index
    and the timeline list need the whole project, read once.
    """

    def __init__(self, reads: ClusterReads, project: str) -> None:
        self.reads = reads
        self.project = project
        # timeline -> (current, deleted, record); record None: purged
        self._lines: dict[int, tuple[bool, int, Record | None]] = {}
        self._whole = False
        self._children: dict[int, list[tuple[int, int]]] | None = None
        self._named: dict[str, Record | None] = {}

    def _load(self, where: str) -> list[int]:
        rows = self.reads.query(
            f"SELECT timeline, current, deleted, record FROM {self.reads.db}.runs FINAL "
            f"WHERE project = {sql.string(self.project)}{where}"
        )
        out = []
        for tl, current, deleted, blob in rows:
            rec = record_of(blob) if deleted != "2" else None
            self._lines[int(tl)] = (current == "1", int(deleted), rec)
            out.append(int(tl))
        return out

    def _all(self) -> dict[int, tuple[bool, int, Record | None]]:
        if not self._whole:
            self._load("")
            self._whole = True
        return self._lines

    def get(self, run_no: int) -> Record | None:
        """The record of a timeline of this project; None when there is none."""
        if run_no not in self._lines and not self._whole:
            self._load(f" AND timeline = {sql.number(run_no)}")
        line = self._lines.get(run_no)
        return None if line is None else line[2]

    def current(self, run_id: str) -> Record | None:
        """The timeline ``run_id`` names (LMDB's ``names`` index): current, live."""
        if run_id in self._named:
            return self._named[run_id]
        if self._whole:
            lines = list(self._lines.values())
        else:
            lines = [self._lines[tl] for tl in self._load(f" AND id = {sql.string(run_id)}")]
        found = next(
            (r for c, d, r in lines if c and not d and r is not None and r["id"] == run_id), None
        )
        self._named[run_id] = found
        return found

    def live(self) -> list[Record]:
        """The current timeline of each run id, in id order."""
        recs = [r for c, d, r in self._all().values() if c and not d and r is not None]
        return sorted(recs, key=lambda r: str(r["id"]).encode())

    # describe.Records

    def record(self, run_no: int) -> Record:
        rec = self.get(run_no)
        if rec is None:
            raise RunNotFound(f"no run with internal number {run_no}")
        return rec

    def children(self, run_no: int) -> list[tuple[int, int]]:
        if self._children is None:
            index: dict[int, list[tuple[int, int]]] = {}
            for tl, (_, _, rec) in sorted(self._all().items()):
                if rec is not None and rec["parent"] is not None:
                    index.setdefault(rec["parent"][0], []).append((tl, rec["parent"][1]))
            self._children = index
        return self._children.get(run_no, [])

    def timelines(self, project: str) -> list[Record]:
        lines = self._all() if project == self.project else {}
        return [rec for _, (_, _, rec) in sorted(lines.items()) if rec is not None]


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
            return f"SELECT step FROM {db}.history WHERE {_where(project, spans, cond)}"

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


def _where(project: str, spans: list[Span], key_cond: str) -> str:
    """History lines of ``project`` under ``key_cond`` within ``spans``."""
    ranges = " OR ".join(
        f"(timeline = {tl} AND step BETWEEN {lo} AND {hi})" for tl, lo, hi in spans
    )
    return f"project = {sql.string(project)} AND {key_cond} AND ({ranges})"


def _bucket(first: int, width: int, buckets: int) -> str:
    """``sampling.decimate``'s bucket of a step, in SQL: exact in Int64, or
    (a range too wide for that) by a stride, which makes no more buckets."""
    if (width - 1) * buckets < _INT64_LIMIT:
        return f"intDiv((step - {first}) * {buckets}, {width})"
    return f"intDiv(step - {first}, {-(-width // buckets)})"


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


class ClusterReads(ReadModel):
    """Reads of the cluster store. One per request, like ``LmdbReads`` per read
    transaction: records read once are kept for the instance's life.

    ``ClusterReads.of(ClickHouse(ClusterUrl.parse(url)))`` (or just
    ``ClusterReads(client)``) reads the tables in the url's database; any other
    ``engine`` (chDB in tests) names its database.
    """

    def __init__(self, engine: Engine, database: str | None = None) -> None:
        if database is None:
            if not isinstance(engine, ClickHouse):
                raise TypeError("a database name is needed beside an engine without a url")
            database = engine.url.database
        if not _DATABASE_RE.fullmatch(database):
            raise ValueError(f"database {database!r} must be letters, digits and '_'")
        self.engine = engine
        self.db = database
        # Named in error messages: the url's str() leaves the password out.
        self.name = str(engine.url) if isinstance(engine, ClickHouse) else database
        self._projects: dict[str, ProjectRecords] = {}
        self._found: tuple[RunRef, Record] | None = None

    @classmethod
    def of(cls, client: ClickHouse) -> ClusterReads:
        """Reads through ``client``, of the database its url names."""
        return cls(client)

    def query(self, text: str) -> list[list[str]]:
        """``text``'s rows; ClickHouse's failures as the daemon's typed errors."""
        with self._asking():
            return self.engine.query(text)

    def lines(self, subquery: str) -> RawRows:
        """The rows ``subquery`` selects (its columns ``step`` and ``v``), in step order."""
        with self._asking():
            return rows_page(
                self.engine.select(f"SELECT {PAGE_COLUMNS} FROM ({subquery}) FORMAT RowBinary")
            )

    @contextlib.contextmanager
    def _asking(self) -> Iterator[None]:
        try:
            yield
        except ClickHouseUnavailable as exc:
            raise ClusterUnavailable(f"cluster store {self.name}: {exc.message}") from None
        except ClickHouseError as exc:
            raise DaemonError(f"cluster store {self.name} failed a read: {exc.message}") from None

    # ------------------------------------------------------- records

    def require(self, ref: RunRef) -> RunRef:
        self.target(ref)
        return ref

    def projects(self) -> list[dict[str, Any]]:
        live = "current = 1 AND deleted = 0"
        rows = self.query(
            f"SELECT project, countIf({live}) AS n, maxIf(updated, {live}) "
            f"FROM {self.db}.runs FINAL GROUP BY project HAVING n > 0 ORDER BY project"
        )
        return [{"name": p, "runs": int(n), "updated": float(u)} for p, n, u in rows]

    def runs(self, project: str, must_exist: bool = False) -> list[dict[str, Any]]:
        if must_exist:
            self._project(project)
        return [self.describe(rec) for rec in self.records(project).live()]

    def tree(self, project: str) -> list[dict[str, Any]]:
        return describe.timelines(self.records(self._project(project)), project)

    def info(self, ref: RunRef, full: bool = True) -> dict[str, Any]:
        return self.describe(self.target(ref), full)

    def state(self, ref: RunRef) -> dict[str, Any]:
        return describe.state(self.target(ref))

    def keys(self, ref: RunRef, include_parent: bool = True) -> list[str]:
        return describe.keys(self.target(ref), include_parent)

    def describe(self, rec: Record, full: bool = False) -> dict[str, Any]:
        out = describe.describe(self.records(rec["project"]), rec, full)
        out["node"] = rec.get("node")
        return out

    def records(self, project: str) -> ProjectRecords:
        if project not in self._projects:
            self._projects[project] = ProjectRecords(self, project)
        return self._projects[project]

    def target(self, ref: RunRef) -> Record:
        """The run a read names: by id (its current timeline), or by ``run_no``
        (a timeline), with LmdbReads' rules and messages."""
        if self._found is not None and self._found[0] is ref:
            return self._found[1]
        if ref.run_no is None:
            rec = self.records(check_project(ref.project)).current(check_run_id(ref.run_id))
            if rec is None:
                raise RunNotFound(f"run {ref.run_id!r} does not exist in project {ref.project!r}")
        else:
            rec = (
                self.records(ref.project).get(ref.run_no) if isinstance(ref.project, str) else None
            )
            if rec is None and not self._timeline_exists(ref.run_no):
                raise RunNotFound(f"no run with internal number {ref.run_no}")
            if rec is None or rec.get("deleted"):
                raise RunNotFound(f"no timeline {ref.run_no} in project {ref.project!r}")
        self._found = (ref, rec)
        return rec

    def _timeline_exists(self, run_no: int) -> bool:
        """Whether any project holds this timeline (LmdbReads' two messages)."""
        rows = self.query(
            f"SELECT countIf(deleted != 2) FROM {self.db}.runs FINAL "
            f"WHERE timeline = {sql.number(run_no)}"
        )
        return bool(rows) and rows[0][0] != "0"

    def _project(self, project: str) -> str:
        """A project that holds at least one run, or RunNotFound."""
        check_project(project)
        if not self.records(project).live():
            raise RunNotFound(f"project {project!r} does not exist")
        return project

    def _spans(self, ref: RunRef, query: RowQuery) -> View:
        """The view's project and spans within the query's steps, with what the
        records tell of them (see :class:`View`)."""
        rec = self.target(ref)
        src = self.records(rec["project"])
        segs = describe.segments(src, rec, query.include_parent)
        rows = extent = width = 0
        spans = describe.clip(segs, query.min_step, query.max_step)
        for tl, _, _ in segs:
            r = src.record(tl)
            first = 0 if r["parent"] is None else r["parent"][1] + 1
            rows += r["rows"]
            extent += max(1, r["last_step"] - first + 1)
        for tl, lo, hi in spans:
            r = src.record(tl)
            first = 0 if r["parent"] is None else r["parent"][1] + 1
            width += max(0, min(hi, r["last_step"]) - max(lo, first) + 1)
        density = min(1.0, max(rows, 1) / max(extent, 1))
        return View(rec["project"], spans, density, width)

    # ---------------------------------------------------------- rows

    def rows(self, ref: RunRef, query: RowQuery) -> Rows:
        view = self._spans(ref, query)
        wanted = Wanted(query.keys, query.require_all)
        if not view.spans or wanted.nothing:
            return Rows(decoded=[])
        raw, nxt = self._page(view, wanted, query.limit)
        size = 0
        for i, n in enumerate(raw.sizes):
            if size > MAX_PAGE_BYTES:  # as LmdbReads: a page ends early past this
                raw, nxt = raw.head(i), raw.steps[i]
                break
            size += n
        # Decoded where the rows are used: a scan reading ahead asks ClickHouse
        # for the next page while the caller decodes this one.
        return Rows(decode=functools.partial(wanted.rows, raw), next=nxt)

    def _page(self, view: View, wanted: Wanted, limit: int) -> tuple[RawRows, int | None]:
        """At most ``limit`` qualifying rows from the start of the view, and the
        step of the next one (None: there is none).

        Read a window of steps at a time, never the whole view: steps are unique
        in a view, so ``need`` steps hold at most ``need`` rows, and a window is
        widened from how many rows the last one held.
        """
        need = limit + 1  # one more: where the next page starts
        got: list[RawRows] = []
        held = 0
        spans = view.spans
        lo, end = spans[0][1], spans[-1][2]
        width = max(need, int(need / view.density))
        for round_no in range(WINDOW_ROUNDS):
            last = round_no == WINDOW_ROUNDS - 1 or end - lo < width
            hi = end if last else lo + width - 1
            found = self._fetch(view.project, describe.clip(spans, lo, hi + 1), wanted, need - held)
            got.append(found)
            held += len(found)
            if held >= need or hi >= end:
                break
            lo = hi + 1
            grow = (need - held) / len(found) * 1.25 if len(found) else 16
            width = int(width * max(2, min(grow, 1 << 20)))
        raw = RawRows.join(got)
        if held > limit:
            return raw.head(limit), raw.steps[limit]
        return raw, None

    def _fetch(
        self, project: str, spans: list[Span], wanted: Wanted, limit: int = 0, extra: str = ""
    ) -> RawRows:
        """The qualifying rows in ``spans``, in step order, one per step; at most
        ``limit`` (0: all), ``extra`` another condition."""
        if not spans:
            return RawRows()
        where = _where(project, spans, _EVERY_ROW)
        steps = wanted.steps(self.db, project, spans)
        if steps is not None:
            where += f" AND step IN ({steps})"
        if extra:
            where += f" AND {extra}"
        tail = f" LIMIT {limit}" if limit else ""
        return self.lines(
            f"SELECT step, v FROM {self.db}.rows WHERE {where} ORDER BY step LIMIT 1 BY step{tail}"
        )

    # -------------------------------------------------------- sample

    def sample(self, ref: RunRef, query: RowQuery, samples: int) -> Rows:
        view = self._spans(ref, query)
        project, spans = view.project, view.spans
        wanted = Wanted(query.keys, query.require_all)
        if not spans or wanted.nothing:
            return Rows(decoded=[], paged=False)
        if query.keys is None and samples > 3 and view.width >= LADDER_SPAN * samples:
            laddered = self._ladder(view, samples)
            if laddered is not None:
                return Rows(decoded=wanted.rows(laddered), paged=False)
        budget = samples if query.keys is None else samples * EXACT_PER_SAMPLE
        n, lo, hi = self._extent(project, spans, budget)
        if n == 0:
            return Rows(decoded=[], paged=False)
        if query.keys is None:
            if n <= samples:  # all of them: what LmdbReads returns too
                lines = self._fetch(project, spans, wanted)
            else:
                every = self._qualifying(project, spans, wanted)
                lines = self._evenly(project, spans, every, lo, hi, samples)
            return Rows(decoded=wanted.rows(lines), paged=False)
        if hi - lo < budget or n <= budget:
            # Few enough to read whole: exactly LmdbReads' answer.
            rows = wanted.rows(self._fetch(project, spans, wanted))
        else:
            rows = wanted.rows(self._extremes(project, spans, wanted, samples))
        if len(rows) > samples:
            rows = [rows[i] for i in decimate(rows, query.keys, samples)]
        return Rows(decoded=rows, paged=False)

    def _ladder(self, view: View, samples: int) -> RawRows | None:
        """At most ``samples`` rows of a long view: its first and last, and
        between them rows spread evenly over the ladder's rungs at a stride of
        steps that gives about LADDER_PER_SAMPLE rows per sample (contiguous
        lines, where evenly spaced single rows would each cost a compressed
        block). None: the ladder holds too few of the view's rows (steps that
        miss its strides): the caller picks from every row instead."""
        project, spans, db = view.project, view.spans, self.db
        levels = self.query(
            f"SELECT level, count(), min(step), max(step) FROM {db}.rows "
            f"WHERE {_where(project, spans, f'level >= {LADDER_MIN}')} GROUP BY level"
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
            f"SELECT step, v FROM {db}.rows WHERE {_where(project, spans, f'level >= {level}')} "
            "ORDER BY step LIMIT 1 BY step"
        )
        # The view's first and last rows lie before the first rung and after the
        # last: short ranges of every row.
        head = _where(project, describe.clip(spans, start, first + 1), _EVERY_ROW)
        foot = _where(project, describe.clip(spans, last, end + 1), _EVERY_ROW)
        ends = (
            f"SELECT step, v FROM {db}.rows WHERE {head} ORDER BY step LIMIT 1",
            f"SELECT step, v FROM {db}.rows WHERE {foot} ORDER BY step DESC LIMIT 1",
        )
        got = self.lines(
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
        """How many rows ``spans`` hold (counted up to ``cap + 1``: a DISTINCT
        with a LIMIT stops reading there), and their first and last step."""
        where = _where(project, spans, _EVERY_ROW)
        table = f"{self.db}.rows"
        rows = self.query(
            f"SELECT (SELECT count() FROM (SELECT DISTINCT step FROM {table} WHERE {where} "
            f"LIMIT {cap + 1})), min(step), max(step) FROM {table} WHERE {where}"
        )
        n, lo, hi = rows[0]
        return int(n), int(lo), int(hi)

    def _qualifying(self, project: str, spans: list[Span], wanted: Wanted) -> str:
        """A subquery of the steps in ``spans`` whose rows qualify."""
        steps = wanted.steps(self.db, project, spans)
        return (
            steps or f"SELECT step FROM {self.db}.rows WHERE {_where(project, spans, _EVERY_ROW)}"
        )

    def _evenly(
        self, project: str, spans: list[Span], steps: str, lo: int, hi: int, samples: int
    ) -> RawRows:
        """Rows at most ``samples``: the first of each of ``samples - 1`` even
        buckets of ``steps`` (a subquery) from ``lo`` to ``hi``, and the last."""
        bucket = _bucket(lo, hi - lo + 1, samples - 1)
        firsts = f"SELECT min(step) FROM ({steps}) GROUP BY {bucket}"
        extra = f"(step IN ({firsts}) OR step = {hi})"
        return self._fetch(project, spans, Wanted(None, True), extra=extra)

    def _extremes(self, project: str, spans: list[Span], wanted: Wanted, samples: int) -> RawRows:
        """``sampling.decimate`` of the qualifying rows, in SQL: the first and
        the last, and per bucket of steps each key's minimum and maximum, or
        the bucket's first row when it holds nothing numeric."""
        steps = self._qualifying(project, spans, wanted)
        rows = self.query(f"SELECT count(), min(step), max(step) FROM ({steps})")
        if rows[0][0] == "0":
            return RawRows()
        a, b = int(rows[0][1]), int(rows[0][2])
        metrics = [k for k in wanted.keys or () if k != "_step"] or ["_step"]
        buckets = (samples - 2) // (2 * len(metrics))
        if buckets < 1:
            return self._evenly(project, spans, steps, a, b, samples)
        picks = self._picks(project, describe.clip(spans, a, b + 1), wanted, metrics, buckets)
        out: list[RawRows] = []
        ordered = sorted(picks)
        for i in range(0, len(ordered), STEPS_PER_QUERY):
            chunk = ordered[i : i + STEPS_PER_QUERY]
            part = describe.clip(spans, chunk[0], chunk[-1] + 1)
            listed = ", ".join(map(str, chunk))
            out.append(self._fetch(project, part, Wanted(None, True), extra=f"step IN ({listed})"))
        return RawRows.join(out)

    def _picks(
        self, project: str, within: list[Span], wanted: Wanted, metrics: list[str], buckets: int
    ) -> set[int]:
        """The steps ``_extremes`` keeps, from one aggregate query; ``within``:
        the spans from the first qualifying step to the last."""
        a, b = within[0][1], within[-1][2]
        steps = self._qualifying(project, within, wanted)
        bucket = _bucket(a, b - a + 1, buckets)
        parts = [
            f"SELECT 0 AS kind, {bucket} AS b, '' AS k, min(step), max(step) "
            f"FROM ({steps}) GROUP BY b"
        ]
        numeric = sorted({k for k in metrics if k not in ("_step", "")})
        if numeric:
            cond = f"key IN ({', '.join(map(sql.string, numeric))}) AND num = 1 AND NOT isNaN(f)"
            qualified = f" AND step IN ({steps})" if wanted.by_each else ""
            parts.append(
                f"SELECT 1 AS kind, {bucket} AS b, key AS k, argMin(step, f), argMax(step, f) "
                f"FROM {self.db}.history WHERE {_where(project, within, cond)}{qualified} "
                "GROUP BY b, k"
            )
        picks, firsts, numeric_buckets = {a, b}, {}, set()
        for kind, bk, _, s0, s1 in self.query(" UNION ALL ".join(parts)):
            if kind == "0":
                firsts[bk] = int(s0)
                if metrics != ["_step"]:
                    continue  # the bucket's first row, kept if nothing numeric
            picks.update((int(s0), int(s1)))
            numeric_buckets.add(bk)
        picks.update(s for bk, s in firsts.items() if bk not in numeric_buckets)
        return picks
