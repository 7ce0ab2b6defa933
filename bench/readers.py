"""Reads against ingest: 4 writer processes, with and without a reader looping.

The issue's target: "Reads never block ingest. A scenario reads history in a
loop while 4 writers log; ingest throughput stays within 10% of the figure with
no reader."

The reader asks, back to back, for what the dashboard asks to draw a chart::

    GET /api/projects/bench/runs/chart/history?keys=loss,acc&samples=1000&format=columns

on a run with ``history_steps`` steps logged before the writers start. Each
measurement gets a fresh daemon on a copy of the same data dir, so every mode
sees the same store; the modes are interleaved within each repetition:

``none``
    4 writers, no reader: the baseline.
``http``
    4 writers while the reader loops the chart request over HTTP (the headline).
``socket``
    the same request through the socket API, ``Api().run(..).history(...)``.
``http_apart``
    the HTTP reader aims at a second daemon on its own copy: the same work on
    the same cores, but no interpreter shared with the writes. Against ``http``
    it tells how much of the loss is the daemon's GIL, how much the CPU.

The writers are those of ``scenarios.writers`` (new runs, 10 floats a step,
timed from the first ``log`` to the last durable ``finish``); the reader's rate
counts the requests that ended inside that window, its latencies every request
that overlapped it. CPU use per process over the window comes from ``/proc``;
``foreign_cores`` is what other processes took meanwhile (noise, on a shared box).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import stepline
from bench.rowmaker import row_maker
from bench.scenarios import daemon, ingest
from stepline_daemon.process import DaemonProcess

PROJECT, RUN_ID = "bench", "chart"
KEYS = ("loss", "acc")
SAMPLES = 1000
CHART_PATH = (
    f"/api/projects/{PROJECT}/runs/{RUN_ID}/history"
    f"?keys={','.join(KEYS)}&samples={SAMPLES}&format=columns"
)
MODES = ("none", "http", "socket", "http_apart")
READER_KIND = {"http": "http", "socket": "socket", "http_apart": "http"}
_MAKE = row_maker(8)


def chart_row(i: int) -> dict[str, Any]:
    """A training-like step: a noisy falling loss, a noisy rising accuracy, 8 more floats.

    The noise (two fixed pseudo-random sequences, independent of each other) keeps
    the min/max decimation honest: with smooth or mirrored curves the same rows
    would hold every bucket's extremes, and the chart would get half its points.
    """
    x = i * 1e-4
    a = ((i * 7919) % 1009) / 1009 - 0.5
    b = ((i * 104_729) % 1013) / 1013 - 0.5
    return {"loss": 2 / (1 + x) + 0.2 * a, "acc": x / (1 + x) + 0.1 * b, **_MAKE(i)}


def log_chart_run(socket: str, steps: int) -> None:
    run = stepline.init(project=PROJECT, id=RUN_ID, socket=socket)
    for i in range(steps):
        run.log(chart_row(i), step=i)
    run.finish(timeout=600)


# ------------------------------------------------------------------ the reader


def _http_fetcher(url: str, steps: int) -> Callable[[bool], int]:
    """One keep-alive connection, as a browser holds; returns the chart's points."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)

    def fetch(check: bool) -> int:
        conn.request("GET", CHART_PATH)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {CHART_PATH}: {resp.status} {body[:200]!r}")
        if not check:
            return 0
        return check_chart(json.loads(body), steps)

    return fetch


def _socket_fetcher(socket: str, steps: int) -> Callable[[bool], int]:
    run = stepline.Api(socket=socket).run(f"{PROJECT}/{RUN_ID}")

    def fetch(check: bool) -> int:
        rows = run.history(keys=list(KEYS), samples=SAMPLES, pandas=False)
        if not check:
            return 0
        names = {k: None for r in rows for k in r}
        return check_chart({k: [r.get(k) for r in rows] for k in names} | {"next": None}, steps)

    return fetch


def check_chart(doc: dict[str, Any], steps: int) -> int:
    """Raise unless a chart reply (columns) spans the whole run with both keys and
    nothing else; return its number of points."""
    if set(doc) != {"_step", *KEYS, "next"} or doc["next"] is not None:
        raise RuntimeError(f"chart reply has columns {sorted(doc)}, next {doc.get('next')}")
    step = doc["_step"]
    if not 2 <= len(step) <= SAMPLES or step[0] != 0 or step[-1] != steps - 1:
        raise RuntimeError(
            f"chart reply: {len(step)} points from {step[:1]} to {step[-1:]}, run has {steps} steps"
        )
    if any(len(doc[k]) != len(step) or None in doc[k] for k in KEYS):
        raise RuntimeError("chart reply: a key's column is short or has gaps")
    return len(step)


