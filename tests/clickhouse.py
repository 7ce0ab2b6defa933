"""Real ClickHouse servers for tests: Debian's clickhouse-server on loopback
ports, with a config in a temporary dir; and chDB, a current ClickHouse
in-process. Both take the same SQL through the same two calls."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from stepline_daemon.cluster.client import ClickHouse, ClickHouseError
from stepline_daemon.cluster.url import ClusterUrl

SERVER = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{root}/server.log</log>
    <errorlog>{root}/error.log</errorlog><console>0</console></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <user_files_path>{root}/user_files/</user_files_path>
  <format_schema_path>{root}/format_schemas/</format_schema_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  {extra}
</yandex>
"""
_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password>
    <networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ClickHouseServer:
    """One clickhouse-server process, its data in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.http = _free_port()
        self.tcp = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra = ""  # more config, e.g. remote_servers (see ``shards``)

    def url(self, database: str = "stepline") -> ClusterUrl:
        return ClusterUrl.parse(f"http://default@127.0.0.1:{self.http}/{database}")

    def start(self, timeout: float = 30.0) -> ClickHouseServer:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.xml").write_text(
            _CONFIG.format(root=self.root, http=self.http, tcp=self.tcp, extra=self.extra)
        )
        (self.root / "users.xml").write_text(_USERS)
        out = open(self.root / "stdout.log", "ab")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen(
            [SERVER, f"--config-file={self.root / 'config.xml'}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        client = ClickHouse(self.url("default"), timeout=1.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.execute("SELECT 1")
                return self
            except ClickHouseError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (self.root / "error.log").read_text()
                        if (self.root / "error.log").exists()
                        else ""
                    )
                    self.stop()
                    raise RuntimeError(f"clickhouse-server did not start: {log[-2000:]}") from None
                time.sleep(0.05)  # polling a condition: the server answering

    def kill(self) -> None:
        """SIGKILL: whatever the server was doing stops mid-way."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace``: a graceful stop of 18.16 can
        take 8 s, which tests need not wait for."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def shards(name: str, servers: list[ClickHouseServer]) -> str:
    """A ``remote_servers`` entry ``name``: one shard per server (a Distributed
    table's cluster), to put in each server's ``extra`` before it starts."""
    parts = "".join(
        f"<shard><replica><host>127.0.0.1</host><port>{s.tcp}</port></replica></shard>"
        for s in servers
    )
    return f"<remote_servers><{name}>{parts}</{name}></remote_servers>"


class ChdbEngine:
    """chDB in-process, answering ``execute`` and ``query`` as ``ClickHouse`` does."""

    def __init__(self) -> None:
        from chdb import session

        self.dir = tempfile.mkdtemp(prefix="chdb-")
        self.session = session.Session(self.dir)

    def execute(self, sql: str, data: bytes = b"") -> bytes:
        text = sql + ("\n" + data.decode() if data else "")
        try:
            result = self.session.query(text, "TabSeparated")
        except Exception as exc:  # chdb raises its own ChdbError
            raise ClickHouseError(500, str(exc)) from None
        return bytes(result.bytes()) if result is not None else b""

    def query(self, sql: str) -> list[list[str]]:
        from stepline_daemon.cluster.client import unescape

        text = self.execute(sql).decode()
        return [[unescape(f) for f in line.split("\t")] for line in text.splitlines()]

    def close(self) -> None:
        self.session.close()
        shutil.rmtree(self.dir, ignore_errors=True)
