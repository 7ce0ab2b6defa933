"""init() starts a daemon when none listens: detached, once, on the configured data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepline
from tests.conftest import wait_for


def daemons_on(socket: Path) -> list[int]:
    """Pids of stepline daemons serving ``socket`` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"stepline_daemon" in cmd and str(socket).encode() in cmd:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def spot(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A socket path and data dir for autostarted daemons; stops them afterwards."""
    monkeypatch.setenv("STEPLINE_DATA_DIR", str(short_tmp / "data"))
    monkeypatch.setenv("STEPLINE_AUTOSTART", "1")
    sock = short_tmp / "auto.sock"
    yield sock
    for pid in daemons_on(sock):
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not daemons_on(sock), 30, "autostarted daemons to stop")


def test_init_starts_a_detached_daemon(spot: Path) -> None:
    run = stepline.init(project="auto", id="a", socket=str(spot))
    run.log({"x": 1})
    run.finish()
    [pid] = daemons_on(spot)
    assert os.getsid(pid) == pid  # its own session: the training job's signals miss it
    assert (spot.parent / "data" / "daemon.log").exists()
    assert stepline.Api(socket=str(spot)).run("auto/a").last_step == 0


def test_two_processes_racing_get_one_daemon(spot: Path) -> None:
    script = textwrap.dedent(f"""
        import stepline
        run = stepline.init(project="auto", socket={str(spot)!r})
        run.log({{"x": 1}})
        run.finish()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    # Daemons that lost the race refuse to start and exit; one stays.
    wait_for(lambda: len(daemons_on(spot)) == 1, 30, "the losing daemons to exit")
    assert len(stepline.Api(socket=str(spot)).runs("auto")) == 3


def test_autostart_off_is_a_typed_error(spot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(stepline.DaemonUnavailable):
        stepline.init(project="auto", socket=str(spot), autostart=False, timeout=0.5)
    monkeypatch.setenv("STEPLINE_AUTOSTART", "0")
    with pytest.raises(stepline.DaemonUnavailable):
        stepline.init(project="auto", socket=str(spot), timeout=0.5)
    assert daemons_on(spot) == []
