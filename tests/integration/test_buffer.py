"""The client's bounded buffer: spill to a spool file, block, or drop, with the real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

import stepline
from tests.conftest import Daemon, wait_for

P = "buffer"


@pytest.fixture
def small_buffer(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 64 KiB client buffer and a private state dir; returns the spool dir."""
    monkeypatch.setenv("STEPLINE_BUFFER_BYTES", str(64 * 1024))
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state"))
    return short_tmp / "state" / "stepline" / "spool"


def log_while_down(daemon: Daemon, run_id: str, n: int, pad: int) -> stepline.Run:
    """A run whose daemon is killed before it logs ``n`` rows of ``pad`` extra bytes."""
    run = stepline.init(project=P, id=run_id, socket=str(daemon.socket))
    run.flush()
    daemon.kill()
    for i in range(n):
        run.log({"i": i, "pad": "x" * pad}, step=i)
    return run


def spool_bytes(spool_dir: Path) -> int:
    return sum(p.stat().st_size for p in spool_dir.glob("*.spool")) if spool_dir.exists() else 0


def test_rows_spill_while_the_daemon_is_down_then_arrive(
    daemon: Daemon, small_buffer: Path
) -> None:
    n = 30_000  # ~1.5 MB of rows: far more than the 64 KiB buffer holds
    run = log_while_down(daemon, "spilled", n, pad=32)
    wait_for(lambda: spool_bytes(small_buffer) > 1_000_000, 30, "rows to spill to the spool")
    assert run._sender._mem <= 2 * 64 * 1024 + 4096  # memory stayed bounded
    daemon.start()
    run.flush(timeout=120)
    run.finish()
    rows = list(
        stepline.Api(socket=str(daemon.socket)).run(f"{P}/spilled").scan_history(keys=["i"])
    )
    assert [r["i"] for r in rows] == list(range(n))
    wait_for(
        lambda: spool_bytes(small_buffer) == 0, 10, "the spool to be dropped once acknowledged"
    )


def test_drop_policy_counts_what_it_drops(
    daemon: Daemon, small_buffer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPLINE_OVERFLOW", "drop")
    n = 10_000
    with pytest.warns(RuntimeWarning, match="buffer is full"):
        run = log_while_down(daemon, "dropped", n, pad=32)
    assert spool_bytes(small_buffer) == 0
    daemon.start()
    run.finish(timeout=60)
    r = stepline.Api(socket=str(daemon.socket)).run(f"{P}/dropped")
    stored = len(list(r.scan_history()))
    assert 0 < stored < n and stored + r.dropped == n


def test_block_policy_waits_for_room_and_loses_nothing(
    daemon: Daemon, small_buffer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPLINE_OVERFLOW", "block")
    monkeypatch.setenv("STEPLINE_BLOCK_TIMEOUT", "30")
    run = stepline.init(project=P, id="blocked", socket=str(daemon.socket))
    n = 20_000
    for i in range(n):
        run.log({"i": i, "pad": "x" * 32}, step=i)
    run.finish()
    r = stepline.Api(socket=str(daemon.socket)).run(f"{P}/blocked")
    assert [row["i"] for row in r.scan_history(keys=["i"])] == list(range(n))
    assert r.dropped == 0 and spool_bytes(small_buffer) == 0


def test_bad_buffer_settings_are_usage_errors(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPLINE_OVERFLOW", "explode")
    with pytest.raises(stepline.UsageError, match="STEPLINE_OVERFLOW"):
        stepline.init(project=P, socket=str(daemon.socket) + ".other")


def test_an_unwritable_spool_loses_nothing_it_does_not_count(
    daemon: Daemon, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = short_tmp / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("STEPLINE_BUFFER_BYTES", str(64 * 1024))
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))  # the spool dir cannot be made
    monkeypatch.setenv("STEPLINE_BLOCK_TIMEOUT", "0.001")
    n = 1_500
    with pytest.warns(RuntimeWarning, match="buffer is full"):
        run = log_while_down(daemon, "nospool", n, pad=200)  # well over 2 x 64 KiB
    daemon.start()
    run.finish(timeout=60)  # no seq was burnt: nothing waits on a batch that will never come
    r = stepline.Api(socket=str(daemon.socket)).run(f"{P}/nospool")
    steps = [row["_step"] for row in r.scan_history()]
    assert r.state == "finished" and len(steps) + r.dropped == n and len(steps) > 0
    assert steps == sorted(steps)
