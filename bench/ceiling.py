"""A ceiling for stepline: the same building blocks as a minimal pipe, none of the features.

    python -m bench.ceiling [--writers 4] [--rows 200000] [--batch-rows 1000] [--workdir DIR]

Writer processes pack their rows before the clock starts, then stream them over one
Unix stream socket each to one server process, which commits every batch it has
received in one fsync'd LMDB write transaction (group commit) and acks each batch
after its commit. This is stepline's architecture (client-packed msgpack rows, Unix
socket, one writer thread doing group commit into LMDB with ``sync=True``) without
its work: no protocol beyond length framing, no validation, no seqs, no summaries.
How close stepline gets to this number is how much its features cost.

Workload: each row is the msgpack of a map of 10 floats ``m0``..``m9`` that change
every step plus ``_timestamp`` and ``_runtime``, keyed by ``(writer, step)`` as 16
bytes big-endian. Frames are prepared before the clock starts too: a 4-byte
big-endian length, then a msgpack array of ``[key, value]`` pairs (``value`` the
packed row as bin), ``batch_rows`` rows per frame. Each writer keeps at most
``inflight`` frames unacked; the server acks a frame with one byte once its rows
are committed.

The clock runs from the start signal (all writers connected and packed) to the last
ack of the last writer. Every process stamps CLOCK_MONOTONIC (``time.monotonic``),
which is system-wide on Linux. After the server has stopped, the LMDB environment
is opened read-only and checked: exactly the expected keys, every value of the packed
length, and a sample of rows (plus each writer's last) decoding to what was sent.
Process start, packing and the check are outside the clock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import selectors
import shutil
import socket
import struct
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import lmdb
import msgpack

_LEN = struct.Struct(">I")
_KEY = struct.Struct(">QQ")
ACK = b"\x06"
INFLIGHT = 4  # frames a writer may have sent but not yet seen acked
SOCK_BUF = 4 << 20  # SO_SNDBUF / SO_RCVBUF asked for (the kernel caps it at wmem_max)
RECV_BUF = 2 << 20  # initial receive buffer per connection; grows for larger frames
TIMEOUT = 300.0  # a bound on every wait: setup, the run, joins


# ------------------------------------------------------------------ workload


def pack_rows(writer: int, rows: int) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` pairs of one writer, packed."""
    pack = msgpack.Packer(use_bin_type=True).pack
    key = _KEY.pack
    return [(key(writer, i), pack(_row(i))) for i in range(rows)]


def _row(step: int) -> dict[str, float]:
    x = float(step)
    row = {f"m{k}": x + k for k in range(10)}
    row["_timestamp"] = 1.7e9 + step * 1e-3
    row["_runtime"] = step * 1e-3
    return row


def frame_batches(pairs: list[tuple[bytes, bytes]], batch_rows: int) -> list[bytes]:
    """Length-prefixed frames of at most ``batch_rows`` pairs each."""
    pack = msgpack.Packer(use_bin_type=True).pack
    frames = []
    for i in range(0, len(pairs), batch_rows):
        body = pack(pairs[i : i + batch_rows])
        frames.append(_LEN.pack(len(body)) + body)
    return frames


# ------------------------------------------------------------------- writers


def _writer_main(
    writer: int,
    rows: int,
    batch_rows: int,
    inflight: int,
    path: str,
    start: Event,
    out: Connection,
) -> None:
    try:
        frames = frame_batches(pack_rows(writer, rows), batch_rows)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        out.send(("ready",))
        if not start.wait(TIMEOUT):
            raise TimeoutError("no start signal")
        t0 = time.monotonic()
        n = len(frames)
        sent = acked = 0
        acks = bytearray(max(64, inflight))
        send, recv_into = sock.sendall, sock.recv_into
        while acked < n:
            while sent < n and sent - acked < inflight:
                send(frames[sent])
                sent += 1
            got = recv_into(acks)
            if got == 0:
                raise ConnectionError(f"server closed after {acked} of {n} acks")
            if acks[:got].count(ACK) != got:
                raise ConnectionError(f"unexpected ack bytes {bytes(acks[:got])!r}")
            acked += got
        t1 = time.monotonic()
        sock.close()
        out.send(("done", t0, t1))
    except BaseException as exc:
        out.send(("error", f"writer {writer}: {exc!r}"))
        raise SystemExit(1) from exc


# -------------------------------------------------------------------- server


