"""The cluster scenario's pure parts: per-step lag, CPU per step, medians, report."""

from __future__ import annotations

from typing import Any

import pytest

from bench.__main__ import cluster_table, targets
from bench.cluster import QueryClock, cpu_per_step, lag_stats, step_lags, summarize
from stepline_daemon.cluster.client import ClickHouse
from stepline_daemon.cluster.url import ClusterUrl


def test_a_step_lags_until_the_first_poll_that_shows_it() -> None:
    logged = [0.0, 0.1, 0.2, 0.3, 0.4]
    # Nothing, then steps 0-2 in one batch, the same again, then the rest.
    polls = [(0.05, -1), (0.5, 2), (0.55, 2), (0.9, 4)]
    assert step_lags(logged, polls) == pytest.approx([0.5, 0.4, 0.3, 0.6, 0.5])


def test_steps_no_poll_covered_are_left_out_and_extra_steps_ignored() -> None:
    assert step_lags([0.0, 1.0, 2.0], [(1.5, 1)]) == pytest.approx([1.5, 0.5])
    assert step_lags([0.0], [(1.0, 7)]) == pytest.approx([1.0])
    assert step_lags([0.0, 1.0], []) == []


def test_lag_percentiles_and_max() -> None:
    got = lag_stats([0.01 * i for i in range(100, 0, -1)])  # order does not matter
    assert got["lag_p50_s"] == pytest.approx(0.51)
    assert got["lag_p99_s"] == pytest.approx(1.0)
    assert got["lag_max_s"] == pytest.approx(1.0)


def test_cores_over_a_window_become_microseconds_per_step() -> None:
    got = cpu_per_step(
        {"daemon_cores": 0.5, "clickhouse_cores": 0.25, "machine_busy": 0.9}, 10, 1000
    )
    assert got == pytest.approx({"daemon_us_per_step": 5000, "clickhouse_us_per_step": 2500})


def test_summary_takes_medians_and_keeps_each_repetition() -> None:
    reps = [
        {"live1": {"steps_per_s": 8.0}, "lag": {"lag_p99_s": 0.5}},
        {"live1": {"steps_per_s": 10.0}, "lag": {"lag_p99_s": 0.9}},
        {"live1": {"steps_per_s": 9.0}, "lag": {"lag_p99_s": 0.4}},
    ]
    s = summarize(reps)
    assert s["live1_steps_per_s"] == 9 and s["lag_lag_p99_s"] == 0.5
    assert s["live1_steps_per_s_reps"] == [8, 10, 9]


def test_query_clock_counts_queries_and_puts_the_method_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake(self: ClickHouse, sql: str, data: bytes = b"", **settings: int | str) -> bytes:
        return b"x" * len(sql)

    monkeypatch.setattr(ClickHouse, "execute", fake)
    client = ClickHouse(ClusterUrl.parse("http://default@127.0.0.1:1/db"))
    with QueryClock() as clock:
        assert client.execute("SELECT 1") == b"xxxxxxxx"
        client.execute("SELECT 22")
    client.execute("SELECT 333")  # after: not counted
    seconds, queries, received = clock.reading()
    assert queries == 2 and received == 17 and seconds >= 0
    assert ClickHouse.execute is fake


def result(live1: float, p99: float, history_ms: float, scan: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "clickhouse": "18.16.1",
        "live_steps": 100_000,
        "lag_rate": 1000,
        "lag_seconds": 7.0,
        "repeats": 3,
        "steps": 1_000_000,
        "scan_steps": 200_000,
        "parts": 2,
        "lag_lag_p50_s": 0.2,
        "lag_lag_p99_s": p99,
        "lag_lag_max_s": 0.6,
        "node_history_ms": 13.5,
        "cluster_history_ms": history_ms,
        "node_scan_rows_per_s": 170_000.0,
        "cluster_scan_rows_per_s": scan,
        "backlog_steps_per_s": 10_000.0,
    }
    for what, rate in (("live1_", live1), ("live2_", 2 * live1), ("backlog_", 10_000.0)):
        out |= {
            f"{what}steps_per_s": rate,
            f"{what}daemon_us_per_step": 88.0,
            f"{what}daemon_cores": 0.72,
            f"{what}clickhouse_us_per_step": 20.0,
            f"{what}clickhouse_cores": 0.16,
            f"{what}foreign_cores": 0.8,
            f"{what}logged_per_s": 40_000.0,
            f"{what}tail_s": 10.0,
        }
    for what in ("history", "scan"):
        out |= {
            f"cluster_{what}_query_ms": 200.0,
            f"cluster_{what}_query_share": 0.7,
            f"cluster_{what}_queries": 3,
            f"cluster_{what}_query_mib": 0.2,
        }
    return out


def test_targets_met_and_missed() -> None:
    rows = {t[0]: t for t in targets({"cluster": result(25_000, 0.5, 300, 56_000)})}
    assert rows["replication, 1 node"][1:] == ("25,000 steps/s", ">= 20k steps/s", True)
    assert rows["replication lag p99"][1:] == ("0.50 s", "<= 2 s", True)
    assert rows["cluster history(1000)"][1:] == ("300 ms", "<= 100 ms", False)
    assert rows["cluster scan_history"][1:] == ("56,000 rows/s", ">= 300k rows/s", False)
    missing = {t[0]: t for t in targets({})}
    assert missing["replication, 1 node"][1] == "not measured"


def test_table_shows_rates_lag_and_both_stores_reads() -> None:
    text = "\n".join(cluster_table(result(8_207, 0.55, 296.2, 56_562)))
    assert "ClickHouse 18.16.1" in text and "medians of 3" in text
    live1 = next(line for line in text.splitlines() if "live, 1 node" in line)
    assert "8,207" in live1 and "daemon 88 us/step" in live1
    assert "p99 0.55 s" in text
    history = next(line for line in text.splitlines() if "history(samples=1000)" in line)
    assert history.split()[2:4] == ["13.5", "296.2"]
    scan = next(line for line in text.splitlines() if "scan_history" in line)
    assert "170,000" in scan and "56,562" in scan
