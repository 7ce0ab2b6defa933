"""Replies to the socket's clients: the one place error replies are built."""

from __future__ import annotations

from typing import Any

from stepline import protocol
from stepline.errors import Error, ProtocolError

Reply = dict[str, Any]
# What a reply repeats of its request, so the client can match the two.
ECHOED = ("rid", "run_no", "seq")


def echo_of(msg: dict[str, Any], keys: tuple[str, ...] = ECHOED) -> dict[str, Any]:
    return {k: msg[k] for k in keys if k in msg}


def error(exc: Error, echo: dict[str, Any]) -> Reply:
    return {"op": "error", "code": exc.code, "message": exc.message, **echo}


def internal(message: str, echo: dict[str, Any]) -> Reply:
    """A failure that is the daemon's own (a bug), not the request's."""
    return {"op": "error", "code": "internal", "message": message, **echo}


def frame(reply: Reply) -> bytes:
    """``reply`` as a frame; one too large to frame becomes an error the client
    can act on."""
    try:
        return protocol.encode(reply)
    except ProtocolError as exc:
        return protocol.encode(
            error(exc, echo_of(reply)) | {"code": "reply_too_large", "message": exc.message}
        )
