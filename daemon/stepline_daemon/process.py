"""Start a daemon as a child process and wait until it serves: for tests, benchmarks, demos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from stepline.channel import listening

INFO_FILE = "daemon.json"  # written by stepline_daemon.main once the daemon serves

START_TIMEOUT = 30.0


class DaemonProcess:
    """``python -m stepline_daemon`` on a data dir and socket, as a child process."""

    def __init__(
        self,
        data_dir: Path,
        socket: Path,
        log_path: Path | None = None,
        http: str = "127.0.0.1:0",
        args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.socket = socket
        self.log_path = log_path
        self.http = http  # HOST:PORT or off; port 0 (the default here) picks a free one
        self.args = args  # more daemon flags, for every start
        self.env: dict[str, str] = {}  # more environment, for every start
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
                    "--http",
                    self.http,
                    *self.args,
                    *extra,
                ],
                stdout=out,
                stderr=out,
                env={**os.environ, **self.env},
            )
        finally:
            if not isinstance(out, int):
                out.close()

    def start(self, timeout: float = START_TIMEOUT) -> DaemonProcess:
        """Start the daemon and return once it serves (its ``daemon.json`` names it)."""
        self.proc = proc = self.spawn()
        deadline = time.monotonic() + timeout
        delay = 0.001
        while proc.poll() is None and not self._announced():
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the daemon did not start serving in {timeout}s")
            time.sleep(delay)  # polling a condition, with a deadline
            delay = min(delay * 2, 0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode} at start:\n{self.log()}")
        return self

    def info(self) -> dict[str, Any] | None:
        """What the running daemon wrote to ``daemon.json``, if it is this one's."""
        try:
            info: dict[str, Any] = json.loads((self.data_dir / INFO_FILE).read_text())
        except (OSError, ValueError):
            return None
        if self.proc is None or info.get("pid") != self.proc.pid:
            return None  # left by an earlier daemon on this data dir
        return info

    def _announced(self) -> bool:
        return self.info() is not None and listening(self.socket)

    @property
    def http_url(self) -> str:
        info = self.info()
        if info is None or info["http"] is None:
            raise RuntimeError("this daemon serves no HTTP")
        return str(info["http"])

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
