"""Real ClickHouse servers for tests: Debian's clickhouse-server on loopback
ports, with a config in a temporary dir (the bench's ``ClickHouseServer``, one
copy for both); and chDB, a current ClickHouse in-process. Both take the same
SQL through the same two calls.

The fixtures ``clickhouse`` (one server per test module) and ``chdb_engine``
are registered by ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.clickhouse_server import ClickHouseServer, free_port
from stepline_daemon.cluster.client import ClickHouseError, unescape

__all__ = ["ChdbEngine", "ClickHouseServer", "chdb_engine", "clickhouse", "free_port", "shards"]


def shards(name: str, servers: list[ClickHouseServer]) -> str:
    """A ``remote_servers`` entry ``name``: one shard per server (a Distributed
    table's cluster), to put in each server's ``extra`` before it starts."""
    parts = "".join(
        f"<shard><replica><host>127.0.0.1</host><port>{s.tcp}</port></replica></shard>"
        for s in servers
    )
    return f"<remote_servers><{name}>{parts}</{name}></remote_servers>"


_NON_ASCII = re.compile(rb"[\x80-\xff]")


class ChdbEngine:
    """chDB in-process, answering ``execute`` and ``query`` as ``ClickHouse`` does."""

    def __init__(self) -> None:
        from chdb import session

        self.dir = tempfile.mkdtemp(prefix="chdb-")
        self.session = session.Session(self.dir)

    def execute(self, sql: str, data: bytes = b"") -> bytes:
        # chDB takes text: bytes past ASCII (raw msgpack in the rows table's
        # lines) travel as TabSeparated's \xNN escapes, which both engines read.
        body = _NON_ASCII.sub(lambda m: b"\\x%02x" % m[0][0], data).decode("ascii")
        text = sql + ("\n" + body if data else "")
        try:
            result = self.session.query(text, "TabSeparated")
        except Exception as exc:  # chdb raises its own ChdbError
            raise ClickHouseError(500, str(exc)) from None
        return bytes(result.bytes()) if result is not None else b""

    def select(self, sql: str) -> bytes:
        return self.execute(sql)

    def query(self, sql: str) -> list[list[str]]:
        text = self.execute(sql).decode()
        return [[unescape(f) for f in line.split("\t")] for line in text.splitlines()]

    def close(self) -> None:
        self.session.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def clickhouse() -> Iterator[ClickHouseServer]:
    """A clickhouse-server for a test module, its files under a short /tmp path."""
    root = Path(tempfile.mkdtemp(prefix="ch-", dir="/tmp"))
    server = ClickHouseServer(root).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def chdb_engine() -> Iterator[ChdbEngine]:
    engine = ChdbEngine()
    try:
        yield engine
    finally:
        engine.close()
