"""The cluster's tables. Every row's identity is its sort key in a
ReplacingMergeTree, so a batch inserted twice (a lost reply, a crash between
the insert and the cursor's move) collapses to one; reads collapse what is not
merged yet (``FINAL`` on runs, one line per step on history).

Written for both engines the tests run: Debian's ClickHouse 18.16 (no named
subqueries, window functions, TTL, CODEC or LowCardinality) and a current one.
"""

from __future__ import annotations

# A timeline is a node's run_no made unique across the cluster: the node's store
# id (random, chosen when its data dir is made) above the run_no. Below 2**53,
# so JavaScript and JSON readers hold it exactly.
STORE_BITS = 20
RUN_BITS = 32


def timeline(store_id: int, run_no: int) -> int:
    return store_id << RUN_BITS | run_no


def store_of(timeline_id: int) -> int:
    return timeline_id >> RUN_BITS


# ``root`` in both tables: the root timeline of the fork tree a timeline belongs
# to, the sharding key behind a Distributed table, so that a tree (and every
# duplicate of a line) lives on one shard and FINAL collapses it there.

# One line per timeline and version: the run record as the node holds it
# (msgpack, base64), with the columns reads filter on beside it. ``current``:
# the timeline its id names (not archived by a rewind); ``deleted``: 1 deleted,
# 2 purged (the record is then empty, the rows unreachable).
RUNS = """
CREATE TABLE IF NOT EXISTS {db}.runs (
    project String,
    timeline UInt64,
    id String,
    node String,
    current UInt8,
    deleted UInt8,
    updated Float64,
    record String,
    version UInt64,
    root UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (project, timeline)
"""

# Narrow: one line per (timeline, key, step), so one key over a step range is
# one primary-key range; ``f`` is the value as a number when it is one (for
# charts' extremes), ``v`` the value as JSON (NaN and the infinities as Python's
# json spells them). Key '' (no user key is empty) marks each row: its ``v`` is
# the whole row as the node stores it (msgpack, base64), so whole-row reads and
# sampling read one line per step and decode it as fast as the node does.
HISTORY = """
CREATE TABLE IF NOT EXISTS {db}.history (
    project String,
    timeline UInt64,
    key String,
    step UInt64,
    num UInt8,
    f Float64,
    v String,
    root UInt64
) ENGINE = ReplacingMergeTree
ORDER BY (project, timeline, key, step)
"""

ROW = ""  # the key of the line that holds a whole row


def statements(database: str) -> list[str]:
    """The DDL that makes (or keeps) the cluster's database, in order."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        RUNS.format(db=database).strip(),
        HISTORY.format(db=database).strip(),
    ]


def sharded_statements(database: str, cluster: str) -> list[str]:
    """DDL for a sharded cluster store, run on every server of ``cluster`` (a
    ``remote_servers`` entry): the tables above as ``runs_local`` and
    ``history_local`` on each, and ``runs``/``history`` as Distributed tables
    over them, sharded by a hash of ``root`` so a fork tree lives on one shard. Nodes and
    readers then use ``runs`` and ``history`` as on one server."""
    local = [
        RUNS.format(db=database).replace(".runs (", ".runs_local (").strip(),
        HISTORY.format(db=database).replace(".history (", ".history_local (").strip(),
    ]
    dist = [
        f"CREATE TABLE IF NOT EXISTS {database}.{t} AS {database}.{t}_local "
        f"ENGINE = Distributed({cluster}, {database}, {t}_local, intHash64(root))"
        for t in ("runs", "history")
    ]
    return [f"CREATE DATABASE IF NOT EXISTS {database}", *local, *dist]
