"""``stepline check``: verify a store, read-only, in one consistent snapshot.

Every key well formed, every record decodable, every pointer (names, parents,
children, archived-by) resolving, row counts and last steps matching the rows.
Safe while a daemon serves the store: LMDB readers never block its writer.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import lmdb
import msgpack

from stepline import paths
from stepline_daemon.names import NAME_RE
from stepline_daemon.states import State
from stepline_daemon.store import layout
from stepline_daemon.store.layout import (
    SCHEMA_VERSION,
    U64,
    TruncatedStore,
    U64x2,
    check_not_truncated,
)

_STATES = {s.value for s in State}


def _open(data_dir: Path) -> lmdb.Environment:
    if not (data_dir / "data.mdb").is_file():
        raise FileNotFoundError(f"{data_dir} holds no stepline store (no data.mdb)")
    env = lmdb.open(str(data_dir), readonly=True, lock=True, max_dbs=layout.MAX_DBS, create=False)
    check_not_truncated(env, data_dir)
    return env


def check(data_dir: Path, rows: bool = True) -> tuple[list[str], dict[str, int]]:
    """(problems, counts). ``rows=False`` skips decoding every row's values."""
    env = _open(data_dir)
    try:
        try:
            txn = env.begin()
        except lmdb.MapResizedError:  # the serving daemon grew the map since we opened it
            env.set_mapsize(0)
            txn = env.begin()
        counts: Counter[str] = Counter()
        with txn:
            return list(_problems(env, txn, rows, counts)), dict(counts)
    finally:
        env.close()


class _Snapshot:
    """One read transaction over every database, and the records decoded so far."""

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction, counts: Counter[str]) -> None:
        self.txn = txn
        self.counts = counts
        self.dbs = {
            name: env.open_db(name.encode(), txn=txn, create=False)
            for name in layout.DATABASES
            if name not in layout.OPTIONAL_DATABASES
        }
        try:  # stores written before request tokens have no such database
            self.tokens: Any = env.open_db(b"tokens", txn=txn, create=False)
        except lmdb.NotFoundError:
            self.tokens = None
        self.records: dict[int, dict[str, Any]] = {}


def _problems(
    env: lmdb.Environment, txn: lmdb.Transaction, decode_rows: bool, counts: Counter[str]
) -> Iterator[str]:
    snap = _Snapshot(env, txn, counts)
    next_no = yield from _meta(snap)
    yield from _records(snap, next_no)
    yield from _pointers(snap)
    yield from _names(snap)
    yield from _children(snap)
    yield from _history(snap, decode_rows)
    yield from _the_rest(snap)


def _meta(snap: _Snapshot) -> Generator[str, None, int]:
    txn, dbs = snap.txn, snap.dbs
    meta = dict(txn.cursor(db=dbs["meta"]))
    schema = meta.get(b"schema")
    if schema is None or U64.unpack(schema)[0] != SCHEMA_VERSION:
        yield f"meta: schema is {schema!r}, expected {SCHEMA_VERSION}"
    return U64.unpack(meta[b"next_run_no"])[0] if b"next_run_no" in meta else 0


def _records(snap: _Snapshot, next_no: int) -> Iterator[str]:
    txn, dbs, counts = snap.txn, snap.dbs, snap.counts
    records = snap.records
    for key, value in txn.cursor(db=dbs["runs"]):
        if len(key) != 8:
            yield f"runs: key {bytes(key)!r} is not 8 bytes"
            continue
        run_no = U64.unpack(key)[0]
        try:
            rec = msgpack.unpackb(value, raw=False)
        except Exception as exc:
            yield f"runs: record {run_no} does not decode: {exc}"
            continue
        missing = _FIELDS - set(rec) if isinstance(rec, dict) else _FIELDS
        if missing:
            yield f"runs: record {run_no} lacks {sorted(missing)}"
            continue
        records[run_no] = rec
        if rec["run_no"] != run_no:
            yield f"runs: record under key {run_no} says run_no {rec['run_no']}"
        if run_no >= next_no:
            yield f"runs: run_no {run_no} is not below meta next_run_no {next_no}"
        if not NAME_RE.match(str(rec["project"])) or not NAME_RE.match(str(rec["id"])):
            yield f"runs: record {run_no} has a malformed project or id"
        if rec["state"] not in _STATES:
            yield f"runs: record {run_no} has unknown state {rec['state']!r}"
    counts["runs"] = len(records)


def _pointers(snap: _Snapshot) -> Iterator[str]:
    txn, dbs, records = snap.txn, snap.dbs, snap.records
    for run_no, rec in records.items():
        label = f"run {rec['project']}/{rec['id']} (timeline {run_no})"
        parent = rec["parent"]
        if parent is not None:
            if not (isinstance(parent, list) and len(parent) == 2):
                yield f"{label}: parent {parent!r} is not [run_no, step]"
            elif parent[0] not in records:
                yield f"{label}: parent timeline {parent[0]} does not exist"
            else:
                if parent[1] > records[parent[0]]["last_step"]:
                    yield f"{label}: forks at step {parent[1]}, past its parent's last step"
                if txn.get(U64x2.pack(parent[0], run_no), db=dbs["children"]) is None:
                    yield f"{label}: missing from its parent's children index"
        if rec["archived_by"] is not None and rec["archived_by"] not in records:
            yield f"{label}: archived by timeline {rec['archived_by']}, which does not exist"
        # Parent chains must end: a cycle would hang every read of the run.
        seen, hop = {run_no}, parent
        while isinstance(hop, list) and len(hop) == 2 and hop[0] in records:
            if hop[0] in seen:
                yield f"{label}: its parent chain loops through timeline {hop[0]}"
                break
            seen.add(hop[0])
            hop = records[hop[0]]["parent"]


