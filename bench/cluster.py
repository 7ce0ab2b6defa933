"""Replication into ClickHouse, and reads of the cluster against the node's.

``python -m bench --scenarios cluster``. One clickhouse-server (Debian's 18.16)
for the whole scenario, a fresh database per measurement, real daemons started
with ``--clickhouse``. Four figures:

replication, live
    A writer process logs ``live_steps`` steps of 10 floats as fast as it can
    (the single-writer workload's loop) into a node that replicates; timed from
    its first ``log`` until the node's status says the cluster holds
    everything (``lag_rows == 0 and lag_entries == 0`` after ``finish``). With
    one node, then two (each its own daemon and writer, released together).
replication, backlog
    The highest sustained rate: a node logs ``read_steps`` steps while its
    ClickHouse is down, then restarts with it up; timed from the restart until
    caught up. Nothing else runs meanwhile, so this is the shipper's capacity.
lag
    A writer logs at a steady ``lag_rate`` steps/s; a poller asks ClickHouse for
    the highest whole row it holds every ``POLL`` s. A step's lag runs from its
    ``log`` call to the first poll reply that shows it (so it errs high, by up
    to one poll period).
reads
    On the backlog's run: ``history(samples=1000)`` and ``scan_history()`` from
    the cluster (``Api(clickhouse=...)``) and from the node (``Api(socket=...)``),
    interleaved. The scan reads the first ``scan_steps`` rows.

CPU per process comes from ``/proc`` over each timed window, to say where the
time went; ``foreign_cores`` is what the rest of the (shared) machine took.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import stepline
from bench.clickhouse_server import ClickHouseServer
from bench.readers import CORES, CpuMeter, percentile
from bench.rowmaker import row_maker
from stepline_daemon.cluster.client import ClickHouse, ClickHouseError
from stepline_daemon.process import DaemonProcess

PROJECT = "bench"
POLL = 0.05  # status and ClickHouse polls: the resolution of every time below
SAMPLES = 1000
PAGE = 10_000  # scan page size, as the reads scenario uses
HISTORY_CALLS = 5
WAIT_S = 600.0  # the longest any one wait may take before the scenario fails


# ------------------------------------------------------------------ pure parts


def step_lags(logged_at: Sequence[float], polls: Sequence[tuple[float, int]]) -> list[float]:
    """Each step's lag: from when it was logged (``logged_at[step]``) to the
    first poll ``(reply time, highest step the cluster held)`` that covers it.

    Polls in time order; the highest step never falls (a batch's rows become
    visible in step order). Steps no poll covered are left out: the caller
    checks the count.
    """
    lags: list[float] = []
    nxt = 0
    for t, top in polls:
        while nxt <= top and nxt < len(logged_at):
            lags.append(t - logged_at[nxt])
            nxt += 1
    return lags


def lag_stats(lags: list[float]) -> dict[str, float]:
    """p50, p99 and max of per-step lags, in seconds."""
    s = sorted(lags)
    return {"lag_p50_s": percentile(s, 0.50), "lag_p99_s": percentile(s, 0.99), "lag_max_s": s[-1]}


def cpu_per_step(cores: dict[str, float], seconds: float, steps: int) -> dict[str, float]:
    """``<name>_cores`` over a window as CPU microseconds per step replicated."""
    return {
        k.removesuffix("_cores") + "_us_per_step": v * seconds / steps * 1e6
        for k, v in cores.items()
        if k.endswith("_cores")
    }


def foreign(cpu: dict[str, float], ours: float) -> float:
    """Cores the rest of the machine took, given the busy share and our cores."""
    return max(0.0, cpu.get("machine_busy", 0.0) * CORES - ours)


# ------------------------------------------------------------------ processes


def _writer(
    socket: str, run_id: str, steps: int, rate: float, prebuilt: bool, barrier: Any, results: Any
) -> None:
    """Log ``steps`` rows into ``run_id``: as fast as possible (``rate`` 0, the
    single-writer workload's loop), or paced at ``rate`` steps/s, noting when
    each was logged. Reports (first log, durable finish, log times, CPU s).

    ``prebuilt``: rows built before timing, as in bench.workload; else made on
    the fly (a million prebuilt rows would take most of a GiB).
    """
    make = row_maker()
    rows: Any = [make(i) for i in range(steps)] if prebuilt else _Made(make)
    run = stepline.init(project=PROJECT, id=run_id, socket=socket)
    log, now = run.log, time.perf_counter
    logged = [0.0] * steps if rate else []
    barrier.wait()
    c0 = time.process_time()
    t0 = now()
    if rate:
        due = t0
        for i in range(steps):
            pause = due - now()
            if pause > 0:
                time.sleep(pause)  # the load itself: a steady rate
            logged[i] = now()
            log(rows[i], step=i)
            due += 1 / rate
    else:
        for i in range(steps):
            log(rows[i], step=i)
    run.finish(timeout=WAIT_S)
    results.put((t0, now(), logged, time.process_time() - c0))


class _Made:
    """Rows by index, made when asked."""

    def __init__(self, make: Callable[[int], dict[str, Any]]) -> None:
        self.make = make

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.make(i)


class Writers:
    """One writer process per (socket, run id), released together on ``start``;
    a context: whichever is still running at its end is killed."""

    def __init__(
        self,
        targets: list[tuple[str, str]],
        steps: int,
        rate: float = 0,
        prebuilt: bool = True,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.barrier, self.results = ctx.Barrier(len(targets) + 1), ctx.Queue()
        self.procs = [
            ctx.Process(
                target=_writer, args=(s, r, steps, rate, prebuilt, self.barrier, self.results)
            )
            for s, r in targets
        ]
        for p in self.procs:
            p.start()

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.join(30 if exc[0] is None else 0)
            if p.is_alive():
                p.kill()
                p.join()

    def start(self) -> None:
        self.barrier.wait(timeout=120)

    def failed(self) -> bool:
        """A writer died before reporting (its traceback is on stderr)."""
        return any(p.exitcode not in (None, 0) for p in self.procs)

    def wait(self) -> list[tuple[float, float, list[float], float]]:
        """Every writer's report; fails early when one died."""
        got: list[tuple[float, float, list[float], float]] = []
        deadline = time.monotonic() + WAIT_S
        while len(got) < len(self.procs):
            try:
                got.append(self.results.get(timeout=1.0))
            except queue.Empty:
                if self.failed() or time.monotonic() > deadline:
                    raise RuntimeError("a writer died or hung") from None
        return got


def node(workdir: Path, name: str, url: str, data: Path | None = None) -> DaemonProcess:
    """A daemon replicating to ``url`` as ``name``, on a fresh or given data dir."""
    workdir.mkdir(parents=True, exist_ok=True)
    return DaemonProcess(
        data or workdir / "data",
        workdir / "s.sock",
        workdir / "daemon.log",
        http="off",
        args=("--clickhouse", url, "--node", name),
    )


def replication(d: DaemonProcess) -> dict[str, Any]:
    with stepline.Api(socket=str(d.socket)) as api:
        status: dict[str, Any] = api.status()["cluster"]
    return status


def wait_caught_up(*nodes: DaemonProcess) -> float:
    """Poll until every node's cluster lag is zero; the perf_counter time it was seen."""
    deadline = time.monotonic() + WAIT_S
    waiting = list(nodes)
    while waiting:
        c = replication(waiting[0])
        if c["lag_rows"] == 0 and c["lag_entries"] == 0:
            waiting.pop(0)
            continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"not replicated in {WAIT_S:.0f}s: {c}")
        time.sleep(POLL)  # polling a condition, with a deadline
    return time.perf_counter()


