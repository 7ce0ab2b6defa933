"""The socket side: a thin asyncio adapter around the sans-IO codec.

``data_received`` feeds the decoder; each message is checked for shape here, on
the loop (cheap, and it lets a bad request be refused without touching the
writer). Writes queue for the writer thread; reads run in the read pool. A
framing error gets an error reply, then the connection closes; a bad request
gets an error reply and the connection keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import multiprocessing
import operator
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, cast

import msgpack

from stepline import __version__, protocol
from stepline.errors import DaemonError, Error, ProtocolError, RequestError, StepOrderError
from stepline.rows import (
    MAX_KEYS_PER_ROW,
    RESERVED_KEYS,
    STEP_MAX,
    Chunks,
    check_rows,
    check_step,
    chunks_of,
)
from stepline_daemon import queries, read_worker, render
from stepline_daemon.faults import CrashPoints
from stepline_daemon.settings import Settings
from stepline_daemon.store import Row, Store
from stepline_daemon.writer import SEQ_OPS, ResizeGate, Writer, WriteRequest, error_reply

log = logging.getLogger("stepline.server")

_MAX_CLIENT_ID = 64
# Written into a backup's directory when the request carried a token: which
# request made it, and once done, its answer (for a resend after a lost reply).
BACKUP_MARK = "stepline-backup.json"
_MARKS = frozenset({BACKUP_MARK, BACKUP_MARK + ".tmp"})


def _read_mark(path: Path) -> dict[str, Any]:
    """The backup mark in ``path``, newest first (a rename may not have happened);
    {} when there is none that reads."""
    for name in (BACKUP_MARK + ".tmp", BACKUP_MARK):
        try:
            done = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(done, dict):
            return done
    return {}


def _write_mark(path: Path, done: dict[str, Any]) -> None:
    tmp = path / (BACKUP_MARK + ".tmp")
    tmp.write_text(json.dumps(done))
    tmp.replace(path / BACKUP_MARK)


def _remove(path: Path, names: set[str]) -> set[str]:
    """Remove these files of ``path``; the names left in it."""
    for name in names:
        (path / name).unlink(missing_ok=True)
    return {p.name for p in path.iterdir()}


Checked = tuple[list[Row], list[bytes] | None, Chunks | None]


def _check_rows(raw: Any, values_checked: bool = False) -> Checked:
    """Shape, types and order of a ``log`` batch; raises naming the first bad row."""
    if not isinstance(raw, list) or not raw:
        raise RequestError("log: rows must be a non-empty list of [step, {key: value}]")
    rows: list[Row] = []
    prev = -1
    for i, item in enumerate(raw):
        if type(item) is not list or len(item) != 2:
            raise RequestError(f"log: row {i} must be [step, {{key: value}}]")
        step = item[0]
        if type(step) is not int or not prev < step <= STEP_MAX:
            why = check_step(step)
            if why:
                raise RequestError(f"log: row {i}: {why}; the batch is refused whole")
            raise StepOrderError(
                f"log: step {step} (row {i}) does not follow step {prev}; steps must strictly "
                "increase, so the batch is refused whole"
            )
        prev = step
        rows.append((step, item[1]))
    if values_checked:
        return rows, None, None
    values, packed = _decode_values([v for _, v in rows])
    chunks = _check_values(values)
    return [(step, v) for (step, _), v in zip(rows, values, strict=True)], packed, chunks


def _check_values(values: list[Any]) -> Chunks | None:
    """Check every row's values; return them by column for the summary fold."""
    chunks = chunks_of(values) if all(type(v) is dict for v in values) else None
    bad = check_rows(values, chunks)
    if bad is not None:
        raise RequestError(f"log: row {bad[0]}: {bad[1]}; the batch is refused whole")
    return chunks


_BYTES = frozenset({bytes})
_INTS = frozenset({int})


