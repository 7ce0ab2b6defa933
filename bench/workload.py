"""stepline's side of the single-writer comparison, run as its own process.

    python -m bench.workload --steps S --socket PATH --out FILE.json

Same shape as the peers' workload: init, S x ``log(row, step=i)`` with
``perf_counter_ns`` around each call, finish (durable), then the row count read
back through stepline's own read path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import stepline
from bench.rowmaker import row_maker


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] / 1000


def run(steps: int, socket: str, project: str = "bench") -> dict[str, Any]:
    make = row_maker()
    rows = [make(i) for i in range(steps)]  # built before timing, as in the peers
    costs = [0] * steps
    now = time.perf_counter_ns
    t0 = time.perf_counter()
    r = stepline.init(project=project, socket=socket)
    log = r.log
    for i in range(steps):
        row = rows[i]
        a = now()
        log(row, step=i)
        costs[i] = now() - a
    r.finish(timeout=600)
    elapsed = time.perf_counter() - t0
    read = sum(
        1
        for _ in stepline.Api(socket=socket)
        .run(f"{project}/{r.id}")
        .scan_history(keys=["m0"], page_size=10_000)
    )
    if read != steps:
        raise SystemExit(f"stepline: read back {read} rows, logged {steps}")
    costs.sort()
    return {
        "tool": "stepline",
        "version": stepline.__version__,
        "steps": steps,
        "elapsed_s": elapsed,
        "steps_per_s": steps / elapsed,
        "log_p50_us": percentile(costs, 0.50),
        "log_p99_us": percentile(costs, 0.99),
        "log_max_us": costs[-1] / 1000,
        "rows_read_back": read,
        "notes": "durable: finish() returns after the daemon's fsync'd acks",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    Path(args.out).write_text(json.dumps(run(args.steps, args.socket)))


if __name__ == "__main__":
    main()
