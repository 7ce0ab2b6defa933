"""The fork forest: the segments a view is made of, ancestors, children, and the
timelines a rewind archived. Each walks parent pointers; nothing is copied."""

from __future__ import annotations

from typing import Any, cast

import lmdb

from stepline.rows import STEP_MAX
from stepline_daemon.store import layout
from stepline_daemon.store.history import Segment
from stepline_daemon.store.layout import U64, Record
from stepline_daemon.store.records import Store


def segments(
    store: Store, txn: lmdb.Transaction, rec: Record, include_parent: bool = True
) -> list[Segment]:
    """The ordered pieces of history a run's view is made of, root first."""
    segs = [Segment(rec["run_no"], 0, STEP_MAX)]
    if not include_parent:
        return segs
    cap = STEP_MAX
    parent = rec["parent"]
    while parent is not None:
        pno, step = parent
        cap = min(cap, step)
        segs.append(Segment(pno, 0, cap))
        parent = store.record(txn, pno)["parent"]
    segs.reverse()
    return segs


def lineage(store: Store, txn: lmdb.Transaction, rec: Record) -> list[dict[str, Any]]:
    """Ancestors, nearest first: each with the step the view branches at."""
    out = []
    parent = rec["parent"]
    while parent is not None:
        p = store.record(txn, parent[0])
        out.append({"id": p["id"], "run_no": p["run_no"], "step": parent[1], "state": p["state"]})
        parent = p["parent"]
    return out


def archived(store: Store, txn: lmdb.Transaction, rec: Record) -> list[dict[str, Any]]:
    """Older timelines of this id that rewinds replaced, newest first; each with
    the step the newer timeline branched from it at."""
    out = []
    parent = rec["parent"]
    while parent is not None:
        p = store.record(txn, parent[0])
        if p["id"] != rec["id"] or p["archived_by"] is None:
            break
        out.append(
            {
                "id": p["id"],
                "run_no": p["run_no"],
                "step": parent[1],
                "last_step": p["last_step"],
                "state": p["state"],
                "created": p["created"],
                "updated": p["updated"],
            }
        )
        parent = p["parent"]
    return out


def children_of(
    store: Store, txn: lmdb.Transaction, run_no: int, deleted: bool = False
) -> list[dict[str, Any]]:
    """Forks and rewinds branching from ``run_no``; deleted ones only if asked."""
    out = []
    for key, value in layout.with_prefix(txn.cursor(db=store.children), U64.pack(run_no)):
        child = store.record(txn, U64.unpack(key[8:])[0])
        if child.get("deleted") and not deleted:
            continue
        out.append(
            {
                "id": child["id"],
                "run_no": child["run_no"],
                "step": U64.unpack(value)[0],
                "state": child["state"],
            }
        )
    return out


def timelines(store: Store, txn: lmdb.Transaction, project: str) -> list[dict[str, Any]]:
    """Every timeline of a project, archived ones too: the fork forest's nodes."""
    out = []
    for value in txn.cursor(db=store.runs).iternext(keys=False, values=True):
        rec = layout.unpack(cast(bytes, value))
        if rec["project"] != project:
            continue
        parent = rec["parent"]
        out.append(
            {
                "id": rec["id"],
                "run_no": rec["run_no"],
                "name": rec["name"],
                "state": rec["state"],
                "parent_run_no": None if parent is None else parent[0],
                "step": None if parent is None else parent[1],
                "archived_by": rec["archived_by"],
                "last_step": rec["last_step"],
                "created": rec["created"],
                "deleted": bool(rec.get("deleted")),
            }
        )
    return out
