"""The benchmark harness: ``make bench`` or ``python -m bench [--peers] [--quick]``.

Runs the scenarios of the benchmark issue against real processes, interleaving
repetitions so machine noise hits every tool alike, then prints a table, checks
the targets (reports them; never asserts), writes JSON and PNG plots to
``bench/results/``. Peers (W&B offline, trackio, MLflow) run only with
``--peers``, each in a virtualenv the harness makes under ``bench/.venvs``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import stepline
from bench import scenarios

RESULTS = Path(__file__).parent / "results"
CLUSTER_TARGETS = (
    "replication, 1 node",
    "replication lag p99",
    "cluster history(1000)",
    "cluster scan_history",
)
VENVS = Path(__file__).parent / ".venvs"


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in runs)
        else:
            out[k] = v
    return out


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="slb-", dir="/tmp"))
        self.n = 0
        self.raw: dict[str, list[dict[str, Any]]] = {}

    def workdir(self) -> Path:
        self.n += 1
        d = self.tmp / str(self.n)
        d.mkdir()
        return d

    def record(self, key: str, fn: Callable[[], dict[str, Any]]) -> None:
        t = time.perf_counter()
        result = fn()
        print(f"  {key:<22} {time.perf_counter() - t:6.1f}s", flush=True)
        self.raw.setdefault(key, []).append(result)

    def run(self) -> dict[str, Any]:
        a = self.args
        steps = 20_000 if a.quick else a.steps
        peers: tuple[str, ...] = ()
        if a.peers:
            from bench.peers import DEFAULT_STEPS, PEERS, run_peer

            # Peers far slower than stepline run fewer steps; rates stay comparable.
            peers, peer_steps = PEERS, DEFAULT_STEPS
        for rep in range(a.repeats):
            print(f"repetition {rep + 1}/{a.repeats}", flush=True)
            if "single" in a.scenarios:
                self.record(
                    "single/stepline", lambda: scenarios.single_writer(self.workdir(), steps)
                )
                for tool in peers:
                    n = peer_steps[tool] // (10 if a.quick else 1)
                    self.record(
                        f"single/{tool}", lambda t=tool, n=n: run_peer(t, n, VENVS, self.workdir())
                    )
            if "writers" in a.scenarios:
                for w in (1, 4, 16):
                    total = 100_000 if a.quick else a.writer_rows
                    self.record(
                        f"writers/{w}",
                        lambda w=w, total=total: scenarios.writers(self.workdir(), w, total),
                    )
            if "ceiling" in a.scenarios:
                from bench.ceiling import run_ceiling

                for w in (1, 4):
                    per = (100_000 if a.quick else a.writer_rows) // w
                    self.record(
                        f"ceiling/{w}", lambda w=w, per=per: run_ceiling(w, per, self.workdir())
                    )
        if "latency" in a.scenarios:
            self.record(
                "latency", lambda: scenarios.ack_latency(self.workdir(), 500 if a.quick else 2000)
            )
        if "spill" in a.scenarios:
            self.record(
                "spill", lambda: scenarios.spill(self.workdir(), 20_000 if a.quick else 200_000)
            )
        if "reads" in a.scenarios:
            n = 100_000 if a.quick else a.read_steps
            self.record("reads", lambda: scenarios.reads_and_forks(self.workdir(), n, 100, 3))
        if "readers" in a.scenarios:
            from bench.readers import readers

            # Interleaves its own repetitions: one history set-up serves them all.
            self.record(
                "readers",
                lambda: readers(
                    self.workdir(),
                    history_steps=20_000 if a.quick else a.reader_history_steps,
                    writer_rows=100_000 if a.quick else a.writer_rows,
                    repeats=a.repeats,
                    modes=("none", "http") if a.quick else tuple(a.reader_modes.split(",")),
                    alone_s=0.5 if a.quick else 1.0,
                ),
            )
        if "cluster" in a.scenarios:
            from bench.cluster import cluster

            # Interleaves its own repetitions around one clickhouse-server.
            self.record(
                "cluster",
                lambda: cluster(
                    self.workdir(),
                    live_steps=20_000 if a.quick else a.cluster_live_steps,
                    read_steps=100_000 if a.quick else a.cluster_read_steps,
                    scan_steps=20_000 if a.quick else a.cluster_scan_steps,
                    lag_rate=1000,
                    lag_seconds=3 if a.quick else a.cluster_lag_seconds,
                    repeats=a.repeats,
                ),
            )
        shutil.rmtree(self.tmp, ignore_errors=True)
        return {k: median_of(v) for k, v in self.raw.items()}


def targets(m: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, goal, met) for every target the issue names."""
    out: list[tuple[str, str, str, bool | None]] = []

    def add(
        name: str, value: float | None, goal: str, ok: Callable[[float], bool], fmt: str
    ) -> None:
        if value is None:
            out.append((name, "not measured", goal, None))
        else:
            out.append((name, fmt.format(value), goal, ok(value)))

    s = m.get("single/stepline")
    add("log() p50", s and s["log_p50_us"], "<= 2 us", lambda v: v <= 2, "{:.2f} us")
    add("log() p99", s and s["log_p99_us"], "<= 10 us", lambda v: v <= 10, "{:.2f} us")
    add("log() max", s and s["log_max_us"], "<= 2000 us", lambda v: v <= 2000, "{:.0f} us")
    for tool, goal in (("wandb", 30), ("trackio", 10)):
        p = m.get(f"single/{tool}")
        ratio = s["steps_per_s"] / p["steps_per_s"] if s and p else None
        add(f"single writer vs {tool}", ratio, f">= {goal}x", lambda v, g=goal: v >= g, "{:.1f}x")
    sp = m.get("spill")
    add(
        "log() p99, daemon down, spilling",
        sp and sp["log_p99_us"],
        "<= 10 us",
        lambda v: v <= 10,
        "{:.2f} us",
    )
    w4, c4 = m.get("writers/4"), m.get("ceiling/4")
    frac = w4["rows_per_s"] / c4["rows_per_s"] if w4 and c4 else None
    add("4 writers vs ceiling", frac, ">= 60%", lambda v: v >= 0.6, "{:.0%}")
    r = m.get("reads")
    add(
        "scan_history",
        r and r["scan_flat_rows_per_s"],
        ">= 500k rows/s",
        lambda v: v >= 5e5,
        "{:,.0f} rows/s",
    )
    add(
        "fork depth 100 vs none",
        r and r["scan_chain_vs_flat"],
        "within 10%",
        lambda v: v >= 0.9,
        "{:.0%} of flat",
    )
    add(
        "history(samples=1000)",
        r and r["history1000_flat_ms"],
        "<= 20 ms",
        lambda v: v <= 20,
        "{:.1f} ms",
    )
    rd = m.get("readers")
    add(
        "ingest with an HTTP reader",
        rd and rd.get("http_vs_none"),
        ">= 90% of none",
        lambda v: v >= 0.9,
        "{:.0%} of none",
    )
    add(
        "fork creation (round trip)",
        r and r["fork_init_ms"],
        "<= 1 ms",
        lambda v: v <= 1,
        "{:.2f} ms",
    )
    c = m.get("cluster")
    add(
        "replication, 1 node",
        c and c["live1_steps_per_s"],
        ">= 20k steps/s",
        lambda v: v >= 20_000,
        "{:,.0f} steps/s",
    )
    add(
        "replication lag p99",
        c and c["lag_lag_p99_s"],
        "<= 2 s",
        lambda v: v <= 2,
        "{:.2f} s",
    )
    add(
        "cluster history(1000)",
        c and c["cluster_history_ms"],
        "<= 100 ms",
        lambda v: v <= 100,
        "{:.0f} ms",
    )
    add(
        "cluster scan_history",
        c and c["cluster_scan_rows_per_s"],
        ">= 300k rows/s",
        lambda v: v >= 3e5,
        "{:,.0f} rows/s",
    )
    w16 = m.get("writers/16")
    add(
        "daemon RSS, 16 writers",
        w16 and w16["daemon_rss_mib"],
        "<= 150 MiB",
        lambda v: v <= 150,
        "{:.0f} MiB",
    )
    add(
        "  of which heap (anon)",
        w16 and w16["daemon_anon_mib"],
        "<= 150 MiB",
        lambda v: v <= 150,
        "{:.0f} MiB",
    )
    return out


