"""The LMDB layout, and every read and write on it.

Named databases, fixed-width big-endian keys so a run's rows form one ordered,
contiguous key range:

* ``history``  ``run_no:u64 | step:u64`` -> msgpack map of that step's values
* ``runs``     ``run_no:u64`` -> msgpack run record
* ``names``    ``project \\0 run_id`` -> the run_no that id currently names
* ``children`` ``parent_no:u64 | child_no:u64`` -> fork step (lineage index)
* ``seqs``     ``client_id \\0 run_no:u64`` -> last answered batch seq
* ``snaps``    ``run_no:u64 | step:u64`` -> the run's own summary stats up to that
  step, every ``snapshot_every`` rows, so a fork's inherited summary costs a
  bounded scan however long the parent
* ``tokens``   a request's idempotency token -> ``{op, t, result}``: the outcome of
  an ``init``, ``delete`` or ``purge``, written in the transaction that applied
  it, so a resend after a lost reply is answered with it (kept ``TOKEN_TTL``)
* ``meta``     ``schema``, ``next_run_no``

A fork is a new record whose ``parent`` is ``(parent_no, step)``; a rewind is a
new run_no for the same id, pointing at the old run_no, with ``names`` moved.
Nothing is ever copied. Reads resolve the chain of parents, each capped at the
smallest fork step below it.

Write methods take a write transaction owned by the caller (the writer thread
groups many requests into one); each validates everything before its first
``put``, so a refused request leaves the transaction untouched.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lmdb
import msgpack

from stepline import protocol
from stepline.errors import (
    InUse,
    InvalidFork,
    InvalidResume,
    LimitExceeded,
    RequestError,
    RunExists,
    RunNotFound,
    RunNotWritable,
    StepOrderError,
)
from stepline.rows import STEP_MAX, Chunks, chunks_of, plain_value_problem
from stepline_daemon import summary
from stepline_daemon.states import WRITABLE, Event, State, can, transition

SCHEMA_VERSION = 1
# Small enough that a fork's bounded scan is well under a millisecond; a snapshot
# every 64 rows costs a few bytes per row.
SNAPSHOT_EVERY = 64
# How long a crashed run is protected from delete (without force): its client
# may just be reconnecting.
CRASH_GRACE = 60.0
# How long a request's outcome is kept for its resends. A client resends only
# within its call's timeout (seconds to minutes); a day covers any sane one.
TOKEN_TTL = 24 * 3600.0

_U64 = struct.Struct(">Q")
# For splicing ``_step`` into stored rows: a fixmap header one entry larger, and
# the key "_step" followed by the uint64 marker (the step's 8 bytes follow).
_FIXMAP_PLUS_ONE = {b: bytes((b + 1,)) for b in range(0x80, 0x8F)}
_STEP_U64 = b"\xa5_step\xcf"
_U64x2 = struct.Struct(">QQ")

# Run ids and projects end up in URLs, file names and log lines.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"

Record = dict[str, Any]
Row = tuple[int, dict[str, Any]]


class TruncatedStore(Exception):
    """``data.mdb`` is shorter than its last commit needs (a copy cut short)."""


def check_not_truncated(env: lmdb.Environment, path: Path) -> None:
    """Refuse a store whose file ends before its last page: reading past the end
    of an mmap'd file kills the process with SIGBUS, with no message."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = (path / "data.mdb").stat().st_size
    if size < needed:
        env.close()
        raise TruncatedStore(
            f"{path / 'data.mdb'} is truncated: {size} bytes, its last commit needs {needed}"
        )


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def hkey(run_no: int, step: int) -> bytes:
    return _U64x2.pack(run_no, step)


def hkey_step(key: bytes) -> int:
    step: int = _U64x2.unpack(key)[1]
    return step


def check_project(project: Any) -> str:
    if not isinstance(project, str) or not _PROJECT_RE.fullmatch(project):
        raise RequestError(
            f"project {project!r} is not valid: 1-128 characters of letters, digits, '.', '_', '-'"
        )
    return project


def check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not _ID_RE.fullmatch(run_id):
        raise RequestError(
            f"run id {run_id!r} is not valid: 1-128 characters of letters, digits, '.', '_', '-'"
        )
    return run_id


def _check_ref(ref: Any, what: str) -> tuple[str, int]:
    if (
        not isinstance(ref, (list, tuple))
        or len(ref) != 2
        or not isinstance(ref[0], str)
        or type(ref[1]) is not int
    ):
        raise RequestError(f"{what} must be [run_id, step], got {ref!r}")
    run_id = check_run_id(ref[0])
    if not 0 <= ref[1] <= STEP_MAX:
        raise RequestError(f"{what} step {ref[1]} is not in [0, 2**63)")
    return run_id, ref[1]


