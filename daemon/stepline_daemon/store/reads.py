"""The node's :class:`~stepline_daemon.readmodel.ReadModel`: reads over one
LMDB read transaction."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, cast

import lmdb
import msgpack

from stepline.errors import RunNotFound
from stepline_daemon import describe
from stepline_daemon.names import check_project
from stepline_daemon.readmodel import (
    MAX_PAGE_BYTES,
    ReadModel,
    RowQuery,
    Rows,
    RunRef,
    select_values,
)
from stepline_daemon.sampling import decimate, pick
from stepline_daemon.store import catalog, history, lineage
from stepline_daemon.store.history import Segment
from stepline_daemon.store.layout import Record
from stepline_daemon.store.records import Store

# A downsample decodes at most this many rows per sample asked for, whatever
# the run's length: short ranges are read whole (exact extremes), long ones
# through evenly spaced seeks.
READ_PER_SAMPLE = 4
# How many rows a strided read looks at past each target for one holding the
# keys: a metric logged at least every this many steps is sampled evenly.
WALK = 64


class LmdbReads(ReadModel):
    def __init__(self, store: Store, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self.records = lineage.LmdbRecords(store, txn)
        # The last run looked up: a read checks its run first, then reads it.
        self._found: tuple[RunRef, Record] | None = None

    def require(self, ref: RunRef) -> RunRef:
        self.target(ref)
        return ref

    def projects(self) -> list[dict[str, Any]]:
        return catalog.project_summaries(self.store, self.txn)

    def runs(self, project: str, must_exist: bool = False) -> list[dict[str, Any]]:
        if must_exist:
            self._project(project)
        return [self.describe(rec) for rec in catalog.project_runs(self.store, self.txn, project)]

    def tree(self, project: str) -> list[dict[str, Any]]:
        return describe.timelines(self.records, self._project(project))

    def rows(self, ref: RunRef, query: RowQuery) -> Rows:
        segs = self._segments(ref, query)
        q = query
        if q.keys is None:
            # Whole rows, handed on as stored: a socket reply splices them.
            items, nxt = history.page(
                self.store, self.txn, segs, q.min_step, q.max_step, q.limit, MAX_PAGE_BYTES
            )
            return Rows(packed=items, next=nxt)
        out: list[dict[str, Any]] = []
        size = 0
        for step, packed in history.iter_rows(self.store, self.txn, segs, q.min_step, q.max_step):
            if len(out) == q.limit or size > MAX_PAGE_BYTES:
                return Rows(decoded=out, next=step)
            size += len(packed)
            if (row := select(packed, step, q.keys, q.require_all)) is not None:
                out.append(row)
        return Rows(decoded=out)

    def sample(self, ref: RunRef, query: RowQuery, samples: int) -> Rows:
        segs = self._segments(ref, query)
        q = query
        if q.keys is not None:
            rows = downsample(
                self.store, self.txn, segs, q.keys, q.min_step, q.max_step, samples, q.require_all
            )
            return Rows(decoded=rows, paged=False)
        # Seek to evenly spaced steps; only when that cannot stand for index
        # sampling, walk the keys (never the values) and pick by index.
        picked = history.sample_keys(self.store, self.txn, segs, q.min_step, q.max_step, samples)
        if picked is None:
            in_view = list(history.iter_keys(self.store, self.txn, segs, q.min_step, q.max_step))
            picked = [in_view[i] for i in pick(len(in_view), samples)]
        get, db = self.txn.get, self.store.history
        return Rows(packed=[(k, cast(bytes, get(k, db=db))) for k in picked], paged=False)

    # ---------------------------------------------------------- helpers

    def _project(self, project: str) -> str:
        """A project that holds at least one run, or RunNotFound."""
        check_project(project)
        if not catalog.project_exists(self.store, self.txn, project):
            raise RunNotFound(f"project {project!r} does not exist")
        return project

    def _segments(self, ref: RunRef, query: RowQuery) -> list[Segment]:
        return lineage.segments(self.store, self.txn, self.target(ref), query.include_parent)

    def target(self, ref: RunRef) -> Record:
        """The run a read names: by id (its current timeline), or by ``run_no``."""
        if self._found is not None and self._found[0] is ref:
            return self._found[1]
        if ref.run_no is None:
            rec = self.store.find(self.txn, ref.project, ref.run_id)
        else:
            rec = self.store.record(self.txn, ref.run_no)
            if rec["project"] != ref.project or rec.get("deleted"):
                raise RunNotFound(f"no timeline {ref.run_no} in project {ref.project!r}")
        self._found = (ref, rec)
        return rec

    def describe(self, rec: Record, full: bool = False) -> dict[str, Any]:
        return describe.describe(self.records, rec, full)


def select(
    packed: bytes, step: int, keys: list[str] | None, require_all: bool = True
) -> dict[str, Any] | None:
    """The stored row as users see it, or None when it does not qualify
    (``readmodel.select_values``)."""
    return select_values(msgpack.unpackb(packed, raw=False), step, keys, require_all)


def downsample(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    keys: list[str],
    min_step: int,
    max_step: int | None,
    samples: int,
    require_all: bool,
) -> list[dict[str, Any]]:
    """At most ``samples`` rows: the first, the last, and per bucket of steps the
    rows holding each key's minimum and maximum (min/max decimation).

    Exact when the range holds at most ``READ_PER_SAMPLE * samples`` steps;
    beyond that, the extremes are those of evenly spaced rows, so the cost is
    bounded by ``samples``, never by the run's length. Zooming in (a narrower
    ``min_step``/``max_step``) gives exact detail.
    """
    edges = history.edges(store, txn, segs, min_step, max_step)
    if edges is None:
        return []
    lo, hi = edges
    budget = samples * READ_PER_SAMPLE
    # Few enough rows (counted on keys alone, no values read) to read them all.
    if (
        hi - lo < budget
        or sum(
            1 for _ in itertools.islice(history.iter_keys(store, txn, segs, lo, hi + 1), budget + 1)
        )
        <= budget
    ):
        source = history.iter_rows(store, txn, segs, lo, hi + 1)
        rows = [r for step, packed in source if (r := select(packed, step, keys, require_all))]
    else:
        rows = _strided(store, txn, segs, keys, require_all, lo, hi, budget)
    if len(rows) <= samples:
        return rows
    return [rows[i] for i in decimate(rows, keys, samples)]


def _strided(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    keys: list[str],
    require_all: bool,
    lo: int,
    hi: int,
    budget: int,
) -> list[dict[str, Any]]:
    """Rows holding the keys at about ``budget`` evenly spaced steps: the first
    and the last such rows always (found by walking in from each end), and
    between them the first such row within ``WALK`` rows of each target."""

    def first(rows: Iterator[tuple[int, bytes]]) -> dict[str, Any] | None:
        return next((r for s, p in rows if (r := select(p, s, keys, require_all))), None)

    head = first(history.iter_rows(store, txn, segs, lo, hi + 1))
    tail = first(history.iter_rows_back(store, txn, segs, lo, hi + 1))
    if head is None or tail is None:
        return []
    a, b = head["_step"], tail["_step"]
    if a == b:
        return [head]
    out = [head]
    targets = [a + 1 + i * (b - a - 1) // (budget - 1) for i in range(budget - 1)]
    limits = [*targets[1:], b] if targets else []
    for target, limit in zip(targets, limits, strict=True):
        start = max(target, out[-1]["_step"] + 1)
        if start < limit:
            row = first(itertools.islice(history.iter_rows(store, txn, segs, start, limit), WALK))
            if row is not None:
                out.append(row)
    out.append(tail)
    return out
