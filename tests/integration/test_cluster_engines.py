"""The cluster's SQL on both engines the project supports: Debian's
clickhouse-server 18.16 (started here, on loopback) and chDB (a current
ClickHouse, in-process). What works on only one of them must not be used."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from stepline_daemon.cluster import schema, sql
from stepline_daemon.cluster.client import ClickHouse, ClickHouseError, ClickHouseUnavailable
from stepline_daemon.cluster.encode import (
    PAGE_COLUMNS,
    cluster_record,
    history_lines,
    record_of,
    row_lines,
    rows_page,
    runs_line,
)
from stepline_daemon.cluster.url import ClusterUrl
from tests.clickhouse import ChdbEngine, ClickHouseServer

DB = "stepline"
TRICKY = ["", "plain", "tab\there", "line\nbreak", "back\\slash", "quote'd", "ünï©ødé", "\0nul"]


@pytest.fixture(params=["clickhouse-18.16", "chdb"])
def engine(
    request: pytest.FixtureRequest, clickhouse: ClickHouseServer, chdb_engine: ChdbEngine
) -> Any:
    e: Any = clickhouse.client("default") if request.param != "chdb" else chdb_engine
    for stmt in schema.statements(DB):
        e.execute(stmt)
    for table in schema.TABLES:
        e.execute(f"TRUNCATE TABLE {DB}.{table}")
    return e


def test_the_schema_is_made_twice_without_harm(engine: Any) -> None:
    for stmt in schema.statements(DB):
        engine.execute(stmt)
    tables = {r[0] for r in engine.query(f"SELECT name FROM system.tables WHERE database = '{DB}'")}
    assert {"runs", "history"} <= tables


def test_string_literals_come_back_as_written(engine: Any) -> None:
    for text in TRICKY:
        assert engine.query(f"SELECT {sql.string(text)}") == [[text]]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_history_values_round_trip_and_a_batch_sent_twice_counts_once(engine: Any) -> None:
    rows: list[tuple[int, dict[str, Any]]] = [
        (0, {"loss": 0.5, "nan": math.nan, "up": math.inf, "down": -math.inf, "neg0": -0.0}),
        (1, {"n": -(2**63), "big": 2**64 - 1, "max": 2**63 - 1, "ok": True, "no": False}),
        (2, {"none": None, **{f"s{i}": t for i, t in enumerate(TRICKY)}}),
        (2**63 - 1, {"loss": 1e-300, "tab\tkey": 1}),
    ]
    tl = schema.timeline(5, 1)
    data = "".join(history_lines("p'1", tl, rows)).encode()
    whole = b"".join(row_lines("p'1", tl, rows))
    for _ in range(2):  # a retry after a lost reply
        engine.execute(f"INSERT INTO {DB}.history FORMAT TabSeparated", data)
        engine.execute(f"INSERT INTO {DB}.rows FORMAT TabSeparated", whole)
    project = sql.string("p'1")
    got = engine.query(
        f"SELECT timeline, key, step, num, f, v FROM {DB}.history FINAL "
        f"WHERE project = {project} ORDER BY step, key"
    )
    assert {int(r[0]) for r in got} == {tl}
    values = {(k, int(step)): json.loads(v) for _, k, step, _, _, v in got}
    want = {(k, step): v for step, vals in rows for k, v in vals.items()}
    assert len(got) == len(want)  # one line per value
    assert values.keys() == want.keys()
    bad = [k for k in want if not _same(want[k], values[k])]
    assert not bad, [(k, want[k], values[k]) for k in bad]
    # ``f`` holds each number (not bools) for charts' extremes.
    for _, k, step, num, f, _ in got:
        value = want[(k, int(step))]
        numeric = type(value) in (int, float)
        assert num == ("1" if numeric else "0"), (k, value)
        if numeric:
            assert _same(float(f), float(value)), (k, f, value)
    # The rows table: each row once at level 0, as users see it (``_step``
    # first), raw msgpack read back as RowBinary; step 0 on the ladder's top.
    every = engine.execute(
        f"SELECT {PAGE_COLUMNS} FROM (SELECT step, v FROM {DB}.rows FINAL "
        f"WHERE project = {project} AND level = 0 ORDER BY step) FORMAT RowBinary"
    )
    page = rows_page(every)
    got_rows = list(zip(page.steps, page.decode(), strict=True))
    want_rows = [(step, {"_step": step, **vals}) for step, vals in rows]
    assert _same(dict(got_rows), dict(want_rows))
    assert [s for s, _ in got_rows] == [s for s, _ in want_rows]
    ladder = engine.query(f"SELECT level, step FROM {DB}.rows FINAL WHERE level > 0")
    assert ladder == [[str(schema.LADDER_TOP), "0"]]


@pytest.mark.parametrize(
    "step, level",
    [
        (0, 32),
        (1, 0),
        (63, 0),
        (64, 6),
        (96, 0),
        (128, 7),
        (3 << 31, 31),
        (3 << 40, 32),
        (2**64 - 1, 0),
    ],
)
def test_a_step_has_a_ladder_level_from_its_trailing_zero_bits(step: int, level: int) -> None:
    assert schema.level_of(step) == level


def test_a_run_record_collapses_to_its_newest_version(engine: Any) -> None:
    base = {"id": "r1", "run_no": 1, "parent": [2, 5], "archived_by": 3, "updated": 2.5}
    tl = schema.timeline(7, 1)

    def line(state: str, version: int) -> str:
        rec = cluster_record({**base, "state": state}, 7, "node-a")
        return runs_line("p", tl, rec, "node-a", True, version)

    data = (line("running", 1) + line("finished", 3) + line("crashed", 2)).encode()
    engine.execute(f"INSERT INTO {DB}.runs FORMAT TabSeparated", data)
    got = engine.query(f"SELECT timeline, node, current, record FROM {DB}.runs FINAL")
    assert len(got) == 1 and got[0][:3] == [str(tl), "node-a", "1"]
    rec = record_of(got[0][3])
    assert rec["state"] == "finished" and rec["node"] == "node-a"
    assert rec["run_no"] == tl and rec["archived_by"] == schema.timeline(7, 3)
    assert rec["parent"] == [schema.timeline(7, 2), 5]
    grouped = engine.query(
        f"SELECT timeline, argMax(current, version) FROM {DB}.runs GROUP BY timeline"
    )
    assert grouped == [[str(tl), "1"]]
    # A purge is a newer version with no record.
    engine.execute(
        f"INSERT INTO {DB}.runs FORMAT TabSeparated",
        runs_line("p", tl, None, "node-a", False, 4).encode(),
    )
    assert engine.query(f"SELECT deleted, record FROM {DB}.runs FINAL") == [["2", ""]]


def test_errors_are_typed(clickhouse: ClickHouseServer, tmp_path: Path) -> None:
    with pytest.raises(ClickHouseError) as bad:
        clickhouse.client("default").execute("SELECT bogus(")
    assert bad.value.status == 400 and "Syntax error" in bad.value.message
    # Nothing listens on a port just freed: unavailable, quickly.
    gone = ClickHouseServer(tmp_path / "gone")
    url = ClusterUrl.parse(f"http://127.0.0.1:{gone.http}/x")
    with pytest.raises(ClickHouseUnavailable):
        ClickHouse(url, timeout=2.0).execute("SELECT 1")
