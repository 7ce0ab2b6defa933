"""Raw protocol connections for tests that speak to the daemon below the client."""

from __future__ import annotations

import socket
from typing import Any

import msgpack

from stepline import protocol
from tests.conftest import Daemon


def raw_conn(d: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(d.socket))
    return s


def greeted(d: Daemon, client: str) -> socket.socket:
    """A raw connection that has said hello as ``client``."""
    s = raw_conn(d)
    s.sendall(protocol.encode({"op": "hello", "client": client}))
    assert read_replies(s, 1)[0]["op"] == "welcome"
    return s


def read_replies(s: socket.socket, n: int) -> list[dict[str, Any]]:
    dec = protocol.Decoder()
    out: list[dict[str, Any]] = []
    while len(out) < n:
        data = s.recv(65536)
        if not data:
            break
        dec.feed(data)
        out.extend(dec.messages())
    return out


def log_rows(msg: dict[str, Any]) -> list[list[Any]]:
    """The ``[step, values]`` rows of a decoded ``log`` message, values decoded."""
    if "steps" in msg:
        return [
            [step, msgpack.unpackb(v, raw=False, strict_map_key=False)]
            for step, v in zip(msg["steps"], msg["values"], strict=True)
        ]
    return [decode_row(r) for r in msg["rows"]]


def decode_row(row: Any) -> Any:
    """``[step, values]`` with the values map decoded if it came as bytes."""
    if isinstance(row, list) and len(row) == 2 and isinstance(row[1], bytes):
        return [row[0], msgpack.unpackb(row[1], raw=False, strict_map_key=False)]
    return row