def table(m: dict[str, Any]) -> str:
    lines = []
    singles = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("single/")}
    if singles:
        lines.append(
            f"{'single writer':<14}{'steps/s':>12}{'log p50 us':>12}{'p99 us':>10}{'max us':>10}{'vs stepline':>13}"
        )
        base = singles.get("stepline", {}).get("steps_per_s")
        for tool, v in sorted(singles.items(), key=lambda kv: -kv[1]["steps_per_s"]):
            rel = f"{base / v['steps_per_s']:.1f}x" if base and tool != "stepline" else ""
            lines.append(
                f"{tool:<14}{v['steps_per_s']:>12,.0f}{v['log_p50_us']:>12.2f}{v['log_p99_us']:>10.1f}{v['log_max_us']:>10.0f}{rel:>13}"
            )
    for kind in ("writers", "ceiling"):
        rows = [(k, v) for k, v in m.items() if k.startswith(kind + "/")]
        for k, v in sorted(rows, key=lambda kv: int(kv[0].split("/")[1])):
            extra = (
                f"  daemon RSS {v['daemon_rss_mib']:.0f} MiB (heap {v['daemon_anon_mib']:.0f},"
                f" LMDB map {v['daemon_mmap_mib']:.0f}), client RSS {v['client_rss_mib_max']:.0f} MiB"
                if kind == "writers"
                else ""
            )
            lines.append(f"{k:<14}{v['rows_per_s']:>12,.0f} rows/s{extra}")
    if "latency" in m:
        v = m["latency"]
        lines.append(
            f"ack latency at 1 row/ms: p50 {v['ack_p50_ms']:.2f} ms, p99 {v['ack_p99_ms']:.2f} ms, max {v['ack_max_ms']:.2f} ms"
        )
    if "spill" in m:
        v = m["spill"]
        lines.append(
            f"daemon down, {v['steps']:,} rows, {v['buffer_mib']:.0f} MiB buffer: "
            f"{v['spooled_mib']:.1f} MiB spilled; log() p50 {v['log_p50_us']:.2f} us, "
            f"p99 {v['log_p99_us']:.2f} us, max {v['log_max_us']:.0f} us; delivered in "
            f"{v['drain_s']:.1f}s once it was back"
        )
    if "reads" in m:
        v = m["reads"]
        lines.append(
            f"reads on {v['steps']:,} steps: scan {v['scan_flat_rows_per_s']:,.0f} rows/s flat, {v['scan_chain_rows_per_s']:,.0f} through a {v['depth']}-deep fork chain; history(1000) {v['history1000_flat_ms']:.1f} ms flat, {v['history1000_chain_ms']:.1f} ms chain, {v.get('history1000_first_after_start_ms', float('nan')):.1f} ms as the first read after a start"
        )
        lines.append(
            f"fork init {v['fork_init_ms']:.2f} ms vs new empty run {v['new_run_init_ms']:.2f} ms (both include one fsync'd commit)"
        )
    if "readers" in m:
        lines += readers_table(m["readers"])
    if "cluster" in m:
        lines += cluster_table(m["cluster"])
    lines.append("")
    lines.append(f"{'target':<28}{'measured':>20}  {'goal':<16}met")
    for name, value, goal, ok in targets(m):
        lines.append(
            f"{name:<28}{value:>20}  {goal:<16}{'-' if ok is None else ('yes' if ok else 'NO')}"
        )
    return "\n".join(lines)


