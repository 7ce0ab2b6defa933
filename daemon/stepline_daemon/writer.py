"""The one thread that writes to LMDB, committing requests in groups.

Connections queue validated write requests; the writer takes everything queued
(up to ``max_group``), applies it in one write transaction, commits with fsync,
then hands every reply back to the event loop. Under load, requests pile up
during a commit and share the next one, so throughput grows with load while a
lone request still waits for just one fsync.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import lmdb

from stepline.errors import DaemonError, Error, RequestError, SeqGap, StorageFull
from stepline_daemon import replies
from stepline_daemon.faults import CrashPoints
from stepline_daemon.messages import Barrier, Batch, Cursor, Disconnect, Token, Write
from stepline_daemon.metrics import Metrics
from stepline_daemon.ops import OPS
from stepline_daemon.replies import Reply
from stepline_daemon.store import changes, runs, tokens
from stepline_daemon.store.records import Store
from stepline_daemon.store.tokens import TOKEN_TTL

log = logging.getLogger("stepline.writer")

ReplyFn = Callable[[Reply], None]
# The replies to deliver, and the runs whose records or rows the commit changed.
Post = Callable[[list[tuple[ReplyFn, Reply]], set[int]], None]

# How often stored outcomes older than TOKEN_TTL are looked for and dropped.
TOKEN_EXPIRY_EVERY = 3600.0


@dataclass(eq=False)
class WriteRequest:
    op: str  # an op of kind WRITE, or "disconnect", "barrier" or "cursor"
    msg: Write | None  # None only when refused (``refusal``)
    client: str
    reply: ReplyFn | None
    # rid, run_no and seq as the client sent them, for the reply.
    echo: dict[str, Any] = field(default_factory=dict)
    # Refused on the loop already; the writer still records a batch's seq, in order.
    # Why it is answered with an error instead of applied: the request's fault
    # (a RequestError), or a source it needed failed (the cluster store).
    refusal: Error | None = None
    # A savepointed request's token, read even when the rest was refused: a
    # token already used for another request is what the client hears of first.
    token: Token | None = None


def _touched(results: list[tuple[WriteRequest, Reply | None]]) -> set[int]:
    touched = set()
    for req, reply in results:
        if isinstance(req.msg, (Batch, Disconnect)):
            touched.add(req.msg.run_no)
        elif req.op == "init" and reply is not None and reply.get("op") == "ok":
            result = reply["result"]
            touched.add(result["run_no"])
            if result.get("how") == "rewind":
                touched.add(result["parent_run_no"])  # now archived
    return touched


class ResizeGate:
    """Readers share it; growing the LMDB map needs it alone.

    LMDB forbids changing the map size while any transaction of this process is
    open, and reads run on other threads.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: not self._resizing)
            self._readers += 1
        try:
            yield
        finally:
            with self._cv:
                self._readers -= 1
                self._cv.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cv:
            self._resizing = True
            self._cv.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cv:
                self._resizing = False
                self._cv.notify_all()


