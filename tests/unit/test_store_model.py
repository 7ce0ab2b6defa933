"""Model-based test of the Store: forks, rewinds and resumes against a naive model.

The real :class:`Store` (real LMDB, a fresh directory per example) is driven by a
hypothesis state machine and compared, after every step, with a model that
does the obvious thing the store avoids: it COPIES histories. A fork copies
the parent's resolved rows with step <= N into the child; a rewind copies the
run's rows <= N into a new timeline under the same id and keeps the old one,
frozen, as an archived copy that children forked from it still read through.
So "a fork's view is pinned" (DESIGN.md, Fork, rewind, resume) needs no special
code in the model: every timeline the model ever made, live or archived, is
checked against the store after every step, and a copy cannot change when
something else is written.

Every write is its own write transaction. A refused write is caught *inside*
its transaction, which then commits (as the writer thread does when it groups
requests), and the whole database must be byte-identical afterwards: "a
refused request leaves the transaction untouched".
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stepline.errors import (
    InvalidFork,
    InvalidResume,
    RequestError,
    RunExists,
    RunNotFound,
    RunNotWritable,
    StepOrderError,
)
from stepline_daemon.store import Store, history, lineage
from tests import storeops

P = "p"
IDS = ["a", "b", "c", "d", "e"]
GHOST = "ghost"  # never created
CLIENTS = st.sampled_from(["c1", "c2"])
KEYS = ["loss", "acc", "lr", "eval.loss"]
WRITABLE = frozenset({"running", "crashed"})

# Ints stay within +-2**53 here, so no run's per-key sum can leave 64 bits in an
# example; test_int_sums_beyond_64_bits covers values at the edges of the range.
VALUES = st.one_of(
    st.integers(-10, 10),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, -math.nan, math.inf, -0.0, 0.5]),
)
ROW_VALUES = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3)

# LMDB fsyncs every commit; keep the per-example environments in memory when we can.
_TMP_ROOT = "/dev/shm" if Path("/dev/shm").is_dir() else None

Row = dict[str, Any]  # {"_step": step, **values}: rows as reads return them


def same(a: Any, b: Any) -> bool:
    """Structural equality where NaN equals NaN, -0.0 differs from 0.0, 1 from 1.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def assert_same(got: Any, want: Any, what: str) -> None:
    assert same(got, want), f"{what}:\n  store: {got!r}\n  model: {want!r}"


def is_subsequence(part: list[Row], whole: list[Row]) -> bool:
    it = iter(whole)
    return all(any(same(p, w) for w in it) for p in part)


@dataclass(eq=False, repr=False)
class Timeline:
    """One timeline (one run_no) as the model sees it: a full copy of its view."""

    run_id: str
    run_no: int
    rows: list[Row]  # the resolved view, parent rows included
    base: int  # its own rows are those after this step (-1 for a root)
    last_step: int  # the next row goes after this step
    parent: tuple[Timeline, int] | None
    client: str  # the owning client (the one whose disconnect crashes it)
    state: str = "running"
    archived_by: Timeline | None = None

    def __repr__(self) -> str:
        return f"<{self.run_id!r} run_no={self.run_no} {self.state} last_step={self.last_step}>"

    def own(self) -> list[Row]:
        return [r for r in self.rows if r["_step"] > self.base]

    def view(
        self, min_step: int = 0, max_step: int | None = None, include_parent: bool = True
    ) -> list[Row]:
        rows = self.rows if include_parent else self.own()
        return [
            r
            for r in rows
            if r["_step"] >= min_step and (max_step is None or r["_step"] < max_step)
        ]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.rows:
            for k, v in r.items():
                if k != "_step":
                    out[k] = v
        # "_step" is the run's last step (start_step - 1). After a fork or rewind at a
        # step that has no row, that is the fork point, not the last row's step.
        if self.last_step >= 0:
            out["_step"] = self.last_step
        return out

    def lineage(self) -> list[tuple[int, int]]:
        out = []
        parent = self.parent
        while parent is not None:
            tl, step = parent
            out.append((tl.run_no, step))
            parent = tl.parent
        return out


