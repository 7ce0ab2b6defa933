"""Writing runs: create, fork, rewind and resume (``init``), append rows, update
a run's record, and what a lost client leaves behind.

Each function validates everything before its first ``put`` (see ``records``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, cast

import lmdb

from stepline.errors import (
    InvalidFork,
    InvalidResume,
    LimitExceeded,
    RequestError,
    RunExists,
    RunNotFound,
    RunNotWritable,
    StepOrderError,
)
from stepline_daemon import summary
from stepline_daemon.batches import Checked, chunks_of
from stepline_daemon.messages import (
    Batch,
    DefineMetric,
    Finish,
    Init,
    Origin,
    SetConfig,
    SetSummary,
)
from stepline_daemon.states import WRITABLE, Event, State, can, transition
from stepline_daemon.store import catalog, history, layout
from stepline_daemon.store.history import Segment
from stepline_daemon.store.layout import U64, Record, hkey
from stepline_daemon.store.records import Store

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


# ------------------------------------------------------------------- init


def init(store: Store, txn: lmdb.Transaction, req: Init, client: str) -> dict[str, Any]:
    """Create, fork, rewind or resume a run, as ``init`` asks."""
    if req.origin is not None:
        return _from_cluster(store, txn, req, client, req.origin)
    if req.fork_from is not None:
        return _fork(store, txn, req, client)
    if req.resume_from is not None:
        return _rewind(store, txn, req, client)
    existing = store.lookup(txn, req.project, req.run_id) if req.run_id is not None else None
    if existing is not None:
        if req.resume in ("allow", "must"):
            return _resume(store, txn, req, client, existing)
        hint = "" if req.resume == "never" else "; pass resume='allow' to continue it"
        raise RunExists(f"run {req.run_id!r} already exists in project {req.project!r}{hint}")
    if req.resume == "must":
        raise RunNotFound(f"resume='must': run {req.run_id!r} does not exist in {req.project!r}")
    run_id = req.run_id if req.run_id is not None else _fresh_id(store, txn, req.project)
    _count_run(store, txn, req.project)
    rec = _new_record(store, txn, req, client, run_id, None, -1)
    return _created(store, txn, rec, "new")


def _fork(store: Store, txn: lmdb.Transaction, req: Init, client: str) -> dict[str, Any]:
    ref = req.fork_from
    assert ref is not None
    parent = store.lookup(txn, req.project, ref.run_id)
    if parent is None:
        raise InvalidFork(f"fork_from: parent run {ref.run_id!r} does not exist in {req.project!r}")
    if req.run_id == ref.run_id:
        raise InvalidFork(f"fork_from: the child id {req.run_id!r} is the parent's own id")
    if ref.step > parent["last_step"]:
        raise InvalidFork(
            f"fork_from: step {ref.step} is beyond parent {ref.run_id!r}'s last step "
            f"{parent['last_step']}"
        )
    if req.run_id is not None and store.lookup(txn, req.project, req.run_id) is not None:
        raise RunExists(f"run {req.run_id!r} already exists in project {req.project!r}")
    _count_run(store, txn, req.project)
    rec = _branch(store, txn, req, client, req.run_id, parent, ref.step)
    return _created(store, txn, rec, "fork")


def _rewind(store: Store, txn: lmdb.Transaction, req: Init, client: str) -> dict[str, Any]:
    """A new timeline for the same id from ``step``; the old one is archived."""
    ref = req.resume_from
    assert ref is not None
    old = store.lookup(txn, req.project, ref.run_id)
    if old is None:
        raise RunNotFound(f"resume_from: run {ref.run_id!r} does not exist in {req.project!r}")
    if ref.step > old["last_step"]:
        raise InvalidResume(
            f"resume_from: step {ref.step} is beyond run {ref.run_id!r}'s last step "
            f"{old['last_step']}"
        )
    rec = _branch(store, txn, req, client, ref.run_id, old, ref.step)
    rec["config"] = {**old["config"], **req.config}
    rec["name"] = req.name if req.name is not None else old["name"]
    rec["tags"] = req.tags or old["tags"]
    rec["metrics"] = dict(old["metrics"])
    old["state"] = transition(old["state"], Event.REWIND)
    old["archived_by"] = rec["run_no"]
    old["updated"] = rec["created"]
    store.put_record(txn, old)
    return _created(store, txn, rec, "rewind")


def _from_cluster(
    store: Store, txn: lmdb.Transaction, req: Init, client: str, origin: Origin
) -> dict[str, Any]:
    """A local timeline continuing a run held in the cluster (``origin``): a
    fork, a rewind or a resume of it, by the same rules as a local one. Its
    parent pointer names the remote timeline; no row is copied, and the summary
    statistics of the remote view up to the branch step are inherited."""
    remote = origin.record
    if req.fork_from is not None:
        ref, how = req.fork_from, "fork"
        if req.run_id == ref.run_id:
            raise InvalidFork(f"fork_from: the child id {req.run_id!r} is the parent's own id")
        if ref.step > origin.last_step:
            raise InvalidFork(
                f"fork_from: step {ref.step} is beyond parent {ref.run_id!r}'s last step "
                f"{origin.last_step}"
            )
        if req.run_id is not None and store.lookup(txn, req.project, req.run_id) is not None:
            raise RunExists(f"run {req.run_id!r} already exists in project {req.project!r}")
        run_id = req.run_id if req.run_id is not None else _fresh_id(store, txn, req.project)
    else:
        ref_step = req.resume_from.step if req.resume_from is not None else None
        if ref_step is not None and ref_step > origin.last_step:
            raise InvalidResume(
                f"resume_from: step {ref_step} is beyond run {remote['id']!r}'s last step "
                f"{origin.last_step}"
            )
        run_id, how = remote["id"], "rewind" if req.resume_from is not None else "resume"
    held = store.lookup(txn, req.project, run_id)
    if held is None:
        _count_run(store, txn, req.project)
    rec = _new_record(store, txn, req, client, run_id, None, origin.step)
    if held is not None and held["run_no"] != rec["run_no"]:
        # This node's timeline of the run, gone on elsewhere since: archived
        # here as a rewind archives, by the one continuing the cluster's head.
        held["state"] = transition(held["state"], Event.REWIND)
        held["archived_by"] = rec["run_no"]
        held["updated"] = rec["created"]
        store.put_record(txn, held)
    if how != "fork":  # the same run: its config, name, tags and metrics go on
        rec["config"] = {**remote["config"], **req.config}
        rec["name"] = req.name if req.name is not None else remote["name"]
        rec["tags"] = req.tags or remote["tags"]
        rec["metrics"] = dict(remote["metrics"])
    if how == "resume":
        rec["summary_set"] = dict(remote["summary_set"])
    rec["origin"] = {**origin.pointer(), "how": how}
    rec["inherited"] = origin.stats
    return _created(store, txn, rec, how)


def _resume(
    store: Store, txn: lmdb.Transaction, req: Init, client: str, rec: Record
) -> dict[str, Any]:
    rec["state"] = transition(rec["state"], Event.RESUME)
    rec["config"] = {**rec["config"], **req.config}
    if req.name is not None:
        rec["name"] = req.name
    if req.tags:
        rec["tags"] = req.tags
    rec["client"] = client
    rec["peer"] = req.peer
    rec["updated"] = time.time()
    store.put_record(txn, rec)
    return _reply(rec, "resume")


def _count_run(store: Store, txn: lmdb.Transaction, project: str) -> None:
    """One more run id in ``project``, within ``max_runs``."""
    key = layout.count_key(project)
    raw = txn.get(key, db=store.meta)
    if raw is not None:
        n = int(U64.unpack(raw)[0])
    else:  # first count in this project (or a store from before counts)
        n = next((c for p, c in catalog.project_counts(store, txn) if p == project), 0)
    if n >= store.max_runs:
        raise LimitExceeded(
            f"project {project!r} holds {n} runs, this daemon's limit "
            "(--max-runs-per-project); delete some or use another project"
        )
    txn.put(key, U64.pack(n + 1), db=store.meta)


def _fresh_id(store: Store, txn: lmdb.Transaction, project: str) -> str:
    while True:
        run_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
        if store.lookup(txn, project, run_id) is None:
            return run_id


def _new_record(
    store: Store,
    txn: lmdb.Transaction,
    req: Init,
    client: str,
    run_id: str,
    parent: list[int] | None,
    last_step: int,
) -> Record:
    now = time.time()
    return {
        "run_no": store.next_run_no(txn),
        "project": req.project,
        "id": run_id,
        "name": req.name if req.name is not None else run_id,
        "tags": req.tags,
        "state": State.RUNNING.value,
        "config": req.config,
        "metrics": {},
        "summary_set": {},
        "stats": {},
        "inherited": {},
        "last_step": last_step,
        "rows": 0,
        "dropped": 0,
        "parent": parent,
        "archived_by": None,
        "client": client,
        "peer": req.peer,
        "exit_code": None,
        "created": now,
        "updated": now,
    }


def _branch(
    store: Store,
    txn: lmdb.Transaction,
    req: Init,
    client: str,
    run_id: str | None,
    parent: Record,
    step: int,
) -> Record:
    """A new record viewing ``parent``'s history up to ``step``: O(1) in rows."""
    if run_id is None:
        run_id = _fresh_id(store, txn, req.project)
    rec = _new_record(store, txn, req, client, run_id, [parent["run_no"], step], step)
    rec["inherited"] = inherited_stats(store, txn, parent, step)
    txn.put(layout.child_key(parent["run_no"], rec["run_no"]), U64.pack(step), db=store.children)
    return rec