def whole_rows(ch: ClickHouseServer, db: str) -> int:
    """Distinct whole rows (timeline, step) the cluster holds in ``db``."""
    got = ch.client(db).query(
        f"SELECT count() FROM (SELECT DISTINCT timeline, step FROM {db}.rows WHERE level = 0)"
    )
    return int(got[0][0])


def drop(ch: ClickHouseServer, db: str) -> None:
    """Drop a measurement's database: its merges must not load the next one."""
    ch.client().execute(f"DROP DATABASE IF EXISTS {db}")


# ------------------------------------------------------------------ measurements


def live(ch: ClickHouseServer, workdir: Path, db: str, nodes: int, steps: int) -> dict[str, Any]:
    """``nodes`` nodes, one full-speed writer each, replicating into ``db``."""
    ds = [node(workdir / f"n{k}", f"n{k}", ch.url(db)).start() for k in range(nodes)]
    try:
        with Writers([(str(d.socket), f"live{k}") for k, d in enumerate(ds)], steps) as writers:
            pids = {f"daemon{k}": d.pid for k, d in enumerate(ds)} | {"clickhouse": ch.pid}
            meter = CpuMeter(pids, every=POLL)
            writers.start()
            got = writers.wait()
        end = wait_caught_up(*ds)
        meter.stop()
    finally:
        for d in ds:
            d.stop()
    start, logged_end = min(g[0] for g in got), max(g[1] for g in got)
    total = steps * nodes
    held = whole_rows(ch, db)
    if held != total:
        raise RuntimeError(f"live/{nodes}: the cluster holds {held} rows of {total}")
    drop(ch, db)
    shutil.rmtree(workdir, ignore_errors=True)
    elapsed = end - start
    cpu = meter.window(start, end)
    daemon_cores = sum(v for k, v in cpu.items() if k.startswith("daemon"))
    writer_cores = sum(g[3] for g in got) / elapsed
    return {
        "steps_per_s": total / elapsed,
        "logged_per_s": total / (logged_end - start),
        "tail_s": end - logged_end,  # from the last durable finish to all shipped
        "daemon_cores": daemon_cores,
        "clickhouse_cores": cpu.get("clickhouse_cores", float("nan")),
        "writer_cores": writer_cores,
        "foreign_cores": foreign(cpu, daemon_cores + cpu.get("clickhouse_cores", 0) + writer_cores),
    } | cpu_per_step(
        {"daemon_cores": daemon_cores, "clickhouse_cores": cpu.get("clickhouse_cores", 0.0)},
        elapsed,
        total,
    )