class _Server:
    """Selector loop on the main thread frames bytes; one thread commits in groups."""

    def __init__(self, socks: list[socket.socket], env: lmdb.Environment) -> None:
        self.socks = socks
        self.env = env
        self.cond = threading.Condition()
        self.pending: list[tuple[int, bytes]] = []
        self.closing = False
        self.failure: BaseException | None = None
        self.commits = 0

    def commit_loop(self) -> None:
        unpack = msgpack.unpackb
        cond = self.cond
        n = len(self.socks)
        try:
            while True:
                with cond:
                    while not self.pending and not self.closing:
                        cond.wait()
                    group, self.pending = self.pending, []
                if not group:
                    return
                acks = [0] * n
                with self.env.begin(write=True) as txn:  # commits on exit, aborts on error
                    putmulti = txn.cursor().putmulti
                    for conn, body in group:
                        putmulti(unpack(body, use_list=False))
                        acks[conn] += 1
                self.commits += 1
                for conn, k in enumerate(acks):
                    if k:
                        self.socks[conn].sendall(ACK * k)
        except BaseException as exc:
            self.failure = exc
            for s in self.socks:  # wakes the selector loop and every writer
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def run(self) -> int:
        committer = threading.Thread(target=self.commit_loop, name="commit", daemon=True)
        committer.start()
        try:
            self._read_loop()
        finally:
            with self.cond:
                self.closing = True
                self.cond.notify()
            committer.join(TIMEOUT)
        if self.failure is not None:
            raise self.failure
        if committer.is_alive():
            raise TimeoutError("commit thread did not finish")
        return self.commits

    def _read_loop(self) -> None:
        sel = selectors.DefaultSelector()
        bufs = [bytearray(RECV_BUF) for _ in self.socks]
        views = [memoryview(b) for b in bufs]
        fill = [0] * len(self.socks)
        socks = self.socks
        for n, s in enumerate(socks):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, n)
        unpack_len = _LEN.unpack_from
        cond = self.cond
        live = len(self.socks)
        while live:
            events = sel.select(TIMEOUT)
            if not events:
                raise TimeoutError("no data from any writer")
            if self.failure is not None:
                return
            for key, _ in events:
                i: int = key.data
                buf, view, have = bufs[i], views[i], fill[i]
                try:
                    got = socks[i].recv_into(view[have:])
                except BlockingIOError:
                    continue
                if got == 0:
                    if have:
                        raise ConnectionError(f"connection {i} closed inside a frame")
                    sel.unregister(socks[i])
                    live -= 1
                    continue
                end = have + got
                pos = 0
                bodies = []
                while end - pos >= 4:
                    size = unpack_len(buf, pos)[0]
                    if end - pos - 4 < size:
                        break
                    bodies.append((i, bytes(view[pos + 4 : pos + 4 + size])))
                    pos += 4 + size
                left = end - pos
                if pos and left:
                    view[:left] = view[pos:end]  # memoryview copies overlapping ranges safely
                fill[i] = left
                if left >= 4:
                    need = 4 + unpack_len(buf, 0)[0]
                    if need > len(buf):  # a frame larger than the buffer: grow it
                        views[i].release()
                        bigger = bytearray(need)
                        bigger[:left] = buf[:left]
                        bufs[i], views[i] = bigger, memoryview(bigger)
                if bodies:
                    with cond:
                        self.pending.extend(bodies)
                        cond.notify()
        sel.close()


def _server_main(path: str, db: str, writers: int, map_size: int, out: Connection) -> None:
    try:
        env = lmdb.open(
            db,
            map_size=map_size,
            sync=True,
            metasync=True,
            writemap=False,
            readahead=False,
        )
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(writers)
        lsock.settimeout(TIMEOUT)
        out.send(("ready",))
        socks = [lsock.accept()[0] for _ in range(writers)]
        lsock.close()
        commits = _Server(socks, env).run()
        for s in socks:
            s.close()
        env.close()
        out.send(("done", commits))
    except BaseException as exc:
        out.send(("error", f"server: {exc!r}"))
        raise SystemExit(1) from exc


# ------------------------------------------------------------------- harness


class _Children:
    """The child processes and their report pipes; any error or early exit raises at once."""

    def __init__(self) -> None:
        self.procs: dict[Connection, SpawnProcess] = {}
        self.inbox: dict[Connection, list[tuple[Any, ...]]] = {}
        self.open: set[Connection] = set()
        self.finished: set[Connection] = set()

    def start(self, proc: SpawnProcess, conn: Connection) -> None:
        proc.start()
        self.procs[conn] = proc
        self.inbox[conn] = []
        self.open.add(conn)

    def expect(self, conn: Connection, tag: str, deadline: float) -> tuple[Any, ...]:
        """The next message of ``conn``'s process, which must be ``tag``."""
        while not self.inbox[conn]:
            ready = wait(list(self.open), max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"{self.procs[conn].name}: no {tag!r} before the deadline")
            errors = self._receive(ready)
            if errors:
                # Let the other processes report too: the root cause is often elsewhere.
                grace = time.monotonic() + 2.0
                while self.open and (ready := wait(list(self.open), grace - time.monotonic())):
                    errors += self._receive(ready)
                raise RuntimeError(
                    "; ".join(sorted(errors, key=lambda e: not e.startswith("server")))
                )
        msg = self.inbox[conn].pop(0)
        if msg[0] != tag:
            raise RuntimeError(f"{self.procs[conn].name}: expected {tag!r}, got {msg!r}")
        return msg

    def _receive(self, ready: list[Any]) -> list[str]:
        errors = []
        for c in ready:
            try:
                msg: tuple[Any, ...] = c.recv()
            except EOFError:
                self.open.discard(c)
                if c not in self.finished:
                    proc = self.procs[c]
                    proc.join(5)
                    errors.append(f"{proc.name} exited ({proc.exitcode}) without a report")
                continue
            if msg[0] == "error":
                self.finished.add(c)
                errors.append(str(msg[1]))
            else:
                if msg[0] == "done":
                    self.finished.add(c)
                self.inbox[c].append(msg)
        return errors

    def join(self, deadline: float) -> None:
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode != 0:
                raise RuntimeError(f"{proc.name} exited with {proc.exitcode}")

    def kill(self) -> None:
        for conn, proc in self.procs.items():
            if proc.is_alive():
                proc.kill()
            proc.join(10)
            conn.close()


