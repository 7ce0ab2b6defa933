"""Inputs that trigger a product bug still open, for the fuzzers to step around.

Each entry is pinned by a strict-xfail ``test_known_bug_*`` in ``test_fuzz.py``:
when the bug is fixed that test passes, strict xfail turns the pass into a
failure, and the fix is finished by deleting the entry here and the xfail mark.
Until then the random tests skip these inputs (and count them), so they keep
looking for new bugs instead of finding the same one on every run.
"""

from __future__ import annotations

from typing import Any

# Read ops that look a run up by ``run_no`` (LmdbReads.target).
RUN_NO_READS = frozenset({"info", "scan", "page", "history", "state", "keys"})

# Deeper than this, a config or summary value cannot be rendered as JSON by the
# HTTP API (Python's json recursion limit, less the reply's own nesting).
JSON_DEPTH = 900


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def json_renderable(value: Any, depth: int = 0) -> bool:
    """Whether the daemon's JSON renderer (render.dumps) can write ``value``."""
    if depth > JSON_DEPTH:
        return False
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) is list:
        return all(json_renderable(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(
            (k is None or type(k) in (bool, int, float, str)) and json_renderable(v, depth + 1)
            for k, v in value.items()
        )
    return False  # bytes, msgpack ExtType and Timestamp


def known_bug(msg: Any) -> str | None:
    """The name of an open bug ``msg`` would trigger in the daemon, or None.

    Every bug the fuzzers found is fixed (``test_known_bug_*`` pin the fixes);
    add a rule here, with its pinned test, when a new one turns up.
    """
    return None
