"""A well-behaved client that logs steadily while the fuzzer attacks the daemon.

``python -m tests.gauntlet.fuzz_steady SOCKET PROJECT RUN_ID`` starts a run,
prints one JSON line ``{"ready": true, "run_no": RUN_NO}``, then logs rows of
``{"i": step, "x": step / 2}`` in small batches, timing every ``flush()``
(the round trip until the daemon has committed and acknowledged them), until
its standard input closes. It then finishes the run and prints one JSON line
with what it logged, what the daemon acknowledged and each flush's duration.

A separate process, so the fuzzer's own Python work cannot stand in the way of
its sender thread: what the latencies show is the daemon's doing.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import stepline

BATCH = 20  # rows per flush
PACE = 0.002  # seconds between batches: a few thousand rows a second
FLUSH_TIMEOUT = 60.0


def main(argv: list[str]) -> int:
    socket, project, run_id = argv
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the test closed our stdin
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    run = stepline.init(project=project, id=run_id, socket=socket, autostart=False, timeout=30)
    print(json.dumps({"ready": True, "run_no": run._run_no}), flush=True)
    step = acked = 0
    flush_s: list[float] = []
    while True:
        for _ in range(BATCH):
            run.log({"i": step, "x": step / 2})
            step += 1
        began = time.perf_counter()
        run.flush(timeout=FLUSH_TIMEOUT)  # raises Timeout: the test sees a failure
        flush_s.append(time.perf_counter() - began)
        acked = step
        # Pacing between batches, and the stop condition: returns at once when set.
        if stop.wait(PACE):
            break
    run.finish(timeout=FLUSH_TIMEOUT)
    print(json.dumps({"logged": step, "acked": acked, "flush_s": flush_s}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