class Writer:
    def __init__(
        self,
        store: Store,
        post: Post,
        gate: ResizeGate,
        max_group: int,
        crash: CrashPoints | None = None,
    ) -> None:
        self._store = store
        self._post = post
        self._gate = gate
        self._max_group = max_group
        self._crash = crash or CrashPoints()
        self._expire_tokens_at = 0.0  # time.monotonic() of the next expiry pass
        self.metrics = Metrics()
        self._queue: collections.deque[WriteRequest] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="stepline-writer", daemon=True)
        # When the group being applied started; None while waiting for work.
        self._busy_since: float | None = None
        self._rows_in_txn = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def healthy(self, stuck_after: float) -> bool:
        """Alive, and not inside one group for ``stuck_after`` seconds or more:
        what the systemd watchdog vouches for."""
        busy = self._busy_since
        return self._thread.is_alive() and (busy is None or time.monotonic() - busy < stuck_after)

    def start(self) -> None:
        self._thread.start()

    def submit(self, req: WriteRequest) -> None:
        with self._cv:
            self._queue.append(req)
            self._cv.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish everything queued, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                n = min(len(self._queue), self._max_group)
                group = [self._queue.popleft() for _ in range(n)]
            self._busy_since = time.monotonic()
            try:
                results = self._apply(group)
            except BaseException:  # never die silently: fail the group, keep serving
                log.exception("writer: unexpected failure applying %d requests", len(group))
                results = [
                    (r, replies.error(DaemonError("internal error in the writer"), r.echo))
                    for r in group
                ]
            finally:
                self._busy_since = None
            for req, reply in results:
                if reply is not None and reply.get("op") == "error":
                    self.metrics.refused(reply["code"])
                elif self._crash:
                    self._crash.reached("reply", req.op)  # committed, not yet answered
            self._post(
                [(r.reply, reply) for r, reply in results if r.reply and reply], _touched(results)
            )

    def _apply(self, group: list[WriteRequest]) -> list[tuple[WriteRequest, Reply | None]]:
        while True:
            try:
                return self._commit(group)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                # Disk full or an I/O error: the transaction was aborted, so none
                # of the group is stored and the clients keep their rows to resend.
                log.error("writer: commit failed: %s", exc)
                err = StorageFull(f"storage error, nothing from this batch was stored: {exc}")
                return [(r, replies.error(err, r.echo)) for r in group]
            except Exception:
                if len(group) == 1:
                    log.exception("writer: request %s failed", group[0].op)
                    return [(group[0], replies.error(DaemonError("internal error"), group[0].echo))]
                # One request hit a bug: apply each alone so the rest still land.
                log.exception("writer: group failed; applying requests one by one")
                return [result for r in group for result in self._apply([r])]

    def _grow(self) -> None:
        env = self._store.env
        new = env.info()["map_size"] * 2
        log.info("writer: LMDB map full; growing it to %d bytes", new)
        with self._gate.exclusive():
            env.set_mapsize(new)

    def _commit(self, group: list[WriteRequest]) -> list[tuple[WriteRequest, Reply | None]]:
        store = self._store
        results: list[tuple[WriteRequest, Reply | None]] = []
        began = time.perf_counter()
        self._rows_in_txn = 0
        store.begin_changes()
        txn = store.env.begin(write=True)
        try:
            for req in group:
                if req.op in OPS and OPS[req.op].savepointed:
                    results.append((req, self._savepointed(txn, req)))
                    continue
                try:
                    results.append((req, self._apply_one(txn, req)))
                except RequestError as exc:
                    results.append((req, replies.error(exc, req.echo)))
                    # Its traceback holds _apply_one's frame, and with it the
                    # request: free a refused batch now, not at the next GC.
                    exc.__traceback__ = None
            if any(req.op in OPS and OPS[req.op].savepointed for req in group):
                self._expire_tokens(txn)
            store.log_changes(txn)
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        applied = sum(1 for _, reply in results if reply is not None and reply.get("op") != "error")
        self.metrics.committed(time.perf_counter() - began, self._rows_in_txn, applied)
        return results

    def _expire_tokens(self, txn: lmdb.Transaction) -> None:
        now = time.monotonic()
        if now >= self._expire_tokens_at:
            self._expire_tokens_at = now + TOKEN_EXPIRY_EVERY
            n = tokens.expire(self._store, txn, time.time() - TOKEN_TTL)
            if n:
                log.info("writer: forgot %d request outcomes older than %.0fs", n, TOKEN_TTL)

    def _savepointed(self, txn: lmdb.Transaction, req: WriteRequest) -> Reply | None:
        """Apply ``req`` in a nested transaction: refused, it leaves no trace even
        if it had written before finding out (a safety net under the store's own
        validate-first rule)."""
        child = self._store.env.begin(write=True, parent=txn)
        try:
            reply = self._apply_one(child, req)
        except RequestError as exc:
            child.abort()
            exc.__traceback__ = None  # as in _commit
            return replies.error(exc, req.echo)
        except BaseException:
            child.abort()
            raise
        child.commit()
        return reply

    def _apply_one(self, txn: lmdb.Transaction, req: WriteRequest) -> Reply | None:
        msg = req.msg
        if isinstance(msg, Batch) or (req.refusal is not None and OPS[req.op].needs_seq):
            return self._batch(txn, req)
        if isinstance(msg, Disconnect):
            runs.mark_crashed(self._store, txn, msg.run_no, req.client)
            return None
        if isinstance(msg, Barrier):
            return {"op": "barrier"}
        if isinstance(msg, Cursor):
            changes.advance(txn, self._store.changes, self._store.meta, msg.seq, msg.logged)
            return {"op": "ok"}
        token = req.token
        done = None if token is None else tokens.outcome(self._store, txn, req.op, token)
        refusal, req.refusal = req.refusal, None  # no cycle through req
        if done is None and refusal is not None:
            if not isinstance(refusal, RequestError):
                return replies.error(refusal, req.echo)  # nothing written, nothing to undo
            raise refusal
        if done is None:  # not a resend of a request already applied
            apply = OPS[req.op].apply
            assert apply is not None and msg is not None
            done = apply(self._store, txn, msg, req.client)
            if token is not None:
                tokens.remember(self._store, txn, req.op, token, done)
        return {"op": "ok", "rid": req.echo.get("rid"), "result": done}

    def _batch(self, txn: lmdb.Transaction, req: WriteRequest) -> Reply:
        store = self._store
        run_no, seq = req.echo["run_no"], req.echo["seq"]
        last = store.last_seq(txn, req.client, run_no)
        if seq <= last:  # a resend of a batch already answered: apply nothing
            return {"op": "ack", "run_no": run_no, "seq": seq}
        if seq != last + 1:
            # An earlier batch failed for a passing reason (storage); the client
            # resends from it, in order. Not recorded: this one is not answered.
            raise SeqGap(f"batch {seq} arrived before batch {last + 1} of this run")
        try:
            if req.refusal is not None:
                refusal, req.refusal = req.refusal, None  # no cycle through req
                if req.op != "log":
                    # A run that cannot be written is what the client hears of
                    # first, before what is wrong with the update.
                    runs.writable(store, txn, run_no, req.client)
                raise refusal
            apply = OPS[req.op].apply
            assert apply is not None
            apply(store, txn, req.msg, req.client)
            if req.op == "log":
                self._rows_in_txn += len(cast(Any, req.msg).rows[0])
        except RequestError:
            # Refused for good: record the seq so the run's next batch follows on.
            store.mark_seq(txn, req.client, run_no, seq)
            raise
        return {"op": "ack", "run_no": run_no, "seq": seq}