def _reader(kind: str, target: str, steps: int, ready: Any, stop: Any, results: Any) -> None:
    """Loop the chart request back to back until ``stop``; report end times and latencies."""
    try:
        fetch = (_http_fetcher if kind == "http" else _socket_fetcher)(target, steps)
        points = fetch(True)
        ready.set()
        now = time.perf_counter
        ends: list[float] = []
        lat: list[float] = []
        while not stop.is_set():
            t = now()
            fetch(False)
            t1 = now()
            ends.append(t1)
            lat.append(t1 - t)
        fetch(True)  # still whole after the writes
        results.put(("ok", ends, lat, points))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))
        ready.set()


class Reader:
    """The reader process: started and warmed up on entry, stopped on exit."""

    def __init__(self, kind: str, target: str, steps: int) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.stop, self.results = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(
            target=_reader, args=(kind, target, steps, self.ready, self.stop, self.results)
        )
        self.ends: list[float] = []
        self.lat: list[float] = []
        self.points = 0

    def __enter__(self) -> Reader:
        self.proc.start()
        deadline = time.monotonic() + 120
        while not self.ready.wait(0.1):
            if not self.proc.is_alive() or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("the reader did not answer its first request")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        try:
            got = self.results.get(timeout=120)
        finally:
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.kill()
        if got[0] != "ok":
            raise RuntimeError(f"the reader failed: {got[1]}")
        _, self.ends, self.lat, self.points = got

    @property
    def pid(self) -> int:
        return self.proc.pid or 0


# ------------------------------------------------------------------ CPU use


def _proc_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


CORES = os.cpu_count() or 1


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


# (perf_counter time, CPU ticks per process name, the machine's (busy, total) ticks)
Sample = tuple[float, dict[str, int], tuple[int, int]]


class CpuMeter:
    """Samples CPU ticks of some processes and of the machine, to cut to a window later."""

    def __init__(self, pids: dict[str, int], every: float = 0.05) -> None:
        self.pids, self.every = pids, every
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            ticks = {name: _proc_ticks(pid) for name, pid in self.pids.items()}
        except OSError:
            return
        self.samples.append((time.perf_counter(), ticks, _machine_ticks()))

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self.every):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def window(self, start: float, end: float) -> dict[str, float]:
        return cores_between(self.samples, start, end, os.sysconf("SC_CLK_TCK"))


def cores_between(samples: list[Sample], start: float, end: float, hz: int) -> dict[str, float]:
    """Cores each process used between the first and last sample inside [start,
    end], and the machine's busy share of all its CPUs; empty without two samples."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return {}
    (t0, p0, m0), (t1, p1, m1) = inside[0], inside[-1]
    out = {f"{name}_cores": (p1[name] - p0[name]) / hz / (t1 - t0) for name in p0}
    out["machine_busy"] = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
    return out


# ------------------------------------------------------------------ figures


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def window_stats(ends: list[float], lat: list[float], start: float, end: float) -> dict[str, float]:
    """The reader during [start, end]: requests that ended inside it, per second, and
    the latency percentiles (ms) of every request that overlapped it, so a request
    slower than the whole window still counts."""
    done = sum(1 for t in ends if start <= t <= end)
    overlapped = sorted(x for t, x in zip(ends, lat, strict=True) if t >= start and t - x <= end)
    nan = float("nan")
    return {
        "requests": done,
        "req_per_s": done / (end - start),
        "p50_ms": percentile(overlapped, 0.50) * 1000 if overlapped else nan,
        "p99_ms": percentile(overlapped, 0.99) * 1000 if overlapped else nan,
    }


def summarize(reps: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians per mode and figure, the per-repetition values, and each mode's
    ingest against the baseline's: the ratio of medians and the per-repetition
    ratios (each against the baseline of its own repetition)."""
    out: dict[str, Any] = {}
    for mode in reps[0]:
        for name in reps[0][mode]:
            values = [rep[mode][name] for rep in reps]
            out[f"{mode}_{name}"] = statistics.median(values)
            out[f"{mode}_{name}_reps"] = values
        if mode != "none" and "none" in reps[0]:
            out[f"{mode}_vs_none"] = out[f"{mode}_rows_per_s"] / out["none_rows_per_s"]
            out[f"{mode}_vs_none_reps"] = [
                rep[mode]["rows_per_s"] / rep["none"]["rows_per_s"] for rep in reps
            ]
    return out