def readers_table(v: dict[str, Any]) -> list[str]:
    """The readers scenario: ingest per reader mode, the reader's own figures, CPU."""
    lines = [
        f"4 writers x {v['rows'] // v['writers']:,} rows while a reader loops history"
        f"(samples={v['samples']}, keys=loss,acc) of a {v['history_steps']:,}-step run;"
        f" medians of {v['repeats']}, interleaved",
        f"  {'reader':<12}{'rows/s':>9}{'vs none':>9}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}"
        f"  cores: {'daemon':>6}{'2nd':>5}{'writers':>8}{'foreign':>8}   rows/s per rep",
    ]

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for mode in v["modes"]:
        ratio = v.get(f"{mode}_vs_none", 1.0 if mode == "none" else None)
        reps = " ".join(f"{x / 1000:,.0f}k" for x in v[f"{mode}_rows_per_s_reps"])
        lines.append(
            f"  {mode:<12}{v[f'{mode}_rows_per_s']:>9,.0f}{num(ratio, '.0%'):>9}"
            f"{num(v.get(f'{mode}_req_per_s'), '.1f'):>7}{num(v.get(f'{mode}_p50_ms'), '.1f'):>8}"
            f"{num(v.get(f'{mode}_p99_ms'), '.0f'):>8}         "
            f"{num(v.get(f'{mode}_daemon_cores'), '.2f'):>6}"
            f"{num(v.get(f'{mode}_daemon2_cores'), '.2f'):>5}"
            f"{num(v.get(f'{mode}_writers_cores'), '.2f'):>8}"
            f"{num(v.get(f'{mode}_foreign_cores'), '.2f'):>8}   {reps}"
        )
    alone = [
        f"{kind} p50 {v[f'alone_{kind}_p50_ms']:.1f} ms, {v[f'alone_{kind}_req_per_s']:.0f} req/s"
        for kind in ("http", "socket")
        if f"alone_{kind}_p50_ms" in v
    ]
    if alone:
        lines.append(f"  the reader alone, no writers: {'; '.join(alone)}")
    return lines


