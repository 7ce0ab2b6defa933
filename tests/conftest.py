"""Fixtures that run the real daemon process on a temporary data dir and socket."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepline.channel import listening

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


class Daemon:
    """One ``stepline daemon`` process; restartable on the same data dir."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.socket = root / "s.sock"
        self.log_path = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, "STEPLINE_LOG_LEVEL": "INFO"}
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stepline_daemon",
                "--data-dir",
                str(self.data_dir),
                "--socket",
                str(self.socket),
                *extra,
            ],
            stdout=log,
            stderr=log,
            env=env,
        )

    def start(self) -> Daemon:
        self.proc = self.spawn()
        proc = self.proc
        wait_for(
            lambda: proc.poll() is not None or listening(self.socket),
            STARTUP_TIMEOUT,
            "the daemon to listen",
        )
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


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
