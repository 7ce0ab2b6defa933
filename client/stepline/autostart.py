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

# Runs the daemon in its own session (the training job's signals miss it) and exits.
_LAUNCH = "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)"


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
    argv = [
        sys.executable,
        "-m",
        "stepline_daemon",
        "--data-dir",
        str(data_dir),
        "--socket",
        str(socket),
    ]
    with open(log_path, "ab") as log:
        # Started through a launcher that exits at once, so the daemon is nobody's
        # child here: it outlives the training process and never lingers as a zombie.
        try:
            subprocess.run(
                [sys.executable, "-c", _LAUNCH, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                check=True,
                timeout=timeout,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise DaemonUnavailable(
                f"could not start a stepline daemon: {exc}; see {log_path}"
            ) from None
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not listening(socket):
        # A daemon that lost a start-up race exits at once; wait for the winner.
        if time.monotonic() > deadline:
            raise DaemonUnavailable(
                f"started a stepline daemon for {socket}, but it did not listen within "
                f"{timeout}s; see {log_path}"
            )
        time.sleep(delay)  # polling the socket, with a deadline
        delay = min(delay * 2, 0.1)
