"""The client's blocking channel over a real Unix socket pair: how it sees a
daemon that went away while the connection sat idle (a restart)."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepline import protocol
from stepline.channel import Channel, Retry
from stepline.errors import DaemonUnavailable


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    """A connected Channel and the listening side's end of it."""
    with tempfile.TemporaryDirectory(prefix="sl-", dir="/tmp") as d:
        path = Path(d) / "s.sock"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        srv.listen(1)
        chan = Channel(path, timeout=2.0)  # the socket keeps a timeout, as in use
        peer, _ = srv.accept()
        yield chan, peer
        chan.close()
        peer.close()
        srv.close()


def test_an_idle_live_connection_is_not_broken(pair: tuple[Channel, socket.socket]) -> None:
    chan, peer = pair
    # Not readable: answered at once (a socket with a timeout must not wait for
    # bytes first, which once made it time out and call a live daemon gone).
    assert chan.broken() is False
    peer.sendall(protocol.encode({"op": "ok", "rid": 1}))
    assert chan.broken() is False  # bytes waiting: alive, and left unread
    assert chan.receive(None) == {"op": "ok", "rid": 1}


def test_a_connection_the_daemon_closed_is_broken(pair: tuple[Channel, socket.socket]) -> None:
    chan, peer = pair
    peer.close()
    assert chan.broken() is True
    # Used anyway, it fails typed, never as a bare OSError.
    with pytest.raises(DaemonUnavailable):
        chan.send(protocol.encode({"op": "status", "rid": 1}) * 100_000)
    with pytest.raises(DaemonUnavailable):
        chan.receive(None)


def test_retry_gives_up_with_the_last_reason_after_its_timeout() -> None:
    retry = Retry(0.2)
    with pytest.raises(DaemonUnavailable, match=r"gone \(retried for 0.2s\)"):
        while True:
            retry.pause(DaemonUnavailable("gone"))
    assert retry.left() > 0  # a last attempt still gets time to hear an answer
