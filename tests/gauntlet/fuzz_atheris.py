"""Coverage-guided fuzzing of the protocol with atheris (libFuzzer for Python).

``python -m tests.gauntlet.fuzz_atheris [libFuzzer flags] [CORPUS_DIR]``
(``-runs=N``, ``-seed=S``, ``-max_total_time=S``; the corpus directory is
seeded with one frame of every op when empty). Needs ``pip install atheris``,
which is not a test dependency; ``test_fuzz.test_atheris_harness`` runs this
when it is installed.

Each input is bytes off the wire. They go through the sans-IO ``Decoder``;
every message it yields goes through the daemon's own ``Connection.handle``
(shape checks, the checks of a ``log`` batch) with its I/O replaced, then, as
the writer thread and the read pool would take it, through the ``Store`` of a
scratch LMDB: writes inside a transaction that is aborted (every input meets
the same store), reads in a read transaction. Every reply is framed, and every
read's result is rendered as JSON as the HTTP API would. Anything raised but a
typed ``stepline.Error`` that is not the daemon's own failure is a crash, which
libFuzzer reports with the input that caused it. Inputs known to trigger an open
bug (``fuzz_known.py``) are stepped around.

Faster than the socket by orders of magnitude (no fsync, no round trip), so it
reaches deep paths; the live-daemon fuzzers in ``test_fuzz.py`` cover what it
leaves out (threads, the event loop, commits, memory).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris
import msgpack

with atheris.instrument_imports(include=["stepline", "stepline_daemon"]):
    from stepline import protocol
    from stepline.errors import DaemonError, Error, ProtocolError, RequestError
    from stepline_daemon import connection, ops, render, replies
    from stepline_daemon.faults import CrashPoints
    from stepline_daemon.settings import Settings
    from stepline_daemon.store import Store
    from stepline_daemon.store.reads import LmdbReads
    from stepline_daemon.writer import ResizeGate, Writer, WriteRequest

from tests import storeops
from tests.gauntlet.fuzz_known import known_bug

P = "fz"


class _Hub:
    """What Connection.handle needs of the daemon's hub, without its I/O."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()  # never run: only makes futures
        self.crash = CrashPoints()  # none: the fuzzer must not reach a crash point

    def status(self) -> dict[str, Any]:
        return {"pid": 0}


class Probe(connection.Connection):
    """The daemon's connection with its writes, reads and replies captured."""

    def __init__(self, hub: Any) -> None:
        super().__init__(hub)
        self.client = "fuzzer"
        self.writes: list[WriteRequest] = []
        self.reads: list[tuple[str, dict[str, Any]]] = []

    def send(self, msg: dict[str, Any]) -> None:
        protocol.encode(msg)

    def _submit(self, req: WriteRequest, cost: int) -> None:
        self.writes.append(req)

    def _read(self, op: str, msg: dict[str, Any]) -> None:
        self.reads.append((op, msg))


def _typed(exc: Error) -> None:
    if isinstance(exc, DaemonError):
        raise AssertionError(f"the daemon's own failure: {exc.code}: {exc.message}") from exc


def _frame(reply: dict[str, Any]) -> None:
    try:
        protocol.encode(reply)
    except ProtocolError as exc:  # the server answers reply_too_large instead
        assert exc.code == "frame_too_large", exc.code


class Harness:
    def __init__(self, root: Path) -> None:
        self.store = Store(root, map_size=256 * 1024 * 1024)
        self.writer = Writer(self.store, lambda results, runs: None, ResizeGate(), 1)
        self.conn = Probe(_Hub(Settings(data_dir=root, socket=root / "unused.sock")))
        with self.store.env.begin(write=True) as txn:
            base = storeops.init_run(
                self.store, txn, {"project": P, "id": "r0", "config": {"lr": 1}}, "s"
            )
            rows = [(s, {"a": s * 0.5, "b": str(s), "c": s % 3 == 0}) for s in range(200)]
            storeops.append(self.store, txn, base["run_no"], rows, "s", 1)
            storeops.init_run(
                self.store, txn, {"project": P, "id": "r1", "fork_from": ["r0", 50]}, "s"
            )
            storeops.init_run(
                self.store, txn, {"project": P, "id": "r0", "resume_from": ["r0", 80]}, "s"
            )
            storeops.init_run(self.store, txn, {"project": P, "id": "r2"}, "s")

    def one_input(self, data: bytes) -> None:
        dec = protocol.Decoder()
        dec.feed(data)
        while True:
            try:
                msg = dec.next_message()
            except ProtocolError as exc:
                assert exc.code in ("bad_frame", "frame_too_large"), exc.code
                return
            if msg is None:
                return
            self.handle(msg)

    def handle(self, msg: dict[str, Any]) -> None:
        if known_bug(msg) or msg.get("op") == "backup":
            return
        if msg.get("op") == "scan":
            msg.pop("stream", None)  # a streamed scan is a task on the loop
        conn = self.conn
        conn.writes.clear()
        conn.reads.clear()
        try:
            conn.handle(msg)
        except Error as exc:
            _typed(exc)
            _frame(replies.error(exc, replies.echo_of(msg)))
            return
        for req in conn.writes:
            self.write(req)
        for op, m in conn.reads:
            self.read(op, m)

    def write(self, req: WriteRequest) -> None:
        txn = self.store.env.begin(write=True)
        try:
            try:
                reply = self.writer._apply_one(txn, req)
            except RequestError as exc:  # Writer._commit's own handling
                reply = replies.error(exc, req.echo)
            if reply is not None:
                _frame(reply)
        finally:
            txn.abort()

    def read(self, op: str, msg: dict[str, Any]) -> None:
        with self.store.env.begin() as txn:
            try:
                result = ops.answer(LmdbReads(self.store, txn), op, msg)
            except Error as exc:
                _typed(exc)
                _frame(replies.error(exc, replies.echo_of(msg)))
                return
        frame = render.render(("frame", msg.get("rid")), result)
        decoded = msgpack.unpackb(frame[protocol.HEADER_SIZE :], raw=False)
        if decoded["op"] == "ok":
            render.dumps(decoded["result"])  # as the HTTP API renders it


