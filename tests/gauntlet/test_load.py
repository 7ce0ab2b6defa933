"""Load: dozens of connections for minutes, connection churn, readers during writes.

The daemon's memory is read from ``/proc/PID/status``: ``RssAnon`` (heap,
thread stacks: where a leak shows) is asserted on; ``VmRSS`` also counts the
LMDB file pages the daemon has touched through its map, which grow with the data
and are the page cache's to reclaim, so it is reported, not bounded.

Rows are a function of ``(run id, step, gen)`` (``load_client.expected_row``):
every row read back is checked on its own, so a torn or foreign row cannot pass.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack

import stepline
from stepline import protocol
from tests.conftest import Daemon, wait_for
from tests.gauntlet.conftest import Record, scale
from tests.gauntlet.load_client import KEYS, RawConn, expected_row, row_problem

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
CLIENT_TIMEOUT = 120.0  # a client process that takes longer to wind down is stuck


# ------------------------------------------------------------------ helpers


def memory(pid: int) -> dict[str, int]:
    """The process's VmRSS, RssAnon and RssFile, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) * 1024
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def client_process(args: list[str], log: Path) -> subprocess.Popen[str]:
    """``python -m tests.gauntlet.load_client ARGS``: JSON lines out, commands in."""
    with log.open("a") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.gauntlet.load_client", *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def event(proc: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    """The next JSON line a client process prints (it prints promptly, or exits)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"client process exited with {proc.wait(CLIENT_TIMEOUT)}:\n{log.read_text()}"
    out: dict[str, Any] = json.loads(line)
    return out


