"""Start a daemon as a child process and wait until it serves: for tests, benchmarks, demos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from stepline.channel import listening

START_TIMEOUT = 30.0


class DaemonProcess:
    """``python -m stepline_daemon`` on a data dir and socket, as a child process."""

    def __init__(self, data_dir: Path, socket: Path, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.socket = socket
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start a daemon process without waiting for it (it may refuse to start)."""
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            out = open(self.log_path, "ab")  # noqa: SIM115 - inherited by the child
        try:
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
                stdout=out,
                stderr=out,
                env={**os.environ},
            )
        finally:
            if not isinstance(out, int):
                out.close()

    def start(self, timeout: float = START_TIMEOUT) -> DaemonProcess:
        """Start the daemon and return once it accepts connections."""
        self.proc = proc = self.spawn()
        deadline = time.monotonic() + timeout
        delay = 0.001
        while proc.poll() is None and not listening(self.socket):
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the daemon did not listen on {self.socket} in {timeout}s")
            time.sleep(delay)  # polling a condition, with a deadline
            delay = min(delay * 2, 0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode} at start:\n{self.log()}")
        return self

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait: the daemon drains and exits; returns its exit code."""
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
