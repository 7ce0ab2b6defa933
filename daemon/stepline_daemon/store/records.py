"""An open store: the LMDB environment, its databases, and run records.

Write functions (``runs``, ``deletion``, ``tokens``) take a write transaction
owned by the caller (the writer thread groups many requests into one); each
validates everything before its first ``put``, so a refused request leaves the
transaction untouched. Read functions (``history``, ``lineage``) take any
transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import lmdb
import msgpack

from stepline.errors import RunNotFound
from stepline_daemon.names import check_project, check_run_id
from stepline_daemon.store import changes, layout
from stepline_daemon.store.changes import ChangeSet
from stepline_daemon.store.layout import U64, Record

# Small enough that a fork's bounded scan is well under a millisecond; a snapshot
# every 64 rows costs a few bytes per row.
SNAPSHOT_EVERY = 64


class Store:
    def __init__(
        self,
        path: Path,
        map_size: int,
        snapshot_every: int = SNAPSHOT_EVERY,
        max_runs: int = 100_000,
        readonly: bool = False,
    ) -> None:
        """``readonly``: a reader beside the daemon (read workers, ``check``);
        ``map_size`` 0 then takes the map size the store was left with."""
        self.snapshot_every = snapshot_every
        self.max_runs = max_runs
        # Writes happen on one thread at a time (the writer), so one Packer serves.
        self.pack_row = msgpack.Packer(use_bin_type=True).pack
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path),
            map_size=map_size or 1024 * 1024,
            max_dbs=layout.MAX_DBS,
            # An ack promises the rows survive power loss: keep full fsync.
            sync=True,
            metasync=True,
            readahead=False,
            max_readers=256,
            readonly=readonly,
            create=not readonly,
        )
        layout.check_not_truncated(self.env, path)
        dbs = {
            name: self.env.open_db(name.encode(), create=not readonly) for name in layout.DATABASES
        }
        self.history = dbs["history"]
        self.runs = dbs["runs"]
        self.names = dbs["names"]
        self.children = dbs["children"]
        self.seqs = dbs["seqs"]
        self.snaps = dbs["snaps"]
        self.tokens = dbs["tokens"]
        self.changes = dbs["changes"]
        self.meta = dbs["meta"]
        # What the open write transaction changed, while the node replicates to
        # a cluster (``track_changes``); None otherwise.
        self.changed: ChangeSet | None = None
        self.store_id: int | None = None  # this store's id in a cluster, once asked
        if not readonly:
            self._check_schema(path)

    def _check_schema(self, path: Path) -> None:
        # Reader slots of processes that died (a killed daemon's read workers).
        self.env.reader_check()
        with self.env.begin(write=True) as txn:
            schema = txn.get(b"schema", db=self.meta)
            if schema is None:
                txn.put(b"schema", U64.pack(layout.SCHEMA_VERSION), db=self.meta)
                txn.put(b"next_run_no", U64.pack(1), db=self.meta)
            elif U64.unpack(schema)[0] != layout.SCHEMA_VERSION:
                raise RuntimeError(
                    f"data dir {path} has schema {U64.unpack(schema)[0]}, "
                    f"this daemon reads {layout.SCHEMA_VERSION}"
                )

    def track_changes(self, on: bool) -> int:
        """Keep the change index (``on``: the node replicates) or drop it;
        returns this store's id in the cluster."""
        with self.env.begin(write=True) as txn:
            sid = changes.store_id(txn, self.meta)
            if on:
                changes.start(txn, self.changes, self.runs, self.meta)
            else:
                changes.stop(txn, self.changes, self.meta)
        self.changed = ChangeSet() if on else None
        self.store_id = sid
        return sid

    def begin_changes(self) -> None:
        """A write transaction begins: nothing in it changed yet."""
        if self.changed is not None:
            self.changed = ChangeSet()

    def log_changes(self, txn: lmdb.Transaction) -> None:
        """Before commit: index what the transaction changed, in it."""
        if self.changed:
            changes.log(txn, self.changes, self.meta, self.changed, time.time())

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction outside the writer's groups (start-up), indexed."""
        self.begin_changes()
        with self.env.begin(write=True) as txn:
            yield txn
            self.log_changes(txn)

    def close(self) -> None:
        self.env.close()

    def record(self, txn: lmdb.Transaction, run_no: int) -> Record:
        raw = txn.get(layout.run_key(run_no), db=self.runs)
        if raw is None:
            raise RunNotFound(f"no run with internal number {run_no}")
        rec: Record = layout.unpack(cast(bytes, raw))
        return rec

    def put_record(self, txn: lmdb.Transaction, rec: Record) -> None:
        txn.put(layout.run_key(rec["run_no"]), layout.pack(rec), db=self.runs)
        if self.changed is not None:
            self.changed.record(rec["run_no"], rec["project"])

    def lookup(self, txn: lmdb.Transaction, project: str, run_id: str) -> Record | None:
        raw = txn.get(layout.name_key(project, run_id), db=self.names)
        if raw is None:
            return None
        return self.record(txn, U64.unpack(raw)[0])

    def find(self, txn: lmdb.Transaction, project: object, run_id: object) -> Record:
        rec = self.lookup(txn, check_project(project), check_run_id(run_id))
        if rec is None:
            raise RunNotFound(f"run {run_id!r} does not exist in project {project!r}")
        return rec

    def next_run_no(self, txn: lmdb.Transaction) -> int:
        n = int(U64.unpack(cast(bytes, txn.get(b"next_run_no", db=self.meta)))[0])
        txn.put(b"next_run_no", U64.pack(n + 1), db=self.meta)
        return n

    def last_seq(self, txn: lmdb.Transaction, client: str, run_no: int) -> int:
        """The last batch seq of ``client`` for ``run_no`` that was answered for good."""
        raw = txn.get(layout.seq_key(client, run_no), db=self.seqs)
        return 0 if raw is None else int(U64.unpack(cast(bytes, raw))[0])

    def mark_seq(self, txn: lmdb.Transaction, client: str, run_no: int, seq: int) -> None:
        txn.put(layout.seq_key(client, run_no), U64.pack(seq), db=self.seqs)
