"""Deleting runs: soft deletes, purges, and the garbage collection of rows no
live timeline reads any more."""

from __future__ import annotations

import time
from typing import Any, cast

import lmdb

from stepline.errors import InUse, RunNotWritable
from stepline_daemon.messages import Delete
from stepline_daemon.states import State
from stepline_daemon.store import layout, lineage
from stepline_daemon.store.layout import U64, Record
from stepline_daemon.store.records import Store

# How long a crashed run is protected from delete (without force): its client
# may just be reconnecting.
CRASH_GRACE = 60.0


def delete(store: Store, txn: lmdb.Transaction, req: Delete) -> dict[str, Any]:
    """Delete a run id: every timeline of it (the current one and those rewinds
    archived). Soft: the id is free again and no read finds it, but the rows stay
    while forks read them. ``purge``: remove the rows too, refused while any
    fork that is not deleted still reads them."""
    rec = store.find(txn, req.project, req.run_id)
    _check_deletable(rec, req.force)
    own = [rec] + [store.record(txn, a["run_no"]) for a in lineage.archived(store, txn, rec)]
    # Decided before the first put: a refused purge leaves the run as it was.
    doomed = _deleted_closure(store, txn, [t["run_no"] for t in own]) if req.purge else []
    now = time.time()
    for t in own:
        t["deleted"] = now
        t["updated"] = now
        store.put_record(txn, t)
    txn.delete(layout.name_key(req.project, rec["id"]), db=store.names)
    key = layout.count_key(req.project)
    raw = txn.get(key, db=store.meta)
    if raw is not None:
        txn.put(key, U64.pack(max(0, U64.unpack(raw)[0] - 1)), db=store.meta)
    rows = _purge_all(store, txn, doomed)
    return {"id": rec["id"], "timelines": len(own), "purged": len(doomed), "rows": rows}


def _check_deletable(rec: Record, force: bool) -> None:
    if rec["state"] == State.RUNNING:
        raise RunNotWritable(
            f"run {rec['id']!r} is running; finish it (or let its process end) first"
        )
    if rec["state"] == State.CRASHED and time.time() - rec["updated"] < CRASH_GRACE and not force:
        # After a daemon restart every live run reads crashed until its client
        # reconnects and writes: deleting it would lose what that client sends.
        raise RunNotWritable(
            f"run {rec['id']!r} crashed less than {CRASH_GRACE:.0f}s ago and its process may "
            "still reconnect; wait, or delete with force"
        )


def purge_deleted(store: Store, txn: lmdb.Transaction) -> dict[str, Any]:
    """Remove for good every deleted timeline no live timeline reads (``gc``)."""
    deleted = {
        rec["run_no"]: rec
        for raw in txn.cursor(db=store.runs).iternext(keys=False)
        if (rec := layout.unpack(cast(bytes, raw))).get("deleted")
    }
    doomed: set[int] = set()
    for run_no in deleted:
        try:
            doomed.update(_deleted_closure(store, txn, [run_no]))
        except InUse:
            continue  # a live fork still reads it: kept, soft-deleted
    _keep_rewound_with_older(deleted, doomed)
    rows = _purge_all(store, txn, sorted(doomed))
    return {"purged": len(doomed), "rows": rows, "kept": len(deleted) - len(doomed)}


def _keep_rewound_with_older(deleted: dict[int, Record], doomed: set[int]) -> None:
    """A rewind's newer timeline goes only with the older one it archived, so a
    kept timeline never names a purged one in ``archived_by``."""
    changed = True
    while changed:
        changed = False
        for run_no in list(doomed):
            parent = deleted[run_no]["parent"]
            older = deleted.get(parent[0]) if parent is not None else None
            if (
                older is not None
                and older["id"] == deleted[run_no]["id"]
                and parent[0] not in doomed
            ):
                doomed.discard(run_no)
                changed = True


def _deleted_closure(store: Store, txn: lmdb.Transaction, roots: list[int]) -> list[int]:
    """``roots`` and every descendant of them, all of which must be deleted."""
    seen, todo, live = set(roots), list(roots), []
    while todo:
        for child in lineage.children_of(store, txn, todo.pop(), deleted=True):
            if child["run_no"] in seen:
                continue
            if not store.record(txn, child["run_no"]).get("deleted"):
                live.append(f"{child['id']} (forked at step {child['step']})")
                continue
            seen.add(child["run_no"])
            todo.append(child["run_no"])
    if live:
        raise InUse(
            "cannot purge: these runs still read its rows: "
            + ", ".join(sorted(set(live)))
            + "; delete them first (the run stays soft-deleted)"
        )
    return sorted(seen)


def _purge(store: Store, txn: lmdb.Transaction, run_no: int) -> int:
    """Remove one deleted timeline for good; returns how many rows went."""
    rec = store.record(txn, run_no)
    prefix = U64.pack(run_no)
    rows = layout.delete_prefix(txn, store.history, prefix)
    layout.delete_prefix(txn, store.snaps, prefix)
    if rec["parent"] is not None:
        txn.delete(layout.child_key(rec["parent"][0], run_no), db=store.children)
    layout.delete_prefix(txn, store.children, prefix)
    txn.delete(layout.run_key(run_no), db=store.runs)
    if store.changed is not None:
        store.changed.purge(run_no, rec["project"])
    return rows


def _purge_all(store: Store, txn: lmdb.Transaction, doomed: list[int]) -> int:
    """``_purge`` each, and their batch seqs in one pass over ``seqs``."""
    if not doomed:
        return 0
    rows = sum(_purge(store, txn, run_no) for run_no in doomed)
    gone = {U64.pack(n) for n in doomed}
    keys = map(bytes, txn.cursor(db=store.seqs).iternext(values=False))
    for k in [k for k in keys if k[-8:] in gone and k[-9:-8] == b"\0"]:
        txn.delete(k, db=store.seqs)
    return rows
