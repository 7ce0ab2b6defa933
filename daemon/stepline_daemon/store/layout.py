"""The LMDB layout: database names, key encodings, the schema, opening a store.

Named databases, fixed-width big-endian keys so a run's rows form one ordered,
contiguous key range:

* ``history``  ``run_no:u64 | step:u64`` -> msgpack map of that step's values
* ``runs``     ``run_no:u64`` -> msgpack run record
* ``names``    ``project \\0 run_id`` -> the run_no that id currently names
* ``children`` ``parent_no:u64 | child_no:u64`` -> fork step (lineage index)
* ``seqs``     ``client_id \\0 run_no:u64`` -> last answered batch seq
* ``snaps``    ``run_no:u64 | step:u64`` -> the run's own summary stats up to that
  step, every ``snapshot_every`` rows, so a fork's inherited summary costs a
  bounded scan however long the parent
* ``tokens``   a request's idempotency token -> ``{op, req, t, result}``: the
  outcome of a request that changed something, written in the transaction that
  applied it, so a resend after a lost reply is answered with it
* ``changes``  ``seq:u64`` -> what one commit changed (runs, row ranges, purges),
  written in that commit while the node replicates to a cluster; the shipper
  reads it in order and drops what the cluster acknowledged (see ``changes``)
* ``meta``     ``schema``, ``next_run_no``, ``store_id``, the change index's
  counters, and ``runs \\0 project`` -> run count

A fork is a new record whose ``parent`` is ``(parent_no, step)``; a rewind is a
new run_no for the same id, pointing at the old run_no, with ``names`` moved.
Nothing is ever copied. Reads resolve the chain of parents, each capped at the
smallest fork step below it.

Everything that knows how keys are spelled lives here, so ``check`` and the
store read the same layout.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import lmdb
import msgpack

SCHEMA_VERSION = 1
DATABASES = (
    "history",
    "runs",
    "names",
    "children",
    "seqs",
    "snaps",
    "tokens",
    "changes",
    "meta",
)
# Stores written before request tokens existed lack these; readers must cope.
OPTIONAL_DATABASES = frozenset({"tokens", "changes"})
MAX_DBS = 16

U64 = struct.Struct(">Q")
U64x2 = struct.Struct(">QQ")

Record = dict[str, Any]


class TruncatedStore(Exception):
    """``data.mdb`` is shorter than its last commit needs (a copy cut short)."""


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def hkey(run_no: int, step: int) -> bytes:
    """A ``history`` or ``snaps`` key."""
    return U64x2.pack(run_no, step)


def hkey_step(key: bytes) -> int:
    step: int = U64x2.unpack(key)[1]
    return step


def run_key(run_no: int) -> bytes:
    return U64.pack(run_no)


def name_key(project: str, run_id: str) -> bytes:
    return project.encode() + b"\0" + run_id.encode()


def project_prefix(project: str) -> bytes:
    return project.encode() + b"\0"


def child_key(parent_no: int, child_no: int) -> bytes:
    return U64x2.pack(parent_no, child_no)


def seq_key(client: str, run_no: int) -> bytes:
    return client.encode() + b"\0" + U64.pack(run_no)


def count_key(project: str) -> bytes:
    """``meta``: how many run ids ``project`` holds."""
    return b"runs\0" + project.encode()


def check_not_truncated(env: lmdb.Environment, path: Path) -> None:
    """Refuse a store whose file ends before its last page: reading past the end
    of an mmap'd file kills the process with SIGBUS, with no message."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = (path / "data.mdb").stat().st_size
    if size < needed:
        env.close()
        raise TruncatedStore(
            f"{path / 'data.mdb'} is truncated: {size} bytes, its last commit needs {needed}"
        )


def with_prefix(cur: lmdb.Cursor, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) whose key starts with ``prefix``, in key order."""
    if cur.set_range(prefix):
        for key, value in cast(Iterator[tuple[bytes, bytes]], cur):
            if not key.startswith(prefix):
                return
            yield key, value


def delete_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> int:
    """Delete every key starting with ``prefix``; how many went."""
    cur = txn.cursor(db=db)
    n = 0
    if cur.set_range(prefix):
        while cast(bytes, cur.key()).startswith(prefix):
            n += 1
            if not cur.delete():
                break
    return n


def seek_before(cur: lmdb.Cursor, key: bytes) -> bool:
    """Put ``cur`` on the last key below ``key``; False when there is none."""
    return bool(cur.prev() if cur.set_range(key) else cur.last())
