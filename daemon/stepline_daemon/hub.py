"""What every connection shares: the store, the writer, the reads, the
connections themselves; and the daemon's shutdown, which drains them all."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from stepline import __version__, protocol
from stepline.errors import ClusterUnavailable, DaemonError
from stepline_daemon import ops, read_worker, render
from stepline_daemon.backup import Backups
from stepline_daemon.faults import CrashPoints
from stepline_daemon.messages import Barrier, Init
from stepline_daemon.settings import Settings
from stepline_daemon.store.reads import LmdbReads
from stepline_daemon.store.records import Store
from stepline_daemon.writer import ResizeGate, Writer, WriteRequest

if TYPE_CHECKING:
    from stepline_daemon.cluster.shipper import Shipper
    from stepline_daemon.connection import Connection

log = logging.getLogger("stepline.server")

# How long an ``init`` continuing a run this node lacks waits for the cluster;
# and one continuing a run it holds (which goes on here if the cluster is slow).
CLUSTER_ASK_S = 10.0
CLUSTER_PEEK_S = 2.0

Delivery = list[tuple[Callable[[dict[str, Any]], None], dict[str, Any]]]


class Hub:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        crash: CrashPoints | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.loop = loop
        self.crash = crash or CrashPoints()
        self.gate = ResizeGate()
        self.writer = Writer(store, self._post, self.gate, settings.max_group, self.crash)
        self.backups = Backups(store, self.gate, self.crash)
        self.reads = ThreadPoolExecutor(settings.read_threads, thread_name_prefix="stepline-read")
        self.workers = self._worker_pool()
        self._workers_started = False
        self._starting: list[Future[bool]] = []  # start_workers' tasks, until all ran
        self.connections: set[Connection] = set()
        self.stopping = False
        self.queued_bytes = 0
        self.paused: set[Connection] = set()
        self.watchers: dict[int, set[asyncio.Event]] = {}
        self.http_url: str | None = None  # set once HTTP serves
        self.shipper: Shipper | None = None  # set when the node replicates to a cluster

    # ------------------------------------------------------------ writes

    def _post(self, results: Delivery, runs: set[int]) -> None:
        # Called on the writer thread: hand the replies to the loop in one hop.
        self.loop.call_soon_threadsafe(self._deliver, results, runs)

    def _deliver(self, results: Delivery, runs: set[int]) -> None:
        for fn, reply in results:
            try:
                fn(reply)
            except Exception:  # one connection's failure must not cost others their acks
                log.exception("delivering a reply failed")
        if self.shipper is not None and runs:
            self.shipper.committed()
        for run_no in runs & self.watchers.keys():
            for event in self.watchers[run_no]:
                event.set()

    def admit(self, conn: Connection, cost: int) -> None:
        """Count a queued write; past the bound, stop reading from its sender.

        Backpressure, not buffering: a paused client's socket fills and its
        sender waits, holding its rows itself.
        """
        self.queued_bytes += cost
        if self.queued_bytes > self.settings.max_queued_bytes:
            conn.pause()
            self.paused.add(conn)

    def release(self, cost: int) -> None:
        self.queued_bytes -= cost
        if (
            self.paused
            and self.queued_bytes <= self.settings.max_queued_bytes // 2
            and not self.stopping
        ):
            waiting, self.paused = self.paused, set()
            for conn in waiting:
                conn.resume()  # may pause itself (and others) again right away

    async def drain(self) -> None:
        """Wait until every write queued so far is committed and answered."""
        done = self.loop.create_future()
        self.writer.submit(WriteRequest("barrier", Barrier(), "", lambda _r: done.set_result(None)))
        await done

    @contextlib.contextmanager
    def watch(self, run_no: int) -> Iterator[asyncio.Event]:
        """An event set whenever a commit changes run ``run_no``; for live streams.

        Watch before reading, so nothing committed in between goes unnoticed.
        """
        event = asyncio.Event()
        self.watchers.setdefault(run_no, set()).add(event)
        try:
            yield event
        finally:
            waiting = self.watchers[run_no]
            waiting.discard(event)
            if not waiting:
                del self.watchers[run_no]

    # ------------------------------------------------------------- reads

    async def read(self, op: str, msg: dict[str, Any], spec: render.Spec = ("json",)) -> Any:
        """Every read, from every front end: answered by the read model and
        rendered by ``spec``; heavy ones in a worker process, the rest on a
        read thread; never on the loop."""
        self.start_workers()
        if ops.OPS[op].heavy and self.workers is not None and self._workers_up():
            for attempt in (1, 2):
                pool = self.workers
                assert pool is not None
                try:
                    return await self.loop.run_in_executor(pool, read_worker.run, op, msg, spec)
                except BrokenProcessPool:
                    # A worker died (the OOM killer, say): a fresh pool, then one retry.
                    log.error("a read worker died; starting new ones (attempt %d)", attempt)
                    if self.workers is pool:
                        self.workers = self._worker_pool()
                        pool.shutdown(wait=False, cancel_futures=True)
            raise DaemonError("the read workers keep dying; see the daemon log")
        return await self.loop.run_in_executor(self.reads, self._read_here, op, msg, spec)

    def _read_here(self, op: str, msg: dict[str, Any], spec: render.Spec) -> Any:
        """On a read thread; the reply is rendered (framed) here too, off the loop."""
        with self.gate.shared(), self.store.env.begin() as txn:
            result = ops.answer(LmdbReads(self.store, txn), op, msg)
        return render.render(spec, result)

    async def continuing(self, init: Init) -> Init:
        """``init``, with the cluster's head of the run it continues when this
        node replicates to a cluster and lacks that run (``cluster.heads``)."""
        if self.settings.clickhouse is None:
            return init
        from stepline_daemon.cluster import heads  # a standalone node never loads it

        if heads.continued(init) is None:
            return init
        return await self.loop.run_in_executor(self.reads, self._continuing_here, init)

    def _continuing_here(self, init: Init) -> Init:
        from stepline_daemon.cluster import heads
        from stepline_daemon.cluster.client import ClickHouse
        from stepline_daemon.cluster.reads import ClusterReads
        from stepline_daemon.cluster.schema import store_of
        from stepline_daemon.store import changes

        url = self.settings.clickhouse
        target = heads.continued(init)
        assert url is not None and target is not None
        run_id, step = target
        with self.gate.shared(), self.store.env.begin() as txn:
            held = self.store.lookup(txn, init.project, run_id) is not None
            own = changes.store_id(txn, self.store.meta)
        # A run this node holds may have gone on elsewhere since (a job back
        # where it ran before): asked briefly, and continued here if the
        # cluster cannot say.
        reads = ClusterReads.of(ClickHouse(url, timeout=CLUSTER_PEEK_S if held else CLUSTER_ASK_S))
        try:
            origin = heads.head(reads, init.project, run_id, step)
        except ClusterUnavailable as exc:
            if held:
                log.warning(
                    "init: continuing %s/%s as this node holds it (%s)", init.project, run_id, exc
                )
                return init
            raise ClusterUnavailable(
                f"run {run_id!r} of project {init.project!r} is not on this node, and the "
                f"cluster could not be asked ({exc})"
            ) from None
        if origin is None or store_of(origin.timeline) == own:
            return init  # none in the cluster, or this node's own: as ever
        return dataclasses.replace(init, origin=origin)

    async def backup(self, msg: dict[str, Any]) -> dict[str, Any]:
        """File work, so on a read thread; not a read of the model."""
        return await self.loop.run_in_executor(self.reads, self.backups.run, msg)

    def _worker_pool(self) -> ProcessPoolExecutor | None:
        """Read worker processes, spawned (never forked: this process has threads)."""
        if not self.settings.read_processes:
            return None
        return ProcessPoolExecutor(
            self.settings.read_processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=read_worker.start,
            initargs=(str(self.settings.data_dir), os.getpid()),
        )

    def start_workers(self) -> None:
        """Spawn every read worker, in the background, on the first read of any kind.

        Not on the first heavy read: starting one (a new interpreter, its
        imports, the store opened) took ~120 ms of the first chart a user opened,
        and a chart comes after lighter reads (the dashboard's run list, or
        ``Api().run()`` before ``history``). Not at start-up either: most daemons
        only ingest, and need neither the CPU nor the memory. Until the workers
        are up, heavy reads run on a read thread instead.
        """
        pool = self.workers
        if pool is None or self._workers_started:
            return
        self._workers_started = True

        def started(fut: Future[bool]) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                log.error("a read worker failed to start: %s", fut.exception())

        # A spawning pool starts a worker per task queued while none is idle.
        for _ in range(self.settings.read_processes):
            fut = pool.submit(read_worker.ready)
            fut.add_done_callback(started)
            self._starting.append(fut)

    def _workers_up(self) -> bool:
        """Whether the workers started are serving (always, after)."""
        if self._starting and all(f.done() for f in self._starting):
            self._starting.clear()
        return not self._starting

    # ----------------------------------------------------------- the rest

    def status(self) -> dict[str, Any]:
        """What ``stepline status`` shows: cheap, answered on the loop."""
        m = self.writer.metrics
        return {
            "pid": os.getpid(),
            "version": __version__,
            "store": "node",
            "node": self.settings.node,
            "protocol": protocol.PROTOCOL_VERSION,
            "started": m.started,
            "uptime": time.time() - m.started,
            "data_dir": str(self.settings.data_dir),
            "socket": str(self.settings.socket),
            "http": self.http_url,
            "clients": len(self.connections),
            "queued_requests": self.writer.queued,
            "queued_bytes": self.queued_bytes,
            "rows": m.rows,
            "batches": m.batches,
            "commits": m.commits,
            "errors": dict(m.errors),
            "writer_healthy": self.writer.healthy(stuck_after=30.0),
            # History reads go to worker processes once these are up.
            "read_workers": self.settings.read_processes
            if self.workers is not None and self._workers_started and self._workers_up()
            else 0,
            "cluster": None if self.shipper is None else self.shipper.status(),
        }

    @property
    def http_token(self) -> str | None:
        return self.settings.http_token

    def metrics_text(self, streams: int) -> str:
        """``/metrics``: the writer's counters, and gauges of the moment."""
        info = self.store.env.info()
        stat = self.store.env.stat()
        gauges = {
            "clients": ("Connected socket clients.", len(self.connections)),
            "queued_requests": ("Write requests waiting for the writer.", self.writer.queued),
            "queued_bytes": ("Frame bytes queued for the writer.", self.queued_bytes),
            "live_streams": ("Open HTTP live streams.", streams),
            "lmdb_map_bytes": ("LMDB map size.", info["map_size"]),
            "lmdb_used_bytes": (
                "LMDB pages in use, in bytes.",
                (info["last_pgno"] + 1) * stat["psize"],
            ),
            "writer_healthy": (
                "1 while the writer thread is alive and not stuck.",
                0 + self.writer.healthy(30.0),
            ),
            "uptime_seconds": (
                "Seconds since the daemon started.",
                time.time() - self.writer.metrics.started,
            ),
        }
        if self.shipper is not None:
            self.shipper.status()  # fresh lag figures
            p = self.shipper.progress
            gauges["replication_lag_rows"] = (
                "Rows committed here and not yet acknowledged by the cluster.",
                p.lag_rows,
            )
            gauges["replication_lag_seconds"] = (
                "Age of the oldest change not yet acknowledged by the cluster.",
                p.lag_seconds,
            )
            gauges["replication_shipped_rows"] = (
                "Rows the cluster acknowledged since the daemon started.",
                p.shipped_rows,
            )
            gauges["replication_failures"] = (
                "Shipping rounds that failed since the daemon started.",
                p.failures,
            )
        return self.writer.metrics.render(gauges)

    async def shutdown(self) -> None:
        """Stop reading, commit and answer everything queued (with a deadline),
        close every connection, then stop the writer and the reads."""
        self.stopping = True
        for conn in list(self.connections):
            conn.stop_reading()
        if self.shipper is not None:
            await self.shipper.stop()
        try:
            await asyncio.wait_for(self.drain(), self.settings.drain_timeout)
        except TimeoutError:
            log.error(
                "shutdown: writes still queued after %.0fs; exiting anyway",
                self.settings.drain_timeout,
            )
        losses = [conn.close() for conn in list(self.connections)]
        if losses:
            await asyncio.wait(losses, timeout=5)
        self.writer.stop(timeout=self.settings.drain_timeout)
        self.reads.shutdown(wait=True, cancel_futures=True)
        if self.workers is not None:
            self.workers.shutdown(wait=True, cancel_futures=True)
