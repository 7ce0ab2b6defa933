"""Read requests: each takes a read transaction and a request map, returns a result.

Run in the read pool, never on the event loop. Every parameter is checked here,
so a bad request is a :class:`RequestError` naming the parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import lmdb
import msgpack

from stepline import protocol
from stepline.errors import RequestError, RunNotFound
from stepline.rows import STEP_MAX
from stepline_daemon.store import Record, Store, hkey_step

# One scan page is bounded so a single request cannot build an unbounded reply.
MAX_PAGE = 100_000
MAX_SAMPLES = 100_000
# A scan page ends early past this many bytes of stored rows, well inside the
# protocol's frame limit (JSON-ish overhead on top of msgpack is small).
MAX_PAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Prebuilt:
    """A reply whose frame the read thread builds itself, given the request id."""

    frame: Callable[[Any], bytes]
    next_step: int | None = None  # for scans: where the next page starts

    def decoded(self) -> Any:
        """The result as a client would decode it (for in-process callers and tests)."""
        return msgpack.unpackb(self.frame(0)[protocol.HEADER_SIZE :], raw=False)["result"]


def result_of(result: Any) -> Any:
    """A read's result as plain data, whether it was prebuilt or not."""
    return result.decoded() if isinstance(result, Prebuilt) else result


def _int(msg: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = msg.get(name, default)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise RequestError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _keys(msg: dict[str, Any]) -> list[str] | None:
    keys = msg.get("keys")
    if keys is None:
        return None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise RequestError("keys must be a list of strings")
    return keys


def _select(packed: bytes, step: int, keys: list[str] | None) -> dict[str, Any] | None:
    """The row as users see it, or None when it lacks one of ``keys`` (W&B rule)."""
    values: dict[str, Any] = msgpack.unpackb(packed, raw=False)
    if keys is None:
        row = {"_step": step}
        row.update(values)
        return row
    out: dict[str, Any] = {"_step": step}
    for k in keys:
        if k == "_step":
            continue
        if k not in values:
            return None
        out[k] = values[k]
    return out


def _target(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Record:
    """The run a read names: by id (its current timeline), or by ``run_no``.

    ``run_no`` reaches timelines a rewind archived, which no id names any more.
    """
    run_no = msg.get("run_no")
    if run_no is None:
        return store.find(txn, msg.get("project"), msg.get("id"))
    if type(run_no) is not int:
        raise RequestError(f"run_no must be an integer, got {run_no!r}")
    rec = store.record(txn, run_no)
    if rec["project"] != msg.get("project"):
        raise RunNotFound(f"no timeline {run_no} in project {msg.get('project')!r}")
    return rec


def runs(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    if msg.get("project") is None:
        return {"projects": store.projects(txn)}
    return {"runs": store.list_runs(txn, msg.get("project"))}


def info(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    return store.describe(txn, _target(store, txn, msg), full=True)


def scan(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    """One page of exact, fork-resolved history; ``next`` is where the next page starts."""
    rec = _target(store, txn, msg)
    keys = _keys(msg)
    min_step = _int(msg, "min_step", 0, 0, STEP_MAX)
    assert min_step is not None
    max_step = _int(msg, "max_step", None, 0, STEP_MAX + 1)
    limit = _int(msg, "limit", 1000, 1, MAX_PAGE)
    assert limit is not None
    segs = store.segments(txn, rec, bool(msg.get("include_parent", True)))
    if keys is None:
        # Whole rows: spliced into the reply as stored, never decoded here.
        parts, count, nxt = store.scan_parts(txn, segs, min_step, max_step, limit, MAX_PAGE_BYTES)
        return Prebuilt(lambda rid: protocol.encode_rows_result(rid, parts, count, nxt), nxt)
    rows: list[dict[str, Any]] = []
    next_step = None
    size = 0
    for step, packed in store.iter_rows(txn, segs, min_step, max_step):
        if len(rows) == limit or size > MAX_PAGE_BYTES:
            next_step = step
            break
        size += len(packed)
        if (row := _select(packed, step, keys)) is not None:
            rows.append(row)
    return {"rows": rows, "next": next_step}


def history(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    """A deterministic downsample: evenly spaced rows, always the first and the last."""
    rec = _target(store, txn, msg)
    keys = _keys(msg)
    min_step = _int(msg, "min_step", 0, 0, STEP_MAX) or 0
    max_step = _int(msg, "max_step", None, 0, STEP_MAX + 1)
    samples = _int(msg, "samples", 500, 2, MAX_SAMPLES)
    assert samples is not None
    segs = store.segments(txn, rec, bool(msg.get("include_parent", True)))
    if keys is None:
        # Seek to evenly spaced steps; only when that cannot stand for index
        # sampling, walk the keys (never the values) and pick by index.
        picked = store.sample_keys(txn, segs, min_step, max_step, samples)
        if picked is None:
            keys_in_view = list(store.iter_keys(txn, segs, min_step, max_step))
            picked = [keys_in_view[i] for i in _pick(len(keys_in_view), samples)]
        rows = []
        for key in picked:
            row = _select(cast(bytes, txn.get(key, db=store.history)), hkey_step(key), None)
            assert row is not None
            rows.append(row)
        return {"rows": rows}
    full = [
        r
        for step, packed in store.iter_rows(txn, segs, min_step, max_step)
        if (r := _select(packed, step, keys)) is not None
    ]
    return {"rows": [full[i] for i in _pick(len(full), samples)]}


def _pick(n: int, samples: int) -> list[int]:
    if n <= samples:
        return list(range(n))
    # Evenly spaced indices from 0 to n-1 inclusive; integer arithmetic keeps it
    # deterministic across machines.
    return [i * (n - 1) // (samples - 1) for i in range(samples)]


READS = {"runs": runs, "info": info, "scan": scan, "history": history}