def select(rows: list[Row], keys: list[str] | None) -> list[Row]:
    """W&B's rule for ``keys``: rows lacking one of them are left out."""
    if keys is None:
        return rows
    return [
        {"_step": r["_step"], **{k: r[k] for k in keys}} for r in rows if all(k in r for k in keys)
    ]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="sl-model-", dir=_TMP_ROOT))
        # Snapshots every 3 rows, so forks inherit summaries through them.
        self.store = Store(self.dir / "data", map_size=64 * 1024 * 1024, snapshot_every=3)
        self.live: dict[str, Timeline] = {}
        self.timelines: list[Timeline] = []  # every timeline ever made, archived ones too
        self.seqs: dict[tuple[str, int], int] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------- helpers

    def write(self, fn: Callable[[Any], Any]) -> Any:
        with self.store.env.begin(write=True) as txn:
            return fn(txn)

    def dump(self) -> dict[str, list[tuple[bytes, bytes]]]:
        s = self.store
        dbs = {
            "history": s.history,
            "runs": s.runs,
            "names": s.names,
            "children": s.children,
            "seqs": s.seqs,
            "meta": s.meta,
        }
        with s.env.begin() as txn:
            return {name: list(txn.cursor(db=db)) for name, db in dbs.items()}

    def refused(self, exc: type[RequestError], fn: Callable[[Any], Any]) -> None:
        """``fn`` raises ``exc``; the transaction it ran in commits and changed nothing."""
        before = self.dump()
        with self.store.env.begin(write=True) as txn, pytest.raises(exc):
            fn(txn)
        after = self.dump()
        for name in before:
            assert before[name] == after[name], f"a refused request changed the {name} db"

    def next_seq(self, client: str, run_no: int) -> int:
        seq = self.seqs.get((client, run_no), 0) + 1
        self.seqs[(client, run_no)] = seq
        return seq

    def init(self, req: dict[str, Any], client: str) -> dict[str, Any]:
        reply: dict[str, Any] = self.write(
            lambda txn: storeops.init_run(self.store, txn, req, client=client)
        )
        return reply

    def add(self, tl: Timeline) -> None:
        self.timelines.append(tl)
        self.live[tl.run_id] = tl

    def writable(self) -> list[Timeline]:
        return [t for t in self.live.values() if t.state in WRITABLE]

    def with_rows(self) -> list[Timeline]:
        return [t for t in self.live.values() if t.last_step >= 0]

    def free_ids(self) -> list[str]:
        return [i for i in IDS if i not in self.live]

    @staticmethod
    def pick(data: st.DataObject, timelines: list[Timeline], label: str) -> Timeline:
        """One of ``timelines``, drawn by a readable name ("id#run_no")."""
        by_name = {f"{t.run_id}#{t.run_no}": t for t in timelines}
        return by_name[data.draw(st.sampled_from(sorted(by_name)), label)]

    @staticmethod
    def draw_steps(data: st.DataObject, after: int, min_size: int) -> list[int]:
        gaps = data.draw(st.lists(st.integers(1, 3), min_size=min_size, max_size=4), "gaps")
        steps, step = [], after
        for g in gaps:
            step += g
            steps.append(step)
        return steps

    @staticmethod
    def draw_point(data: st.DataObject, tl: Timeline) -> int:
        """A fork/rewind step: often one with a row, sometimes a gap between rows."""
        logged = [r["_step"] for r in tl.rows if r["_step"] <= tl.last_step]
        choices = st.integers(0, tl.last_step)
        if logged:
            choices = st.one_of(st.sampled_from(logged), choices)
        return data.draw(choices, "step")

    def read_rows(self, txn: Any, tl: Timeline, include_parent: bool = True) -> list[Row]:
        """A timeline's view straight from the store, by run_no (reaches archived ones)."""
        s = self.store
        segs = lineage.segments(s, txn, s.record(txn, tl.run_no), include_parent)
        return [
            {"_step": step, **msgpack.unpackb(packed, raw=False)}
            for step, packed in history.iter_rows(s, txn, segs)
        ]

    # ------------------------------------------------------------- creating runs

    @precondition(lambda self: self.free_ids())
    @rule(data=st.data(), client=CLIENTS)
    def create(self, data: st.DataObject, client: str) -> None:
        run_id = data.draw(st.sampled_from(self.free_ids()), "id")
        reply = self.init({"project": P, "id": run_id}, client)
        assert reply["id"] == run_id
        assert reply["start_step"] == 0
        assert all(reply["run_no"] != t.run_no for t in self.timelines)
        self.add(Timeline(run_id, reply["run_no"], [], -1, -1, None, client))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), mode=st.sampled_from(["allow", "must"]), client=CLIENTS)
    def resume(self, data: st.DataObject, mode: str, client: str) -> None:
        """Continue an existing run (running, finished, failed or crashed) at last + 1."""
        tl = self.pick(data, list(self.live.values()), "run")
        reply = self.init({"project": P, "id": tl.run_id, "resume": mode}, client)
        assert reply["run_no"] == tl.run_no
        assert reply["start_step"] == tl.last_step + 1
        tl.state = "running"
        tl.client = client

    # ------------------------------------------------------------- logging

    @precondition(lambda self: self.writable())
    @rule(data=st.data(), client=CLIENTS)
    def log(self, data: st.DataObject, client: str) -> None:
        tl = self.pick(data, self.writable(), "run")
        steps = self.draw_steps(data, tl.last_step, min_size=0)
        rows = [(s, data.draw(ROW_VALUES, "values")) for s in steps]
        seq = self.next_seq(client, tl.run_no)
        self.write(lambda txn: storeops.append(self.store, txn, tl.run_no, rows, client, seq))
        tl.rows.extend({"_step": s, **v} for s, v in rows)
        if steps:
            tl.last_step = steps[-1]
        tl.state = "running"  # a write to a crashed run reattaches it
        with self.store.env.begin() as txn:
            assert self.store.last_seq(txn, client, tl.run_no) == seq

    @precondition(lambda self: self.timelines)
    @rule(data=st.data(), kind=st.sampled_from(["out_of_order", "closed"]), client=CLIENTS)
    def write_refused(self, data: st.DataObject, kind: str, client: str) -> None:
        """A batch not after the last step, or any write to a closed timeline."""
        if kind == "out_of_order":
            self.log_out_of_order(data, client)
        else:
            self.write_to_closed(data, client)

    def log_out_of_order(self, data: st.DataObject, client: str) -> None:
        candidates = [t for t in self.writable() if t.last_step >= 0]
        if not candidates:
            return
        tl = self.pick(data, candidates, "run")
        first = data.draw(st.integers(max(0, tl.last_step - 2), tl.last_step), "first")
        steps = [first, *self.draw_steps(data, first, min_size=0)]
        rows = [(s, {"loss": float(s)}) for s in steps]
        seq = self.next_seq(client, tl.run_no)
        self.refused(
            StepOrderError,
            lambda txn: storeops.append(self.store, txn, tl.run_no, rows, client, seq),
        )

    def write_to_closed(self, data: st.DataObject, client: str) -> None:
        """Finished, failed and archived timelines refuse rows and a second finish."""
        closed = [t for t in self.timelines if t.state not in WRITABLE]
        if not closed:
            return
        tl = self.pick(data, closed, "run")
        op = data.draw(st.sampled_from(["log", "finish"]), "op")
        seq = self.next_seq(client, tl.run_no)
        if op == "log":
            rows = [(tl.last_step + 1, {"loss": 1.0})]
            self.refused(
                RunNotWritable,
                lambda txn: storeops.append(self.store, txn, tl.run_no, rows, client, seq),
            )
        else:
            msg = {"run_no": tl.run_no, "exit_code": 0}
            self.refused(
                RunNotWritable,
                lambda txn: storeops.update_run(self.store, txn, "finish", msg, client, seq),
            )

    @precondition(lambda self: self.writable())
    @rule(data=st.data(), exit_code=st.sampled_from([0, 0, 1]), client=CLIENTS)
    def finish(self, data: st.DataObject, exit_code: int, client: str) -> None:
        tl = self.pick(data, self.writable(), "run")
        seq = self.next_seq(client, tl.run_no)
        msg = {"run_no": tl.run_no, "exit_code": exit_code}
        self.write(lambda txn: storeops.update_run(self.store, txn, "finish", msg, client, seq))
        tl.state = "finished" if exit_code == 0 else "failed"

    @precondition(lambda self: self.timelines)
    @rule(data=st.data(), client=CLIENTS)
    def disconnect(self, data: st.DataObject, client: str) -> None:
        """Only the owner's disconnect crashes a run, and only a running one."""
        tl = self.pick(data, self.timelines, "run")
        self.write(lambda txn: storeops.mark_crashed(self.store, txn, tl.run_no, client))
        if client == tl.client and tl.state == "running":
            tl.state = "crashed"

    # ------------------------------------------------------------- fork and rewind

    @precondition(lambda self: self.with_rows() and self.free_ids())
    @rule(data=st.data(), client=CLIENTS)
    def fork(self, data: st.DataObject, client: str) -> None:
        parent = self.pick(data, self.with_rows(), "parent")
        child_id = data.draw(st.sampled_from(self.free_ids()), "child")
        n = self.draw_point(data, parent)
        req = {"project": P, "id": child_id, "fork_from": [parent.run_id, n]}
        reply = self.init(req, client)
        assert reply["id"] == child_id
        assert reply["start_step"] == n + 1
        assert all(reply["run_no"] != t.run_no for t in self.timelines)
        rows = [dict(r) for r in parent.rows if r["_step"] <= n]
        self.add(Timeline(child_id, reply["run_no"], rows, n, n, (parent, n), client))

    @rule(
        data=st.data(),
        kind=st.sampled_from(
            [
                "exists",
                "fork_beyond",
                "fork_unknown_parent",
                "fork_same_id",
                "fork_child_exists",
                "fork_with_resume",
                "rewind_beyond",
                "rewind_unknown",
                "rewind_other_id",
                "rewind_with_resume",
            ]
        ),
        client=CLIENTS,
    )
    def init_refused(self, data: st.DataObject, kind: str, client: str) -> None:
        """Each refused init raises its typed error and changes nothing."""
        if kind == "exists":
            self.create_or_resume_refused(data, client)
        elif kind.startswith("fork_"):
            self.fork_refused(data, kind.removeprefix("fork_"), client)
        else:
            self.rewind_refused(data, kind.removeprefix("rewind_"), client)

    def create_or_resume_refused(self, data: st.DataObject, client: str) -> None:
        run_id = data.draw(st.sampled_from([*IDS, GHOST]), "id")
        if run_id in self.live:
            resume = data.draw(st.sampled_from([None, "never"]), "resume")
            req = {"project": P, "id": run_id, "resume": resume}
            self.refused(
                RunExists, lambda txn: storeops.init_run(self.store, txn, req, client=client)
            )
        else:
            req = {"project": P, "id": run_id, "resume": "must"}
            self.refused(
                RunNotFound, lambda txn: storeops.init_run(self.store, txn, req, client=client)
            )

    def fork_refused(self, data: st.DataObject, kind: str, client: str) -> None:
        live = sorted(self.live)
        if kind == "unknown_parent":
            pid = data.draw(st.sampled_from([GHOST, *self.free_ids()]), "parent")
            child = data.draw(st.sampled_from([GHOST, *IDS]), "child")
            req = {"project": P, "id": child, "fork_from": [pid, 0]}
            self.refused(
                InvalidFork, lambda txn: storeops.init_run(self.store, txn, req, client=client)
            )
            return
        if not live:
            return
        parent = self.live[data.draw(st.sampled_from(live), "parent")]
        ok_step = self.draw_point(data, parent) if parent.last_step >= 0 else 0
        free = [*self.free_ids(), GHOST]
        exc: type[RequestError] = InvalidFork
        if kind == "beyond":
            step = parent.last_step + data.draw(st.integers(1, 3), "over")
            req = {
                "project": P,
                "id": data.draw(st.sampled_from(free)),
                "fork_from": [parent.run_id, step],
            }
        elif kind == "same_id":
            req = {"project": P, "id": parent.run_id, "fork_from": [parent.run_id, ok_step]}
        elif kind == "child_exists":
            if parent.last_step < 0:
                return
            req = {
                "project": P,
                "id": data.draw(st.sampled_from(live)),
                "fork_from": [parent.run_id, ok_step],
            }
            exc = InvalidFork if req["id"] == parent.run_id else RunExists
        else:  # with_resume
            extra = data.draw(
                st.sampled_from([{"resume": "allow"}, {"resume_from": [parent.run_id, ok_step]}])
            )
            req = {
                "project": P,
                "id": data.draw(st.sampled_from(free)),
                "fork_from": [parent.run_id, ok_step],
                **extra,
            }
        self.refused(exc, lambda txn: storeops.init_run(self.store, txn, req, client=client))

    @precondition(lambda self: self.with_rows())
    @rule(data=st.data(), client=CLIENTS)
    def rewind(self, data: st.DataObject, client: str) -> None:
        old = self.pick(data, self.with_rows(), "run")
        n = self.draw_point(data, old)
        reply = self.init({"project": P, "id": old.run_id, "resume_from": [old.run_id, n]}, client)
        assert reply["id"] == old.run_id
        assert reply["start_step"] == n + 1
        assert all(reply["run_no"] != t.run_no for t in self.timelines)
        rows = [dict(r) for r in old.rows if r["_step"] <= n]
        new = Timeline(old.run_id, reply["run_no"], rows, n, n, (old, n), client)
        old.state = "archived"
        old.archived_by = new
        self.add(new)

    def rewind_refused(self, data: st.DataObject, kind: str, client: str) -> None:
        if kind == "unknown":
            rid = data.draw(st.sampled_from([GHOST, *self.free_ids()]), "run")
            req = {"project": P, "id": rid, "resume_from": [rid, 0]}
            self.refused(
                RunNotFound, lambda txn: storeops.init_run(self.store, txn, req, client=client)
            )
            return
        if not self.live:
            return
        tl = self.live[data.draw(st.sampled_from(sorted(self.live)), "run")]
        ok_step = self.draw_point(data, tl) if tl.last_step >= 0 else 0
        if kind == "beyond":
            step = tl.last_step + data.draw(st.integers(1, 3), "over")
            req = {"project": P, "id": tl.run_id, "resume_from": [tl.run_id, step]}
        elif kind == "other_id":
            other = data.draw(st.sampled_from([i for i in [*IDS, GHOST] if i != tl.run_id]))
            req = {"project": P, "id": other, "resume_from": [tl.run_id, ok_step]}
        else:  # with_resume
            req = {
                "project": P,
                "id": tl.run_id,
                "resume_from": [tl.run_id, ok_step],
                "resume": "allow",
            }
        self.refused(
            InvalidResume, lambda txn: storeops.init_run(self.store, txn, req, client=client)
        )

    # ------------------------------------------------------------- reads with parameters

    @precondition(lambda self: self.live)
    @rule(data=st.data(), kind=st.sampled_from(["window", "pages", "history"]))
    def read(self, data: st.DataObject, kind: str) -> None:
        """Reads with parameters: scan windows, paged scans, downsampled history."""
        if kind == "window":
            self.scan_window(data)
        elif kind == "pages":
            self.scan_pages(data, data.draw(st.integers(1, 4), "limit"))
        else:
            self.sampled_history(data, data.draw(st.integers(2, 6), "samples"))

    def draw_window(
        self, data: st.DataObject, max_keys: int
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A read request on a live timeline (min, max, include_parent, keys), and
        the rows the model says that window holds."""
        tl = self.live[data.draw(st.sampled_from(sorted(self.live)), "run")]
        top = max(tl.last_step, 0) + 3
        min_step = data.draw(st.integers(0, top), "min_step")
        max_step = data.draw(st.none() | st.integers(0, top), "max_step")
        include_parent = data.draw(st.booleans(), "include_parent")
        keys = data.draw(st.none() | st.lists(st.sampled_from(KEYS), max_size=max_keys), "keys")
        msg: dict[str, Any] = {
            "project": P,
            "id": tl.run_id,
            "min_step": min_step,
            "include_parent": include_parent,
        }
        if max_step is not None:
            msg["max_step"] = max_step
        if keys is not None:
            msg["keys"] = keys
        return msg, select(tl.view(min_step, max_step, include_parent), keys)

    def scan_window(self, data: st.DataObject) -> None:
        msg, want = self.draw_window(data, max_keys=2)
        msg["limit"] = 100000
        with self.store.env.begin() as txn:
            got = storeops.read(self.store, txn, "scan", msg)
        assert_same(got["rows"], want, f"scan {msg}")
        assert got["next"] is None

    def scan_pages(self, data: st.DataObject, limit: int) -> None:
        """Following ``next`` page by page yields the full view, exactly once."""
        tl = self.live[data.draw(st.sampled_from(sorted(self.live)), "run")]
        rows: list[Row] = []
        min_step = 0
        with self.store.env.begin() as txn:
            for _ in range(len(tl.rows) + 2):
                msg = {"project": P, "id": tl.run_id, "limit": limit, "min_step": min_step}
                page = storeops.read(self.store, txn, "scan", msg)
                assert len(page["rows"]) <= limit
                rows.extend(page["rows"])
                if page["next"] is None:
                    break
                assert page["next"] > min_step
                min_step = page["next"]
            else:
                raise AssertionError("scan pages never ended")
        assert_same(rows, tl.rows, f"paged scan of {tl.run_id!r} (limit {limit})")

    def sampled_history(self, data: st.DataObject, samples: int) -> None:
        msg, full = self.draw_window(data, max_keys=1)
        msg["samples"] = samples
        with self.store.env.begin() as txn:
            self.check_history(txn, msg, full)

    def check_history(self, txn: Any, msg: dict[str, Any], full: list[Row]) -> None:
        """``history`` is a deterministic subsample of ``full`` keeping its ends."""
        samples = msg["samples"]
        got = storeops.read(self.store, txn, "history", msg)["rows"]
        again = storeops.read(self.store, txn, "history", msg)["rows"]
        what = f"history {msg}:\n  got {got!r}\n  full {full!r}"
        assert same(got, again), f"not deterministic: {what}"
        assert len(got) <= samples, what
        if len(full) <= samples:
            assert_same(got, full, f"history {msg} with no need to sample")
        else:
            assert same(got[0], full[0]) and same(got[-1], full[-1]), f"first/last: {what}"
            assert is_subsequence(got, full), f"not a subsequence: {what}"
            # Min/max decimation: short windows are read whole, so each key's
            # extremes survive (the spike a chart must not lose), once ``samples``
            # holds the first and last rows and one bucket's minimum and maximum
            # of every key; below that the contract is evenly spaced rows.
            keys = [k for k in msg.get("keys") or () if k != "_step"]
            for k in keys if samples >= 2 + 2 * len(keys) else ():
                numbers = [r[k] for r in full if type(r[k]) in (int, float) and r[k] == r[k]]
                kept = [r[k] for r in got]
                for extreme in (min(numbers), max(numbers)) if numbers else ():
                    assert any(same(extreme, v) for v in kept), f"lost {k}={extreme}: {what}"

    # ------------------------------------------------------------- invariants

    @invariant()
    def names_point_at_live_timelines(self) -> None:
        with self.store.env.begin() as txn:
            for run_id, tl in self.live.items():
                assert self.store.find(txn, P, run_id)["run_no"] == tl.run_no
            listed = {d["id"]: d["run_no"] for d in storeops.list_runs(self.store, txn, P)}
        assert listed == {i: t.run_no for i, t in self.live.items()}

    @invariant()
    def every_timeline_matches_its_copy(self) -> None:
        """Live and archived timelines alike: records, views, summaries, lineage."""
        s = self.store
        with s.env.begin() as txn:
            for tl in self.timelines:
                rec = s.record(txn, tl.run_no)
                label = f"timeline {tl.run_no} ({tl.run_id!r}, {tl.state})"
                assert rec["id"] == tl.run_id, label
                assert rec["state"] == tl.state, label
                assert rec["last_step"] == tl.last_step, label
                want_by = tl.archived_by.run_no if tl.archived_by else None
                assert rec["archived_by"] == want_by, label
                assert_same(self.read_rows(txn, tl), tl.rows, f"{label}: resolved rows")
                assert_same(
                    self.read_rows(txn, tl, include_parent=False), tl.own(), f"{label}: own rows"
                )
                desc = storeops.describe(s, txn, rec)
                assert_same(desc["summary"], tl.summary(), f"{label}: summary")
                assert desc["last_step"] == tl.last_step, label
                ancestors = [(a["run_no"], a["step"]) for a in lineage.lineage(s, txn, rec)]
                assert ancestors == tl.lineage(), f"{label}: lineage"
                if tl.parent is not None:
                    kids = {
                        (c["run_no"], c["step"])
                        for c in lineage.children_of(s, txn, tl.parent[0].run_no)
                    }
                    assert (tl.run_no, tl.parent[1]) in kids, f"{label}: missing from children"

    @invariant()
    def live_runs_read_by_id(self) -> None:
        with self.store.env.begin() as txn:
            for run_id, tl in self.live.items():
                msg = {"project": P, "id": run_id, "limit": 100000}
                got = storeops.read(self.store, txn, "scan", msg)
                assert_same(got["rows"], tl.rows, f"scan {run_id!r}")
                assert got["next"] is None
                own = storeops.read(self.store, txn, "scan", {**msg, "include_parent": False})
                assert_same(own["rows"], tl.own(), f"scan {run_id!r} include_parent=False")
                for samples in (2, 3):
                    self.check_history(
                        txn, {"project": P, "id": run_id, "samples": samples}, tl.rows
                    )


StoreMachine.TestCase.settings = settings(
    max_examples=75,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreModel = StoreMachine.TestCase


def test_int_sums_beyond_64_bits(tmp_path: Path) -> None:
    """Any int a row may hold (rows.py: -2**63 .. 2**64-1) can be logged more than once.

    The per-key stats behind the summary must not turn valid rows into a batch
    the store cannot write.
    """
    store = Store(tmp_path / "data", map_size=64 * 1024 * 1024)
    try:
        with store.env.begin(write=True) as txn:
            run = storeops.init_run(store, txn, {"project": P, "id": "big"}, client="c1")["run_no"]
        batches = [
            [(0, {"n": 2**64 - 1, "m": -(2**63)})],
            [(1, {"n": 1, "m": -1})],
        ]
        for seq, rows in enumerate(batches, start=1):
            with store.env.begin(write=True) as txn:
                storeops.append(store, txn, run, rows, "c1", seq)
        with store.env.begin() as txn:
            got = storeops.read(store, txn, "scan", {"project": P, "id": "big"})["rows"]
            summary = storeops.describe(store, txn, store.find(txn, P, "big"))["summary"]
        assert got == [{"_step": 0, "n": 2**64 - 1, "m": -(2**63)}, {"_step": 1, "n": 1, "m": -1}]
        assert summary == {"n": 1, "m": -1, "_step": 1}
    finally:
        store.close()
