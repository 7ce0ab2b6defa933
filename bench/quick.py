"""A quick single-writer measurement: steps/s to durable, and log() cost on the caller.

    python -m bench.quick [--steps N] [--repeats R]

Starts its own daemon on a temporary dir. The workload is the comparison one of
the benchmark issue: one run, each step a dict of 10 floats that change every
step, one ``log(..., step=i)`` per step, timed from ``init`` to the end of
``finish`` (everything durable). Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import stepline
from stepline.channel import listening


def one_run(sock: Path, steps: int) -> dict[str, float]:
    costs = [0] * steps
    now = time.perf_counter_ns
    t0 = time.perf_counter()
    run = stepline.init(project="bench", socket=str(sock))
    for i in range(steps):
        x = float(i)
        row = {f"m{k}": x + k for k in range(10)}
        a = now()
        run.log(row, step=i)
        costs[i] = now() - a
    run.finish()
    elapsed = time.perf_counter() - t0
    costs.sort()
    return {
        "steps_per_s": steps / elapsed,
        "log_p50_us": costs[len(costs) // 2] / 1000,
        "log_p99_us": costs[int(len(costs) * 0.99)] / 1000,
        "log_max_us": costs[-1] / 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="slb-", dir="/tmp"))
    sock = tmp / "s.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stepline_daemon",
            "--data-dir",
            str(tmp / "data"),
            "--socket",
            str(sock),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not listening(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("daemon did not start")
            time.sleep(0.01)
        results = [one_run(sock, args.steps) for _ in range(args.repeats)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    med: dict[str, Any] = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"stepline single writer, {args.steps} steps x {args.repeats} runs (medians)")
    print(f"{'metric':<14}{'median':>14}")
    for k, v in med.items():
        print(f"{k:<14}{v:>14.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    doc = {
        "bench": "quick",
        "steps": args.steps,
        "repeats": args.repeats,
        "median": med,
        "runs": results,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "quick.json").write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
