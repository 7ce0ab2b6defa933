"""stepline's benchmark scenarios against a real daemon process.

Each function takes a fresh working dir, starts what it needs, and returns a
flat dict of figures. Nothing here asserts a target: the harness reports.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import stepline
from bench.rowmaker import row_maker
from stepline_daemon.process import DaemonProcess


def rss_peak_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_parts_mib(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident memory of a process now, in MiB.

    The daemon's file-backed part is LMDB's memory map: page cache the kernel
    can drop, not heap the daemon holds.
    """
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024


class Sampler:
    """Polls a process's memory while a scenario runs; keeps the peaks."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every = pid, every
        self.anon = self.file = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                anon, file = rss_parts_mib(self.pid)
            except (OSError, KeyError):
                return
            self.anon, self.file = max(self.anon, anon), max(self.file, file)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def daemon(workdir: Path) -> DaemonProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return DaemonProcess(workdir / "data", workdir / "s.sock", workdir / "daemon.log").start()


def single_writer(workdir: Path, steps: int) -> dict[str, Any]:
    """Scenario 1: init -> S x log(step=i) -> finish, in its own process, like the peers."""
    d = daemon(workdir)
    try:
        out = workdir / "single.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.workload",
                "--steps",
                str(steps),
                "--socket",
                str(d.socket),
                "--out",
                str(out),
            ],
            check=True,
            timeout=600,
        )
        result: dict[str, Any] = json.loads(out.read_text())
    finally:
        d.stop()
    return result


def _writer(socket: str, steps: int, barrier: Any, results: Any) -> None:
    make = row_maker()  # rows made on the fly: client RSS is the library's, not a row list's
    run = stepline.init(project="bench", socket=socket)
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        run.log(make(i), step=i)
    run.finish(timeout=600)
    t1, c1 = time.perf_counter(), time.process_time()
    results.put((t0, t1, rss_peak_mib(mp.current_process().pid or 0), c1 - c0))


def ingest(socket: str, n: int, total_rows: int) -> tuple[float, float, float, float]:
    """n writer processes log ``total_rows // n`` rows each into new runs, released
    together; returns when all are durable: (start, end, peak client RSS in MiB,
    CPU seconds the writers used).

    start and end are ``perf_counter`` times, comparable across processes (Linux's
    monotonic clock), from the first writer's first ``log`` to the last ``finish``.
    """
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    per = total_rows // n
    procs = [ctx.Process(target=_writer, args=(socket, per, barrier, results)) for _ in range(n)]
    try:
        for p in procs:
            p.start()
        got = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    start, end = min(g[0] for g in got), max(g[1] for g in got)
    return start, end, max(g[2] for g in got), sum(g[3] for g in got)


def writers(workdir: Path, n: int, total_rows: int) -> dict[str, Any]:
    """Scenarios 2 and 6: n writer processes, aggregate durable rows/s, and RSS."""
    d = daemon(workdir)
    per = total_rows // n
    sampler = Sampler(d.pid)
    try:
        start, end, client_rss, _ = ingest(str(d.socket), n, total_rows)
        daemon_rss = rss_peak_mib(d.pid)
    finally:
        sampler.stop()
        d.stop()
    return {
        "writers": n,
        "rows": per * n,
        "rows_per_s": per * n / (end - start),
        "daemon_rss_mib": daemon_rss,
        "daemon_anon_mib": sampler.anon,
        "daemon_mmap_mib": sampler.file,
        "client_rss_mib_max": client_rss,
    }


def ack_latency(workdir: Path, rows: int) -> dict[str, Any]:
    """Scenario 3: one row per millisecond, each flushed: log-to-durable latency."""
    d = daemon(workdir)
    make = row_maker()
    lat: list[float] = []
    try:
        run = stepline.init(project="bench", socket=str(d.socket))
        next_t = time.perf_counter()
        for i in range(rows):
            next_t += 0.001
            t = time.perf_counter()
            run.log(make(i), step=i, commit=True)
            run.flush()
            lat.append((time.perf_counter() - t) * 1000)
            pause = next_t - time.perf_counter()
            if pause > 0:
                time.sleep(pause)  # the load itself: one row per millisecond
        run.finish()
    finally:
        d.stop()
    lat.sort()
    return {
        "rows": rows,
        "ack_p50_ms": lat[len(lat) // 2],
        "ack_p99_ms": lat[int(len(lat) * 0.99)],
        "ack_max_ms": lat[-1],
    }


def _log_rows(run: stepline.Run, steps: range) -> None:
    make = row_maker()
    for i in steps:
        run.log(make(i), step=i)


def reads_and_forks(workdir: Path, steps: int, depth: int, repeats: int) -> dict[str, Any]:
    """Scenarios 4 and 5: scans and sampling on a long run and a deep fork chain; fork cost."""
    d = daemon(workdir)
    sock = str(d.socket)
    try:
        base = stepline.init(project="bench", id="base", socket=sock)
        _log_rows(base, range(steps))
        base.finish(timeout=600)
        # A chain of `depth` forks whose resolved view is also `steps` rows long.
        per = steps // depth
        prev = "base"
        for k in range(depth):
            child = stepline.init(
                project="bench",
                id=f"chain{k}",
                socket=sock,
                fork_from=f"{prev}?_step={k * per + per - 1}",
            )
            _log_rows(child, range(child.step, child.step + per))
            child.finish(timeout=600)
            prev = f"chain{k}"
        api = stepline.Api(socket=sock)
        out: dict[str, Any] = {"steps": steps, "depth": depth}
        for name, run_id in (("flat", "base"), ("chain", prev)):
            r = api.run(f"bench/{run_id}")
            rates, samples = [], []
            for _ in range(repeats):
                t = time.perf_counter()
                n = sum(1 for _ in r.scan_history(page_size=10_000))
                rates.append(n / (time.perf_counter() - t))
                t = time.perf_counter()
                h = r.history(samples=1000, pandas=False)
                samples.append((time.perf_counter() - t) * 1000)
            if n != steps + (0 if name == "flat" else per):
                raise RuntimeError(f"{name}: scanned {n} rows")
            assert len(h) == 1000
            out[f"scan_{name}_rows_per_s"] = statistics.median(rates)
            out[f"history1000_{name}_ms"] = statistics.median(samples)
        out["scan_chain_vs_flat"] = out["scan_chain_rows_per_s"] / out["scan_flat_rows_per_s"]
        # Fork creation on the long parent, against creating an empty run: the
        # difference is the fork's own work, the rest is the fsync'd commit.
        fork_ms, new_ms = [], []
        for k in range(20):
            t = time.perf_counter()
            f = stepline.init(
                project="bench",
                id=f"fork{k}",
                socket=sock,
                fork_from=f"base?_step={(k * 48_611) % steps}",
            )
            fork_ms.append((time.perf_counter() - t) * 1000)
            f.finish()
            t = time.perf_counter()
            e = stepline.init(project="bench", id=f"empty{k}", socket=sock)
            new_ms.append((time.perf_counter() - t) * 1000)
            e.finish()
        out["fork_init_ms"] = statistics.median(fork_ms)
        out["new_run_init_ms"] = statistics.median(new_ms)
        api.close()
        # The first chart after a (re)start: its read workers start on the first
        # read, and history reads run on a thread until they are up.
        first_ms = []
        for _ in range(repeats):
            assert d.stop() == 0
            d.start()
            with stepline.Api(socket=sock) as fresh:
                r = fresh.run("bench/base")  # what a user's script or page asks first
                t = time.perf_counter()
                r.history(samples=1000, pandas=False)
                first_ms.append((time.perf_counter() - t) * 1000)
        out["history1000_first_after_start_ms"] = statistics.median(first_ms)
    finally:
        d.stop()
    return out


def spill(workdir: Path, steps: int, buffer_bytes: int = 4 * 1024 * 1024) -> dict[str, Any]:
    """log() cost while the daemon is down and rows spill to the spool, then delivery."""
    d = daemon(workdir)
    os.environ["STEPLINE_BUFFER_BYTES"] = str(buffer_bytes)  # read when this socket's sender starts
    os.environ["XDG_STATE_HOME"] = str(workdir / "state")
    make = row_maker()
    rows = [make(i) for i in range(steps)]
    costs = [0] * steps
    try:
        run = stepline.init(project="bench", socket=str(d.socket))
        run.flush()
        d.stop()
        now = time.perf_counter_ns
        for i in range(steps):
            a = now()
            run.log(rows[i], step=i)
            costs[i] = now() - a
        spooled = sum(p.stat().st_size for p in (workdir / "state").rglob("*.spool"))
        d.start()
        t = time.perf_counter()
        run.finish(timeout=600)
        drain_s = time.perf_counter() - t
        r = stepline.Api(socket=str(d.socket)).run(f"bench/{run.id}")
        if r.last_step != steps - 1 or r.dropped:
            raise RuntimeError(f"spill: last step {r.last_step}, dropped {r.dropped}")
    finally:
        del os.environ["STEPLINE_BUFFER_BYTES"], os.environ["XDG_STATE_HOME"]
        if d.alive:
            d.stop()
    costs.sort()
    return {
        "steps": steps,
        "buffer_mib": buffer_bytes / 2**20,
        "spooled_mib": spooled / 2**20,
        "log_p50_us": costs[steps // 2] / 1000,
        "log_p99_us": costs[int(steps * 0.99)] / 1000,
        "log_max_us": costs[-1] / 1000,
        "drain_s": drain_s,
    }
