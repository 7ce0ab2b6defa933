"""The shipper: a task on the daemon's loop that replicates committed changes
into ClickHouse, in commit order, in batches.

Each round: merge pending change entries (``ship.plan``), insert their rows and
then their run records, and only once ClickHouse acknowledged every insert,
move the cursor in LMDB (through the writer, like any write). A crash or a lost
reply anywhere before that ships the same entries again; re-inserts collapse in
the cluster's ReplacingMergeTrees. Inserts and store reads run on one thread of
the shipper's own, never on the loop; logging never waits on any of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import lmdb

from stepline_daemon.cluster import schema, ship
from stepline_daemon.cluster.client import ClickHouse, ClickHouseError
from stepline_daemon.cluster.url import ClusterUrl
from stepline_daemon.faults import CrashPoints
from stepline_daemon.messages import Cursor
from stepline_daemon.store import changes
from stepline_daemon.store.records import Store
from stepline_daemon.writer import ResizeGate, Writer, WriteRequest

log = logging.getLogger("stepline.shipper")

# Between rounds while caught up: most changes wait at most this long, and a
# busy node sends a few large inserts a second rather than many small ones.
SHIP_EVERY = 0.25
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 4.0
STOP_GRACE = 5.0
INSERT_BYTES = 16 * 1024 * 1024
# Behind a Distributed table, an insert is acknowledged once every shard has
# its part, not when it is queued on the server asked: the cursor may move.
SYNC = {"insert_distributed_sync": 1}


@dataclass
class Progress:
    """What ``status`` and ``/metrics`` show; written by the shipper only."""

    lag_rows: int = 0
    lag_entries: int = 0
    oldest: float | None = None  # commit time of the oldest change not shipped
    shipped_rows: int = 0
    inserts: int = 0
    failures: int = 0
    last_error: str | None = None
    last_ok: float | None = None
    connected: bool = False

    @property
    def lag_seconds(self) -> float:
        return 0.0 if self.oldest is None else max(0.0, time.time() - self.oldest)


class Shipper:
    def __init__(
        self,
        url: ClusterUrl,
        node: str,
        store: Store,
        store_id: int,
        gate: ResizeGate,
        writer: Writer,
        crash: CrashPoints | None = None,
    ) -> None:
        self.url = url
        self.node = node
        self.store = store
        self.store_id = store_id
        self.gate = gate
        self.writer = writer
        self.crash = crash or CrashPoints()
        self.client = ClickHouse(url, timeout=30.0)
        self.progress = Progress()
        self.builder = ship.Builder(store, self._snapshot, store_id, node)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="stepline-ship")
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._schema_ready = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the task

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stepline-shipper")

    def committed(self) -> None:
        """A commit happened (on the loop, after its replies)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop after the round in flight; what it did not ship, the next start will."""
        self._stopping = True
        self._stopped.set()
        if self._task is not None:
            # An insert in flight to a server that hangs could hold shutdown for
            # the client's whole timeout; its batch ships again at the next start.
            done, _ = await asyncio.wait([self._task], timeout=STOP_GRACE)
            if not done:
                log.warning("shipper: an insert still in flight at stop; it ships again later")
                self._task.cancel()
        self._thread.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_FIRST
        while not self._stopping:
            began = time.monotonic()
            try:
                done = await loop.run_in_executor(self._thread, self._round)
            except ClickHouseError as exc:
                self._failed(exc)
                await self._pause(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except Exception:  # a bug: keep the daemon serving, say so, try again
                log.exception("shipper: round failed")
                self.progress.failures += 1
                await self._pause(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            if done is not None:
                await self._advance(done)
                if done.count >= ship.BATCH_ROWS or done.full:
                    continue  # a backlog: straight on
            else:
                self._wake.clear()
                await self._pause(1.0, wake=True)  # idle: a commit wakes us
            await self._pause(SHIP_EVERY - (time.monotonic() - began))

    async def _pause(self, seconds: float, wake: bool = False) -> None:
        """Wait ``seconds``; ``stop`` always ends it, a commit only with ``wake``
        (a backoff must not end at every commit and hammer a server that is down)."""
        if seconds <= 0 or self._stopping:
            return
        waits = [asyncio.ensure_future(self._stopped.wait())]
        if wake:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not wake or self._stopping:
            return
        # Idle or waiting: the lag still grows or shrinks; read it off the loop.
        await asyncio.get_running_loop().run_in_executor(self._thread, self._refresh_lag)

    def _failed(self, exc: ClickHouseError) -> None:
        p = self.progress
        p.failures += 1
        p.connected = False
        if p.last_error != str(exc):
            log.warning("shipper: %s; retrying with backoff (the node keeps logging)", exc)
        p.last_error = str(exc)

    async def _advance(self, done: ship.Plan) -> None:
        """Move the cursor past ``done``, through the writer, and wait for it."""
        loop = asyncio.get_running_loop()
        moved = loop.create_future()
        self.writer.submit(
            WriteRequest(
                "cursor",
                Cursor(done.last, done.logged),
                "",
                moved.set_result,  # replies are delivered on the loop
            )
        )
        reply = await moved
        if reply.get("op") != "ok":
            log.error("shipper: moving the cursor failed: %s", reply.get("message"))
            return
        self.progress.shipped_rows += done.count
        await asyncio.get_running_loop().run_in_executor(self._thread, self._refresh_lag)

    # -------------------------------------------------- on the shipper thread

    @contextmanager
    def _snapshot(self) -> Iterator[lmdb.Transaction]:
        if self._stopping:
            # A round that outlived stop (its insert hung): the store is about
            # to close, and a transaction must not be open when it does.
            raise ClickHouseError(0, "the shipper is stopping")
        with self.gate.shared(), self.store.env.begin() as txn:
            yield txn

    def _round(self) -> ship.Plan | None:
        """Ship the oldest pending entries; the plan shipped, or None: nothing pending."""
        with self._snapshot() as txn:
            p = ship.plan(changes.pending(txn, self.store.changes))
            # Any later round reads a later snapshot, so its version is higher or
            # its records the same: the newest version is always the newest state.
            version = changes.last_seq(txn, self.store.meta)
        if p is None:
            self._refresh_lag()
            return None
        if not self._schema_ready:
            # Not in the database the client names: it may not exist yet.
            ddl = ClickHouse(dataclasses.replace(self.url, database="default"), timeout=30.0)
            for stmt in schema.statements(self.url.database):
                ddl.execute(stmt)
            self._schema_ready = True
        db = self.url.database
        first = True
        for bodies in ship.batched(self.builder.history_chunks(p), INSERT_BYTES):
            self.client.execute(f"INSERT INTO {db}.rows FORMAT TabSeparated", bodies.rows, **SYNC)
            if bodies.history:  # rows of no value (init's step) make no history lines
                self.client.execute(
                    f"INSERT INTO {db}.history FORMAT TabSeparated", bodies.history, **SYNC
                )
            self.progress.inserts += 1
            if first and self.crash:
                self.crash.reached("receive", "ship")  # mid-batch: rows in, records not
            first = False
        purged: dict[int, tuple[str, int]] = {}

        def gone(missing: set[int]) -> dict[int, tuple[str, int]]:
            purged.update(self._gone(missing, p.full))
            return purged

        body = self.builder.runs_body(p, version, gone)
        if body:
            self.client.execute(f"INSERT INTO {db}.runs FORMAT TabSeparated", body, **SYNC)
            self.progress.inserts += 1
        if purged:
            self._reclaim(sorted(purged))
        if self.crash:
            self.crash.reached("reply", "ship")  # acknowledged, cursor not moved
        self.progress.connected = True
        self.progress.last_ok = time.time()
        return p

    def _reclaim(self, timelines: list[int]) -> None:
        """Purged timelines' rows, removed from the cluster too (a mutation, done
        in the background by ClickHouse). Their tombstones already hide them from
        every read, so a failure here costs space, not correctness: said, not retried.
        Behind Distributed tables the operator runs it on the shards' local tables."""
        listed = ", ".join(map(str, timelines))
        try:
            for table in ("history", "rows"):
                self.client.execute(
                    f"ALTER TABLE {self.url.database}.{table} DELETE WHERE timeline IN ({listed})"
                )
        except ClickHouseError as exc:
            log.warning("shipper: purged rows stay in the cluster, hidden (%s)", exc.message)

    def _gone(self, missing: set[int], full: bool) -> dict[int, tuple[str, int]]:
        """Of timelines the store no longer holds, those the cluster still shows,
        with their project and root (a tombstone must land on the same shard).
        ``full``: all of this store's timelines the cluster shows that the store
        lacks (purged while the node did not replicate)."""
        if not missing and not full:
            return {}
        lo, hi = ship.own_range(self.store_id)
        if full:
            held = self.builder.held()
            where = f"timeline >= {lo} AND timeline < {hi}"
        else:
            held = set()
            where = f"timeline IN ({', '.join(map(str, sorted(missing)))})"
        rows = self.client.query(
            f"SELECT timeline, project, root FROM {self.url.database}.runs FINAL "
            f"WHERE {where} AND deleted < 2"
        )
        return {int(tl): (pr, int(root)) for tl, pr, root in rows if int(tl) not in held}

    def _refresh_lag(self) -> None:
        try:
            with self._snapshot() as txn:
                lag = changes.lag(txn, self.store.changes, self.store.meta)
        except (lmdb.Error, ClickHouseError):  # closing, or stopping: keep the last figures
            return
        p = self.progress
        p.lag_rows, p.lag_entries, p.oldest = lag.rows, lag.entries, lag.oldest

    def status(self) -> dict[str, object]:
        # Read now, not at the last round: a commit since must show as lag at
        # once (a caller waiting for lag 0 must not see a stale 0). A few gets.
        self._refresh_lag()
        p = self.progress
        return {
            "url": str(self.url),
            "node": self.node,
            "store_id": self.store_id,
            "connected": p.connected,
            "lag_rows": p.lag_rows,
            "lag_entries": p.lag_entries,
            "lag_seconds": round(p.lag_seconds, 3),
            "shipped_rows": p.shipped_rows,
            "inserts": p.inserts,
            "failures": p.failures,
            "last_error": p.last_error,
            "last_ok": p.last_ok,
        }