# ------------------------------------------------------------------ the scenario


def _fresh(seed: Path, workdir: Path) -> DaemonProcess:
    """A daemon on a copy of the seed data dir."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    shutil.copytree(seed, workdir / "data")
    return daemon(workdir)


def _measure(
    mode: str, seed: Path, workdir: Path, writers: int, rows: int, steps: int
) -> dict[str, float]:
    d = _fresh(seed, workdir / "a")
    apart = _fresh(seed, workdir / "b") if mode == "http_apart" else None
    try:
        pids = {"daemon": d.pid} | ({"daemon2": apart.pid} if apart else {})
        if mode == "none":
            meter = CpuMeter(pids)
            start, end, _, writer_cpu = ingest(str(d.socket), writers, rows)
            meter.stop()
            reads: dict[str, float] = {}
        else:
            kind, served = READER_KIND[mode], apart or d
            target = served.http_url if kind == "http" else str(served.socket)
            with Reader(kind, target, steps) as reader:
                meter = CpuMeter(pids | {"reader": reader.pid})
                start, end, _, writer_cpu = ingest(str(d.socket), writers, rows)
                meter.stop()
            reads = window_stats(reader.ends, reader.lat, start, end)
            reads["chart_points"] = reader.points
    finally:
        d.stop()
        if apart is not None:
            apart.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    cpu = meter.window(start, end)
    cpu["writers_cores"] = writer_cpu / (end - start)
    ours = sum(v for k, v in cpu.items() if k.endswith("_cores"))
    # What the rest of the machine took meanwhile: on a shared box, the noise.
    cpu["foreign_cores"] = max(0.0, cpu.pop("machine_busy", 0.0) * CORES - ours)
    return {"rows_per_s": rows // writers * writers / (end - start)} | reads | cpu


def _alone(kind: str, seed: Path, workdir: Path, steps: int, seconds: float) -> dict[str, float]:
    """The reader with no writers: its latency on an otherwise idle daemon."""
    d = _fresh(seed, workdir)
    try:
        target = d.http_url if kind == "http" else str(d.socket)
        with Reader(kind, target, steps) as reader:
            start = time.perf_counter()
            time.sleep(seconds)  # the load is the reader's own loop; this only bounds it
            end = time.perf_counter()
        return window_stats(reader.ends, reader.lat, start, end)
    finally:
        d.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def readers(
    workdir: Path,
    history_steps: int,
    writer_rows: int,
    repeats: int,
    writers: int = 4,
    modes: tuple[str, ...] = MODES,
    alone_s: float = 2.0,
) -> dict[str, Any]:
    """Ingest of ``writers`` processes with no reader, then with each reader mode,
    interleaved ``repeats`` times, each on a fresh daemon over the same history."""
    unknown = set(modes) - set(MODES)
    if unknown or "none" not in modes:
        raise ValueError(f"readers: modes must include none and be of {MODES}, got {modes}")
    seed = workdir / "seed"
    d = daemon(seed)
    try:
        log_chart_run(str(d.socket), history_steps)
    finally:
        d.stop()
    data = seed / "data"
    alone = {
        kind: _alone(kind, data, workdir / "alone", history_steps, alone_s)
        for kind in sorted({READER_KIND[m] for m in modes if m != "none"})
    }
    reps: list[dict[str, dict[str, float]]] = []
    for rep in range(repeats):
        got = {}
        for mode in modes:
            t = time.perf_counter()
            got[mode] = _measure(mode, data, workdir / "m", writers, writer_rows, history_steps)
            print(
                f"    {rep + 1}/{repeats} {mode:<11}{got[mode]['rows_per_s']:>10,.0f} rows/s"
                f"  {time.perf_counter() - t:5.1f}s",
                flush=True,
            )
        reps.append(got)
    shutil.rmtree(seed, ignore_errors=True)
    out: dict[str, Any] = {
        "writers": writers,
        "rows": writer_rows // writers * writers,
        "history_steps": history_steps,
        "samples": SAMPLES,
        "repeats": repeats,
        "modes": list(modes),
    }
    for kind, stats in alone.items():
        out.update({f"alone_{kind}_{k}": v for k, v in stats.items()})
    out.update(summarize(reps))
    return out
