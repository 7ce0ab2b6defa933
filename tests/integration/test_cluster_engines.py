"""The cluster's SQL on both engines the project supports: Debian's
clickhouse-server 18.16 (started here, on loopback) and chDB (a current
ClickHouse, in-process). What works on only one of them must not be used."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepline_daemon.cluster import schema, sql
from stepline_daemon.cluster.client import ClickHouse, ClickHouseError, ClickHouseUnavailable
from stepline_daemon.cluster.encode import decode_value, history_lines
from stepline_daemon.cluster.url import ClusterUrl
from tests.clickhouse import ChdbEngine, ClickHouseServer

DB = "stepline"
TRICKY = ["", "plain", "tab\there", "line\nbreak", "back\\slash", "quote'd", "ünï©ødé", "\0nul"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    s = ClickHouseServer(tmp_path_factory.mktemp("ch")).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def chdb_engine() -> Iterator[ChdbEngine]:
    e = ChdbEngine()
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(params=["clickhouse-18.16", "chdb"])
def engine(
    request: pytest.FixtureRequest, server: ClickHouseServer, chdb_engine: ChdbEngine
) -> Any:
    e: Any = ClickHouse(server.url("default")) if request.param != "chdb" else chdb_engine
    for stmt in schema.statements(DB):
        e.execute(stmt)
    e.execute(f"TRUNCATE TABLE {DB}.history")
    e.execute(f"TRUNCATE TABLE {DB}.runs")
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
    return type(a) is type(b) and a == b


def test_history_values_round_trip_and_a_batch_sent_twice_counts_once(engine: Any) -> None:
    rows: list[tuple[int, dict[str, Any]]] = [
        (0, {"loss": 0.5, "nan": math.nan, "up": math.inf, "down": -math.inf}),
        (1, {"n": -(2**63), "big": 2**64 - 1, "max": 2**63 - 1, "ok": True, "no": False}),
        (2, {"none": None, **{f"s{i}": t for i, t in enumerate(TRICKY)}}),
        (2**63 - 1, {"loss": 1e-300}),
    ]
    data = "".join(history_lines("p'1", "node-a/1", rows)).encode()
    for _ in range(2):  # a retry after a lost reply
        engine.execute(f"INSERT INTO {DB}.history FORMAT TabSeparated", data)
    project = sql.string("p'1")
    got = engine.query(
        f"SELECT key, step, kind, f, i, s FROM {DB}.history FINAL "
        f"WHERE project = {project} ORDER BY step, key"
    )
    decoded = {
        (k, int(step)): decode_value(int(kind), float(f), int(i), s)
        for k, step, kind, f, i, s in got
    }
    want = {(k, step): v for step, values in rows for k, v in values.items()}
    assert len(got) == len(want)
    assert decoded.keys() == want.keys()
    bad = [k for k in want if not _same(want[k], decoded[k])]
    assert not bad, [(k, want[k], decoded[k]) for k in bad]


def test_a_run_record_collapses_to_its_newest_version(engine: Any) -> None:
    def record(state: str, version: int) -> str:
        fields = ["p", "node-a/1", "r1", "node-a", "r1", "['t']", "", "-1", "", state]
        fields += ["{}", "{}", "{}", "{}", "9", "10", "1.5", "2.5", "0", str(version)]
        return "\t".join(fields) + "\n"

    data = (record("running", 1) + record("finished", 3) + record("crashed", 2)).encode()
    engine.execute(f"INSERT INTO {DB}.runs FORMAT TabSeparated", data)
    assert engine.query(f"SELECT state, tags FROM {DB}.runs FINAL") == [["finished", "['t']"]]
    grouped = engine.query(
        f"SELECT timeline, argMax(state, version) FROM {DB}.runs GROUP BY timeline"
    )
    assert grouped == [["node-a/1", "finished"]]


def test_errors_are_typed(server: ClickHouseServer, tmp_path: Path) -> None:
    with pytest.raises(ClickHouseError) as bad:
        ClickHouse(server.url("default")).execute("SELECT bogus(")
    assert bad.value.status == 400 and "Syntax error" in bad.value.message
    # Nothing listens on a port just freed: unavailable, quickly.
    gone = ClickHouseServer(tmp_path / "gone")
    url = ClusterUrl.parse(f"http://127.0.0.1:{gone.http}/x")
    with pytest.raises(ClickHouseUnavailable):
        ClickHouse(url, timeout=2.0).execute("SELECT 1")