def cluster_table(v: dict[str, Any]) -> list[str]:
    """The cluster scenario: replication rates, lag, and reads node vs cluster."""
    per = f"{v['live_steps']:,}"
    scan = f"scan_history rows/s, first {v['scan_steps']:,}"

    def waited(what: str) -> str:
        return (
            f"{v[f'cluster_{what}_query_ms']:,.0f} ms"
            f" ({v[f'cluster_{what}_query_share']:.0%}), {v[f'cluster_{what}_queries']:.0f} queries,"
            f" {v[f'cluster_{what}_query_mib']:.1f} MiB received"
        )

    def cpu(prefix: str) -> str:
        return (
            f"daemon {v[f'{prefix}daemon_us_per_step']:.0f} us/step"
            f" ({v[f'{prefix}daemon_cores']:.2f} cores),"
            f" ClickHouse {v[f'{prefix}clickhouse_us_per_step']:.0f} us/step"
            f" ({v[f'{prefix}clickhouse_cores']:.2f}), others {v[f'{prefix}foreign_cores']:.2f}"
        )

    return [
        f"cluster: ClickHouse {v['clickhouse']}, 10 floats a step, medians of {v['repeats']}",
        f"  {'replication':<30}{'steps/s':>10}  CPU over the window",
        f"  {'live, 1 node x ' + per:<30}{v['live1_steps_per_s']:>10,.0f}  {cpu('live1_')};"
        f" logged at {v['live1_logged_per_s']:,.0f}/s, shipped {v['live1_tail_s']:.1f}s after",
        f"  {'live, 2 nodes x ' + per:<30}{v['live2_steps_per_s']:>10,.0f}  {cpu('live2_')};"
        f" logged at {v['live2_logged_per_s']:,.0f}/s, shipped {v['live2_tail_s']:.1f}s after",
        f"  {'backlog, 1 node x ' + format(v['steps'], ','):<30}{v['backlog_steps_per_s']:>10,.0f}"
        f"  {cpu('backlog_')} (once)",
        f"  lag at {v['lag_rate']:,.0f} steps/s for {v['lag_seconds']:.0f}s, log() to visible in"
        f" ClickHouse: p50 {v['lag_lag_p50_s']:.2f} s, p99 {v['lag_lag_p99_s']:.2f} s,"
        f" max {v['lag_lag_max_s']:.2f} s (polled every 50 ms)",
        f"  reads of the {v['steps']:,}-step run ({v['parts']} parts)"
        f"{'node':>14}{'cluster':>10}  the cluster's calls in ClickHouse queries",
        f"  {'history(samples=1000) ms':<44}{v['node_history_ms']:>8.1f}"
        f"{v['cluster_history_ms']:>10.1f}  {waited('history')}",
        f"  {scan:<44}{v['node_scan_rows_per_s']:>8,.0f}"
        f"{v['cluster_scan_rows_per_s']:>10,.0f}  {waited('scan')}",
    ]


