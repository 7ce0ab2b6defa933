"""Start a daemon when ``init()`` finds none: detached, on the default data dir.

Two processes racing to start one get one: each may spawn a daemon, but a
daemon refuses to start on a data dir or socket another one already holds, so
the loser exits and both clients connect to the winner.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from stepline import paths
from stepline.channel import listening
from stepline.errors import DaemonUnavailable


def enabled(explicit: bool | None, env: Mapping[str, str] = os.environ) -> bool:
    """``autostart=`` if given, else ``STEPLINE_AUTOSTART`` (on unless "0", "false", "no")."""
    if explicit is not None:
        return explicit
    return env.get("STEPLINE_AUTOSTART", "1").strip().lower() not in ("0", "false", "no", "off")


def ensure_daemon(socket: Path, timeout: float, env: Mapping[str, str] = os.environ) -> None:
    """Return once a daemon listens on ``socket``, starting one if none does."""
    if listening(socket):
        return
    if importlib.util.find_spec("stepline_daemon") is None:
        raise DaemonUnavailable(
            f"no stepline daemon is listening on {socket}, and this install cannot start "
            "one: pip install 'stepline[daemon]', or start it elsewhere"
        )
    data_dir = (
        Path(env["STEPLINE_DATA_DIR"])
        if env.get("STEPLINE_DATA_DIR")
        else paths.default_data_dir(env)
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stepline_daemon",
                "--data-dir",
                str(data_dir),
                "--socket",
                str(socket),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives the training process, and its signals
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not listening(socket):
        # A daemon that lost a start-up race exits at once; keep waiting for the
        # winner. poll() also reaps it, so it leaves no zombie behind.
        proc.poll()
        if time.monotonic() > deadline:
            raise DaemonUnavailable(
                f"started a stepline daemon for {socket}, but it did not listen within "
                f"{timeout}s; see {log_path}"
            )
        time.sleep(delay)  # polling the socket, with a deadline
        delay = min(delay * 2, 0.1)
