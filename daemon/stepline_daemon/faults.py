"""Crash points for the restart tests: the daemon SIGKILLs itself at a named
point of a named request, so a test loses a reply exactly where it means to.

* ``receive:OP``: on reading an ``OP`` request, before anything of it is done
  (a request in flight when the daemon dies);
* ``reply:OP``: once an ``OP`` request is done (a write committed and synced, a
  backup written) and before its reply is sent (a reply lost to a crash).

Switched on only by the environment variable named below, for test suites. It
is not a setting: no flag, no ``Settings`` field and no documentation leads to
it, and its name says so. Read once, at start-up.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping

log = logging.getLogger("stepline.faults")

ENV = "STEPLINE_TESTS_ONLY_CRASH_AT"
POINTS = frozenset({"receive", "reply"})


class CrashPoints:
    """Where to die; empty (and free) unless the test-only variable is set."""

    def __init__(self, spec: str = "") -> None:
        points = set()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, op = item.partition(":")
            if point not in POINTS or not op:
                raise ValueError(f"{ENV}: {item!r} is not POINT:OP with POINT in {sorted(POINTS)}")
            points.add((point, op))
        self._at: frozenset[tuple[str, str]] = frozenset(points)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CrashPoints:
        return cls(env.get(ENV, ""))

    def __bool__(self) -> bool:
        return bool(self._at)

    def reached(self, point: str, op: str) -> None:
        if (point, op) in self._at:
            log.critical("test-only crash point %s:%s reached (%s is set): SIGKILL", point, op, ENV)
            os.kill(os.getpid(), signal.SIGKILL)
