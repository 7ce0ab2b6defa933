"""The cluster's tables. Every row's identity is its sort key in a
ReplacingMergeTree, so a batch inserted twice (a lost reply, a crash between
the insert and the cursor's move) collapses to one; reads collapse what is not
merged yet (``FINAL`` on runs, one line per step and key on history and rows).

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
# json spells them). Reads filter rows by key here, and find each key's extremes.
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

# Whole rows, one line per step at level 0: ``v`` the row as a msgpack map
# (raw bytes; ClickHouse strings are bytes) with ``_step`` first, so a reader
# decodes a page of rows with one msgpack call and no work per row. Besides it,
# a row whose step is a multiple of 2**LADDER_MIN has a second line at the level
# of its step's trailing zero bits (at most LADDER_TOP): the ladder. Rows of a
# step multiple of 2**k are then one primary-key range (levels k and up), so a
# downsample of a long run reads a few thousand contiguous rows instead of
# single rows spread over the whole run, each costing a compressed block.
# Small granules: a page or a ladder range reads little past its ends.
ROWS = """
CREATE TABLE IF NOT EXISTS {db}.rows (
    project String,
    timeline UInt64,
    level UInt8,
    step UInt64,
    v String,
    root UInt64
) ENGINE = ReplacingMergeTree
ORDER BY (project, timeline, level, step)
SETTINGS index_granularity = 1024
"""

LADDER_MIN = 6  # every 64th step has a ladder line: 1/64 more lines
LADDER_TOP = 32  # the level of step 0, and of every step with more trailing zeros


def level_of(step: int) -> int:
    """The ladder level of a row at ``step``: 0 (none) below LADDER_MIN trailing zero bits."""
    if step == 0:
        return LADDER_TOP
    zeros = (step & -step).bit_length() - 1
    return 0 if zeros < LADDER_MIN else min(zeros, LADDER_TOP)


TABLES = ("runs", "history", "rows")


def statements(database: str) -> list[str]:
    """The DDL that makes (or keeps) the cluster's database, in order."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        RUNS.format(db=database).strip(),
        HISTORY.format(db=database).strip(),
        ROWS.format(db=database).strip(),
    ]


def sharded_statements(database: str, cluster: str) -> list[str]:
    """DDL for a sharded cluster store, run on every server of ``cluster`` (a
    ``remote_servers`` entry): the tables above as ``runs_local``,
    ``history_local`` and ``rows_local`` on each, and Distributed tables under
    the plain names over them, sharded by a hash of ``root`` so a fork tree
    lives on one shard. Nodes and readers then use them as on one server."""
    local = [
        RUNS.format(db=database).replace(".runs (", ".runs_local (").strip(),
        HISTORY.format(db=database).replace(".history (", ".history_local (").strip(),
        ROWS.format(db=database).replace(".rows (", ".rows_local (").strip(),
    ]
    dist = [
        f"CREATE TABLE IF NOT EXISTS {database}.{t} AS {database}.{t}_local "
        f"ENGINE = Distributed({cluster}, {database}, {t}_local, intHash64(root))"
        for t in TABLES
    ]
    return [f"CREATE DATABASE IF NOT EXISTS {database}", *local, *dist]
