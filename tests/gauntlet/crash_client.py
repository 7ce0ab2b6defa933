"""A training process for the crash tests: logs through the real ``stepline`` client.

``python crash_client.py SOCKET PROJECT RUN_ID WORKDIR RATE``

Logs ``{"i": i, "x": i / 7}`` at steps 0, 1, 2, ... at about RATE rows a second,
until ``WORKDIR/stop`` exists. A reporter thread calls ``run.flush(timeout=...)``
over and over; each time it returns, every row logged before the call is
acknowledged, and the thread appends the last such step to ``WORKDIR/acked``
(one line each). Then it flushes everything, finishes the run (a finish that
is not acknowledged is an error) and writes ``WORKDIR/result.json``.

A crash test may instead SIGKILL the process at any moment: ``acked`` then
holds what the client knew to be durable.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from pathlib import Path

import stepline

BURST = 50  # rows logged between looks at the clock and the stop file
FLUSH_TIMEOUT = 1.0  # while the daemon is down a flush times out; the reporter retries
FINAL_TIMEOUT = 120.0


def main() -> int:
    socket, project, run_id, workdir, rate = sys.argv[1:6]
    work = Path(workdir)
    stop_file, acked_file = work / "stop", work / "acked"
    per_second = float(rate)
    run = stepline.init(project=project, id=run_id, socket=socket, timeout=60)
    logged = 0  # rows 0 .. logged-1 have been handed to log()
    errors: list[str] = []
    stopping = threading.Event()

    def report() -> None:
        with acked_file.open("a") as out:
            while not stopping.is_set():
                upto = logged  # read before flush(): these rows were queued before it
                try:
                    run.flush(timeout=FLUSH_TIMEOUT)
                except (stepline.Timeout, stepline.DaemonUnavailable):
                    continue  # the daemon is down or restarting; the rows are kept
                except stepline.Error as exc:  # a refused batch: the test fails on it
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if upto:
                    out.write(f"{upto - 1}\n")
                    out.flush()

    reporter = threading.Thread(target=report, name="acked-reporter")
    reporter.start()
    began = time.monotonic()
    while not stop_file.exists():
        for _ in range(BURST):
            run.log({"i": logged, "x": logged / 7})
            logged += 1
        ahead = logged / per_second - (time.monotonic() - began)
        if ahead > 0:
            time.sleep(ahead)  # pacing the training loop to RATE, not waiting on anything
    stopping.set()
    reporter.join()
    run.flush(timeout=FINAL_TIMEOUT)  # raises unless every row is acknowledged
    with acked_file.open("a") as out:
        out.write(f"{logged - 1}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # finish() warns if not acknowledged
        run.finish(timeout=FINAL_TIMEOUT)
    (work / "result.json").write_text(json.dumps({"logged": logged, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
