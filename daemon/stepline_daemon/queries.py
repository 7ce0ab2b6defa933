"""Read requests: each takes a read transaction and a request map, returns a result.

Run in the read pool, never on the event loop. Every parameter is checked here,
so a bad request is a :class:`RequestError` naming the parameter.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import lmdb
import msgpack

from stepline import protocol
from stepline.errors import RequestError, RunNotFound
from stepline.rows import STEP_MAX
from stepline_daemon.store import Record, Segment, Store, check_project, hkey_step

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
    value = msg.get(name)
    if value is None:  # absent, or nil: the default
        return default
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


def _select(
    packed: bytes, step: int, keys: list[str] | None, require_all: bool = True
) -> dict[str, Any] | None:
    """The row as users see it, or None when it does not qualify.

    With ``require_all`` (W&B's rule for keyed history) a row must hold every
    key; otherwise (charts) any one of them.
    """
    values: dict[str, Any] = msgpack.unpackb(packed, raw=False)
    if keys is None:
        row = {"_step": step}
        row.update(values)
        return row
    out: dict[str, Any] = {"_step": step}
    wanted = found = 0
    for k in keys:
        if k == "_step":
            continue
        wanted += 1
        if k in values:
            out[k] = values[k]
            found += 1
        elif require_all:
            return None
    return out if found or not wanted else None


def _target(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Record:
    """The run a read names: by id (its current timeline), or by ``run_no``.

    ``run_no`` reaches timelines a rewind archived, which no id names any more.
    """
    run_no = msg.get("run_no")
    if run_no is None:
        return store.find(txn, msg.get("project"), msg.get("id"))
    if type(run_no) is not int or not 0 <= run_no < 1 << 64:
        raise RequestError(f"run_no must be an integer in [0, 2**64), got {run_no!r}")
    rec = store.record(txn, run_no)
    if rec["project"] != msg.get("project") or rec.get("deleted"):
        raise RunNotFound(f"no timeline {run_no} in project {msg.get('project')!r}")
    return rec


def runs(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    return {"runs": store.list_runs(txn, msg.get("project"))}


def projects(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    """Each project with its run count and latest update (one pass over the runs)."""
    return {"projects": store.project_summaries(txn)}


def _project(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> str:
    """A project that holds at least one run, or RunNotFound."""
    project = check_project(msg.get("project"))
    if not store.project_exists(txn, project):
        raise RunNotFound(f"project {project!r} does not exist")
    return project


def project_runs(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    project = _project(store, txn, msg)
    return {"project": project, "runs": store.list_runs(txn, project)}


def tree(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    """Every timeline of a project with its parent pointer: the fork forest."""
    return {"nodes": store.timelines(txn, _project(store, txn, msg))}


def info(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    return store.describe(txn, _target(store, txn, msg), full=True)


def state(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    """What a live view polls: cheap, no summary or lineage."""
    rec = _target(store, txn, msg)
    return {
        "id": rec["id"],
        "run_no": rec["run_no"],
        "state": rec["state"],
        "last_step": rec["last_step"],
        "rows": rec["rows"],
        "archived_by": rec["archived_by"],
    }


def key_names(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    """Every key a run's view holds (from its running stats, no scan): user keys
    in name order, then the ``_``-prefixed ones the client adds."""
    rec = _target(store, txn, msg)
    names = set(rec["stats"])
    if msg.get("include_parent", True):
        names.update(rec["inherited"])
    names.discard("_step")
    return {"keys": sorted(names, key=lambda k: (k.startswith("_"), k))}


def scan(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    """One page of exact, fork-resolved history; ``next`` is where the next page starts."""
    if _keys(msg) is None:
        rec = _target(store, txn, msg)
        min_step, max_step, limit = _range(msg)
        # Whole rows: spliced into the reply as stored, never decoded here.
        segs = store.segments(txn, rec, bool(msg.get("include_parent", True)))
        parts, count, nxt = store.scan_parts(txn, segs, min_step, max_step, limit, MAX_PAGE_BYTES)
        return Prebuilt(lambda rid: protocol.encode_rows_result(rid, parts, count, nxt), nxt)
    return page(store, txn, msg)


def page(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    """One page of exact rows, decoded: ``{"rows": [...], "next": step | None}``.

    ``match="any"`` keeps rows holding any of ``keys`` (charts, CSV); the default
    keeps rows holding all of them (W&B's rule).
    """
    rec = _target(store, txn, msg)
    keys = _keys(msg)
    require_all = _match(msg)
    min_step, max_step, limit = _range(msg)
    segs = store.segments(txn, rec, bool(msg.get("include_parent", True)))
    rows: list[dict[str, Any]] = []
    next_step = None
    size = 0
    for step, packed in store.iter_rows(txn, segs, min_step, max_step):
        if len(rows) == limit or size > MAX_PAGE_BYTES:
            next_step = step
            break
        size += len(packed)
        if (row := _select(packed, step, keys, require_all)) is not None:
            rows.append(row)
    return {"rows": rows, "next": next_step}


def _range(msg: dict[str, Any]) -> tuple[int, int | None, int]:
    min_step = _int(msg, "min_step", 0, 0, STEP_MAX)
    max_step = _int(msg, "max_step", None, 0, STEP_MAX + 1)
    limit = _int(msg, "limit", 1000, 1, MAX_PAGE)
    assert min_step is not None and limit is not None
    return min_step, max_step, limit


def _match(msg: dict[str, Any]) -> bool:
    match = msg.get("match", "all")
    if match not in ("all", "any"):
        raise RequestError(f"match must be 'all' or 'any', got {match!r}")
    return bool(match == "all")


def history(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    """A deterministic downsample that always keeps the first and the last row.

    Without ``keys``: evenly spaced rows. With ``keys``: per step bucket, the
    rows holding each key's minimum and maximum, so spikes survive.
    """
    rec = _target(store, txn, msg)
    keys = _keys(msg)
    min_step = _int(msg, "min_step", 0, 0, STEP_MAX) or 0
    max_step = _int(msg, "max_step", None, 0, STEP_MAX + 1)
    samples = _int(msg, "samples", 500, 2, MAX_SAMPLES)
    assert samples is not None
    segs = store.segments(txn, rec, bool(msg.get("include_parent", True)))
    if keys is not None:
        return {
            "rows": downsample(store, txn, segs, keys, min_step, max_step, samples, _match(msg))
        }
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


# A downsample decodes at most this many rows per sample asked for, whatever
# the run's length: short ranges are read whole (exact extremes), long ones
# through evenly spaced seeks.
READ_PER_SAMPLE = 4


def downsample(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    keys: list[str],
    min_step: int,
    max_step: int | None,
    samples: int,
    require_all: bool,
) -> list[dict[str, Any]]:
    """At most ``samples`` rows: the first, the last, and per bucket of steps the
    rows holding each key's minimum and maximum (min/max decimation).

    Exact when the range holds at most ``READ_PER_SAMPLE * samples`` steps;
    beyond that, the extremes are those of evenly spaced rows, so the cost is
    bounded by ``samples``, never by the run's length. Zooming in (a narrower
    ``min_step``/``max_step``) gives exact detail.
    """
    edges = store.edges(txn, segs, min_step, max_step)
    if edges is None:
        return []
    lo, hi = edges
    budget = samples * READ_PER_SAMPLE
    # Few enough rows (counted on keys alone, no values read) to read them all.
    if (
        hi - lo < budget
        or sum(1 for _ in itertools.islice(store.iter_keys(txn, segs, lo, hi + 1), budget + 1))
        <= budget
    ):
        source = store.iter_rows(txn, segs, lo, hi + 1)
        rows = [r for step, packed in source if (r := _select(packed, step, keys, require_all))]
    else:
        rows = _strided(store, txn, segs, keys, require_all, lo, hi, budget)
    if len(rows) <= samples:
        return rows
    return [rows[i] for i in decimate(rows, keys, samples)]


# How many rows a strided read looks at past each target for one holding the
# keys: a metric logged at least every this many steps is sampled evenly.
WALK = 64


def _strided(
    store: Store,
    txn: lmdb.Transaction,
    segs: list[Segment],
    keys: list[str],
    require_all: bool,
    lo: int,
    hi: int,
    budget: int,
) -> list[dict[str, Any]]:
    """Rows holding the keys at about ``budget`` evenly spaced steps: the first
    and the last such rows always (found by walking in from each end), and
    between them the first such row within ``WALK`` rows of each target."""

    def first(rows: Iterator[tuple[int, bytes]]) -> dict[str, Any] | None:
        return next((r for s, p in rows if (r := _select(p, s, keys, require_all))), None)

    head = first(store.iter_rows(txn, segs, lo, hi + 1))
    tail = first(store.iter_rows_back(txn, segs, lo, hi + 1))
    if head is None or tail is None:
        return []
    a, b = head["_step"], tail["_step"]
    if a == b:
        return [head]
    out = [head]
    targets = [a + 1 + i * (b - a - 1) // (budget - 1) for i in range(budget - 1)]
    limits = [*targets[1:], b] if targets else []
    for target, limit in zip(targets, limits, strict=True):
        start = max(target, out[-1]["_step"] + 1)
        if start < limit:
            row = first(itertools.islice(store.iter_rows(txn, segs, start, limit), WALK))
            if row is not None:
                out.append(row)
    out.append(tail)
    return out


def decimate(rows: list[dict[str, Any]], keys: list[str], samples: int) -> list[int]:
    """Indices of at most ``samples`` rows, ascending: the first, the last, and
    per bucket of steps the rows holding each key's minimum and maximum.

    When ``samples`` cannot hold one bucket's extremes, evenly spaced rows.
    """
    if len(rows) <= samples:
        return list(range(len(rows)))
    metrics = [k for k in keys if k != "_step"] or ["_step"]
    buckets = (samples - 2) // (2 * len(metrics))
    if buckets < 1:
        return _pick(len(rows), samples)
    first, width = rows[0]["_step"], rows[-1]["_step"] - rows[0]["_step"] + 1
    keep = {0, len(rows) - 1}
    # (bucket, key) -> [min value, its row, max value, its row]
    best: dict[tuple[int, str], list[Any]] = {}
    bucket_start: dict[int, int] = {}
    for i, row in enumerate(rows):
        b = (row["_step"] - first) * buckets // width
        bucket_start.setdefault(b, i)
        for k in metrics:
            v = row.get(k)
            if (type(v) is not int and type(v) is not float) or v != v:  # not NaN, not bool
                continue
            cur = best.get((b, k))
            if cur is None:
                best[(b, k)] = [v, i, v, i]
                continue
            if v < cur[0]:
                cur[0], cur[1] = v, i
            if v > cur[2]:
                cur[2], cur[3] = v, i
    picked = set()
    for (b, _), (_, lo_i, _, hi_i) in best.items():
        keep.update((lo_i, hi_i))
        picked.add(b)
    # A bucket with nothing numeric (strings, NaN) still shows up once.
    keep.update(i for b, i in bucket_start.items() if b not in picked)
    return sorted(keep)


def _pick(n: int, samples: int) -> list[int]:
    if n <= samples:
        return list(range(n))
    # Evenly spaced indices from 0 to n-1 inclusive; integer arithmetic keeps it
    # deterministic across machines.
    return [i * (n - 1) // (samples - 1) for i in range(samples)]


READS = {
    "runs": runs,
    "info": info,
    "scan": scan,
    "history": history,
    "page": page,
    "projects": projects,
    "project_runs": project_runs,
    "tree": tree,
    "state": state,
    "keys": key_names,
}
