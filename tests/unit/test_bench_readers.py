"""The readers scenario's pure parts: windows, medians and ratios, chart checks, report."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import readers_table, targets
from bench.readers import (
    SAMPLES,
    chart_row,
    check_chart,
    cores_between,
    readers,
    summarize,
    window_stats,
)


def test_window_counts_requests_ended_inside_and_latency_of_all_overlapping() -> None:
    # (end time, latency): before, straddling the start, inside x2, straddling the end, after.
    reqs = [(0.5, 0.1), (1.2, 0.4), (1.5, 0.1), (2.0, 0.2), (3.5, 1.0), (9.0, 0.1)]
    ends, lat = [e for e, _ in reqs], [x for _, x in reqs]
    got = window_stats(ends, lat, 1.0, 3.0)
    assert got["requests"] == 3  # 1.2, 1.5, 2.0
    assert got["req_per_s"] == pytest.approx(1.5)
    # The request ending at 3.5 started at 2.5, inside: its 1 s counts as the worst.
    assert got["p50_ms"] == pytest.approx(400)
    assert got["p99_ms"] == pytest.approx(1000)


def test_window_slower_than_the_window_still_has_a_latency() -> None:
    got = window_stats([5.0], [4.5], 1.0, 3.0)
    assert got["requests"] == 0 and got["req_per_s"] == 0
    assert got["p50_ms"] == pytest.approx(4500)
    empty = window_stats([], [], 1.0, 3.0)
    assert empty["requests"] == 0 and math.isnan(empty["p50_ms"])


def test_summary_medians_reps_and_ratios_against_the_same_repetition() -> None:
    reps = [
        {"none": {"rows_per_s": 100.0}, "http": {"rows_per_s": 80.0, "p50_ms": 5.0}},
        {"none": {"rows_per_s": 200.0}, "http": {"rows_per_s": 190.0, "p50_ms": 9.0}},
        {"none": {"rows_per_s": 120.0}, "http": {"rows_per_s": 90.0, "p50_ms": 7.0}},
    ]
    s = summarize(reps)
    assert s["none_rows_per_s"] == 120 and s["http_rows_per_s"] == 90
    assert s["http_rows_per_s_reps"] == [80, 190, 90]
    assert s["http_p50_ms"] == 7
    assert s["http_vs_none"] == pytest.approx(90 / 120)  # ratio of the medians
    assert s["http_vs_none_reps"] == pytest.approx([0.8, 0.95, 0.75])
    assert "none_vs_none" not in s


def test_cores_between_uses_the_samples_inside_the_window() -> None:
    samples = [
        (0.0, {"daemon": 0}, (0, 0)),
        (1.0, {"daemon": 10}, (50, 200)),  # first inside
        (2.0, {"daemon": 60}, (150, 400)),
        (3.0, {"daemon": 110}, (350, 600)),  # last inside
        (4.0, {"daemon": 999}, (999, 999)),
    ]
    got = cores_between(samples, 0.5, 3.5, hz=100)
    assert got["daemon_cores"] == pytest.approx(0.5)  # 100 ticks over 2 s at 100 Hz
    assert got["machine_busy"] == pytest.approx(0.75)
    assert cores_between(samples, 0.5, 1.5, hz=100) == {}


def chart(steps: int, points: int) -> dict[str, Any]:
    step = [i * (steps - 1) // (points - 1) for i in range(points)]
    return {
        "_step": step,
        "loss": [chart_row(s)["loss"] for s in step],
        "acc": [chart_row(s)["acc"] for s in step],
        "next": None,
    }


def test_check_chart_takes_a_whole_chart_and_counts_its_points() -> None:
    assert check_chart(chart(200_000, 998), 200_000) == 998


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d.pop("acc"), "columns"),
        (lambda d: d.update(m0=d["loss"]), "columns"),
        (lambda d: d.update(next=17), "next"),
        (lambda d: d["_step"].pop(), "points"),  # does not reach the last step
        (lambda d: d["loss"].__setitem__(3, None), "gaps"),
        (lambda d: d["acc"].pop(), "short"),
    ],
)
def test_check_chart_refuses_a_partial_chart(change: Any, why: str) -> None:
    doc = chart(1000, 100)
    change(doc)
    with pytest.raises(RuntimeError, match=why):
        check_chart(doc, 1000)


def test_check_chart_refuses_more_points_than_asked() -> None:
    with pytest.raises(RuntimeError, match="points"):
        check_chart(chart(10_000, SAMPLES + 1), 10_000)


def test_chart_rows_are_deterministic_and_noisy() -> None:
    assert chart_row(12_345) == chart_row(12_345)
    assert len(chart_row(0)) == 10
    losses = [chart_row(i)["loss"] for i in range(100)]
    assert any(b > a for a, b in itertools.pairwise(losses))  # not monotonic


def test_unknown_or_baseless_modes_are_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modes"):
        readers(tmp_path, 10, 10, 1, modes=("none", "graphql"))
    with pytest.raises(ValueError, match="modes"):
        readers(tmp_path, 10, 10, 1, modes=("http",))
    assert list(tmp_path.iterdir()) == []


def summary(http_vs_none: float) -> dict[str, Any]:
    reps = [
        {
            "none": {"rows_per_s": 100_000.0, "daemon_cores": 0.6, "foreign_cores": 0.0},
            "http": {
                "rows_per_s": 100_000.0 * http_vs_none,
                "req_per_s": 7.0,
                "p50_ms": 120.0,
                "p99_ms": 300.0,
                "daemon_cores": 0.8,
                "foreign_cores": 0.1,
            },
        }
    ]
    return {
        "writers": 4,
        "rows": 400_000,
        "history_steps": 200_000,
        "samples": 1000,
        "repeats": 1,
        "modes": ["none", "http"],
        "alone_http_p50_ms": 18.0,
        "alone_http_req_per_s": 53.0,
    } | summarize(reps)


@pytest.mark.parametrize(("ratio", "met"), [(0.95, True), (0.9, True), (0.8, False)])
def test_target_is_reported_met_or_not(ratio: float, met: bool) -> None:
    rows = {t[0]: t for t in targets({"readers": summary(ratio)})}
    _, measured, goal, ok = rows["ingest with an HTTP reader"]
    assert ok is met
    assert measured == f"{ratio:.0%} of none" and goal == ">= 90% of none"


def test_target_not_measured_without_the_scenario() -> None:
    rows = {t[0]: t for t in targets({})}
    assert rows["ingest with an HTTP reader"][1:] == ("not measured", ">= 90% of none", None)


def test_table_shows_each_mode_its_repetitions_and_the_reader_alone() -> None:
    text = "\n".join(readers_table(summary(0.8)))
    assert "4 writers x 100,000 rows" in text and "200,000-step run" in text
    none, http = (line.split() for line in text.splitlines()[2:4])
    assert none[:3] == ["none", "100,000", "100%"] and none[3] == "-"  # no reader figures
    assert http[:6] == ["http", "80,000", "80%", "7.0", "120.0", "300"]
    assert http[-1] == "80k"
    assert "the reader alone, no writers: http p50 18.0 ms, 53 req/s" in text
