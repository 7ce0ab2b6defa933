"""Fixtures that run the real daemon process on a temporary data dir and socket."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepline_daemon.process import DaemonProcess

STARTUP_TIMEOUT = 20.0


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``cond()`` holds, checking often; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # a poll interval for a condition, not a stand-in for one
        delay = min(delay * 2, 0.05)


class Daemon(DaemonProcess):
    """A daemon on ``root``'s data dir and socket; restartable on the same data dir."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root / "data", root / "s.sock", root / "daemon.log")

    def start(self, timeout: float = STARTUP_TIMEOUT) -> Daemon:
        super().start(timeout)
        return self


@pytest.fixture(autouse=True)
def no_autostart(monkeypatch: pytest.MonkeyPatch) -> None:
    # A test that finds no daemon must fail, not start one on the user's data dir;
    # the autostart tests turn it on explicitly.
    monkeypatch.setenv("STEPLINE_AUTOSTART", "0")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Unix socket paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="sl-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[Daemon]:
    d = Daemon(short_tmp).start()
    yield d
    if d.alive:
        code = d.stop()
        assert code == 0, f"daemon exited with {code} on SIGTERM:\n{d.log()}"
    # An exception the daemon only logged is still a failure (asyncpg's habit).
    assert "Traceback" not in d.log(), d.log()
