"""The cluster's :class:`~stepline_daemon.readmodel.ReadModel`: reads over
ClickHouse that answer as the node's LMDB store does (``store.reads``), with
cluster timelines for run numbers and each run's ``node`` named.

Records come from ``runs FINAL``, filtered only on columns every version of a
timeline shares (project, timeline, id). Rows come from the rows table's level
0, one per step (a batch inserted twice lies there twice until a merge:
``LIMIT 1 BY step``), a window of steps at a time, a page as one RowBinary
answer (``encode.rows_page``) decoded where it is used. Which rows hold which
keys come from the narrow history lines (``views.Wanted``); downsampling runs
in SQL (``downsample``). Literals go through ``sql`` (18.16 has no query
parameters), and nothing needs what 18.16 lacks (named subqueries, window
functions, ``UNION DISTINCT``).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import Any, Protocol

from stepline.errors import ClusterUnavailable, DaemonError, RunNotFound
from stepline_daemon import describe
from stepline_daemon.cluster import journeys, sql
from stepline_daemon.cluster.client import ClickHouse, ClickHouseError, ClickHouseUnavailable
from stepline_daemon.cluster.downsample import Downsample
from stepline_daemon.cluster.encode import PAGE_COLUMNS, RawRows, record_of, rows_page
from stepline_daemon.cluster.views import EVERY_ROW, View, Wanted, where
from stepline_daemon.describe import Record, Span
from stepline_daemon.names import check_project, check_run_id
from stepline_daemon.readmodel import (
    MAX_PAGE_BYTES,
    ReadModel,
    RowQuery,
    Rows,
    RunRef,
)
from stepline_daemon.states import State

# Windows a page reads before asking for the rest of the view at once: each
# widened from what the last held, so sparse rows cost a few round trips.
WINDOW_ROUNDS = 4
_DATABASE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


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
        self._settle(out)
        return out

    def _settle(self, timelines: list[int]) -> None:
        """One current timeline per run id, where nodes disagree (``timelines``
        holds every timeline of the ids it holds).

        Each node ships the timeline it holds as current. A run continued on
        another node (``cluster.heads``) has two: the newer descends from the
        older, which is then archived by it, as a rewind's old timeline is
        (rows the older node ships late stay there, readable). Two unrelated
        timelines of one id (created on two nodes at about the same time) both
        stay: the one created first is the run, the other is flagged
        ``duplicate_of`` it, readable by its timeline.
        """
        by_id: dict[str, list[int]] = {}
        for tl in timelines:
            current, deleted, rec = self._lines[tl]
            if current and not deleted and rec is not None:
                by_id.setdefault(rec["id"], []).append(tl)
        for group in by_id.values():
            if len(group) < 2:
                continue
            chains = {tl: self._ancestors(tl) for tl in group}
            heads = []
            for tl in group:
                # The nearest descendant in the group, if any, archives it.
                below = [(chains[d].index(tl), d) for d in group if tl in chains[d]]
                if below:
                    self._retire(tl, archived_by=min(below)[1])
                else:
                    heads.append(tl)
            heads.sort(key=lambda tl: (self._record_of(tl)["created"], tl))
            for tl in heads[1:]:
                self._retire(tl, duplicate_of=heads[0])
            if len(heads) > 1:
                self._record_of(heads[0])["duplicates"] = heads[1:]

    def _ancestors(self, tl: int) -> list[int]:
        """The timelines ``tl``'s view branches from, nearest first."""
        out: list[int] = []
        parent = self._record_of(tl)["parent"]
        while parent is not None and parent[0] not in out:
            out.append(parent[0])
            rec = self.get(parent[0])
            parent = None if rec is None else rec["parent"]
        return out

    def _record_of(self, tl: int) -> Record:
        rec = self._lines[tl][2]
        assert rec is not None
        return rec

    def _retire(self, tl: int, **why: int) -> None:
        """``tl`` is not its id's current timeline after all (see ``_settle``)."""
        _, deleted, rec = self._lines[tl]
        assert rec is not None
        rec = {**rec, **{k: v for k, v in why.items() if rec.get(k) is None}}
        by = why.get("archived_by")
        if by is not None and not journeys.resumes(self._record_of(by), rec):
            rec["state"] = State.ARCHIVED.value  # as a rewind on one node leaves it
        self._lines[tl] = (False, deleted, rec)

    def _all(self) -> dict[int, tuple[bool, int, Record | None]]:
        if not self._whole:
            self._load("")
            self._whole = True
        return self._lines

    def get(self, run_no: int) -> Record | None:
        """The record of a timeline of this project; None when there is none."""
        if run_no not in self._lines and not self._whole:
            # With the other timelines of its id, on every shard: whether it is
            # current is settled among them.
            self._load(
                f" AND id GLOBAL IN (SELECT id FROM {self.reads.db}.runs "
                f"WHERE timeline = {sql.number(run_no)})"
            )
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

    def describe(self, rec: Record, full: bool = False) -> dict[str, Any]:
        src = self.records(rec["project"])
        out = journeys.view(src, rec, describe.describe(src, rec, full), full)
        out["node"] = rec.get("node")
        # One id created on two nodes: the later timeline is flagged, not lost.
        if rec.get("duplicate_of") is not None:
            out["duplicate_of"] = rec["duplicate_of"]
        if rec.get("duplicates"):
            out["duplicates"] = [
                {"run_no": tl, "node": d.get("node"), "created": d["created"]}
                for tl in rec["duplicates"]
                if (d := src.get(tl)) is not None
            ]
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
            found = self.fetch(view.project, describe.clip(spans, lo, hi + 1), wanted, need - held)
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

    def fetch(
        self, project: str, spans: list[Span], wanted: Wanted, limit: int = 0, extra: str = ""
    ) -> RawRows:
        """The qualifying rows in ``spans``, in step order, one per step; at most
        ``limit`` (0: all), ``extra`` another condition."""
        if not spans:
            return RawRows()
        cond = where(project, spans, EVERY_ROW)
        steps = wanted.steps(self.db, project, spans)
        if steps is not None:
            cond += f" AND step IN ({steps})"
        if extra:
            cond += f" AND {extra}"
        tail = f" LIMIT {limit}" if limit else ""
        return self.lines(
            f"SELECT step, v FROM {self.db}.rows WHERE {cond} ORDER BY step LIMIT 1 BY step{tail}"
        )

    def qualifying(self, project: str, spans: list[Span], wanted: Wanted) -> str:
        """A subquery of the steps in ``spans`` whose rows qualify."""
        steps = wanted.steps(self.db, project, spans)
        return steps or f"SELECT step FROM {self.db}.rows WHERE {where(project, spans, EVERY_ROW)}"

    # -------------------------------------------------------- sample

    def sample(self, ref: RunRef, query: RowQuery, samples: int) -> Rows:
        view = self._spans(ref, query)
        wanted = Wanted(query.keys, query.require_all)
        if not view.spans or wanted.nothing:
            return Rows(decoded=[], paged=False)
        return Rows(decoded=Downsample(self).rows(view, wanted, samples), paged=False)