def _check_columns(steps: Any, values: Any) -> Checked:
    """A ``log`` batch sent as columns (the client's form), checked in a few C passes;
    only a failing check goes value by value to name the culprit."""
    if type(steps) is not list or type(values) is not list or not steps:
        raise RequestError("log: steps and values must be non-empty lists")
    if len(steps) != len(values):
        raise RequestError(f"log: {len(steps)} steps but {len(values)} values")
    if not (
        _INTS.issuperset(map(type, steps))
        and steps[0] >= 0
        and steps[-1] <= STEP_MAX
        and all(map(operator.lt, steps, itertools.islice(steps, 1, None)))
    ):
        # Name the first bad step, with the same words as the row form.
        _check_rows([[step, None] for step in steps], values_checked=True)
        raise RequestError("log: steps must be strictly increasing integers in [0, 2**63)")
    decoded, packed = _decode_values(values)
    chunks = _check_values(decoded)
    return list(zip(steps, decoded, strict=True)), packed, chunks


def check_limits(
    rows: list[Row], packed: list[bytes] | None, max_keys: int, max_value_len: int
) -> None:
    """The operator's limits (settings), on rows that already passed the protocol's."""
    if max_keys < MAX_KEYS_PER_ROW:
        for i, (_, values) in enumerate(rows):
            if len(values) - sum(k in values for k in RESERVED_KEYS) > max_keys:
                raise RequestError(
                    f"log: row {i} has {len(values)} keys; this daemon takes at most "
                    f"{max_keys}; the batch is refused whole"
                )
    # A packed row no longer than the limit holds no string longer than it.
    if packed is not None and max(map(len, packed)) <= max_value_len:
        return
    for i, (_, values) in enumerate(rows):
        for key, value in values.items():
            if type(value) is str and len(value) > max_value_len:
                raise RequestError(
                    f"log: row {i}: value for {key!r} is {len(value)} characters; this daemon "
                    f"takes at most {max_value_len}; the batch is refused whole"
                )


def _decode_values(raw: list[Any]) -> tuple[list[Any], list[bytes] | None]:
    """Row values as maps, plus the bytes to store when every row came packed.

    Rows normally arrive as msgpack bytes (``protocol.row_from_packed``): they are
    decoded here only to be checked, and stored exactly as received. A raw client
    may send plain maps instead; those are re-packed by the store.
    """
    if _BYTES.issuperset(map(type, raw)):
        try:
            return list(map(msgpack.unpackb, raw)), raw
        except Exception:
            pass
    values = []
    for i, v in enumerate(raw):
        if type(v) is bytes:
            try:
                v = msgpack.unpackb(v, raw=False, strict_map_key=False)
            except Exception as exc:
                raise RequestError(f"log: row {i}: values are not one msgpack map: {exc}") from None
        values.append(v)
    return values, raw if _BYTES.issuperset(map(type, raw)) else None


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
HOST = socket.gethostname()