def stop_client(proc: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    """Tell a client process to stop; its last JSON line, once it exited with 0."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("stop\n")
    proc.stdin.close()
    lines = proc.stdout.read().splitlines()
    code = proc.wait(CLIENT_TIMEOUT)
    assert code == 0 and lines, f"client process exited with {code}:\n{log.read_text()}"
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def kill_all(procs: Iterable[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def check_exactly_once(
    api: stepline.Api, project: str, run_id: str, acked: int
) -> tuple[int, int, int]:
    """Scan ``run_id`` (steps ``0..acked-1`` acknowledged, all at gen 0): rows lost,
    duplicated, and extra or wrong ones."""
    seen: dict[int, int] = {}
    bad = 0
    for row in api.run(f"{project}/{run_id}").scan_history(page_size=10_000):
        step = row["_step"]
        seen[step] = seen.get(step, 0) + 1
        if step >= acked or row_problem(run_id, row) is not None:
            bad += 1
    lost = sum(1 for s in range(acked) if s not in seen)
    duplicates = sum(n - 1 for n in seen.values())
    return lost, duplicates, bad


# ------------------------------------------- many connections, memory flat


def test_many_connections_keep_daemon_memory_flat(
    daemon: Daemon, short_tmp: Path, record: Record
) -> None:
    """Raw-protocol connections (the library keeps one per process) log paced
    batches and wait for each ack; the daemon's RssAnon after warm-up must stay
    flat. Long form: 64 connections from 8 processes for 10 minutes, growth under
    10 MiB. Short form: 16 connections for 25 s, whose warm-up window (5 s in) is
    close to the start, so the bound is looser (12 MiB over 20 s): it catches a
    leak of a few hundred bytes per batch, not a slow one."""
    project = "load"
    n_conns, n_procs = scale(16, 64), scale(2, 8)
    duration, every = scale(25, 600), scale(1, 5)
    batch, interval = scale(20, 25), scale(20, 100) / 1000  # <= 1000 / 250 rows/s per connection
    bound = scale(12, 10) * MiB
    runs = [f"c{i:02d}" for i in range(n_conns)]
    log = short_tmp / "clients.log"
    api = stepline.Api(socket=str(daemon.socket))
    base_clients, base_fds = api.status()["clients"], open_fds(daemon.pid)
    procs = [
        client_process(
            [
                "conns",
                f"--socket={daemon.socket}",
                f"--project={project}",
                f"--batch={batch}",
                f"--interval={interval}",
                *runs[k::n_procs],
            ],
            log,
        )
        for k in range(n_procs)
    ]
    try:
        for p in procs:
            assert event(p, log)["event"] == "ready"
        clients = api.status()["clients"]
        assert clients == base_clients + n_conns, f"{clients} clients, want {n_conns} and this Api"

        samples: list[tuple[float, dict[str, int]]] = []
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < duration:
            samples.append((elapsed, memory(daemon.pid)))
            dead = [p.returncode for p in procs if p.poll() is not None]
            assert not dead, f"client processes died: {dead}\n{log.read_text()}"
            time.sleep(every)  # the sampling interval of this monitoring loop
        samples.append((time.monotonic() - t0, memory(daemon.pid)))
        results = {}
        for p in procs:
            results.update(stop_client(p, log)["runs"])
    finally:
        kill_all(procs)

    errors = {r: res["error"] for r, res in results.items() if res["error"]}
    assert not errors, errors
    wait_for(
        lambda: api.status()["clients"] == base_clients and open_fds(daemon.pid) == base_fds,
        30,
        "the daemon to close every client connection and its fd",
    )
    assert sorted(results) == runs and all(res["finished"] for res in results.values())
    acked = sum(res["acked"] for res in results.values())
    lost = duplicates = bad = 0
    for run_id, res in results.items():
        got = check_exactly_once(api, project, run_id, res["acked"])
        lost, duplicates, bad = lost + got[0], duplicates + got[1], bad + got[2]
    states = {r.id: r.state for r in api.runs(project)}
    assert states == dict.fromkeys(runs, "finished")

    def level(lo: float, hi: float, key: str) -> float:
        return statistics.median(m[key] for t, m in samples if lo * duration <= t <= hi * duration)

    warm_anon, end_anon = level(0.15, 0.25, "RssAnon"), level(0.9, 1.01, "RssAnon")
    warm_rss, end_rss = level(0.15, 0.25, "VmRSS"), level(0.9, 1.01, "VmRSS")
    peak_anon = max(m["RssAnon"] for _, m in samples)
    growth = end_anon - warm_anon
    record(
        faults=n_conns,
        acknowledged=acked,
        lost=lost,
        duplicates=duplicates,
        notes=(
            f"{n_conns} connections from {n_procs} processes for {duration} s "
            f"({acked / duration:,.0f} rows/s acked); daemon RssAnon {mib(warm_anon)} MiB "
            f"after warm-up (20%) -> {mib(end_anon)} MiB at the end (+{mib(growth)}, "
            f"bound {mib(bound)}; peak {mib(peak_anon)}); VmRSS {mib(warm_rss)} -> "
            f"{mib(end_rss)} MiB (the rest is LMDB's mapped file pages); fds back to {base_fds}"
        ),
    )
    print(f"\nload: {len(samples)} samples (s, RssAnon MiB, VmRSS MiB):")
    print(" ".join(f"{t:.0f}:{mib(m['RssAnon'])}/{mib(m['VmRSS'])}" for t, m in samples))
    assert (lost, duplicates, bad) == (0, 0, 0), (lost, duplicates, bad)
    assert growth < bound, (
        f"daemon RssAnon grew {mib(growth)} MiB after warm-up ({mib(warm_anon)} -> "
        f"{mib(end_anon)} MiB), bound {mib(bound)} MiB"
    )


# ------------------------------------------------ connect/disconnect churn

# What a cycle does after connecting; the last three leave a run behind.
KINDS = ("bare", "hello", "finished", "vanished", "mid_frame", "unacked")
CHURN = "churn"


def cycle(path: str, i: int) -> dict[str, Any]:
    """Connect, do what ``KINDS[i % 6]`` says, disconnect. Returns the run it left
    (if any) and how many rows of it were acknowledged."""
    kind = KINDS[i % len(KINDS)]
    if kind == "bare":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        s.close()
        return {"kind": kind}
    conn = RawConn(path, f"churn-{i}")
    try:
        if kind == "hello":
            return {"kind": kind}
        run_id = f"r{i}"
        run_no = conn.init(CHURN, run_id)
        if kind == "unacked":  # a batch sent, the ack never read
            values = [msgpack.packb(expected_row(run_id, 0))]
            conn.sock.sendall(protocol.encode_log(run_no, 1, [0], values))
            return {"kind": kind, "run_no": run_id, "acked": 0}
        conn.log(run_no, 1, run_id, range(1))
        if kind == "finished":
            conn.send({"op": "finish", "run_no": run_no, "seq": 2, "exit_code": 0})
            conn.expect_ack(run_no, 2)
        elif kind == "mid_frame":  # gone halfway through the header, or the payload
            values = [msgpack.packb(expected_row(run_id, 1))]
            frame = protocol.encode_log(run_no, 2, [1], values)
            conn.sock.sendall(frame[: 2 if i % 2 else len(frame) // 2])
        return {"kind": kind, "run_no": run_id, "acked": 1}
    finally:
        conn.close()


def test_connect_disconnect_cycles_leak_nothing(daemon: Daemon, record: Record) -> None:
    """Connections that come and go, politely or mid-frame, leave no fd, no
    connection and no memory behind; every run whose client vanished is crashed."""
    n = scale(1000, 10_000)
    warm = n // 10
    path = str(daemon.socket)
    api = stepline.Api(socket=path)
    base_clients = api.status()["clients"]  # this Api's own connection
    base_fds = open_fds(daemon.pid)

    def settled() -> bool:
        return api.status()["clients"] == base_clients and open_fds(daemon.pid) == base_fds

    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        left = list(pool.map(cycle, [path] * warm, range(warm)))
        wait_for(settled, 30, "connections of the warm-up cycles to close")
        base_anon = memory(daemon.pid)["RssAnon"]
        left += pool.map(cycle, [path] * (n - warm), range(warm, n))
    took = time.monotonic() - began
    wait_for(settled, 30, "every cycled connection to close and its fd with it")
    end_fds, end_clients = open_fds(daemon.pid), api.status()["clients"]
    # Before listing the runs: a reply of thousands of runs grows the read threads'
    # malloc arenas once (a plateau after a few calls, not a leak of the cycles).
    end_anon = memory(daemon.pid)["RssAnon"]

    expect = dict.fromkeys(["vanished", "mid_frame", "unacked"], "crashed")
    expect["finished"] = "finished"
    runs = {c["run_no"]: c for c in left if "run_no" in c}

    def states() -> dict[str, Any]:
        return {r.id: r for r in api.runs(CHURN)}

    wait_for(
        lambda: (
            {k: r.state for k, r in states().items()}
            == {k: expect[c["kind"]] for k, c in runs.items()}
        ),
        30,
        "every run left by a vanished client to be crashed",
    )
    stored = states()
    acked = sum(c["acked"] for c in runs.values())
    lost = duplicates = bad = 0
    for run_id, c in runs.items():
        # An unread batch may or may not have been applied; if it was, its row
        # must be intact.
        upto = stored[run_id].last_step + 1 if c["kind"] == "unacked" else c["acked"]
        got = check_exactly_once(api, CHURN, run_id, upto)
        lost, duplicates, bad = lost + got[0], duplicates + got[1], bad + got[2]
    unacked_stored = sum(
        stored[r].last_step == 0 for r, c in runs.items() if c["kind"] == "unacked"
    )
    growth = end_anon - base_anon
    bound = 8 * MiB
    kinds = {k: sum(1 for c in runs.values() if c["kind"] == k) for k in expect}
    record(
        faults=n,
        acknowledged=acked,
        lost=lost,
        duplicates=duplicates,
        notes=(
            f"{n} connect/disconnect cycles in {took:.0f} s, 4 at a time; runs left by a client "
            f"that vanished: {kinds['vanished']} after an ack, {kinds['mid_frame']} mid-frame, "
            f"{kinds['unacked']} before reading the ack ({unacked_stored} of those batches "
            f"applied): all crashed; {kinds['finished']} finished; daemon fds {base_fds} -> "
            f"{end_fds}, clients {base_clients} -> {end_clients}; RssAnon {mib(base_anon)} MiB "
            f"after {warm} cycles -> {mib(end_anon)} MiB (+{mib(growth)}, bound {mib(bound)})"
        ),
    )
    assert (lost, duplicates, bad) == (0, 0, 0), (lost, duplicates, bad)
    assert end_fds == base_fds and end_clients == base_clients
    assert growth < bound, f"RssAnon grew {mib(growth)} MiB over {n - warm} cycles"


# ---------------------------------------------------- readers during writes

READ_P = "reads"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


class Reader(threading.Thread):
    """Reads every timeline of the writers' runs and every fork, round after round,
    over the socket or over HTTP, checking each row and each view as it goes."""

    def __init__(
        self, n: int, daemon: Daemon, parents: list[str], forks: dict[str, str], fork_step: int
    ) -> None:
        super().__init__(name=f"reader-{n}", daemon=True)
        self.http = daemon.http_url if n % 2 else None
        self.api = stepline.Api(socket=str(daemon.socket))
        self.parents, self.forks, self.fork_step = parents, forks, fork_step
        self.stop = threading.Event()
        self.rounds = self.scans = self.rows = 0
        self.errors: list[str] = []
        self.timelines: dict[str, set[int]] = {p: set() for p in parents}
        self.gens: dict[int, list[int]] = {}  # per timeline: each step's gen, last scan
        self.first_views: dict[str, list[dict[str, Any]]] = {}

    # -- transport

    def timeline(self, run_id: str, run_no: int | None) -> stepline.ApiRun:
        if run_no is None:
            return self.api.run(f"{READ_P}/{run_id}")  # its current timeline
        return self.api.timeline(READ_P, run_no)

    def info(self, run_id: str, run_no: int | None = None) -> tuple[int, int | None]:
        """The timeline's number, and the step it branched from its parent at."""
        if self.http is None:
            run = self.timeline(run_id, run_no)
            return run.run_no, None if run.parent is None else run.parent[1]
        q = "" if run_no is None else f"?run_no={run_no}"
        info = get_json(f"{self.http}/api/projects/{READ_P}/runs/{run_id}{q}")
        return info["run_no"], None if info["parent"] is None else info["parent"]["step"]

    def scan(self, run_id: str, run_no: int | None = None) -> list[dict[str, Any]]:
        self.scans += 1
        if self.http is None:
            return list(self.timeline(run_id, run_no).scan_history(page_size=5000))
        rows: list[dict[str, Any]] = []
        params: dict[str, Any] = {"format": "columns", "keys": ",".join(KEYS), "limit": 5000}
        if run_no is not None:
            params["run_no"] = run_no
        url = f"{self.http}/api/projects/{READ_P}/runs/{run_id}/history?"
        while True:
            cols = get_json(url + urllib.parse.urlencode(params))
            for j, step in enumerate(cols["_step"]):
                rows.append({"_step": step, **{k: cols[k][j] for k in KEYS}})
            if cols["next"] is None:
                return rows
            params["min_step"] = cols["next"]

    # -- checks

    def fail(self, what: str) -> None:
        self.errors.append(f"{self.name} ({'http' if self.http else 'socket'}): {what}")

    def check_timeline(
        self, run_id: str, info: tuple[int, int | None], rows: list[dict[str, Any]]
    ) -> None:
        """A gap-free prefix of the timeline's rows, each one as written, never
        fewer or other than the last scan saw."""
        # One rewind per writer at most: a rewound timeline holds gen 0 up to the
        # rewind step, then gen 1.
        run_no, rewound_at = info
        gens = []
        for i, row in enumerate(rows):
            if row["_step"] != i:
                return self.fail(f"{run_id} #{run_no}: row {i} has step {row['_step']}: a gap")
            if (why := row_problem(run_id, row)) is not None:
                return self.fail(why)
            want = 0 if rewound_at is None or i <= rewound_at else 1
            if row["gen"] != want:
                return self.fail(f"{run_id} #{run_no} step {i}: gen {row['gen']}, want {want}")
            gens.append(row["gen"])
        before = self.gens.get(run_no, [])
        if gens[: len(before)] != before:
            return self.fail(f"{run_id} #{run_no}: {len(gens)} rows, {len(before)} before")
        self.gens[run_no] = gens
        self.rows += len(rows)

    def check_fork(self, fork: str, rows: list[dict[str, Any]]) -> None:
        """The fork's whole view: the parent's gen-0 rows up to the fork step,
        then its own, identical on every read."""
        parent, f = self.forks[fork], self.fork_step
        steps = [r["_step"] for r in rows]
        if steps != list(range(len(rows))) or len(rows) <= f:
            return self.fail(f"fork {fork}: steps {steps[:3]}..{steps[-3:]} ({len(rows)})")
        for row in rows:
            owner = parent if row["_step"] <= f else fork
            if (why := row_problem(owner, row)) is not None or row["gen"] != 0:
                return self.fail(f"fork {fork}: {why or row}")
        first = self.first_views.setdefault(fork, rows)
        if rows != first:
            return self.fail(f"fork {fork}: view changed: {len(first)} rows, now {len(rows)}")
        self.rows += len(rows)

    def one_round(self) -> None:
        for run_id in self.parents:
            current, _ = self.info(run_id)
            self.timelines[run_id].add(current)
            for run_no in sorted(self.timelines[run_id]):
                info = self.info(run_id, run_no)
                self.check_timeline(run_id, info, self.scan(run_id, run_no))
        for fork in self.forks:
            self.check_fork(fork, self.scan(fork))
        self.rounds += 1

    def run(self) -> None:
        try:
            while not self.stop.is_set() and not self.errors:
                self.one_round()
        except Exception as exc:
            self.fail(f"{type(exc).__name__}: {exc}")
        finally:
            self.api.close()


def expected_view(
    parent: str, upto: int, own: str, last: int, gen_from: int | None = None
) -> list[tuple[int, int, str]]:
    """``(step, gen, owner)`` of a timeline: ``parent``'s gen-0 rows to ``upto``,
    then ``own``'s to ``last`` (gen 1 if they follow a rewind)."""
    own_gen = 0 if gen_from is None else 1
    return [(s, 0, parent) for s in range(upto + 1)] + [
        (s, own_gen, own) for s in range(upto + 1, last + 1)
    ]


def compare(rows: list[dict[str, Any]], want: list[tuple[int, int, str]]) -> tuple[int, int, int]:
    """Rows lost, duplicated, and wrong, against ``want``."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_step.setdefault(r["_step"], []).append(r)
    lost = sum(1 for s, _, _ in want if s not in by_step)
    duplicates = sum(len(v) - 1 for v in by_step.values())
    wanted = {s: (g, owner) for s, g, owner in want}
    bad = 0
    for s, rs in by_step.items():
        g, owner = wanted.get(s, (None, ""))
        bad += sum(1 for r in rs if r.get("gen") != g or row_problem(owner, r) is not None)
    return lost, duplicates, bad


def test_readers_see_consistent_snapshots_while_writers_ingest(
    daemon: Daemon, short_tmp: Path, record: Record
) -> None:
    """4 writers (the client library, each its own process) ingest while 4 readers
    (2 over the socket, 2 over HTTP) scan every timeline and every fork, over and
    over: each row is one that was written, each scan a gap-free prefix that never
    shrinks, each fork's view identical every time, through its parent's growth
    and a rewind of the parent to before the fork step."""
    n_writers, fork_step, fork_rows = 4, scale(300, 2000), 50
    rewind_step = fork_step // 2
    final_step = scale(6000, 100_000)  # the writers' current timelines pass this
    batch, interval = 10, 0.01  # up to 1000 rows/s per writer
    parents = [f"w{k}" for k in range(n_writers)]
    rewound = parents[:2]
    forks = {f"f{k}": p for k, p in enumerate(parents)}
    sock = str(daemon.socket)
    api = stepline.Api(socket=sock)
    log = short_tmp / "writers.log"
    env_args = [f"--socket={sock}", f"--project={READ_P}", f"--batch={batch}"]
    writers = {
        p: client_process(["writer", *env_args, f"--interval={interval}", f"--run={p}"], log)
        for p in parents
    }
    readers: list[Reader] = []
    try:

        def last_step(run_id: str) -> int:
            try:
                return int(api.run(f"{READ_P}/{run_id}").last_step)
            except stepline.RunNotFound:  # its writer has not started it yet
                return -1

        def alive() -> bool:
            dead = {p: w.returncode for p, w in writers.items() if w.poll() is not None}
            assert not dead, f"writers exited: {dead}\n{log.read_text()}"
            return True

        wait_for(
            lambda: alive() and all(last_step(p) >= fork_step for p in parents),
            60,
            f"every writer to pass step {fork_step}",
        )
        for fork, parent in forks.items():
            run = stepline.init(
                project=READ_P, id=fork, fork_from=f"{parent}?_step={fork_step}", socket=sock
            )
            for _ in range(fork_rows):
                run.log(expected_row(fork, run.step))
            run.finish()
        readers = [Reader(n, daemon, parents, forks, fork_step) for n in range(4)]
        for r in readers:
            r.start()

        def rounds_at_least(n: list[int]) -> bool:
            alive()
            return all(r.rounds >= k or r.errors for r, k in zip(readers, n, strict=True))

        wait_for(lambda: rounds_at_least([2] * 4), 120, "every reader to finish 2 rounds")
        for p in rewound:
            commands = writers[p].stdin
            assert commands is not None
            commands.write(f"rewind {rewind_step}\n")
            commands.flush()
        for p in rewound:
            assert event(writers[p], log) == {"event": "rewound", "step": rewind_step}
        after = [r.rounds + 2 for r in readers]
        wait_for(
            lambda: rounds_at_least(after) and all(last_step(p) >= final_step for p in parents),
            scale(120, 600),
            f"2 more rounds of every reader, and the writers past step {final_step}",
        )
        done = {p: stop_client(w, log) for p, w in writers.items()}
    finally:
        for r in readers:
            r.stop.set()
        for r in readers:
            r.join(CLIENT_TIMEOUT)
        kill_all(writers.values())

    errors = [e for r in readers for e in r.errors]
    assert not errors, errors
    assert all(not r.is_alive() for r in readers)

    # Every timeline and fork as it ended, against what the writers were acked.
    lost = duplicates = bad = acked = 0
    views: list[tuple[list[dict[str, Any]], list[tuple[int, int, str]]]] = []
    for p, res in done.items():
        current = api.run(f"{READ_P}/{p}")
        if p in rewound:
            (old,) = res["archived"]
            assert res["gen"] == 1 and old["gen"] == 0 and current.parent == (p, rewind_step)
            archived = current.rewound_from
            assert archived is not None and archived.state == "archived"
            views.append((list(archived.scan_history()), expected_view(p, old["last_step"], p, -1)))
            want = expected_view(p, rewind_step, p, res["last_step"], gen_from=rewind_step)
            acked += old["last_step"] + 1 + res["last_step"] - rewind_step
        else:
            assert res["gen"] == 0 and not res["archived"]
            want = expected_view(p, res["last_step"], p, -1)
            acked += res["last_step"] + 1
        views.append((list(current.scan_history()), want))
        assert current.state == "finished"
    for fork, parent in forks.items():
        rows = list(api.run(f"{READ_P}/{fork}").scan_history())
        views.append((rows, expected_view(parent, fork_step, fork, fork_step + fork_rows)))
        acked += fork_rows
    for rows, want in views:
        got = compare(rows, want)
        lost, duplicates, bad = lost + got[0], duplicates + got[1], bad + got[2]

    scans = [r.scans for r in readers]
    record(
        faults=len(rewound),
        acknowledged=acked,
        lost=lost,
        duplicates=duplicates,
        notes=(
            f"{n_writers} writers (client library) vs 4 readers (2 socket, 2 HTTP): "
            f"{sum(scans)} scans ({', '.join(map(str, scans))}), "
            f"{sum(r.rows for r in readers):,} rows checked, none torn, every scan a gap-free "
            f"prefix, {len(forks)} fork views identical on every read through their parents' "
            f"growth to step {final_step}+ and {len(rewound)} rewinds to before the fork step"
        ),
    )
    assert (lost, duplicates, bad) == (0, 0, 0), (lost, duplicates, bad)
