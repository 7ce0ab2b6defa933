"""Store writes and reads for unit tests, from request maps as the wire has them.

The daemon decodes each request into a typed message at the socket; tests of
the store start from the same maps, decoded the same way.
"""

from __future__ import annotations

from typing import Any

import lmdb

from stepline_daemon import messages, ops, readmodel, summary
from stepline_daemon.batches import Chunks, StepRow
from stepline_daemon.ops import OPS
from stepline_daemon.store import catalog, deletion, lineage, runs, tokens
from stepline_daemon.store.history import Segment
from stepline_daemon.store.layout import Record
from stepline_daemon.store.reads import LmdbReads
from stepline_daemon.store.records import Store


def init_run(store: Store, txn: lmdb.Transaction, msg: dict[str, Any], client: str) -> Any:
    return runs.init(store, txn, messages.parse_init(msg), client)


def append(
    store: Store,
    txn: lmdb.Transaction,
    run_no: int,
    rows: list[StepRow],
    client: str,
    seq: int,
    packed: list[bytes] | None = None,
    chunks: Chunks | None = None,
) -> None:
    runs.append(store, txn, run_no, (rows, packed, chunks), client, seq)


def update_run(
    store: Store, txn: lmdb.Transaction, op: str, msg: dict[str, Any], client: str, seq: int
) -> None:
    parse = OPS[op].parse_batch
    assert parse is not None
    runs.update(store, txn, parse(msg["run_no"], seq, msg), client)  # type: ignore[arg-type]


def delete_run(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    return deletion.delete(store, txn, messages.parse_delete(msg))


def outcome(store: Store, txn: lmdb.Transaction, msg: dict[str, Any]) -> Any:
    token = messages.token_of(msg)
    assert token is not None
    return tokens.outcome(store, txn, msg["op"], token)


def remember(
    store: Store, txn: lmdb.Transaction, msg: dict[str, Any], result: Any, now: float
) -> None:
    token = messages.token_of(msg)
    assert token is not None
    tokens.remember(store, txn, msg["op"], token, result, now)


def read(store: Store, txn: lmdb.Transaction, op: str, msg: dict[str, Any]) -> Any:
    """Read ``op`` as a client would decode its reply."""
    return readmodel.plain(ops.answer(LmdbReads(store, txn), op, msg))


def list_runs(store: Store, txn: lmdb.Transaction, project: str) -> list[dict[str, Any]]:
    return LmdbReads(store, txn).runs(project)


def describe(store: Store, txn: lmdb.Transaction, rec: Record) -> dict[str, Any]:
    return LmdbReads(store, txn).describe(rec)


def segments(store: Store, txn: lmdb.Transaction, rec: Record) -> list[Segment]:
    return lineage.segments(store, txn, rec)


def inherited_stats(store: Store, txn: lmdb.Transaction, rec: Record, step: int) -> summary.Stats:
    return runs.inherited_stats(store, txn, rec, step)


project_counts = catalog.project_counts
mark_crashed = runs.mark_crashed
expire_tokens = tokens.expire