def inherited_stats(
    store: Store, txn: lmdb.Transaction, parent: Record, step: int
) -> summary.Stats:
    """Stats of ``parent``'s view up to ``step``: O(depth + snapshot_every), not O(rows)."""
    rec = parent
    while rec["parent"] is not None and step <= rec["parent"][1]:
        # Up to its fork step, a run's view is its parent's view.
        rec = store.record(txn, rec["parent"][0])
    if step >= rec["last_step"]:
        return summary.merge(rec["inherited"], rec["stats"])
    return summary.merge(rec["inherited"], _own_stats_upto(store, txn, rec["run_no"], step))


def _own_stats_upto(store: Store, txn: lmdb.Transaction, run_no: int, step: int) -> summary.Stats:
    stats: summary.Stats = {}
    lo = 0
    cur = txn.cursor(db=store.snaps)
    if layout.seek_before(cur, hkey(run_no, step + 1)):
        snap_run, snap_step = layout.U64x2.unpack(cast(bytes, cur.key()))
        if snap_run == run_no and snap_step <= step:
            stats = layout.unpack(cast(bytes, cur.value()))
            lo = snap_step + 1
    segs = [Segment(run_no, lo, step)]
    rows = [layout.unpack(packed) for _, packed in history.iter_rows(store, txn, segs)]
    summary.update_batch(stats, rows)
    return stats