def lag(
    ch: ClickHouseServer, workdir: Path, db: str, rate: float, seconds: float
) -> dict[str, Any]:
    """One writer at ``rate`` steps/s for ``seconds``; per-step log-to-cluster lag."""
    steps = int(rate * seconds)
    d = node(workdir, "lag", ch.url(db)).start()
    try:
        with Writers([(str(d.socket), "steady")], steps, rate) as writers:
            writers.start()
            polls = poll_arrivals(ch, db, steps, seconds + WAIT_S, writers)
            ((_, _, logged, _),) = writers.wait()
    finally:
        d.stop()
    lags = step_lags(logged, polls)
    if len(lags) != steps:
        raise RuntimeError(f"lag: {len(lags)} of {steps} steps seen")
    drop(ch, db)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"steps": steps, "polls": len(polls)} | lag_stats(lags)


def poll_arrivals(
    ch: ClickHouseServer, db: str, steps: int, timeout: float, writers: Writers
) -> list[tuple[float, int]]:
    """Every ``POLL`` s, the highest whole row's step ``db`` holds (-1: none),
    with the time the reply came; until step ``steps - 1`` arrived."""
    probe = ch.client(db, timeout=5.0)
    polls: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    top = -1
    while top < steps - 1:
        if time.monotonic() > deadline or writers.failed():
            raise RuntimeError(f"lag: the cluster holds steps to {top} of {steps}")
        tick = time.perf_counter()
        try:
            n, high = probe.query(f"SELECT count(), max(step) FROM {db}.rows WHERE level = 0")[0]
            top = int(high) if n != "0" else -1
        except ClickHouseError:
            top = -1  # before the shipper's first round the tables do not exist
        polls.append((time.perf_counter(), top))
        time.sleep(max(0.0, POLL - (time.perf_counter() - tick)))  # the poll period
    return polls


def seed_backlog(workdir: Path, url: str, steps: int) -> Path:
    """A node's data dir holding ``steps`` rows none of which reached ``url``
    (its ClickHouse not started yet): a replication backlog."""
    d = node(workdir, "seed", url).start()
    try:
        with Writers([(str(d.socket), "long")], steps, prebuilt=False) as writers:
            writers.start()
            writers.wait()
    finally:
        d.stop()
    return workdir / "data"


def settle(ch: ClickHouseServer, db: str, timeout: float = 30.0) -> int:
    """Wait (bounded) for ClickHouse's background merges to finish, so reads
    do not race them; the history table's active parts after."""
    c = ch.client()
    deadline = time.monotonic() + timeout
    while int(c.query("SELECT count() FROM system.merges")[0][0]) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling a condition, with a deadline
    rows = c.query(
        f"SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'history' AND active"
    )
    return int(rows[0][0])