def peer_credentials(sock: Any) -> dict[str, Any] | None:
    """The connecting process as the kernel saw it at connect time."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except (OSError, AttributeError):
        return None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return {"uid": uid, "gid": gid, "pid": pid, "host": HOST}


class Hub:
    """What every connection shares: store, writer, read pool, live connections."""

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
        self._backup_locks: dict[str, threading.Lock] = {}
        self._backup_locks_guard = threading.Lock()

    def _post(
        self, results: list[tuple[Callable[[dict[str, Any]], None], dict[str, Any]]], runs: set[int]
    ) -> None:
        # Called on the writer thread: hand the replies to the loop in one hop.
        self.loop.call_soon_threadsafe(self._deliver, results, runs)

    def _deliver(
        self, results: list[tuple[Callable[[dict[str, Any]], None], dict[str, Any]]], runs: set[int]
    ) -> None:
        _deliver(results)
        for run_no in runs & self.watchers.keys():
            for event in self.watchers[run_no]:
                event.set()

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

    def status(self) -> dict[str, Any]:
        """What ``stepline status`` shows: cheap, answered on the loop."""
        m = self.writer.metrics
        return {
            "pid": os.getpid(),
            "version": __version__,
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
            # History reads go to worker processes once these are up (start-up).
            "read_workers": self.settings.read_processes
            if self.workers is not None and self._workers_started and self._workers_up()
            else 0,
        }

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
        """Whether the workers started at start-up are serving (always, after)."""
        if self._starting and all(f.done() for f in self._starting):
            self._starting.clear()
        return not self._starting

    async def query(self, op: str, msg: dict[str, Any], spec: render.Spec = ("json",)) -> Any:
        """A read, rendered by ``spec``: heavy ones in a worker process, the rest
        on a read thread; never on the loop."""
        self.start_workers()
        if op in read_worker.HEAVY and self.workers is not None and self._workers_up():
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
        return await self.loop.run_in_executor(
            self.reads, lambda: render.render(spec, queries.result_of(self.read(op, msg)))
        )

    def backup(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A consistent, compacted copy of the store, taken while serving.

        With a token, the copy is marked with it (``BACKUP_MARK`` in ``dest``): a
        resend finds its own finished copy and gets the same answer, or its own
        interrupted one and starts it again; anything else in ``dest`` is refused.
        """
        dest = msg.get("dest")
        if not isinstance(dest, str) or not os.path.isabs(dest):
            raise RequestError("backup: dest must be an absolute directory path")
        token = msg.get("token")
        if token is not None and (
            not isinstance(token, str) or not 0 < len(token) <= protocol.MAX_TOKEN
        ):
            raise RequestError(f"backup: token must be a 1-{protocol.MAX_TOKEN} character string")
        path = Path(dest)
        # One at a time per destination: a resend that arrives while the first
        # attempt still copies waits for it, then finds it done.
        with self._backup_locks_guard:
            lock = self._backup_locks.setdefault(os.path.normpath(dest), threading.Lock())
        with lock:
            try:
                out = self._backup_into(path, token)
            except OSError as exc:
                raise RequestError(f"backup: cannot write {dest}: {exc.strerror}") from None
        if self.crash:
            self.crash.reached("reply", "backup")
        return out

    def _backup_into(self, path: Path, token: str | None) -> dict[str, Any]:
        path.mkdir(parents=True, exist_ok=True)
        names = {p.name for p in path.iterdir()}
        if token is not None and names:
            done = _read_mark(path)
            if done.get("token") == token:
                if "bytes" in done and "data.mdb" in names:  # answered already
                    return {"path": str(path), "bytes": done["bytes"]}
                names = _remove(path, names & {"data.mdb", *_MARKS})  # cut short: again
            elif not done and names <= _MARKS:
                names = _remove(path, names)  # only a mark torn as it was first written
        if names:
            raise RequestError(f"backup: {path} is not empty")
        if token is not None:
            _write_mark(path, {"token": token})
        with self.gate.shared():
            self.store.env.copy(str(path), compact=True)
        out = {"path": str(path), "bytes": (path / "data.mdb").stat().st_size}
        if token is not None:
            _write_mark(path, {"token": token, "bytes": out["bytes"]})
        return out

    def read(self, op: str, msg: dict[str, Any]) -> Any:
        """Runs on a read-pool thread; prebuilt replies are framed here too, off the loop."""
        if op == "backup":
            return self.backup(msg)
        fn = queries.READS[op]
        with self.gate.shared(), self.store.env.begin() as txn:
            result = fn(self.store, txn, msg)
        if isinstance(result, queries.Prebuilt):
            return result.frame(msg.get("rid"))
        return result

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

    def read_page(self, msg: dict[str, Any]) -> tuple[bytes, int | None]:
        """One scan page, framed, and where the next starts. On a read-pool thread."""
        with self.gate.shared(), self.store.env.begin() as txn:
            result = queries.scan(self.store, txn, msg)
        rid = msg.get("rid")
        if isinstance(result, queries.Prebuilt):
            return result.frame(rid), result.next_step
        return protocol.encode({"op": "ok", "rid": rid, "result": result}), result["next"]

    def protocol_factory(self) -> Connection:
        return Connection(self)

    async def drain(self) -> None:
        """Wait until every write queued so far is committed and answered."""
        done = self.loop.create_future()
        self.writer.submit(WriteRequest("barrier", {}, "", lambda _r: done.set_result(None)))
        await done


