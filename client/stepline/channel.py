"""A blocking connection to the daemon: frames out, messages in.

Used for request/response traffic (reads, and ``init`` through the sender). It
owns a socket and a :class:`~stepline.protocol.Decoder`, nothing more. Every
socket failure leaves it as :class:`DaemonUnavailable`, never a bare ``OSError``,
so callers retry one error type (:class:`Retry`).
"""

from __future__ import annotations

import itertools
import select
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stepline import protocol
from stepline.errors import DaemonUnavailable, ProtocolError, Timeout, from_reply

_RECV = 256 * 1024
# Reconnection backoff, shared by the sender thread and blocking callers: the
# first retry comes at once after a restart; a daemon that stays away is asked
# at most every BACKOFF_MAX seconds.
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
# The least time one attempt gets to be answered (a local daemon takes ~1 ms).
MIN_ATTEMPT = 0.1


def readable(socks: Sequence[socket.socket], timeout: float) -> set[int]:
    """File descriptors of ``socks`` ready to read within ``timeout`` seconds.

    poll, not select: a training process often holds more than 1024 files.
    """
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    return {fd for fd, _ in poller.poll(timeout * 1000)}


class Retry:
    """Backoff between attempts at a request, until its deadline.

    A daemon that restarts (systemd upgrading it, or a crash) is away for a
    moment; a request made meanwhile waits for it, within the caller's timeout.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._delay = BACKOFF_MIN

    def left(self) -> float:
        """Time for the next attempt: what is left, but never so little that an
        attempt made at the deadline could not hear a live daemon's answer."""
        return max(MIN_ATTEMPT, self.deadline - time.monotonic())

    def pause(self, exc: DaemonUnavailable) -> None:
        """Wait before the next attempt; raise ``exc`` once the deadline has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DaemonUnavailable(f"{exc.message} (retried for {self.timeout:g}s)") from None
        time.sleep(min(self._delay, left))  # backoff, not a stand-in for a condition
        self._delay = min(self._delay * 2, BACKOFF_MAX)


def listening(path: Path) -> bool:
    """Whether a daemon accepts connections on ``path`` right now."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Channel:
    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.decoder = protocol.Decoder()
        self._rids = itertools.count(1)
        self._early: dict[int, protocol.Message] = {}
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(timeout, 0.001))  # 0 would make it non-blocking
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonUnavailable(
                f"no stepline daemon is listening on {path} ({exc.strerror}); "
                "start one with `stepline daemon`"
            ) from None
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(
                f"cannot connect to the stepline daemon at {path}: {exc}"
            ) from None
        self.sock = sock

    def close(self) -> None:
        self.sock.close()

    def broken(self) -> bool:
        """Whether the daemon closed this connection while it sat idle (a restart).

        Looked at before a request is sent on a connection that may be stale, so
        the request goes on a fresh one instead of into a dead socket.
        """
        try:
            if not readable([self.sock], 0):
                return False  # nothing to read: not closed
            # Readable: replies wait (alive), or EOF or an error (gone). Peeked only
            # once readable: recv on a socket with a timeout would first wait.
            return not self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):  # reset, or a closed socket
            return True

    def send(self, frame: bytes) -> None:
        try:
            self.sock.sendall(frame)
        except OSError as exc:
            raise DaemonUnavailable(
                f"the connection to the stepline daemon at {self.path} broke: {exc.strerror or exc}"
            ) from None

    def receive(self, deadline: float | None) -> protocol.Message:
        """The next message, waiting until ``deadline`` (a ``time.monotonic`` value)."""
        while True:
            msg = self.decoder.next_message()
            if msg is not None:
                return msg
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"the stepline daemon at {self.path} did not answer in time")
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(None)
            try:
                data = self.sock.recv(_RECV)
            except TimeoutError:
                raise Timeout(
                    f"the stepline daemon at {self.path} did not answer in time"
                ) from None
            except OSError as exc:
                raise DaemonUnavailable(
                    f"the connection to the stepline daemon at {self.path} broke: "
                    f"{exc.strerror or exc}"
                ) from None
            if not data:
                raise DaemonUnavailable(f"the stepline daemon at {self.path} closed the connection")
            self.decoder.feed(data)

    def request(self, msg: dict[str, Any], timeout: float | None) -> Any:
        """Send a request with a fresh ``rid`` and return its result, or raise its error."""
        return self.result(self.start(msg), timeout)

    def start(self, msg: dict[str, Any]) -> int:
        """Send a request and return its ``rid``; collect it later with :meth:`result`.

        Lets a reader ask for the next page before it has used the current one.
        """
        rid = next(self._rids)
        self.send(protocol.encode({**msg, "rid": rid}))
        return rid

    def result(self, rid: int, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (reply := self._early.pop(rid, None)) is None:
            msg = self.receive(deadline)
            got = msg.get("rid")
            if got == rid:
                reply = msg
                break
            if isinstance(got, int) and got > rid:
                self._early[got] = msg  # reads may finish out of order
            # else: a stray reply to an earlier, abandoned request
        if reply["op"] == "error":
            raise from_reply(str(reply.get("code")), str(reply.get("message")))
        if reply["op"] != "ok":
            raise ProtocolError("bad_reply", f"unexpected reply {reply['op']!r} to a request")
        return reply.get("result")