def backlog_and_reads(
    ch: ClickHouseServer,
    data: Path,
    workdir: Path,
    db: str,
    steps: int,
    scan_steps: int,
    repeats: int,
) -> dict[str, Any]:
    """Ship the backlog in ``data``; then read its run from the node and the cluster."""
    d = node(workdir, "backlog", ch.url(db), data)
    out: dict[str, Any] = {"steps": steps, "scan_steps": scan_steps}
    try:
        d.start()
        start = time.perf_counter()  # the shipper starts as the daemon begins serving
        meter = CpuMeter({"daemon": d.pid, "clickhouse": ch.pid}, every=POLL)
        end = wait_caught_up(d)
        meter.stop()
        held = whole_rows(ch, db)
        if held != steps:
            raise RuntimeError(f"backlog: the cluster holds {held} rows of {steps}")
        cpu = meter.window(start, end)
        out |= {
            "backlog_steps_per_s": steps / (end - start),
            "backlog_daemon_cores": cpu.get("daemon_cores", float("nan")),
            "backlog_clickhouse_cores": cpu.get("clickhouse_cores", float("nan")),
            "backlog_foreign_cores": foreign(
                cpu, cpu.get("daemon_cores", 0) + cpu.get("clickhouse_cores", 0)
            ),
        }
        out |= {f"backlog_{k}": v for k, v in cpu_per_step(cpu, end - start, steps).items()}
        out["parts"] = settle(ch, db)
        out |= reads(d, ch.url(db), steps, scan_steps, repeats)
    finally:
        d.stop()
    drop(ch, db)
    return out


class QueryClock:
    """Time this process spends inside ClickHouse queries (the server's work
    and the transfer), to split a cluster read's time from its decoding here.

    ``Api(clickhouse=...)`` answers in-process through ``ClickHouse.execute``;
    while the clock runs that method is wrapped. The bench's instrument: the
    client itself stays untouched.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.queries = 0
        self.bytes = 0
        self._inner = ClickHouse.execute

    def __enter__(self) -> QueryClock:
        inner = self._inner

        def timed(client: ClickHouse, sql: str, data: bytes = b"", **settings: int | str) -> bytes:
            t = time.perf_counter()
            try:
                out = inner(client, sql, data, **settings)
            finally:
                self.seconds += time.perf_counter() - t
                self.queries += 1
            self.bytes += len(out)
            return out

        ClickHouse.execute = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        ClickHouse.execute = self._inner  # type: ignore[method-assign]

    def reading(self) -> tuple[float, int, int]:
        return self.seconds, self.queries, self.bytes


def reads(d: DaemonProcess, url: str, steps: int, scan_steps: int, repeats: int) -> dict[str, Any]:
    """history(samples=1000) HISTORY_CALLS times and a scan ``repeats`` times,
    from the node and the cluster in turn: medians, ms and rows/s; and of the
    cluster's calls, the share spent waiting on ClickHouse."""
    apis = {"node": stepline.Api(socket=str(d.socket)), "cluster": stepline.Api(clickhouse=url)}
    runs = {name: api.run(f"{PROJECT}/long") for name, api in apis.items()}
    ms: dict[str, list[float]] = {name: [] for name in apis}
    rates: dict[str, list[float]] = {name: [] for name in apis}
    # Per cluster call: (seconds in queries, queries, bytes received), over its total.
    waits: dict[str, list[tuple[float, int, int, float]]] = {"history": [], "scan": []}
    try:
        with QueryClock() as clock:
            for r in runs.values():
                r.history(samples=SAMPLES, pandas=False)  # warm: the node starts read workers
            for _ in range(HISTORY_CALLS):
                for name, r in runs.items():
                    before = clock.reading()
                    t = time.perf_counter()
                    got = r.history(samples=SAMPLES, pandas=False)
                    took = time.perf_counter() - t
                    ms[name].append(took * 1000)
                    if name == "cluster":
                        waits["history"].append(_spent(before, clock.reading(), took))
                    if len(got) != SAMPLES or got[-1]["_step"] != steps - 1:
                        raise RuntimeError(f"{name} history: {len(got)} rows")
            for _ in range(repeats):
                for name, r in runs.items():
                    before = clock.reading()
                    t = time.perf_counter()
                    n = sum(1 for _ in r.scan_history(page_size=PAGE, max_step=scan_steps))
                    took = time.perf_counter() - t
                    rates[name].append(n / took)
                    if name == "cluster":
                        waits["scan"].append(_spent(before, clock.reading(), took))
                    if n != scan_steps:
                        raise RuntimeError(f"{name} scan: {n} rows of {scan_steps}")
    finally:
        for api in apis.values():
            api.close()
    out: dict[str, Any] = {}
    for name in apis:
        out[f"{name}_history_ms"] = statistics.median(ms[name])
        out[f"{name}_history_ms_all"] = ms[name]
        out[f"{name}_scan_rows_per_s"] = statistics.median(rates[name])
        out[f"{name}_scan_rows_per_s_all"] = rates[name]
    for what, calls in waits.items():
        out[f"cluster_{what}_query_ms"] = statistics.median(c[0] for c in calls) * 1000
        out[f"cluster_{what}_queries"] = statistics.median(c[1] for c in calls)
        out[f"cluster_{what}_query_mib"] = statistics.median(c[2] for c in calls) / 2**20
        out[f"cluster_{what}_query_share"] = statistics.median(c[0] / c[3] for c in calls)
    return out