SEEDS: list[dict[str, Any]] = [
    {"op": "hello", "client": "c"},
    {"op": "init", "rid": 1, "project": P, "id": "n", "name": "ü", "config": {"a": [1]}},
    {"op": "init", "rid": 2, "project": P, "fork_from": ["r0", 40], "tags": ["t"]},
    {"op": "init", "rid": 3, "project": P, "id": "r0", "resume_from": ["r0", 30]},
    {"op": "init", "rid": 4, "project": P, "id": "r2", "resume": "allow"},
    {"op": "log", "run_no": 4, "seq": 1, "steps": [0, 1], "values": [b"\x81\xa1a\x01"] * 2},
    {"op": "log", "run_no": 4, "seq": 1, "rows": [[0, {"a": 1.5}], [1, b"\x81\xa1b\xc0"]]},
    {"op": "config", "run_no": 4, "seq": 1, "config": {"k": {"x": 1}}},
    {"op": "summary", "run_no": 4, "seq": 1, "summary": {"best": 0.5}},
    {"op": "metric", "run_no": 4, "seq": 1, "name": "a", "summary": "min"},
    {"op": "finish", "run_no": 4, "seq": 1, "exit_code": 1, "dropped": 2},
    {"op": "runs", "rid": 5, "project": P},
    {"op": "info", "rid": 6, "project": P, "id": "r1"},
    {"op": "info", "rid": 6, "project": P, "run_no": 1},
    {"op": "scan", "rid": 7, "project": P, "id": "r1", "min_step": 3, "limit": 9},
    {"op": "scan", "rid": 7, "project": P, "id": "r1", "keys": ["a"], "max_step": 60},
    {"op": "page", "rid": 8, "project": P, "id": "r0", "keys": ["a", "b"], "match": "any"},
    {"op": "history", "rid": 9, "project": P, "id": "r1", "samples": 7, "keys": ["a"]},
    {"op": "history", "rid": 9, "project": P, "id": "r0", "samples": 3},
    {"op": "state", "rid": 10, "project": P, "id": "r0"},
    {"op": "keys", "rid": 11, "project": P, "id": "r1", "include_parent": False},
    {"op": "projects", "rid": 12},
    {"op": "project_runs", "rid": 13, "project": P},
    {"op": "tree", "rid": 14, "project": P},
    {"op": "status", "rid": 15},
    {"op": "delete", "rid": 16, "project": P, "id": "r1", "purge": True},
    {"op": "purge", "rid": 17},
]


def _escaped(token: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in token)


def _prepare(argv: list[str], scratch: Path) -> list[str]:
    """Seed empty corpus directories; add a dictionary of the protocol's words."""
    for arg in argv[1:]:
        if not arg.startswith("-"):
            corpus = Path(arg)
            corpus.mkdir(parents=True, exist_ok=True)
            if not any(corpus.iterdir()):
                for i, msg in enumerate(SEEDS):
                    (corpus / f"seed-{i:02d}").write_bytes(protocol.encode(msg))
    if not any(a.startswith("-dict=") for a in argv):
        words = sorted({w for m in SEEDS for k, v in m.items() for w in (k, v) if type(w) is str})
        path = scratch / "protocol.dict"
        path.write_text("".join(f'"{_escaped(msgpack.packb(w))}"\n' for w in words))
        argv = [*argv, f"-dict={path}"]
    return argv


def main() -> None:
    # The scratch store lives under $TMPDIR: libFuzzer ends the process itself, past
    # any cleanup of ours (the test points TMPDIR into a directory it removes).
    root = Path(tempfile.mkdtemp(prefix="sl-atheris-"))
    harness = Harness(root / "data")
    atheris.Setup(_prepare(sys.argv, root), harness.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
