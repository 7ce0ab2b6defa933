"""The fork forest in LMDB: the segments a view is made of, ancestors, children,
and the timelines a rewind archived. Each walks parent pointers; nothing is
copied. The walks themselves are ``describe``'s, over :class:`LmdbRecords`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import lmdb

from stepline_daemon import describe
from stepline_daemon.store import layout
from stepline_daemon.store.history import Segment
from stepline_daemon.store.layout import U64, Record
from stepline_daemon.store.records import Store


class LmdbRecords:
    """:class:`describe.Records` over one LMDB transaction."""

    def __init__(self, store: Store, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn

    def record(self, run_no: int) -> Record:
        return self.store.record(self.txn, run_no)

    def children(self, run_no: int) -> Iterator[tuple[int, int]]:
        cur = self.txn.cursor(db=self.store.children)
        for key, value in layout.with_prefix(cur, U64.pack(run_no)):
            yield U64.unpack(key[8:])[0], U64.unpack(value)[0]

    def timelines(self, project: str) -> Iterator[Record]:
        for value in self.txn.cursor(db=self.store.runs).iternext(keys=False, values=True):
            rec: Record = layout.unpack(cast(bytes, value))
            if rec["project"] == project:
                yield rec


def segments(
    store: Store, txn: lmdb.Transaction, rec: Record, include_parent: bool = True
) -> list[Segment]:
    """The ordered pieces of history a run's view is made of, root first."""
    spans = describe.segments(LmdbRecords(store, txn), rec, include_parent)
    return [Segment(*span) for span in spans]


def lineage(store: Store, txn: lmdb.Transaction, rec: Record) -> list[dict[str, Any]]:
    """Ancestors, nearest first: each with the step the view branches at."""
    return describe.lineage(LmdbRecords(store, txn), rec)


def archived(store: Store, txn: lmdb.Transaction, rec: Record) -> list[dict[str, Any]]:
    """Older timelines of this id that rewinds replaced, newest first."""
    return describe.archived(LmdbRecords(store, txn), rec)


def children_of(
    store: Store, txn: lmdb.Transaction, run_no: int, deleted: bool = False
) -> list[dict[str, Any]]:
    """Forks and rewinds branching from ``run_no``; deleted ones only if asked."""
    return describe.children_of(LmdbRecords(store, txn), run_no, deleted)


def timelines(store: Store, txn: lmdb.Transaction, project: str) -> list[dict[str, Any]]:
    """Every timeline of a project, archived ones too: the fork forest's nodes."""
    return describe.timelines(LmdbRecords(store, txn), project)
