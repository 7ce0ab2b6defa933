"""The comparison workload's rows, built the same cheap way for every tool.

Each step is a dict of 10 floats whose values change every step. The rows are
made by a dict display compiled once, so building them costs well under a
microsecond and the measurement is of the logger, not of the harness. Peer
workloads copy this file's logic (they run in their own virtualenvs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

N_METRICS = 10


def row_maker(n: int = N_METRICS) -> Callable[[int], dict[str, Any]]:
    body = ", ".join(f"'m{k}': x + {k}.5" for k in range(n))
    make: Callable[[float], dict[str, Any]] = eval(
        f"lambda x: {{{body}}}"
    )  # a fixed text, not input
    return lambda i: make(i * 0.001)
