"""systemd's service protocols, without libsystemd: sd_notify and socket activation.

* sd_notify: datagrams of ``KEY=VALUE`` lines to the Unix socket named by
  ``NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace).
* Socket activation: systemd passes listening sockets as fds 3, 4, ... and says
  so in ``LISTEN_FDS``, for the process named by ``LISTEN_PID``.

Both read the environment once, through :class:`Settings`; nothing here does.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

log = logging.getLogger("stepline.sdnotify")

LISTEN_FDS_START = 3


class Notifier:
    """Sends notifications; a no-op when the daemon was not started by systemd."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``READY=1``, ``STATUS=...``) in one datagram."""
        if self._sock is None or self._address is None:
            return False
        target = self._address
        if target.startswith("@"):
            target = "\0" + target[1:]
        try:
            self._sock.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            # The manager going away must not take the daemon with it.
            log.warning("sd_notify to %s failed: %s", self._address, exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1``, if it asked for it."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(pid):
        return None  # meant for another process (the one that started us)
    return int(usec) / 1_000_000


def listen_fds(env: Mapping[str, str], pid: int) -> list[int]:
    """The listening sockets systemd passed to this process, if any."""
    count = env.get("LISTEN_FDS", "")
    if not count.isdigit() or env.get("LISTEN_PID") != str(pid):
        return []
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
