"""The comparison workload, run by a peer tracker with that tool's own defaults.

    python workload.py --tool {wandb,trackio,mlflow} --steps S --workdir DIR --out FILE.json

Run it with the PEER's interpreter (a virtualenv made by ``bench.peers.venvs``): it
imports nothing from stepline, only the standard library and the one tool under test.

The workload is the one of bench/quick.py: one run, each step a dict of 10 floats
(``m0``..``m9``) that change every step, one log call per step with ``step=i``,
then finish. ``elapsed_s`` runs from the tool's init to the end of its finish, the
point where the tool says everything is written; ``perf_counter_ns`` is read around
each log call only. One-time process setup that stepline does in its already
running daemon is done before the clock starts and reported as ``setup_s``: W&B's
service process (``wandb.setup()``) and MLflow's schema creation on a fresh SQLite
file. Importing the tool is never timed.

After finish, every row is read back through the tool's own read path and checked
(count, steps 0..S-1, ``m0`` equal to what was logged); any mismatch exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

TOOLS = ("wandb", "trackio", "mlflow")
PROJECT = "stepline-bench"


def drive(log: Callable[..., Any], steps: int) -> list[int]:
    """Log ``steps`` rows through ``log(row, step=i)``; the cost of each call, in ns."""
    costs = [0] * steps
    now = time.perf_counter_ns
    for i in range(steps):
        x = float(i)
        row = {f"m{k}": x + k for k in range(10)}
        a = now()
        log(row, step=i)
        costs[i] = now() - a
    return costs


def run_wandb(steps: int, workdir: Path) -> dict[str, Any]:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    s0 = time.perf_counter()
    wandb.setup()  # starts the wandb-core service process that every run talks to
    t0 = time.perf_counter()
    run = wandb.init(project=PROJECT, dir=str(workdir))
    t1 = time.perf_counter()
    costs = drive(run.log, steps)
    t2 = time.perf_counter()
    run.finish()
    t3 = time.perf_counter()

    # Read back with wandb-core's own reader of the .wandb transaction log.
    logs = sorted(workdir.glob(f"wandb/offline-run-*-{run.id}/run-{run.id}.wandb"))
    if len(logs) != 1:
        fail(f"wandb: expected one transaction log for run {run.id}, found {logs}")
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(logs[0])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        fail(f"wandb: {' '.join(cmd)} exited {out.returncode}: {out.stderr[-2000:]}")
    pairs = []
    exited = False
    for line in out.stdout.splitlines():
        rec = json.loads(line)
        if rec.get("type") == "history":
            item = rec["history"]["item"]
            pairs.append((item["_step"], item["m0"]))
        exited = exited or rec.get("type") == "exit"
    if not exited:
        fail("wandb: no exit record in the transaction log after run.finish()")
    t4 = time.perf_counter()
    return {
        "setup_s": t0 - s0,
        "timings": (t0, t1, t2, t3, t4),
        "costs": costs,
        "pairs": pairs,
        "notes": (
            "wandb offline (WANDB_MODE=offline), defaults: log() hands each row to the "
            "wandb-core service process, finish() waits until it has written the .wandb "
            "transaction log (system-metrics sampling and console capture left on); that "
            "file is written but never fsynced (strace), so it survives a process crash, "
            "not a power cut. "
            "Service started before the clock by wandb.setup() (setup_s). "
            "Read back: `wandb leet inspect --json` (wandb-core's reader), history records."
        ),
    }


def run_trackio(steps: int, workdir: Path) -> dict[str, Any]:
    # trackio reads TRACKIO_DIR once, at import.
    data = workdir / "trackio"
    os.environ["TRACKIO_DIR"] = str(data)
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    t0 = time.perf_counter()
    run = trackio.init(project=PROJECT)
    t1 = time.perf_counter()
    costs = drive(trackio.log, steps)
    t2 = time.perf_counter()
    trackio.finish()
    t3 = time.perf_counter()

    # Read back through trackio's storage layer (what its dashboard and API use).
    logs = SQLiteStorage.get_logs(PROJECT, run=run.name, run_id=run.id)
    pairs = [(r["step"], r["m0"]) for r in logs]
    t4 = time.perf_counter()
    return {
        "setup_s": 0.0,
        "timings": (t0, t1, t2, t3, t4),
        "costs": costs,
        "pairs": pairs,
        "notes": (
            f"trackio local (TRACKIO_DIR={data}), defaults: log() queues the row, a "
            "background thread batches rows into the project's SQLite file (WAL, "
            "synchronous=NORMAL: the WAL is fsynced at checkpoints only), finish() joins "
            "that thread. "
            "Read back: trackio.sqlite_storage.SQLiteStorage.get_logs."
        ),
    }


def run_mlflow(steps: int, workdir: Path) -> dict[str, Any]:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    s0 = time.perf_counter()
    MlflowClient().search_experiments(max_results=1)  # creates the schema in the new file
    t0 = time.perf_counter()
    run = mlflow.start_run()
    t1 = time.perf_counter()
    costs = drive(mlflow.log_metrics, steps)
    t2 = time.perf_counter()
    mlflow.end_run()
    t3 = time.perf_counter()

    history = MlflowClient().get_metric_history(run.info.run_id, "m0")
    pairs = [(m.step, m.value) for m in history]
    t4 = time.perf_counter()
    return {
        "setup_s": t0 - s0,
        "timings": (t0, t1, t2, t3, t4),
        "costs": costs,
        "pairs": pairs,
        "notes": (
            "mlflow: synchronous logging, the default (MLFLOW_ENABLE_ASYNC_LOGGING off): "
            "each log_metrics() is one committed transaction on the SQLite tracking store "
            "(SQLite's default rollback journal, synchronous=FULL: about 9 fdatasync per "
            "call under strace). Schema creation on the fresh file done before the clock "
            "(setup_s). At ~6 ms a call the harness may give MLflow a smaller S than the "
            "others (bench.peers.DEFAULT_STEPS): compare per-step figures, not totals. "
            "Read back: MlflowClient().get_metric_history(run_id, 'm0')."
        ),
    }


RUNNERS: dict[str, Callable[[int, Path], dict[str, Any]]] = {
    "wandb": run_wandb,
    "trackio": run_trackio,
    "mlflow": run_mlflow,
}


def fail(msg: str) -> None:
    sys.stderr.write(f"workload: {msg}\n")
    raise SystemExit(1)


def check_read_back(tool: str, steps: int, pairs: list[tuple[int, float]]) -> None:
    """Every step 0..S-1 exactly once, with the m0 that was logged for it."""
    if len(pairs) != steps:
        fail(f"{tool}: read back {len(pairs)} rows, logged {steps}")
    seen = sorted((int(s), float(v)) for s, v in pairs)
    for i, (s, v) in enumerate(seen):
        if s != i or v != float(i):
            fail(f"{tool}: row {i} read back as step={s} m0={v}, logged step={i} m0={float(i)}")


def summarize(tool: str, steps: int, res: dict[str, Any]) -> dict[str, Any]:
    t0, t1, t2, t3, t4 = res["timings"]
    costs = sorted(res["costs"])
    elapsed = t3 - t0
    return {
        "tool": tool,
        "version": version(tool),
        "steps": steps,
        "elapsed_s": elapsed,
        "steps_per_s": steps / elapsed,
        "log_p50_us": costs[len(costs) // 2] / 1000,
        "log_p99_us": costs[int(len(costs) * 0.99)] / 1000,
        "log_max_us": costs[-1] / 1000,
        "rows_read_back": len(res["pairs"]),
        "setup_s": res["setup_s"],
        "init_s": t1 - t0,
        "log_loop_s": t2 - t1,
        "finish_s": t3 - t2,
        "read_back_s": t4 - t3,
        "python": sys.version.split()[0],
        "notes": res["notes"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tool", required=True, choices=TOOLS)
    ap.add_argument("--steps", required=True, type=int)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    res = RUNNERS[args.tool](args.steps, workdir)
    check_read_back(args.tool, args.steps, res["pairs"])
    doc = summarize(args.tool, args.steps, res)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
