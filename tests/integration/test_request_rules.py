"""Which answer a request gets when it is wrong in more than one way, and the
protocol version at hello: rules a refactor of the daemon must keep."""

from __future__ import annotations

from typing import Any

from stepline import protocol
from tests.conftest import Daemon
from tests.wire import greeted, raw_conn, read_replies

P = "rules"


def _ask(s: Any, msg: dict[str, Any]) -> dict[str, Any]:
    s.sendall(protocol.encode(msg))
    return read_replies(s, 1)[0]


def test_hello_with_another_protocol_version_is_turned_away(daemon: Daemon) -> None:
    s = raw_conn(daemon)
    reply = _ask(s, {"op": "hello", "client": "old", "version": protocol.PROTOCOL_VERSION - 1})
    assert reply["op"] == "error" and reply["code"] == "bad_request"
    assert f"speaks protocol {protocol.PROTOCOL_VERSION}" in reply["message"]
    # The connection keeps serving: the same version is welcome.
    reply = _ask(s, {"op": "hello", "client": "new", "version": protocol.PROTOCOL_VERSION})
    assert reply == {"op": "welcome", "version": protocol.PROTOCOL_VERSION, "server": "stepline"}
    s.close()


def test_an_unknown_run_is_reported_before_a_bad_parameter(daemon: Daemon) -> None:
    s = greeted(daemon, "rules")
    assert _ask(s, {"op": "init", "rid": 1, "project": P, "id": "a"})["op"] == "ok"
    for op, bad in (("page", {"limit": 0}), ("scan", {"limit": 0}), ("history", {"samples": 1})):
        reply = _ask(s, {"op": op, "rid": 2, "project": P, "id": "nope", **bad})
        assert reply["code"] == "not_found", (op, reply)
        reply = _ask(s, {"op": op, "rid": 3, "project": P, "id": "a", **bad})
        assert reply["code"] == "bad_request", (op, reply)
        assert set(reply) == {"op", "code", "message", "rid"}  # a read echoes its rid only
    # Within page: keys, then match, then the step range.
    reply = _ask(s, {"op": "page", "rid": 4, "project": P, "id": "a", "match": "x", "limit": 0})
    assert "match must be" in reply["message"]
    # A scan without keys has no use for match, and never looked at it.
    reply = _ask(s, {"op": "scan", "rid": 5, "project": P, "id": "a", "match": "x"})
    assert reply["op"] == "ok" and reply["result"] == {"rows": [], "next": None}
    s.close()


def test_a_token_used_for_another_request_is_reported_before_what_is_wrong_with_it(
    daemon: Daemon,
) -> None:
    s = greeted(daemon, "rules")
    first = _ask(s, {"op": "init", "rid": 1, "token": "t1", "project": P, "id": "b"})
    assert first["op"] == "ok"
    bad = {"op": "init", "rid": 2, "token": "t1", "project": P, "id": "c", "config": [1]}
    reply = _ask(s, bad)
    assert reply["code"] == "bad_request" and "already used" in reply["message"], reply
    # The same request again (a resend) gets the first outcome.
    again = _ask(s, {"op": "init", "rid": 3, "token": "t1", "project": P, "id": "b"})
    assert again["result"] == first["result"]
    s.close()