def _check_map(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise RequestError(f"{what} must be a map with string keys")
    why = plain_value_problem(value)
    if why is not None:
        raise RequestError(f"{what}: {why}")
    return value


@dataclass(frozen=True)
class Segment:
    """Steps ``lo..hi`` (inclusive) of run ``run_no``'s own rows."""

    run_no: int
    lo: int
    hi: int


class Store:
    def __init__(
        self,
        path: Path,
        map_size: int,
        snapshot_every: int = SNAPSHOT_EVERY,
        max_runs: int = 100_000,
        readonly: bool = False,
    ) -> None:
        """``readonly``: a reader beside the daemon (read workers, ``check``);
        ``map_size`` 0 then takes the map size the store was left with."""
        self.snapshot_every = snapshot_every
        self.max_runs = max_runs
        # Writes happen on one thread at a time (the writer), so one Packer serves.
        self._pack_row = msgpack.Packer(use_bin_type=True).pack
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path),
            map_size=map_size or 1024 * 1024,
            max_dbs=16,
            # An ack promises the rows survive power loss: keep full fsync.
            sync=True,
            metasync=True,
            readahead=False,
            max_readers=256,
            readonly=readonly,
            create=not readonly,
        )
        check_not_truncated(self.env, path)
        dbs = [
            self.env.open_db(name, create=not readonly)
            for name in (
                b"history",
                b"runs",
                b"names",
                b"children",
                b"seqs",
                b"snaps",
                b"tokens",
                b"meta",
            )
        ]
        (
            self.history,
            self.runs,
            self.names,
            self.children,
            self.seqs,
            self.snaps,
            self.tokens,
            self.meta,
        ) = dbs
        if readonly:
            return
        # Reader slots of processes that died (a killed daemon's read workers).
        self.env.reader_check()
        with self.env.begin(write=True) as txn:
            schema = txn.get(b"schema", db=self.meta)
            if schema is None:
                txn.put(b"schema", _U64.pack(SCHEMA_VERSION), db=self.meta)
                txn.put(b"next_run_no", _U64.pack(1), db=self.meta)
            elif _U64.unpack(schema)[0] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"data dir {path} has schema {_U64.unpack(schema)[0]}, "
                    f"this daemon reads {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        self.env.close()

    # ---------------------------------------------------------------- records

    def record(self, txn: lmdb.Transaction, run_no: int) -> Record:
        raw = txn.get(_U64.pack(run_no), db=self.runs)
        if raw is None:
            raise RunNotFound(f"no run with internal number {run_no}")
        rec: Record = _unpack(cast(bytes, raw))
        return rec

    def _put_record(self, txn: lmdb.Transaction, rec: Record) -> None:
        txn.put(_U64.pack(rec["run_no"]), _pack(rec), db=self.runs)

    def lookup(self, txn: lmdb.Transaction, project: str, run_id: str) -> Record | None:
        raw = txn.get(self._name_key(project, run_id), db=self.names)
        if raw is None:
            return None
        return self.record(txn, _U64.unpack(raw)[0])

    def find(self, txn: lmdb.Transaction, project: Any, run_id: Any) -> Record:
        rec = self.lookup(txn, check_project(project), check_run_id(run_id))
        if rec is None:
            raise RunNotFound(f"run {run_id!r} does not exist in project {project!r}")
        return rec

    @staticmethod
    def _name_key(project: str, run_id: str) -> bytes:
        return project.encode() + b"\0" + run_id.encode()

    def _next_run_no(self, txn: lmdb.Transaction) -> int:
        n = int(_U64.unpack(cast(bytes, txn.get(b"next_run_no", db=self.meta)))[0])
        txn.put(b"next_run_no", _U64.pack(n + 1), db=self.meta)
        return n

    # ------------------------------------------------------------- resolution

    def segments(
        self, txn: lmdb.Transaction, rec: Record, include_parent: bool = True
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
            parent = self.record(txn, pno)["parent"]
        segs.reverse()
        return segs

    @staticmethod
    def _bounds(
        segs: list[Segment], min_step: int, max_step: int | None
    ) -> Iterator[tuple[int, int, int]]:
        """(run_no, lo, hi) of each segment clipped to ``[min_step, max_step)``."""
        hi_limit = STEP_MAX if max_step is None else max_step - 1
        for seg in segs:
            lo, hi = max(seg.lo, min_step), min(seg.hi, hi_limit)
            if lo <= hi:
                yield seg.run_no, lo, hi

    def iter_rows(
        self,
        txn: lmdb.Transaction,
        segs: list[Segment],
        min_step: int = 0,
        max_step: int | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """(step, packed values) over the segments, in step order; max exclusive."""
        cur = txn.cursor(db=self.history)
        for run_no, lo, hi in self._bounds(segs, min_step, max_step):
            if not cur.set_range(hkey(run_no, lo)):
                continue
            for key, value in cur:
                key_run, step = _U64x2.unpack(key)
                if key_run != run_no or step > hi:
                    break
                yield step, cast(bytes, value)

    def scan_parts(
        self,
        txn: lmdb.Transaction,
        segs: list[Segment],
        min_step: int,
        max_step: int | None,
        limit: int,
        max_bytes: int,
    ) -> tuple[list[Any], int, int | None]:
        """One page of whole rows as reply parts (see ``protocol.step_row_parts``):
        (parts, row count, the step the next page starts at or None).

        The hottest read loop, so it compares raw big-endian keys and reuses the
        key's own bytes as ``_step`` (msgpack uint64), decoding nothing.
        """
        parts: list[Any] = []
        add = parts.extend
        count = size = 0
        cur = txn.cursor(db=self.history)
        for run_no, lo, hi in self._bounds(segs, min_step, max_step):
            if not cur.set_range(hkey(run_no, lo)):
                continue
            end = hkey(run_no, hi)
            for key, value in cast(Iterator[tuple[bytes, bytes]], cur):
                if key > end:
                    break
                if count == limit or size > max_bytes:
                    return parts, count, hkey_step(key)
                size += len(value)
                count += 1
                b0 = value[0]
                if 0x80 <= b0 < 0x8F:  # fixmap with room for one more key
                    add((_FIXMAP_PLUS_ONE[b0], _STEP_U64, key[8:], memoryview(value)[1:]))
                else:
                    add(protocol.step_row_parts(hkey_step(key), value))
        return parts, count, None

    def iter_keys(
        self, txn: lmdb.Transaction, segs: list[Segment], min_step: int, max_step: int | None
    ) -> Iterator[bytes]:
        """History keys only, without reading values: for counting and sampling."""
        cur = txn.cursor(db=self.history)
        for run_no, lo, hi in self._bounds(segs, min_step, max_step):
            if not cur.set_range(hkey(run_no, lo)):
                continue
            for key in cur.iternext(keys=True, values=False):
                key_run, step = _U64x2.unpack(key)
                if key_run != run_no or step > hi:
                    break
                yield cast(bytes, key)

    def sample_keys(
        self,
        txn: lmdb.Transaction,
        segs: list[Segment],
        min_step: int,
        max_step: int | None,
        samples: int,
    ) -> list[bytes] | None:
        """Keys of the rows nearest ``samples`` evenly spaced steps, first and last
        included, found by seeking: O(samples * log n), not O(n).

        None when seeking cannot stand for index sampling: fewer distinct rows came
        back than asked for, so the range may hold rows the step grid skipped.
        """
        bounds = list(self._bounds(segs, min_step, max_step))
        cur = txn.cursor(db=self.history)

        def at_or_after(step: int, start: int) -> bytes | None:
            for run_no, lo, hi in bounds[start:]:
                if cur.set_range(hkey(run_no, max(step, lo))):
                    key = cast(bytes, cur.key())
                    key_run, key_step = _U64x2.unpack(key)
                    if key_run == run_no and key_step <= hi:
                        return key
            return None

        def last_key() -> bytes | None:
            for run_no, lo, hi in reversed(bounds):
                found = cur.prev() if cur.set_range(hkey(run_no, hi + 1)) else cur.last()
                if found:
                    key = cast(bytes, cur.key())
                    key_run, key_step = _U64x2.unpack(key)
                    if key_run == run_no and key_step >= lo:
                        return key
            return None

        first, last = at_or_after(0, 0), last_key()
        if first is None or last is None:
            return []
        lo_step, hi_step = hkey_step(first), hkey_step(last)
        if hi_step - lo_step + 1 <= samples:
            return None  # small enough that the range holds at most `samples` rows
        out = [first]
        seg = 0
        for i in range(1, samples - 1):
            target = lo_step + i * (hi_step - lo_step) // (samples - 1)
            while bounds[seg][2] < target:
                seg += 1
            key = at_or_after(target, seg)
            if key is not None and key != out[-1] and key != last:
                out.append(key)
        out.append(last)
        return out if len(out) == samples else None

    def iter_rows_back(
        self,
        txn: lmdb.Transaction,
        segs: list[Segment],
        min_step: int = 0,
        max_step: int | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """``iter_rows`` from the last step down."""
        cur = txn.cursor(db=self.history)
        for run_no, lo, hi in reversed(list(self._bounds(segs, min_step, max_step))):
            found = cur.prev() if cur.set_range(hkey(run_no, hi + 1)) else cur.last()
            while found:
                key_run, step = _U64x2.unpack(cur.key())
                if key_run != run_no or step < lo:
                    break
                yield step, cast(bytes, cur.value())
                found = cur.prev()

    def edges(
        self, txn: lmdb.Transaction, segs: list[Segment], min_step: int, max_step: int | None
    ) -> tuple[int, int] | None:
        """The first and last step of the view within ``[min_step, max_step)``."""
        first = next(self.iter_keys(txn, segs, min_step, max_step), None)
        if first is None:
            return None
        last, _ = next(self.iter_rows_back(txn, segs, min_step, max_step))
        return hkey_step(first), last

    # ----------------------------------------------------------------- writes

    def init_run(self, txn: lmdb.Transaction, req: dict[str, Any], client: str) -> dict[str, Any]:
        """Create, fork, rewind or resume a run, as ``init`` asks."""
        project = check_project(req.get("project"))
        run_id = req.get("id")
        if run_id is not None:
            check_run_id(run_id)
        config = _check_map(req.get("config"), "config")
        name = req.get("name")
        if name is not None and not isinstance(name, str):
            raise RequestError("name must be a string")
        tags = req.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise RequestError("tags must be a list of strings")
        resume = req.get("resume")
        if resume not in (None, "allow", "must", "never"):
            raise RequestError(f"resume must be 'allow', 'must' or 'never', got {resume!r}")
        fork_from, resume_from = req.get("fork_from"), req.get("resume_from")
        now = time.time()
        common: dict[str, Any] = {
            "config": config,
            "name": name,
            "tags": tags,
            "client": client,
            "now": now,
            # Who asked, as the kernel saw it (SO_PEERCRED), set by the server.
            "peer": _check_map(req.get("peer"), "peer") or None,
        }

        if fork_from is not None:
            if resume is not None or resume_from is not None:
                raise InvalidFork("fork_from cannot be combined with resume or resume_from")
            pid, step = _check_ref(fork_from, "fork_from")
            parent = self.lookup(txn, project, pid)
            if parent is None:
                raise InvalidFork(f"fork_from: parent run {pid!r} does not exist in {project!r}")
            if run_id == pid:
                raise InvalidFork(f"fork_from: the child id {run_id!r} is the parent's own id")
            if step > parent["last_step"]:
                raise InvalidFork(
                    f"fork_from: step {step} is beyond parent {pid!r}'s last step "
                    f"{parent['last_step']}"
                )
            if run_id is not None and self.lookup(txn, project, run_id) is not None:
                raise RunExists(f"run {run_id!r} already exists in project {project!r}")
            self._count_run(txn, project)
            rec = self._branch(txn, project, run_id, parent, step, **common)
            return self._created(txn, rec, "fork")

        if resume_from is not None:
            if resume is not None:
                raise InvalidResume("resume_from cannot be combined with resume")
            rid, step = _check_ref(resume_from, "resume_from")
            if run_id is not None and run_id != rid:
                raise InvalidResume(
                    f"resume_from names run {rid!r} but id is {run_id!r}; a rewind keeps the "
                    "run's id (use fork_from to branch into a new run)"
                )
            old = self.lookup(txn, project, rid)
            if old is None:
                raise RunNotFound(f"resume_from: run {rid!r} does not exist in {project!r}")
            if step > old["last_step"]:
                raise InvalidResume(
                    f"resume_from: step {step} is beyond run {rid!r}'s last step {old['last_step']}"
                )
            rec = self._branch(txn, project, rid, old, step, **common)
            rec["config"] = {**old["config"], **config}
            rec["name"] = name if name is not None else old["name"]
            rec["tags"] = tags or old["tags"]
            rec["metrics"] = dict(old["metrics"])
            old["state"] = transition(old["state"], Event.REWIND)
            old["archived_by"] = rec["run_no"]
            old["updated"] = now
            self._put_record(txn, old)
            return self._created(txn, rec, "rewind")

        existing = self.lookup(txn, project, run_id) if run_id is not None else None
        if existing is not None:
            if resume in ("allow", "must"):
                existing["state"] = transition(existing["state"], Event.RESUME)
                existing["config"] = {**existing["config"], **config}
                if name is not None:
                    existing["name"] = name
                if tags:
                    existing["tags"] = tags
                existing["client"] = client
                existing["peer"] = common["peer"]
                existing["updated"] = now
                self._put_record(txn, existing)
                return self._reply(existing, "resume")
            hint = "" if resume == "never" else "; pass resume='allow' to continue it"
            raise RunExists(f"run {run_id!r} already exists in project {project!r}{hint}")
        if resume == "must":
            raise RunNotFound(f"resume='must': run {run_id!r} does not exist in {project!r}")
        if run_id is None:
            run_id = self._fresh_id(txn, project)
        self._count_run(txn, project)
        rec = self._new_record(txn, project, run_id, None, -1, **common)
        return self._created(txn, rec, "new")

    def _count_run(self, txn: lmdb.Transaction, project: str) -> None:
        """One more run id in ``project``, within ``max_runs``."""
        key = b"runs\0" + project.encode()
        raw = txn.get(key, db=self.meta)
        if raw is not None:
            n = int(_U64.unpack(raw)[0])
        else:  # first count in this project (or a store from before counts)
            n = next((c for p, c in self.project_counts(txn) if p == project), 0)
        if n >= self.max_runs:
            raise LimitExceeded(
                f"project {project!r} holds {n} runs, this daemon's limit "
                "(--max-runs-per-project); delete some or use another project"
            )
        txn.put(key, _U64.pack(n + 1), db=self.meta)

    def _fresh_id(self, txn: lmdb.Transaction, project: str) -> str:
        while True:
            run_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
            if self.lookup(txn, project, run_id) is None:
                return run_id

    def _new_record(
        self,
        txn: lmdb.Transaction,
        project: str,
        run_id: str,
        parent: list[int] | None,
        last_step: int,
        *,
        config: dict[str, Any],
        name: str | None,
        tags: list[str],
        client: str,
        now: float,
        peer: dict[str, Any] | None,
    ) -> Record:
        return {
            "run_no": self._next_run_no(txn),
            "project": project,
            "id": run_id,
            "name": name if name is not None else run_id,
            "tags": tags,
            "state": State.RUNNING.value,
            "config": config,
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
            "peer": peer,
            "exit_code": None,
            "created": now,
            "updated": now,
        }

    def _branch(
        self,
        txn: lmdb.Transaction,
        project: str,
        run_id: str | None,
        parent: Record,
        step: int,
        **common: Any,
    ) -> Record:
        """A new record viewing ``parent``'s history up to ``step``: O(1) in rows."""
        if run_id is None:
            run_id = self._fresh_id(txn, project)
        rec = self._new_record(txn, project, run_id, [parent["run_no"], step], step, **common)
        rec["inherited"] = self._inherited_stats(txn, parent, step)
        txn.put(_U64x2.pack(parent["run_no"], rec["run_no"]), _U64.pack(step), db=self.children)
        return rec

    def _inherited_stats(self, txn: lmdb.Transaction, parent: Record, step: int) -> summary.Stats:
        """Stats of ``parent``'s view up to ``step``: O(depth + snapshot_every), not O(rows)."""
        rec = parent
        while rec["parent"] is not None and step <= rec["parent"][1]:
            # Up to its fork step, a run's view is its parent's view.
            rec = self.record(txn, rec["parent"][0])
        if step >= rec["last_step"]:
            return summary.merge(rec["inherited"], rec["stats"])
        return summary.merge(rec["inherited"], self._own_stats_upto(txn, rec["run_no"], step))

    def _own_stats_upto(self, txn: lmdb.Transaction, run_no: int, step: int) -> summary.Stats:
        stats: summary.Stats = {}
        lo = 0
        cur = txn.cursor(db=self.snaps)
        found = cur.prev() if cur.set_range(hkey(run_no, step + 1)) else cur.last()
        if found:
            snap_run, snap_step = _U64x2.unpack(cast(bytes, cur.key()))
            if snap_run == run_no and snap_step <= step:
                stats = _unpack(cast(bytes, cur.value()))
                lo = snap_step + 1
        rows = [_unpack(packed) for _, packed in self.iter_rows(txn, [Segment(run_no, lo, step)])]
        summary.update_batch(stats, rows)
        return stats

    def _created(self, txn: lmdb.Transaction, rec: Record, how: str) -> dict[str, Any]:
        self._put_record(txn, rec)
        txn.put(self._name_key(rec["project"], rec["id"]), _U64.pack(rec["run_no"]), db=self.names)
        return self._reply(rec, how)

    @staticmethod
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

    def _writable(self, txn: lmdb.Transaction, run_no: Any, client: str) -> Record:
        if type(run_no) is not int:
            raise RequestError(f"run_no must be an integer run number, got {run_no!r}")
        rec = self.record(txn, run_no)
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

    # ------------------------------------------------------ idempotent requests

    @staticmethod
    def _token_key(token: Any) -> bytes:
        if not isinstance(token, str) or not 0 < len(token) <= protocol.MAX_TOKEN:
            raise RequestError(f"token must be a 1-{protocol.MAX_TOKEN} character string")
        return token.encode("utf-8", "surrogatepass")

    @staticmethod
    def _fingerprint(msg: dict[str, Any]) -> bytes:
        """What a request asked for, the same in each of its attempts (a resend
        is the same message, re-encoded; only its rid changes)."""
        asked = {k: v for k, v in msg.items() if k not in ("rid", "token", "peer")}
        return hashlib.blake2b(_pack(asked), digest_size=16).digest()

    def outcome(self, txn: lmdb.Transaction, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The result of the request ``msg`` if an attempt of it was applied (same
        token, same request), else None: it is to be applied now."""
        key = self._token_key(msg.get("token"))
        raw = txn.get(key, db=self.tokens)
        if raw is None:
            return None
        done = _unpack(cast(bytes, raw))
        if done["req"] != self._fingerprint(msg):
            raise RequestError(f"token {msg['token']!r} was already used for another request")
        result: dict[str, Any] = done["result"]
        if done["op"] == "init":
            raw_run = txn.get(_U64.pack(result["run_no"]), db=self.runs)
            run = None if raw_run is None else _unpack(cast(bytes, raw_run))
            if run is None or run.get("deleted") or run["archived_by"] is not None:
                # The run it made is gone or replaced since (a sync of an offline
                # file again, after a delete): decided afresh, as a new request.
                txn.delete(key, db=self.tokens)
                return None
            # Stored without the config (it can be large): the run's own, as the
            # first reply had it, since nothing else changes a new run meanwhile.
            result["config"] = run["config"]
        return result

    def remember(
        self,
        txn: lmdb.Transaction,
        msg: dict[str, Any],
        result: dict[str, Any],
        now: float | None = None,
    ) -> None:
        """Keep ``result`` as the outcome of the request ``msg`` (by its token); in
        the transaction that applied it, so the two are stored together or not at all."""
        op = msg["op"]
        if op == "init":
            result = {k: v for k, v in result.items() if k != "config"}
        done = {
            "op": op,
            "req": self._fingerprint(msg),
            "t": time.time() if now is None else now,
            "result": result,
        }
        txn.put(self._token_key(msg.get("token")), _pack(done), db=self.tokens)

    def expire_tokens(self, txn: lmdb.Transaction, before: float) -> int:
        """Forget outcomes stored before ``before`` (a time.time() value)."""
        old = [
            bytes(key)
            for key, value in txn.cursor(db=self.tokens)
            if _unpack(cast(bytes, value))["t"] < before
        ]
        for key in old:
            txn.delete(key, db=self.tokens)
        return len(old)

    # ------------------------------------------------------------ batch seqs

    def last_seq(self, txn: lmdb.Transaction, client: str, run_no: int) -> int:
        """The last batch seq of ``client`` for ``run_no`` that was answered for good."""
        raw = txn.get(self._seq_key(client, run_no), db=self.seqs)
        return 0 if raw is None else int(_U64.unpack(cast(bytes, raw))[0])

    def mark_seq(self, txn: lmdb.Transaction, client: str, run_no: int, seq: int) -> None:
        txn.put(self._seq_key(client, run_no), _U64.pack(seq), db=self.seqs)

    @staticmethod
    def _seq_key(client: str, run_no: int) -> bytes:
        return client.encode() + b"\0" + _U64.pack(run_no)

    def append(
        self,
        txn: lmdb.Transaction,
        run_no: int,
        rows: list[Row],
        client: str,
        seq: int,
        packed: list[bytes] | None = None,
        chunks: Chunks | None = None,
    ) -> None:
        """Store one batch of rows whose shape and order the caller already checked.

        ``packed``, when given, holds each row's values exactly as the client
        packed them (already checked to decode to ``rows``): stored as they are.
        ``chunks`` are the rows' values by column, if the caller has them already.
        """
        rec = self._writable(txn, run_no, client)
        first = rows[0][0] if rows else None
        if first is not None and first <= rec["last_step"]:
            raise StepOrderError(
                f"step {first} is not after run {rec['id']!r}'s last step {rec['last_step']}; "
                "the batch is refused whole"
            )
        key, put = _U64x2.pack, txn.put
        if packed is None:
            packed = list(map(self._pack_row, [values for _, values in rows]))
        txn.cursor(db=self.history).putmulti(
            [(key(run_no, step), blob) for (step, _), blob in zip(rows, packed, strict=True)]
        )
        # Summary stats, in pieces that end where a snapshot is due.
        stats, every, done = rec["stats"], self.snapshot_every, rec["rows"]
        if chunks is None:
            chunks = chunks_of([values for _, values in rows])
        i = 0
        while i < len(rows):
            j = min(len(rows), i + every - done % every)
            summary.update_chunks(stats, chunks, i, j)
            done += j - i
            if done % every == 0:
                put(key(run_no, rows[j - 1][0]), _pack(stats), db=self.snaps)
            i = j
        if rows:
            rec["last_step"] = rows[-1][0]
            rec["rows"] += len(rows)
        rec["updated"] = time.time()
        self._put_record(txn, rec)
        self.mark_seq(txn, client, run_no, seq)

    def update_run(
        self, txn: lmdb.Transaction, op: str, msg: dict[str, Any], client: str, seq: int
    ) -> None:
        """``config``, ``summary``, ``metric`` and ``finish`` requests."""
        rec = self._writable(txn, msg.get("run_no"), client)
        if op == "config":
            rec["config"] = {**rec["config"], **_check_map(msg.get("config"), "config")}
        elif op == "summary":
            rec["summary_set"] = {**rec["summary_set"], **_check_map(msg.get("summary"), "summary")}
        elif op == "metric":
            name, mode = msg.get("name"), msg.get("summary")
            if not isinstance(name, str) or not name:
                raise RequestError("define_metric: name must be a non-empty string")
            if type(mode) is not str or mode not in summary.MODES:
                raise RequestError(f"define_metric: summary must be one of {sorted(summary.MODES)}")
            rec["metrics"] = {**rec["metrics"], name: mode}
        elif op == "finish":
            code = msg.get("exit_code", 0)
            dropped = msg.get("dropped", 0)
            if type(code) is not int or type(dropped) is not int:
                raise RequestError("finish: exit_code and dropped must be integers")
            if not -(2**31) <= code < 2**31 or not 0 <= dropped < 2**32:
                raise RequestError(
                    "finish: exit_code must fit 32 bits and dropped be in [0, 2**32)"
                )
            event = Event.FINISH_OK if code == 0 else Event.FINISH_ERROR
            rec["state"] = transition(rec["state"], event)
            rec["exit_code"] = code
            rec["dropped"] += dropped
        else:  # pragma: no cover - the server only routes the ops above here
            raise RequestError(f"unknown update {op!r}")
        rec["updated"] = time.time()
        self._put_record(txn, rec)
        self.mark_seq(txn, client, rec["run_no"], seq)

    def delete_run(self, txn: lmdb.Transaction, msg: dict[str, Any]) -> dict[str, Any]:
        """Delete a run id: every timeline of it (the current one and those rewinds
        archived). Soft: the id is free again and no read finds it, but the rows stay
        while forks read them. ``purge``: remove the rows too, refused while any
        fork that is not deleted still reads them."""
        project = check_project(msg.get("project"))
        rec = self.find(txn, project, msg.get("id"))
        if rec["state"] == State.RUNNING:
            raise RunNotWritable(
                f"run {rec['id']!r} is running; finish it (or let its process end) first"
            )
        if (
            rec["state"] == State.CRASHED
            and time.time() - rec["updated"] < CRASH_GRACE
            and not msg.get("force")
        ):
            # After a daemon restart every live run reads crashed until its client
            # reconnects and writes: deleting it would lose what that client sends.
            raise RunNotWritable(
                f"run {rec['id']!r} crashed less than {CRASH_GRACE:.0f}s ago and its process may "
                "still reconnect; wait, or delete with force"
            )
        own = [rec] + [self.record(txn, a["run_no"]) for a in self.archived(txn, rec)]
        # Decided before the first put: a refused purge leaves the run as it was.
        doomed = self._deleted_closure(txn, [t["run_no"] for t in own]) if msg.get("purge") else []
        now = time.time()
        for t in own:
            t["deleted"] = now
            t["updated"] = now
            self._put_record(txn, t)
        txn.delete(self._name_key(project, rec["id"]), db=self.names)
        key = b"runs\0" + project.encode()
        raw = txn.get(key, db=self.meta)
        if raw is not None:
            txn.put(key, _U64.pack(max(0, _U64.unpack(raw)[0] - 1)), db=self.meta)
        out: dict[str, Any] = {"id": rec["id"], "timelines": len(own), "purged": 0, "rows": 0}
        out["purged"] = len(doomed)
        out["rows"] = self._purge_all(txn, doomed)
        return out

    def purge_deleted(self, txn: lmdb.Transaction) -> dict[str, Any]:
        """Remove for good every deleted timeline no live timeline reads (``gc``)."""
        deleted = {
            rec["run_no"]: rec
            for raw in txn.cursor(db=self.runs).iternext(keys=False)
            if (rec := _unpack(cast(bytes, raw))).get("deleted")
        }
        doomed: set[int] = set()
        for run_no in deleted:
            try:
                doomed.update(self._deleted_closure(txn, [run_no]))
            except InUse:
                continue  # a live fork still reads it: kept, soft-deleted
        # A rewind's newer timeline goes only with the older one it archived, so a
        # kept timeline never names a purged one in ``archived_by``.
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
        rows = self._purge_all(txn, sorted(doomed))
        return {"purged": len(doomed), "rows": rows, "kept": len(deleted) - len(doomed)}

    def _deleted_closure(self, txn: lmdb.Transaction, roots: list[int]) -> list[int]:
        """``roots`` and every descendant of them, all of which must be deleted."""
        seen, todo, live = set(roots), list(roots), []
        while todo:
            for child in self.children_of(txn, todo.pop(), deleted=True):
                if child["run_no"] in seen:
                    continue
                if not self.record(txn, child["run_no"]).get("deleted"):
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

    def _purge(self, txn: lmdb.Transaction, run_no: int) -> int:
        """Remove one deleted timeline for good; returns how many rows went."""
        rec = self.record(txn, run_no)
        rows = 0
        for db in (self.history, self.snaps):
            cur = txn.cursor(db=db)
            prefix = _U64.pack(run_no)
            if cur.set_range(prefix):
                while cast(bytes, cur.key()).startswith(prefix):
                    rows += db is self.history
                    if not cur.delete():
                        break
        if rec["parent"] is not None:
            txn.delete(_U64x2.pack(rec["parent"][0], run_no), db=self.children)
        cur = txn.cursor(db=self.children)
        prefix = _U64.pack(run_no)
        if cur.set_range(prefix):
            while cast(bytes, cur.key()).startswith(prefix):
                if not cur.delete():
                    break
        txn.delete(_U64.pack(run_no), db=self.runs)
        return rows

    def _purge_all(self, txn: lmdb.Transaction, doomed: list[int]) -> int:
        """``_purge`` each, and their batch seqs in one pass over ``seqs``."""
        if not doomed:
            return 0
        rows = sum(self._purge(txn, run_no) for run_no in doomed)
        gone = {_U64.pack(n) for n in doomed}
        keys = map(bytes, txn.cursor(db=self.seqs).iternext(values=False))
        for k in [k for k in keys if k[-8:] in gone and k[-9:-8] == b"\0"]:
            txn.delete(k, db=self.seqs)
        return rows

    def crash_orphans(self) -> int:
        """At start-up: runs left ``running`` by a previous daemon lost their client's
        connection with it. Mark them crashed; a client that is alive and writes
        again re-attaches. Returns how many were marked."""
        n = 0
        with self.env.begin(write=True) as txn:
            for _, raw in txn.cursor(db=self.runs):
                rec: Record = _unpack(raw)
                if rec["state"] == State.RUNNING:
                    rec["state"] = transition(rec["state"], Event.DISCONNECT)
                    self._put_record(txn, rec)
                    n += 1
        return n

    def mark_crashed(self, txn: lmdb.Transaction, run_no: int, client: str) -> None:
        """The owning client disconnected without ``finish``."""
        rec = self.record(txn, run_no)
        if rec["client"] == client and can(rec["state"], Event.DISCONNECT):
            rec["state"] = transition(rec["state"], Event.DISCONNECT)
            rec["updated"] = time.time()
            self._put_record(txn, rec)

    # ------------------------------------------------------------------ reads

    def describe(self, txn: lmdb.Transaction, rec: Record, full: bool = False) -> dict[str, Any]:
        parent = rec["parent"]
        out: dict[str, Any] = {
            "id": rec["id"],
            "run_no": rec["run_no"],
            "project": rec["project"],
            "name": rec["name"],
            "tags": rec["tags"],
            "state": rec["state"],
            "created": rec["created"],
            "updated": rec["updated"],
            "last_step": rec["last_step"],
            "rows": rec["rows"],
            "dropped": rec["dropped"],
            "exit_code": rec["exit_code"],
            "archived_by": rec["archived_by"],
            "parent": None,
            "summary": summary.render(
                summary.merge(rec["inherited"], rec["stats"]),
                rec["metrics"],
                rec["summary_set"],
                rec["last_step"],
            ),
        }
        if parent is not None:
            p = self.record(txn, parent[0])
            out["parent"] = {"id": p["id"], "run_no": p["run_no"], "step": parent[1]}
        if full:
            out["client"] = rec["client"]  # who created (or last resumed) it
            out["peer"] = rec.get("peer")  # uid, gid, pid, host of that process
            out["config"] = rec["config"]
            out["metrics"] = rec["metrics"]
            out["lineage"] = self.lineage(txn, rec)
            out["children"] = self.children_of(txn, rec["run_no"])
            out["archived"] = self.archived(txn, rec)
        return out

    def archived(self, txn: lmdb.Transaction, rec: Record) -> list[dict[str, Any]]:
        """Older timelines of this id that rewinds replaced, newest first; each
        with the step the newer timeline branched from it at."""
        out = []
        parent = rec["parent"]
        while parent is not None:
            p = self.record(txn, parent[0])
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

    def timelines(self, txn: lmdb.Transaction, project: str) -> list[dict[str, Any]]:
        """Every timeline of a project, archived ones too: the fork forest's nodes."""
        out = []
        for value in txn.cursor(db=self.runs).iternext(keys=False, values=True):
            rec = _unpack(cast(bytes, value))
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

    def lineage(self, txn: lmdb.Transaction, rec: Record) -> list[dict[str, Any]]:
        """Ancestors, nearest first: each with the step the view branches at."""
        out = []
        parent = rec["parent"]
        while parent is not None:
            p = self.record(txn, parent[0])
            out.append(
                {"id": p["id"], "run_no": p["run_no"], "step": parent[1], "state": p["state"]}
            )
            parent = p["parent"]
        return out

    def children_of(
        self, txn: lmdb.Transaction, run_no: int, deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Forks and rewinds branching from ``run_no``; deleted ones only if asked."""
        out = []
        cur = txn.cursor(db=self.children)
        prefix = _U64.pack(run_no)
        if cur.set_range(prefix):
            for key, value in cur:
                if not cast(bytes, key).startswith(prefix):
                    break
                child = self.record(txn, _U64.unpack(key[8:])[0])
                if child.get("deleted") and not deleted:
                    continue
                out.append(
                    {
                        "id": child["id"],
                        "run_no": child["run_no"],
                        "step": _U64.unpack(value)[0],
                        "state": child["state"],
                    }
                )
        return out

    def list_runs(self, txn: lmdb.Transaction, project: Any) -> list[dict[str, Any]]:
        prefix = check_project(project).encode() + b"\0"
        out = []
        cur = txn.cursor(db=self.names)
        if cur.set_range(prefix):
            for key, value in cur:
                if not cast(bytes, key).startswith(prefix):
                    break
                out.append(self.describe(txn, self.record(txn, _U64.unpack(value)[0])))
        return out

    def projects(self, txn: lmdb.Transaction) -> list[str]:
        return [name for name, _ in self.project_counts(txn)]

    def project_exists(self, txn: lmdb.Transaction, project: str) -> bool:
        prefix = project.encode() + b"\0"
        cur = txn.cursor(db=self.names)
        return bool(cur.set_range(prefix)) and cast(bytes, cur.key()).startswith(prefix)

    def project_summaries(self, txn: lmdb.Transaction) -> list[dict[str, Any]]:
        """Name, run count and latest ``updated`` of each project, in name order."""
        out: list[dict[str, Any]] = []
        for key, value in txn.cursor(db=self.names):
            project = cast(bytes, key).split(b"\0", 1)[0].decode()
            updated = self.record(txn, _U64.unpack(value)[0])["updated"]
            if out and out[-1]["name"] == project:
                out[-1]["runs"] += 1
                out[-1]["updated"] = max(out[-1]["updated"], updated)
            else:
                out.append({"name": project, "runs": 1, "updated": updated})
        return out

    def project_counts(self, txn: lmdb.Transaction) -> list[tuple[str, int]]:
        """Each project with how many run ids it holds, in name order."""
        seen: list[tuple[str, int]] = []
        for key in txn.cursor(db=self.names).iternext(keys=True, values=False):
            project = cast(bytes, key).split(b"\0", 1)[0].decode()
            if seen and seen[-1][0] == project:
                seen[-1] = (project, seen[-1][1] + 1)
            else:
                seen.append((project, 1))
        return seen
