"""Every op the daemon serves, in one table: what kind it is and who runs it.

The connection routes by it, the writer applies by it, the read workers and
HTTP read by it. An op missing here does not exist.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lmdb

from stepline_daemon import messages, readmodel
from stepline_daemon.messages import Write
from stepline_daemon.readmodel import ReadModel
from stepline_daemon.store import deletion, runs
from stepline_daemon.store.records import Store


class Kind(enum.Enum):
    SESSION = "session"  # answered on the loop: hello, status
    WRITE = "write"  # queued for the writer thread, committed in order
    READ = "read"  # a read of the store, through the read model
    ADMIN = "admin"  # file work on a read thread: backup


# (store, write transaction, request, client) -> the result to reply with, if any
Apply = Callable[[Store, lmdb.Transaction, Any, str], Any]
# (run_no, seq, raw map) -> the batch; only for batches
ParseBatch = Callable[[int, int, dict[str, Any]], Write]


@dataclass(frozen=True)
class Op:
    kind: Kind
    # WRITE: how a request is decoded, and applied on the writer thread.
    parse: Callable[[dict[str, Any]], Write] | None = None
    parse_batch: ParseBatch | None = None
    apply: Apply | None = None
    # A batch: carries run_no and seq; even refused, its seq is recorded in order.
    needs_seq: bool = False
    # READ: how it is answered from a read model.
    read: Callable[[ReadModel, dict[str, Any]], Any] | None = None
    # READ: decoding and downsampling many rows; a read worker process takes it.
    heavy: bool = False
    # Applied in a nested transaction, with its outcome stored by its token.
    savepointed: bool = False


def _init(store: Store, txn: lmdb.Transaction, req: Any, client: str) -> Any:
    return runs.init(store, txn, req, client)


def _delete(store: Store, txn: lmdb.Transaction, req: Any, client: str) -> Any:
    return deletion.delete(store, txn, req)


def _purge(store: Store, txn: lmdb.Transaction, req: Any, client: str) -> Any:
    return deletion.purge_deleted(store, txn)


def _log(store: Store, txn: lmdb.Transaction, req: Any, client: str) -> Any:
    runs.append(store, txn, req.run_no, req.rows, client, req.seq)


def _update(store: Store, txn: lmdb.Transaction, req: Any, client: str) -> Any:
    runs.update(store, txn, req, client)


def _batch(parse: ParseBatch | None, apply: Apply) -> Op:
    return Op(Kind.WRITE, parse_batch=parse, apply=apply, needs_seq=True)


def _read(read: Callable[[ReadModel, dict[str, Any]], Any], heavy: bool = False) -> Op:
    return Op(Kind.READ, read=read, heavy=heavy)


OPS: dict[str, Op] = {
    "hello": Op(Kind.SESSION),
    "status": Op(Kind.SESSION),
    "init": Op(Kind.WRITE, parse=messages.parse_init, apply=_init, savepointed=True),
    "delete": Op(Kind.WRITE, parse=messages.parse_delete, apply=_delete, savepointed=True),
    "purge": Op(Kind.WRITE, parse=messages.parse_purge, apply=_purge, savepointed=True),
    # A log batch's rows are checked with the operator's limits (Connection).
    "log": _batch(None, _log),
    "config": _batch(messages.parse_config, _update),
    "summary": _batch(messages.parse_summary, _update),
    "metric": _batch(messages.parse_metric, _update),
    "finish": _batch(messages.parse_finish, _update),
    "backup": Op(Kind.ADMIN),
    "projects": _read(readmodel.read_projects),
    "runs": _read(readmodel.read_runs),
    "project_runs": _read(readmodel.read_project_runs),
    "tree": _read(readmodel.read_tree),
    "info": _read(readmodel.read_info),
    "state": _read(readmodel.read_state),
    "keys": _read(readmodel.read_keys, heavy=True),
    # Whole rows are spliced, not decoded: cheap enough for a read thread.
    "scan": _read(readmodel.read_scan),
    "page": _read(readmodel.read_page, heavy=True),
    "history": _read(readmodel.read_sample, heavy=True),
}

SEQ_OPS = frozenset(op for op, spec in OPS.items() if spec.needs_seq)


def answer(model: ReadModel, op: str, msg: dict[str, Any]) -> Any:
    """The result of read ``op``: plain data, or :class:`~readmodel.Rows`."""
    read = OPS[op].read
    assert read is not None, f"{op} is not a read"
    return read(model, msg)