def _spent(
    before: tuple[float, int, int], after: tuple[float, int, int], took: float
) -> tuple[float, int, int, float]:
    """A call's query seconds, queries and bytes (clock readings around it), and its time."""
    return after[0] - before[0], after[1] - before[1], after[2] - before[2], took


def summarize(reps: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians per measurement and figure, as ``<measurement>_<figure>``, and
    the per-repetition values beside them (``..._reps``)."""
    out: dict[str, Any] = {}
    for what in reps[0]:
        for name in reps[0][what]:
            values = [rep[what][name] for rep in reps]
            out[f"{what}_{name}"] = statistics.median(values)
            out[f"{what}_{name}_reps"] = values
    return out


# ------------------------------------------------------------------ the scenario


def cluster(
    workdir: Path,
    live_steps: int,
    read_steps: int,
    scan_steps: int,
    lag_rate: float,
    lag_seconds: float,
    repeats: int,
) -> dict[str, Any]:
    """Every measurement above; live and lag ones ``repeats`` times, interleaved.

    The backlog is logged before ClickHouse starts (its node's shipper finds
    no server and retries), and shipped last, then read.
    """
    ch = ClickHouseServer(workdir / "clickhouse")
    t = time.perf_counter()
    data = seed_backlog(workdir / "seed", ch.url("backlog"), read_steps)
    print(f"    seeded a {read_steps:,}-step backlog  {time.perf_counter() - t:5.1f}s", flush=True)
    ch.start()
    try:
        version = ch.client().query("SELECT version()")[0][0]
        reps: list[dict[str, dict[str, float]]] = []
        for rep in range(repeats):
            got: dict[str, dict[str, float]] = {}
            for n in (1, 2):
                t = time.perf_counter()
                got[f"live{n}"] = live(ch, workdir / "live", f"live{n}_{rep}", n, live_steps)
                print(
                    f"    {rep + 1}/{repeats} live, {n} node{'s' if n > 1 else ' '}"
                    f"{got[f'live{n}']['steps_per_s']:>10,.0f} steps/s"
                    f"  {time.perf_counter() - t:5.1f}s",
                    flush=True,
                )
            t = time.perf_counter()
            got["lag"] = lag(ch, workdir / "lag", f"lag_{rep}", lag_rate, lag_seconds / repeats)
            print(
                f"    {rep + 1}/{repeats} lag p50 {got['lag']['lag_p50_s']:.2f} s,"
                f" p99 {got['lag']['lag_p99_s']:.2f} s  {time.perf_counter() - t:5.1f}s",
                flush=True,
            )
            reps.append(got)
        t = time.perf_counter()
        rest = backlog_and_reads(
            ch, data, workdir / "backlog", "backlog", read_steps, scan_steps, repeats
        )
        print(
            f"    backlog {rest['backlog_steps_per_s']:,.0f} steps/s, then reads"
            f"  {time.perf_counter() - t:5.1f}s",
            flush=True,
        )
    finally:
        ch.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return (
        {
            "clickhouse": version,
            "live_steps": live_steps,
            "lag_rate": lag_rate,
            "lag_seconds": lag_seconds / repeats,
            "repeats": repeats,
        }
        | summarize(reps)
        | rest
    )