def _created(store: Store, txn: lmdb.Transaction, rec: Record, how: str) -> dict[str, Any]:
    store.put_record(txn, rec)
    txn.put(layout.name_key(rec["project"], rec["id"]), U64.pack(rec["run_no"]), db=store.names)
    return _reply(rec, how)


def _reply(rec: Record, how: str) -> dict[str, Any]:
    return {
        "run_no": rec["run_no"],
        "id": rec["id"],
        "project": rec["project"],
        "name": rec["name"],
        "start_step": rec["last_step"] + 1,
        "config": rec["config"],
        "how": how,
        # The timeline a fork or rewind branched from (live streams of a
        # rewound timeline hear of it at once).
        "parent_run_no": rec["parent"][0] if rec["parent"] is not None else None,
    }


# ---------------------------------------------------------------- batches


def writable(store: Store, txn: lmdb.Transaction, run_no: int, client: str) -> Record:
    """The run a batch writes to, if it may be written."""
    rec = store.record(txn, run_no)
    if rec.get("deleted"):
        raise RunNotWritable(f"run {rec['id']!r} was deleted")
    if rec["state"] not in WRITABLE:
        raise RunNotWritable(
            f"run {rec['id']!r} is {rec['state']}; resume it (or, if archived, write to the "
            "timeline that replaced it)"
        )
    if rec["state"] == State.CRASHED and can(rec["state"], Event.REATTACH):
        # The owning client reconnected after we saw it vanish.
        rec["state"] = transition(rec["state"], Event.REATTACH)
    return rec