def plots(m: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots")
        return []
    made = []
    singles = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("single/")}
    if singles:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        tools = sorted(singles, key=lambda t: -singles[t]["steps_per_s"])
        ax1.bar(tools, [singles[t]["steps_per_s"] for t in tools], color="tab:blue")
        ax1.set_yscale("log")
        ax1.set_title("single writer, durable steps/s (log scale)")
        x = range(len(tools))
        for i, (q, c) in enumerate((("log_p50_us", "tab:green"), ("log_p99_us", "tab:orange"))):
            ax2.bar(
                [j + i * 0.4 for j in x],
                [singles[t][q] for t in tools],
                width=0.4,
                label=q,
                color=c,
            )
        ax2.set_xticks([j + 0.2 for j in x], tools)
        ax2.set_yscale("log")
        ax2.set_title("log() cost on the caller's thread (us, log scale)")
        ax2.legend()
        fig.tight_layout()
        p = out / "single.png"
        fig.savefig(p, dpi=90)
        made.append(p)
    ws = sorted(
        (int(k.split("/")[1]), v["rows_per_s"]) for k, v in m.items() if k.startswith("writers/")
    )
    cs = sorted(
        (int(k.split("/")[1]), v["rows_per_s"]) for k, v in m.items() if k.startswith("ceiling/")
    )
    if ws:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([w for w, _ in ws], [r for _, r in ws], "o-", label="stepline")
        if cs:
            ax.plot([w for w, _ in cs], [r for _, r in cs], "s--", label="ceiling pipe")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("writer processes")
        ax.set_ylabel("durable rows/s")
        ax.legend()
        ax.set_title("ingest throughput")
        fig.tight_layout()
        p = out / "writers.png"
        fig.savefig(p, dpi=90)
        made.append(p)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--peers", action="store_true", help="also run W&B offline, trackio, MLflow")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100_000, help="single-writer steps")
    ap.add_argument("--writer-rows", type=int, default=400_000)
    ap.add_argument("--read-steps", type=int, default=1_000_000)
    ap.add_argument(
        "--reader-history-steps",
        type=int,
        default=200_000,
        help="steps of the run the readers scenario charts",
    )
    ap.add_argument(
        "--reader-modes",
        default="none,http,socket,http_apart",
        help="readers scenario modes, of none,http,socket,http_apart (see bench/readers.py)",
    )
    ap.add_argument(
        "--cluster-live-steps",
        type=int,
        default=100_000,
        help="cluster scenario: steps each node's writer logs while replicating",
    )
    ap.add_argument(
        "--cluster-read-steps",
        type=int,
        default=1_000_000,
        help="cluster scenario: steps of the backlog shipped, then read from node and cluster",
    )
    ap.add_argument(
        "--cluster-scan-steps",
        type=int,
        default=200_000,
        help="cluster scenario: rows each scan_history reads (the start of that run)",
    )
    ap.add_argument(
        "--cluster-lag-seconds",
        type=float,
        default=21.0,
        help="cluster scenario: seconds at 1,000 steps/s, split over the repetitions",
    )
    ap.add_argument(
        "--scenarios",
        default="single,writers,ceiling,latency,spill,reads,readers",
        help="comma-separated; also: cluster (needs clickhouse-server)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.scenarios = set(args.scenarios.split(","))
    started = time.time()
    m = Harness(args).run()
    text = table(m)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, {platform.platform()}",
        "python": platform.python_version(),
        "stepline": stepline.__version__,
        "repeats": args.repeats,
        "medians": m,
        "targets": [
            dict(zip(("target", "measured", "goal", "met"), t, strict=True)) for t in targets(m)
        ],
    }
    (args.out / "bench.json").write_text(json.dumps(doc, indent=2))
    if "cluster" in m:
        # Kept beside bench.json, which any later run of other scenarios replaces.
        mine = {
            **doc,
            "medians": {"cluster": m["cluster"]},
            "targets": [t for t in doc["targets"] if t["target"] in CLUSTER_TARGETS],
        }
        (args.out / "cluster.json").write_text(json.dumps(mine, indent=2))
        print(f"wrote {args.out / 'cluster.json'}")
    (args.out / "bench.txt").write_text(text + "\n")
    for p in plots(m, args.out):
        print(f"wrote {p}")
    print(f"wrote {args.out / 'bench.json'} in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