def verify(db: Path, writers: int, rows_per_writer: int, sample: int = 64) -> None:
    """Exactly the expected keys, in order; every ``sample``-th row and each writer's last
    row equal to what that writer packed, and every row of the packed length."""
    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        total = writers * rows_per_writer
        entries = env.stat()["entries"]
        if entries != total:
            raise RuntimeError(f"LMDB holds {entries} rows, expected {total}")
        size = len(pack_rows(0, 1)[0][1])  # every row packs to the same length
        with env.begin() as txn:
            items = iter(txn.cursor())
            key = _KEY.pack
            for w in range(writers):
                for step in range(rows_per_writer):
                    k, v = next(items)
                    if k != key(w, step) or len(v) != size:
                        raise RuntimeError(
                            f"row {k!r} ({len(v)} bytes) where writer {w} step {step} belongs"
                        )
                    if step % sample == 0 or step == rows_per_writer - 1:
                        row = msgpack.unpackb(v)
                        if row != _row(step):
                            raise RuntimeError(f"writer {w} step {step} reads back as {row!r}")
    finally:
        env.close()


def run_ceiling(
    writers: int,
    rows_per_writer: int,
    workdir: Path,
    batch_rows: int = 1000,
    inflight: int = INFLIGHT,
) -> dict[str, Any]:
    """Run the minimal pipe once; ``{"writers", "rows", "elapsed_s", "rows_per_s", "commits"}``.

    ``workdir`` holds the LMDB environment (in a fresh subdirectory, removed after);
    the socket lives in a short-named directory under /tmp. Raises if any process
    fails or times out, or if the stored rows are not exactly the ones sent.
    """
    if writers < 1 or rows_per_writer < 1 or batch_rows < 1 or inflight < 1:
        raise ValueError("writers, rows_per_writer, batch_rows and inflight must be >= 1")
    ctx = mp.get_context("spawn")
    workdir.mkdir(parents=True, exist_ok=True)
    total = writers * rows_per_writer
    map_size = max(256 << 20, total * 1024)
    sockdir = Path(tempfile.mkdtemp(prefix="slc-", dir="/tmp"))
    dbdir = Path(tempfile.mkdtemp(prefix="ceiling-", dir=workdir))
    path = str(sockdir / "s")
    children = _Children()
    try:
        deadline = time.monotonic() + TIMEOUT
        srv_in, srv_out = ctx.Pipe(duplex=False)
        server = ctx.Process(
            target=_server_main,
            args=(path, str(dbdir), writers, map_size, srv_out),
            name="ceiling-server",
            daemon=True,
        )
        children.start(server, srv_in)
        srv_out.close()
        children.expect(srv_in, "ready", deadline)

        start = ctx.Event()
        pipes = []
        for w in range(writers):
            w_in, w_out = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_writer_main,
                args=(w, rows_per_writer, batch_rows, inflight, path, start, w_out),
                name=f"ceiling-writer-{w}",
                daemon=True,
            )
            children.start(proc, w_in)
            w_out.close()
            pipes.append(w_in)
        for w_in in pipes:
            children.expect(w_in, "ready", deadline)

        deadline = time.monotonic() + TIMEOUT
        t0 = time.monotonic()
        start.set()
        ends = [children.expect(w_in, "done", deadline)[2] for w_in in pipes]
        elapsed = max(ends) - t0
        commits: int = children.expect(srv_in, "done", deadline)[1]
        children.join(deadline)
        verify(dbdir, writers, rows_per_writer)
        return {
            "writers": writers,
            "rows": total,
            "elapsed_s": elapsed,
            "rows_per_s": total / elapsed,
            "commits": commits,
        }
    finally:
        children.kill()
        shutil.rmtree(sockdir, ignore_errors=True)
        shutil.rmtree(dbdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--rows", type=int, default=200_000, help="rows per writer")
    ap.add_argument("--batch-rows", type=int, default=1000)
    ap.add_argument("--inflight", type=int, default=INFLIGHT)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir under /tmp")
    args = ap.parse_args()
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = workdir = Path(tempfile.mkdtemp(prefix="ceiling-", dir="/tmp"))
    try:
        result = run_ceiling(args.writers, args.rows, workdir, args.batch_rows, args.inflight)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
