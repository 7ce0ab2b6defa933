"""The daemon's counters, and their Prometheus text rendering (``GET /metrics``).

The writer thread updates them; the loop reads them for ``/metrics``, ``status``
and systemd's ``STATUS=``. Plain ints under the GIL: a reader may see a commit
half counted, never a corrupt number, which is all monitoring needs.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Mapping

# Commit latency buckets in seconds (an fsync'd commit is ~0.1-10 ms here).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.rows = 0
        self.batches = 0
        self.commits = 0
        self.commit_seconds = 0.0
        self.commit_buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.errors: Counter[str] = Counter()
        # Throughput over the last reporting interval, for STATUS= lines.
        self._mark = (time.monotonic(), 0)

    def committed(self, seconds: float, rows: int, batches: int) -> None:
        self.commits += 1
        self.commit_seconds += seconds
        self.commit_buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.rows += rows
        self.batches += batches

    def refused(self, code: str) -> None:
        self.errors[code] += 1

    def rate(self) -> float:
        """Rows per second since the last call."""
        now, rows = time.monotonic(), self.rows
        then, before = self._mark
        self._mark = (now, rows)
        return (rows - before) / (now - then) if now > then else 0.0

    def render(self, gauges: Mapping[str, tuple[str, float]]) -> str:
        """Prometheus text format 0.0.4; ``gauges``: name -> (help, value)."""
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, lines: list[str]) -> None:
            out.append(f"# HELP stepline_{name} {help_}")
            out.append(f"# TYPE stepline_{name} {kind}")
            out.extend(lines)

        metric("rows_total", "counter", "Rows committed.", [f"stepline_rows_total {self.rows}"])
        metric(
            "batches_total",
            "counter",
            "Write requests committed (log batches, config, finish, ...).",
            [f"stepline_batches_total {self.batches}"],
        )
        cumulative, lines = 0, []
        for bound, count in zip((*BUCKETS, None), self.commit_buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound is None else repr(bound)
            lines.append(f'stepline_commit_seconds_bucket{{le="{le}"}} {cumulative}')
        lines.append(f"stepline_commit_seconds_sum {self.commit_seconds!r}")
        lines.append(f"stepline_commit_seconds_count {self.commits}")
        metric("commit_seconds", "histogram", "Write transaction time, fsync included.", lines)
        metric(
            "errors_total",
            "counter",
            "Requests refused or failed, by error code.",
            [f'stepline_errors_total{{code="{c}"}} {n}' for c, n in sorted(self.errors.items())],
        )
        for name, (help_, value) in gauges.items():
            metric(name, "gauge", help_, [f"stepline_{name} {value!r}"])
        return "\n".join(out) + "\n"