def _deliver(results: list[tuple[Callable[[dict[str, Any]], None], dict[str, Any]]]) -> None:
    for fn, reply in results:
        try:
            fn(reply)
        except Exception:  # one connection's failure must not cost others their acks
            log.exception("delivering a reply failed")


class Connection(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.decoder = protocol.Decoder(hub.settings.max_frame)
        self.transport: asyncio.Transport | None = None
        self.client: str | None = None
        self.owned: set[int] = set()
        self.peer: dict[str, Any] | None = None
        self.paused = False
        self.closed = False
        self.lost: asyncio.Future[None] = hub.loop.create_future()
        self.can_write = asyncio.Event()
        self.can_write.set()

    # ------------------------------------------------------------ transport

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    async def _stream(self, msg: dict[str, Any]) -> None:
        """A whole scan as consecutive page replies with one rid.

        The next page is read while the client takes in this one; the transport's
        write buffer is the flow control, so a slow reader holds at most about a
        page here.
        """
        page = dict(msg)
        try:
            while not self.closed:
                frame, nxt = await self.hub.loop.run_in_executor(
                    self.hub.reads, self.hub.read_page, page
                )
                self.write_frame(frame)
                if nxt is None:
                    return
                page["min_step"] = nxt
                await self.can_write.wait()
        except Error as exc:
            self.send(error_reply(exc, msg))
        except Exception as exc:
            log.error("scan stream failed", exc_info=exc)
            self.send(
                {"op": "error", "code": "internal", "message": str(exc), "rid": msg.get("rid")}
            )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.hub.connections.add(self)
        self.peer = peer_credentials(transport.get_extra_info("socket"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.hub.connections.discard(self)
        self.hub.paused.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        self.can_write.set()  # ends a scan stream waiting to write
        reconnected = any(c.client == self.client for c in self.hub.connections)
        if self.client is not None and not self.hub.stopping and not reconnected:
            for run_no in self.owned:
                self.hub.writer.submit(
                    WriteRequest("disconnect", {"run_no": run_no}, self.client, None)
                )

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        self._drain()

    def _drain(self) -> None:
        # A paused connection keeps its undecoded bytes: frames are decoded (and
        # grow several-fold in memory) only when the writer can take them.
        while not self.paused and not self.closed:
            try:
                msg = self.decoder.next_message()
            except ProtocolError as exc:
                log.warning("closing connection after a framing error: %s", exc)
                self.send({"op": "error", "code": exc.code, "message": exc.message})
                assert self.transport is not None
                self.transport.close()
                return
            if msg is None:
                return
            try:
                self.handle(msg)
            except Error as exc:
                self.send(error_reply(exc, msg))
            except Exception:  # a bug must cost this request, not the connection
                log.exception("handling %r failed", msg.get("op"))
                self.send(error_reply(DaemonError("internal error handling the request"), msg))

    def write_frame(self, frame: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(frame)

    def send(self, msg: dict[str, Any]) -> None:
        if self.closed or self.transport is None:
            return
        try:
            frame = protocol.encode(msg)
        except ProtocolError as exc:
            # A reply too large to frame becomes an error the client can act on.
            small = {"op": "error", "code": "reply_too_large", "message": exc.message}
            small.update({k: msg[k] for k in ("rid", "run_no", "seq") if k in msg})
            frame = protocol.encode(small)
        self.transport.write(frame)

    # ------------------------------------------------------------- requests

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if self.hub.crash:
            self.hub.crash.reached("receive", op)
        if op == "hello":
            client = msg.get("client")
            if (
                not isinstance(client, str)
                or not 0 < len(client) <= _MAX_CLIENT_ID
                or "\0" in client
            ):
                raise RequestError(f"hello: client must be a 1-{_MAX_CLIENT_ID} character string")
            self.client = client
            self.send({"op": "welcome", "version": protocol.PROTOCOL_VERSION, "server": "stepline"})
        elif op == "scan" and msg.get("stream"):
            self.hub.loop.create_task(self._stream(msg))
        elif op in queries.READS:
            self._read(op, msg)
        elif op == "status":
            self.send({"op": "ok", "rid": msg.get("rid"), "result": self.hub.status()})
        elif op in ("delete", "purge"):
            cost = self.decoder.last_size
            self._write(
                WriteRequest(op, msg, self.client or "", lambda r: self._on_write_reply(r, cost)),
                cost,
            )
        elif op == "backup":
            self._read("backup", msg)
        elif op in SEQ_OPS or op == "init":
            if self.client is None:
                raise RequestError(f"{op}: send hello first")
            if op == "init":
                msg["peer"] = self.peer  # the kernel's word, never the client's
            cost = self.decoder.last_size
            req = WriteRequest(op, msg, self.client, lambda r: self._on_write_reply(r, cost))
            if op in SEQ_OPS:
                if type(msg.get("run_no")) is not int or not 0 <= msg["run_no"] < 1 << 64:
                    raise RequestError(f"{op}: run_no must be a non-negative 64-bit integer")
                # Seqs start at 1: a 0 would read as a resend and be acked unstored.
                if type(msg.get("seq")) is not int or not 1 <= msg["seq"] < 1 << 64:
                    raise RequestError(f"{op}: seq must be an integer in [1, 2**64)")
                if op == "log":
                    try:
                        if "steps" in msg:
                            req.rows, req.packed, req.chunks = _check_columns(
                                msg["steps"], msg.get("values")
                            )
                        else:
                            req.rows, req.packed, req.chunks = _check_rows(msg.get("rows"))
                        limits = self.hub.settings
                        check_limits(
                            req.rows, req.packed, limits.max_keys_per_row, limits.max_value_len
                        )
                    except RequestError as exc:
                        # Still goes through the writer, which records the seq in order.
                        # No traceback: it would hold this frame, and with it the
                        # whole decoded batch, until the cyclic GC runs.
                        req.refusal = exc.with_traceback(None)
                        exc.__context__ = None  # an inner error's frames, the same
            self._write(req, cost)
        else:
            raise ProtocolError("unknown_op", f"unknown op {op!r}")

    def _write(self, req: WriteRequest, cost: int) -> None:
        self.hub.admit(self, cost)
        self.hub.writer.submit(req)

    def pause(self) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def resume(self) -> None:
        if self.paused and not self.closed and self.transport is not None:
            self.transport.resume_reading()
        self.paused = False
        self._drain()

    def _on_write_reply(self, reply: dict[str, Any], cost: int) -> None:
        self.hub.release(cost)
        # The runs this connection writes to are the ones it leaves crashed if it
        # vanishes, including runs it took over after reconnecting.
        if reply.get("op") == "ack":
            self.owned.add(reply["run_no"])
        elif reply.get("op") == "ok" and "run_no" in (reply.get("result") or {}):
            self.owned.add(reply["result"]["run_no"])  # an init
        self.send(reply)

    def _read(self, op: str, msg: dict[str, Any]) -> None:
        if op in queries.READS:  # (not a backup)
            self.hub.start_workers()
        if op in read_worker.HEAVY:
            fut: asyncio.Future[Any] = asyncio.ensure_future(
                self.hub.query(op, msg, ("frame", msg.get("rid")))
            )
        else:
            fut = self.hub.loop.run_in_executor(self.hub.reads, self.hub.read, op, msg)

        def done(f: asyncio.Future[Any]) -> None:
            exc = f.exception()
            if exc is None:
                result = f.result()
                if isinstance(result, bytes):
                    self.write_frame(result)
                else:
                    self.send({"op": "ok", "rid": msg.get("rid"), "result": result})
            elif isinstance(exc, Error):
                self.send(error_reply(exc, msg))
            else:
                log.error("read %s failed", op, exc_info=exc)
                self.send(
                    {"op": "error", "code": "internal", "message": str(exc), "rid": msg.get("rid")}
                )

        fut.add_done_callback(done)