def _names(snap: _Snapshot) -> Iterator[str]:
    txn, dbs, records, counts = snap.txn, snap.dbs, snap.records, snap.counts
    for key, value in txn.cursor(db=dbs["names"]):
        project, sep, run_id = bytes(key).partition(b"\0")
        if not sep or len(value) != 8:
            yield f"names: malformed entry {bytes(key)!r}"
            continue
        run_no = U64.unpack(value)[0]
        rec = records.get(run_no)
        name = f"{project.decode(errors='replace')}/{run_id.decode(errors='replace')}"
        if rec is None:
            yield f"names: {name} points at timeline {run_no}, which does not exist"
        elif (rec["project"].encode(), rec["id"].encode()) != (project, run_id):
            yield f"names: {name} points at timeline {run_no}, which is {rec['project']}/{rec['id']}"
        elif rec["archived_by"] is not None or rec.get("deleted"):
            yield f"names: {name} points at timeline {run_no}, which is archived or deleted"
        counts["names"] += 1


def _children(snap: _Snapshot) -> Iterator[str]:
    txn, dbs, records = snap.txn, snap.dbs, snap.records
    for key, value in txn.cursor(db=dbs["children"]):
        if len(key) != 16 or len(value) != 8:
            yield f"children: malformed entry {bytes(key)!r}"
            continue
        parent_no, child_no = U64x2.unpack(key)
        child = records.get(child_no)
        if child is None or parent_no not in records:
            yield f"children: {parent_no} -> {child_no} names a timeline that does not exist"
        elif child["parent"] != [parent_no, U64.unpack(value)[0]]:
            yield f"children: {parent_no} -> {child_no} disagrees with the child's parent"


def _history(snap: _Snapshot, decode_rows: bool) -> Iterator[str]:
    txn, dbs, records, counts = snap.txn, snap.dbs, snap.records, snap.counts
    own: Counter[int] = Counter()
    last: dict[int, int] = {}
    for key, value in cast(Iterator[tuple[bytes, bytes]], txn.cursor(db=dbs["history"])):
        if len(key) != 16:
            yield f"history: key {bytes(key)!r} is not 16 bytes"
            continue
        run_no, step = U64x2.unpack(key)
        if run_no not in records:
            yield f"history: rows of timeline {run_no}, which does not exist"
            continue
        own[run_no] += 1
        last[run_no] = step
        if decode_rows:
            try:
                row = msgpack.unpackb(value, raw=False)
            except Exception as exc:
                yield f"history: timeline {run_no} step {step} does not decode: {exc}"
                continue
            if not isinstance(row, dict) or not all(isinstance(k, str) for k in row):
                yield f"history: timeline {run_no} step {step} is not a map of str keys"
    counts["rows"] = sum(own.values())
    for run_no, rec in records.items():
        if own[run_no] != rec["rows"]:
            yield f"timeline {run_no}: record counts {rec['rows']} rows, the store holds {own[run_no]}"
        if run_no in last and last[run_no] != rec["last_step"]:
            yield f"timeline {run_no}: last step {rec['last_step']}, its last row is at {last[run_no]}"


def _the_rest(snap: _Snapshot) -> Iterator[str]:
    txn, dbs, records, counts, tokens = snap.txn, snap.dbs, snap.records, snap.counts, snap.tokens
    for name in ("snaps",):
        for key in txn.cursor(db=dbs[name]).iternext(values=False):
            if len(key) != 16 or U64x2.unpack(key)[0] not in records:
                yield f"{name}: entry {bytes(key)!r} is malformed or names no timeline"
    for key, value in txn.cursor(db=dbs["seqs"]):
        if len(key) < 10 or key[-9:-8] != b"\0" or len(value) != 8:
            yield f"seqs: malformed entry {bytes(key)!r}"
    if tokens is not None:
        for key, value in txn.cursor(db=tokens):
            try:
                done = msgpack.unpackb(value, raw=False)
                ok = (
                    done["op"] in _TOKEN_OPS
                    and isinstance(done["result"], dict)
                    and isinstance(done["req"], bytes)
                    and isinstance(done["t"], float)
                )
            except Exception:
                ok = False
            if not ok:
                yield f"tokens: malformed entry {bytes(key)!r}"
            counts["tokens"] += 1


_TOKEN_OPS = frozenset({"init", "delete", "purge"})
_FIELDS = frozenset(
    {"run_no", "project", "id", "state", "parent", "archived_by", "rows", "last_step"}
)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stepline check", description="Verify a stepline store.")
    ap.add_argument("--data-dir", type=Path, help="the store (default: STEPLINE_DATA_DIR or XDG)")
    ap.add_argument("--quick", action="store_true", help="do not decode every row's values")
    args = ap.parse_args(argv)
    data_dir = args.data_dir or Path(
        os.environ.get("STEPLINE_DATA_DIR") or paths.default_data_dir()
    )
    try:
        problems, counts = check(data_dir, rows=not args.quick)
    except (OSError, lmdb.Error, TruncatedStore) as exc:
        print(f"stepline check: cannot read {data_dir}: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if problems:
        print(
            f"stepline check: {len(problems)} problems in {data_dir} ({summary})", file=sys.stderr
        )
        return 1
    print(f"stepline check: {data_dir} is consistent ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
