"""The ``names`` index: which run each id names, by project."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import lmdb

from stepline_daemon.store import layout
from stepline_daemon.store.layout import U64, Record
from stepline_daemon.store.records import Store


def project_runs(store: Store, txn: lmdb.Transaction, project: str) -> Iterator[Record]:
    """The current timeline of each run id in ``project``, in id order."""
    for _, value in layout.with_prefix(txn.cursor(db=store.names), layout.project_prefix(project)):
        yield store.record(txn, U64.unpack(value)[0])


def project_exists(store: Store, txn: lmdb.Transaction, project: str) -> bool:
    prefix = layout.project_prefix(project)
    cur = txn.cursor(db=store.names)
    return bool(cur.set_range(prefix)) and cast(bytes, cur.key()).startswith(prefix)


def project_summaries(store: Store, txn: lmdb.Transaction) -> list[dict[str, Any]]:
    """Name, run count and latest ``updated`` of each project, in name order."""
    out: list[dict[str, Any]] = []
    for key, value in txn.cursor(db=store.names):
        project = cast(bytes, key).split(b"\0", 1)[0].decode()
        updated = store.record(txn, U64.unpack(value)[0])["updated"]
        if out and out[-1]["name"] == project:
            out[-1]["runs"] += 1
            out[-1]["updated"] = max(out[-1]["updated"], updated)
        else:
            out.append({"name": project, "runs": 1, "updated": updated})
    return out


def project_counts(store: Store, txn: lmdb.Transaction) -> list[tuple[str, int]]:
    """Each project with how many run ids it holds, in name order."""
    seen: list[tuple[str, int]] = []
    for key in txn.cursor(db=store.names).iternext(keys=True, values=False):
        project = cast(bytes, key).split(b"\0", 1)[0].decode()
        if seen and seen[-1][0] == project:
            seen[-1] = (project, seen[-1][1] + 1)
        else:
            seen.append((project, 1))
    return seen