def append(
    store: Store, txn: lmdb.Transaction, run_no: int, checked: Checked, client: str, seq: int
) -> None:
    """Store one batch of rows whose shape, order and values ``batches`` checked.

    The packed values, when the client sent them packed, are stored as they are;
    the values by column, when the checks made them, feed the summary fold.
    """
    rows, packed, chunks = checked
    rec = writable(store, txn, run_no, client)
    first = rows[0][0] if rows else None
    if first is not None and first <= rec["last_step"]:
        raise StepOrderError(
            f"step {first} is not after run {rec['id']!r}'s last step {rec['last_step']}; "
            "the batch is refused whole"
        )
    key = hkey
    if packed is None:
        packed = list(map(store.pack_row, [values for _, values in rows]))
    txn.cursor(db=store.history).putmulti(
        [(key(run_no, step), blob) for (step, _), blob in zip(rows, packed, strict=True)]
    )
    _fold_stats(store, txn, rec, rows, chunks)
    if rows and store.changed is not None:
        store.changed.appended(run_no, rows[0][0], rows[-1][0], len(rows))
    if rows:
        rec["last_step"] = rows[-1][0]
        rec["rows"] += len(rows)
    rec["updated"] = time.time()
    store.put_record(txn, rec)
    store.mark_seq(txn, client, run_no, seq)


def _fold_stats(
    store: Store, txn: lmdb.Transaction, rec: Record, rows: list[Any], chunks: Any
) -> None:
    """Summary stats, in pieces that end where a snapshot is due."""
    stats, every, done = rec["stats"], store.snapshot_every, rec["rows"]
    if chunks is None:
        chunks = chunks_of([values for _, values in rows])
    i = 0
    while i < len(rows):
        j = min(len(rows), i + every - done % every)
        summary.update_chunks(stats, chunks, i, j)
        done += j - i
        if done % every == 0:
            txn.put(hkey(rec["run_no"], rows[j - 1][0]), layout.pack(stats), db=store.snaps)
        i = j


def update(store: Store, txn: lmdb.Transaction, req: Batch, client: str) -> None:
    """``config``, ``summary``, ``metric`` and ``finish`` batches."""
    rec = writable(store, txn, req.run_no, client)
    if isinstance(req, SetConfig):
        rec["config"] = {**rec["config"], **req.config}
    elif isinstance(req, SetSummary):
        rec["summary_set"] = {**rec["summary_set"], **req.summary}
    elif isinstance(req, DefineMetric):
        rec["metrics"] = {**rec["metrics"], req.name: req.mode}
    elif isinstance(req, Finish):
        event = Event.FINISH_OK if req.exit_code == 0 else Event.FINISH_ERROR
        rec["state"] = transition(rec["state"], event)
        rec["exit_code"] = req.exit_code
        rec["dropped"] += req.dropped
    else:  # pragma: no cover - the op table routes only the batches above here
        raise RequestError(f"unknown update {type(req).__name__}")
    rec["updated"] = time.time()
    store.put_record(txn, rec)
    store.mark_seq(txn, client, req.run_no, req.seq)


# ---------------------------------------------------------- lost clients


def crash_orphans(store: Store) -> int:
    """At start-up: runs left ``running`` by a previous daemon lost their client's
    connection with it. Mark them crashed; a client that is alive and writes
    again re-attaches. Returns how many were marked."""
    n = 0
    with store.write() as txn:
        for _, raw in txn.cursor(db=store.runs):
            rec: Record = layout.unpack(cast(bytes, raw))
            if rec["state"] == State.RUNNING:
                rec["state"] = transition(rec["state"], Event.DISCONNECT)
                store.put_record(txn, rec)
                n += 1
    return n


def mark_crashed(store: Store, txn: lmdb.Transaction, run_no: int, client: str) -> None:
    """The owning client disconnected without ``finish``."""
    rec = store.record(txn, run_no)
    if rec["client"] == client and can(rec["state"], Event.DISCONNECT):
        rec["state"] = transition(rec["state"], Event.DISCONNECT)
        rec["updated"] = time.time()
        store.put_record(txn, rec)
