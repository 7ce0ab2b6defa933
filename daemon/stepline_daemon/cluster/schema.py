"""The cluster's tables. Every row's identity is its sort key in a
ReplacingMergeTree, so a batch inserted twice (a lost reply, a crash between
the insert and the cursor's move) collapses to one; reads collapse what is not
merged yet (``FINAL``, or ``argMax`` by version).

Written for both engines the tests run: Debian's ClickHouse 18.16 (no named
subqueries, window functions, TTL, CODEC or LowCardinality) and a current one.
"""

from __future__ import annotations

# What a history value is, in ``kind``; its value sits in the matching column.
KIND_NULL, KIND_FLOAT, KIND_INT, KIND_BOOL, KIND_STR, KIND_UINT = range(6)

RUNS = """
CREATE TABLE IF NOT EXISTS {db}.runs (
    project String,
    timeline String,
    id String,
    node String,
    name String,
    tags Array(String),
    parent_timeline String,
    parent_step Int64,
    archived_by String,
    state String,
    config String,
    summary String,
    metrics String,
    peer String,
    last_step Int64,
    rows UInt64,
    created Float64,
    updated Float64,
    deleted UInt8,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (project, timeline)
"""

# Narrow: one row per (timeline, key, step), so one key over a step range is one
# primary-key range. ``i`` holds ints and bools, ``f`` floats (NaN and the
# infinities too), ``s`` strings and unsigned values past Int64.
HISTORY = """
CREATE TABLE IF NOT EXISTS {db}.history (
    project String,
    timeline String,
    key String,
    step UInt64,
    kind UInt8,
    f Float64,
    i Int64,
    s String
) ENGINE = ReplacingMergeTree
ORDER BY (project, timeline, key, step)
"""


def statements(database: str) -> list[str]:
    """The DDL that makes (or keeps) the cluster's database, in order."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        RUNS.format(db=database).strip(),
        HISTORY.format(db=database).strip(),
    ]
