"""The change index: what each commit changed, in commit order, for the shipper.

While the node replicates to a cluster, every write transaction that changes a
run record, appends rows or purges a timeline also writes one entry here, in
the same transaction: ``seq:u64 -> {t, c, r, h, p}`` (commit time, rows logged
so far, the records touched, the row ranges appended, the timelines purged).
The entry names what changed; the shipper reads the rows and records
themselves from the store, so there is no second copy of the data. Entries go
once the cluster acknowledged them (``advance``); the cursor moves in the same
transaction.

An entry may name more than changed (a refused request inside a committed
group): shipping an unchanged record or an absent range again is harmless,
because re-inserts collapse in the cluster.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import lmdb

from stepline.rows import STEP_MAX
from stepline_daemon.cluster.schema import STORE_BITS
from stepline_daemon.store import layout
from stepline_daemon.store.layout import U64

_ON = b"changes_on"
_NEXT = b"changes_next"
_CURSOR = b"changes_cursor"
_LOGGED = b"changes_rows"  # rows appended since tracking began, through the last entry
_SHIPPED = b"changes_shipped"  # the same count, through the cursor
_STORE_ID = b"store_id"


@dataclass
class ChangeSet:
    """What the open write transaction changed so far."""

    runs: dict[int, str] = field(default_factory=dict)  # run_no -> project
    rows: dict[int, list[int]] = field(default_factory=dict)  # run_no -> [lo, hi, n]
    purged: dict[int, str] = field(default_factory=dict)

    def record(self, run_no: int, project: str) -> None:
        self.runs[run_no] = project

    def appended(self, run_no: int, lo: int, hi: int, n: int) -> None:
        span = self.rows.get(run_no)
        if span is None:
            self.rows[run_no] = [lo, hi, n]
        else:
            span[0], span[1], span[2] = min(span[0], lo), max(span[1], hi), span[2] + n

    def purge(self, run_no: int, project: str) -> None:
        self.purged[run_no] = project

    def __bool__(self) -> bool:
        return bool(self.runs or self.rows or self.purged)


@dataclass(frozen=True)
class Entry:
    seq: int
    time: float
    logged: int  # rows logged since tracking began, through this entry
    runs: list[tuple[int, str]]
    rows: list[tuple[int, int, int, int]]  # run_no, lo, hi, n
    purged: list[tuple[int, str]]
    # The first entry after tracking began: everything the store holds, and the
    # cluster's timelines of this node that it no longer holds are purged.
    full: bool = False


def _get(txn: lmdb.Transaction, meta: Any, key: bytes, default: int = 0) -> int:
    raw = txn.get(key, db=meta)
    return default if raw is None else int(U64.unpack(cast(bytes, raw))[0])


def _put(txn: lmdb.Transaction, meta: Any, key: bytes, value: int) -> None:
    txn.put(key, U64.pack(value), db=meta)


def store_id(txn: lmdb.Transaction, meta: Any) -> int:
    """This store's id in the cluster, chosen at random the first time it is
    asked for (in a write transaction) and kept for good."""
    sid = _get(txn, meta, _STORE_ID)
    if sid == 0:
        sid = 1 + secrets.randbelow((1 << STORE_BITS) - 1)
        _put(txn, meta, _STORE_ID, sid)
    return sid


def tracking(txn: lmdb.Transaction, meta: Any) -> bool:
    return txn.get(_ON, db=meta) is not None


def start(txn: lmdb.Transaction, changes: Any, runs: Any, meta: Any) -> None:
    """Begin tracking: one entry that stands for everything the store holds."""
    if tracking(txn, meta):
        return
    recs = [layout.unpack(cast(bytes, v)) for v in txn.cursor(db=runs).iternext(keys=False)]
    entry = {
        "t": time.time(),
        "c": sum(r["rows"] for r in recs),
        "r": [[r["run_no"], r["project"]] for r in recs],
        "h": [[r["run_no"], 0, STEP_MAX, r["rows"]] for r in recs],
        "p": [],
        "full": True,
    }
    # Seqs go on from where an earlier spell of tracking left them: they are
    # the cluster's versions of run records, which must only ever grow.
    seq = _get(txn, meta, _NEXT, 1)
    txn.put(_ON, b"1", db=meta)
    txn.put(U64.pack(seq), layout.pack(entry), db=changes)
    _put(txn, meta, _NEXT, seq + 1)
    _put(txn, meta, _CURSOR, seq - 1)
    _put(txn, meta, _LOGGED, entry["c"])
    _put(txn, meta, _SHIPPED, 0)


def stop(txn: lmdb.Transaction, changes: Any, meta: Any) -> None:
    """Stop tracking (the node no longer replicates); starting again re-ships all."""
    if not tracking(txn, meta):
        return
    layout.delete_prefix(txn, changes, b"")
    for key in (_ON, _CURSOR, _LOGGED, _SHIPPED):  # not _NEXT: see ``start``
        txn.delete(key, db=meta)


def log(txn: lmdb.Transaction, changes: Any, meta: Any, cs: ChangeSet, now: float) -> None:
    """Write ``cs`` as the next entry, in the transaction that made the changes."""
    seq = _get(txn, meta, _NEXT, 1)
    logged = _get(txn, meta, _LOGGED) + sum(span[2] for span in cs.rows.values())
    entry = {
        "t": now,
        "c": logged,
        "r": [[n, p] for n, p in cs.runs.items()],
        "h": [[n, *span] for n, span in cs.rows.items()],
        "p": [[n, p] for n, p in cs.purged.items()],
    }
    txn.put(U64.pack(seq), layout.pack(entry), db=changes)
    _put(txn, meta, _NEXT, seq + 1)
    _put(txn, meta, _LOGGED, logged)


def last_seq(txn: lmdb.Transaction, meta: Any) -> int:
    """The newest entry's seq (0: none yet)."""
    return _get(txn, meta, _NEXT, 1) - 1


def pending(txn: lmdb.Transaction, changes: Any) -> Iterator[Entry]:
    """Entries not yet acknowledged by the cluster, oldest first."""
    for key, raw in txn.cursor(db=changes):
        e = layout.unpack(cast(bytes, raw))
        yield Entry(
            U64.unpack(key)[0],
            e["t"],
            e["c"],
            [(n, p) for n, p in e["r"]],
            [(n, lo, hi, k) for n, lo, hi, k in e["h"]],
            [(n, p) for n, p in e["p"]],
            bool(e.get("full")),
        )


def advance(txn: lmdb.Transaction, changes: Any, meta: Any, seq: int, logged: int) -> None:
    """The cluster holds everything through entry ``seq``: drop those entries."""
    if seq <= _get(txn, meta, _CURSOR):
        return  # a resend after a restart: already done
    cur = txn.cursor(db=changes)
    while cur.first() and U64.unpack(cast(bytes, cur.key()))[0] <= seq:
        cur.delete()
    _put(txn, meta, _CURSOR, seq)
    _put(txn, meta, _SHIPPED, logged)


@dataclass(frozen=True)
class Lag:
    rows: int  # rows logged and not yet acknowledged by the cluster
    entries: int
    oldest: float | None  # commit time of the oldest unacknowledged entry


def lag(txn: lmdb.Transaction, changes: Any, meta: Any) -> Lag:
    first = txn.cursor(db=changes)
    if not first.first():
        return Lag(0, 0, None)
    oldest = layout.unpack(cast(bytes, first.value()))["t"]
    entries = _get(txn, meta, _NEXT, 1) - 1 - _get(txn, meta, _CURSOR)
    return Lag(_get(txn, meta, _LOGGED) - _get(txn, meta, _SHIPPED), entries, oldest)
