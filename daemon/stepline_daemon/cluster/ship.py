"""What the shipper sends: pending change entries made into ClickHouse inserts.

Blocking and on the shipper's thread. Each read of the store is a short read
transaction (taken under the resize gate), never held across a network call, so
a slow ClickHouse never holds back the writer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import lmdb

from stepline_daemon.cluster import encode
from stepline_daemon.cluster.schema import RUN_BITS, timeline
from stepline_daemon.store import changes, history
from stepline_daemon.store.history import Segment
from stepline_daemon.store.records import Store

# Rows (steps) of change entries one batch takes, however many entries that is;
# the first entry always goes, whatever its size.
BATCH_ROWS = 50_000
# Rows read in one short read transaction (and encoded together): a few MiB.
CHUNK_ROWS = 10_000


@dataclass
class Plan:
    """What a run of pending entries asks to ship, merged."""

    last: int  # the last entry's seq: the cursor after
    logged: int  # rows logged through it
    rows: dict[int, list[int]] = field(default_factory=dict)  # run_no -> [lo, hi]
    runs: dict[int, str] = field(default_factory=dict)  # run_no -> project
    purged: dict[int, str] = field(default_factory=dict)
    full: bool = False
    count: int = 0  # rows, as the entries counted them


def plan(entries: Iterator[changes.Entry], max_rows: int = BATCH_ROWS) -> Plan | None:
    """Merge pending entries, oldest first, until ``max_rows`` rows."""
    out: Plan | None = None
    for e in entries:
        rows = sum(span[3] for span in e.rows)
        if out is not None and (out.count + rows > max_rows or e.full):
            break
        if out is None:
            out = Plan(e.seq, e.logged)
        out.last, out.logged, out.count = e.seq, e.logged, out.count + rows
        out.full = out.full or e.full
        for run_no, lo, hi, _ in e.rows:
            span = out.rows.get(run_no)
            out.rows[run_no] = [lo, hi] if span is None else [min(span[0], lo), max(span[1], hi)]
        out.runs.update(e.runs)
        out.purged.update(e.purged)
        if e.full:
            break  # alone: it may be the whole store
    return out


@dataclass(frozen=True)
class Bodies:
    """The INSERT bodies of some rows: the history table's and the rows table's."""

    history: bytes = b""
    rows: bytes = b""
    count: int = 0  # rows (steps) they hold

    @property
    def size(self) -> int:
        return len(self.history) + len(self.rows)


Snapshot = Callable[[], AbstractContextManager[lmdb.Transaction]]


class Builder:
    """Turns a :class:`Plan` into INSERT bodies, reading the store in short
    transactions (``snapshot`` opens one)."""

    def __init__(self, store: Store, snapshot: Snapshot, store_id: int, node: str) -> None:
        self.store = store
        self.snapshot = snapshot
        self.store_id = store_id
        self.node = node
        self._roots: dict[int, int] = {}  # run_no -> its tree's root timeline (never changes)

    def root(self, txn: lmdb.Transaction, rec: dict[str, Any]) -> int:
        """The timeline of the root of ``rec``'s fork tree: the sharding key."""
        run_no: int = rec["run_no"]
        found = self._roots.get(run_no)
        if found is None:
            top = rec
            while top["parent"] is not None:
                top = self.store.record(txn, top["parent"][0])
            # A tree continued from another node's (``origin``) is that tree.
            origin = top.get("origin")
            found = origin["root"] if origin else timeline(self.store_id, top["run_no"])
            self._roots[run_no] = found
        return found

    def history_chunks(self, p: Plan) -> Iterator[Bodies]:
        """INSERT bodies of every row range in ``p``."""
        for run_no, (lo, hi) in sorted(p.rows.items()):
            start = lo
            while start <= hi:
                with self.snapshot() as txn:
                    chunk, start = self._chunk(txn, run_no, start, hi)
                if chunk.count:
                    yield chunk

    def _chunk(self, txn: lmdb.Transaction, run_no: int, start: int, hi: int) -> tuple[Bodies, int]:
        """Lines for up to CHUNK_ROWS rows of ``run_no`` from ``start``, and where
        the next chunk starts (past ``hi``: done)."""
        try:
            rec = self.store.record(txn, run_no)
        except Exception:  # purged since, or never committed: nothing to ship
            return Bodies(), hi + 1
        taken: list[tuple[int, bytes]] = []
        nxt = hi + 1
        for step, blob in history.iter_rows(self.store, txn, [Segment(run_no, start, hi)]):
            if len(taken) == CHUNK_ROWS:
                nxt = step
                break
            taken.append((step, blob))
        tl, root = timeline(self.store_id, run_no), self.root(txn, rec)
        project = rec["project"]
        lines = encode.packed_history_lines(project, tl, taken, root)
        rows = encode.packed_row_lines(project, tl, taken, root)
        return Bodies("".join(lines).encode(), b"".join(rows), len(taken)), nxt

    def runs_body(
        self, p: Plan, version: int, gone: Callable[[set[int]], dict[int, tuple[str, int]]]
    ) -> bytes:
        """The runs table's lines for every timeline ``p`` touched. ``gone``
        tells, of timelines the store no longer holds, which the cluster does
        (with their project and root): those get a tombstone."""
        lines = []
        missing: set[int] = set()
        wanted = {**p.runs, **p.purged}
        for run_no in p.rows:
            wanted.setdefault(run_no, "")
        with self.snapshot() as txn:
            for run_no in sorted(wanted):
                try:
                    rec = self.store.record(txn, run_no)
                except Exception:  # purged (or a refused init's number): no record
                    missing.add(timeline(self.store_id, run_no))
                    continue
                lines.append(self._runs_line(txn, rec, version))
        for tl, (project, root) in sorted(gone(missing).items()):
            lines.append(encode.runs_line(project, tl, None, self.node, False, version, root))
        return "".join(lines).encode()

    def _runs_line(self, txn: lmdb.Transaction, rec: dict[str, Any], version: int) -> str:
        run_no = rec["run_no"]
        named = self.store.lookup(txn, rec["project"], rec["id"])
        current = named is not None and named["run_no"] == run_no and not rec.get("deleted")
        record = encode.cluster_record(rec, self.store_id, self.node)
        tl, root = timeline(self.store_id, run_no), self.root(txn, rec)
        return encode.runs_line(rec["project"], tl, record, self.node, current, version, root)

    def held(self) -> set[int]:
        """Timelines the store holds (for a full entry: the rest were purged)."""
        with self.snapshot() as txn:
            cur = txn.cursor(db=self.store.runs)
            return {
                timeline(self.store_id, int.from_bytes(k, "big"))
                for k in cur.iternext(keys=True, values=False)
            }


def own_range(store_id: int) -> tuple[int, int]:
    """The timelines this store's ids map to: ``[lo, hi)``."""
    return store_id << RUN_BITS, (store_id + 1) << RUN_BITS


def batched(items: Iterator[Bodies], limit: int) -> Iterator[Bodies]:
    """Join small bodies up to ``limit`` bytes: fewer, larger inserts (parts)."""
    buf: list[Bodies] = []
    size = 0
    for chunk in itertools.chain(items, [Bodies()]):
        if chunk.count and size + chunk.size <= limit:
            buf.append(chunk)
            size += chunk.size
            continue
        if buf:
            yield Bodies(
                b"".join(c.history for c in buf),
                b"".join(c.rows for c in buf),
                sum(c.count for c in buf),
            )
        buf, size = ([chunk], chunk.size) if chunk.count else ([], 0)
