"""Client processes for ``test_load.py``: many raw connections, or one real writer.

``python -m tests.gauntlet.load_client conns ...`` opens one raw-protocol
connection per run (the ``stepline`` library holds one connection per process,
so this is how a few processes make dozens of connections), logs paced batches
on each and waits for every ack; ``writer ...`` logs one run through the real
client library, rewinding it when told. Both stop when told on stdin and print
what was acknowledged as one JSON line on stdout.

Every row is a function of ``(run id, step, gen)`` (:func:`expected_row`), so a
reader can check each row it sees on its own; ``gen`` counts the rewinds the
writer made, so rows of a replaced timeline differ from the ones replacing them.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import sys
import threading
import zlib
from typing import Any

import msgpack

from stepline import protocol

# Keys every row holds; a reader asks for these over HTTP.
KEYS = ("loss", "x3", "gen", "h", "tag")
# Keys the client library adds to every row, and the step readers get back.
ADDED = frozenset({"_step", "_timestamp", "_runtime"})
ACK_TIMEOUT = 60.0


def expected_row(run_id: str, step: int, gen: int = 0) -> dict[str, Any]:
    """The row ``run_id`` logs at ``step`` in its ``gen``-th timeline."""
    return {
        "loss": 1.0 / (step + 1),
        "x3": step * 3 + gen,
        "gen": gen,
        "h": zlib.crc32(f"{run_id}/{step}/{gen}".encode()),
        "tag": f"{run_id}:{step}:{gen}",
    }


def row_problem(run_id: str, row: dict[str, Any]) -> str | None:
    """Why ``row`` (as read back, with ``_step``) is not one ``run_id`` wrote, or None."""
    step, gen = row.get("_step"), row.get("gen")
    if type(step) is not int or type(gen) is not int:
        return f"row without an int _step and gen: {row!r}"
    mine = {k: v for k, v in row.items() if k not in ADDED}
    want = expected_row(run_id, step, gen)
    if mine != want:
        return f"torn or foreign row at step {step} of {run_id}: {mine!r} != {want!r}"
    return None


class RawConn:
    """One raw-protocol connection that has said hello."""

    def __init__(self, path: str, client: str, timeout: float = ACK_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.dec = protocol.Decoder()
        self.send({"op": "hello", "client": client})
        reply = self.recv()
        if reply.get("op") != "welcome":
            raise RuntimeError(f"hello refused: {reply!r}")

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(protocol.encode(msg))

    def recv(self) -> protocol.Message:
        while (msg := self.dec.next_message()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the daemon closed the connection")
            self.dec.feed(data)
        return msg

    def init(self, project: str, run_id: str) -> int:
        self.send({"op": "init", "rid": 1, "project": project, "id": run_id})
        reply = self.recv()
        if reply.get("op") != "ok":
            raise RuntimeError(f"init refused: {reply!r}")
        return int(reply["result"]["run_no"])

    def log(self, run_no: int, seq: int, run_id: str, steps: range) -> None:
        """Send one batch (columns, values packed as the library packs them) and
        wait for its ack."""
        values = [msgpack.packb(expected_row(run_id, s)) for s in steps]
        self.sock.sendall(protocol.encode_log(run_no, seq, list(steps), values))
        self.expect_ack(run_no, seq)

    def expect_ack(self, run_no: int, seq: int) -> None:
        reply = self.recv()
        if reply != {"op": "ack", "run_no": run_no, "seq": seq}:
            raise RuntimeError(f"expected the ack of batch {seq} of run {run_no}, got {reply!r}")

    def close(self) -> None:
        self.sock.close()


def _stdin_commands(stop: threading.Event, commands: queue.Queue[str] | None = None) -> None:
    """Lines from stdin into ``commands``; ``stop`` (or end of input) sets ``stop``."""

    def read() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
            if commands is not None:
                commands.put(line.strip())
        stop.set()

    threading.Thread(target=read, name="stdin", daemon=True).start()


def conns(args: argparse.Namespace) -> int:
    """One connection and run per id in ``args.runs``, logging until told to stop."""
    stop = threading.Event()
    ready = threading.Barrier(len(args.runs) + 1)
    out: dict[str, dict[str, Any]] = {}

    def one(run_id: str) -> None:
        res: dict[str, Any] = {"acked": 0, "batches": 0, "finished": False, "error": None}
        out[run_id] = res
        conn = None
        try:
            conn = RawConn(args.socket, f"load-{run_id}-{os.getpid()}")
            run_no = res["run_no"] = conn.init(args.project, run_id)
            ready.wait(ACK_TIMEOUT)
            seq = 0
            while not stop.is_set():
                seq += 1
                conn.log(run_no, seq, run_id, range(res["acked"], res["acked"] + args.batch))
                res["acked"] += args.batch
                res["batches"] = seq
                stop.wait(args.interval)  # pacing: a batch per interval at most
            conn.send({"op": "finish", "run_no": run_no, "seq": seq + 1, "exit_code": 0})
            conn.expect_ack(run_no, seq + 1)
            res["finished"] = True
        except Exception as exc:
            res["error"] = f"{type(exc).__name__}: {exc}"
            ready.abort()
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=one, args=(r,), name=r) for r in args.runs]
    for t in threads:
        t.start()
    try:
        ready.wait(ACK_TIMEOUT)
        print(json.dumps({"event": "ready"}), flush=True)
    except threading.BrokenBarrierError:
        stop.set()
    _stdin_commands(stop)
    for t in threads:
        t.join()
    print(json.dumps({"event": "done", "runs": out}), flush=True)
    return 0 if all(r["error"] is None for r in out.values()) else 1


def writer(args: argparse.Namespace) -> int:
    """One run through the real client; ``rewind STEP`` on stdin rewinds it."""
    import stepline

    stop = threading.Event()
    commands: queue.Queue[str] = queue.Queue()
    _stdin_commands(stop, commands)
    run = stepline.init(project=args.project, id=args.run, socket=args.socket)
    gen = 0
    timelines: list[dict[str, Any]] = []  # the ones rewinds replaced: last step, gen
    while not stop.is_set():
        for _ in range(args.batch):
            run.log(expected_row(args.run, run.step, gen))
        while not commands.empty():
            cmd, arg = commands.get().split()
            assert cmd == "rewind", cmd
            run.flush(timeout=ACK_TIMEOUT)
            run.finish()
            timelines.append({"last_step": run.step - 1, "gen": gen})
            run = stepline.init(
                project=args.project,
                id=args.run,
                resume_from=f"{args.run}?_step={arg}",
                socket=args.socket,
            )
            gen += 1
            print(json.dumps({"event": "rewound", "step": int(arg)}), flush=True)
        stop.wait(args.interval)  # pacing: a training step's worth of time
    run.flush(timeout=ACK_TIMEOUT)  # raises if anything logged is not durable
    last = run.step - 1
    run.finish()
    done = {"event": "done", "last_step": last, "gen": gen, "archived": timelines}
    print(json.dumps(done), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="load_client")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("conns", "writer"):
        s = sub.add_parser(name)
        s.add_argument("--socket", required=True)
        s.add_argument("--project", required=True)
        s.add_argument("--batch", type=int, required=True)
        s.add_argument("--interval", type=float, required=True)
    sub.choices["conns"].add_argument("runs", nargs="+")
    sub.choices["writer"].add_argument("--run", required=True)
    args = p.parse_args(argv)
    return conns(args) if args.cmd == "conns" else writer(args)


if __name__ == "__main__":
    sys.exit(main())
