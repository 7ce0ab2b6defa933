"""A throwaway clickhouse-server, for the cluster scenario and the tests.

Debian's clickhouse-server (18.16 here) on two free loopback ports, with its
config, data and logs in one directory its owner keeps. It lives here, not in
``tests/``: the harness runs from a checkout without the test tree on the path,
and the tests import it from here (``tests/clickhouse.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from stepline_daemon.cluster.client import ClickHouse, ClickHouseError
from stepline_daemon.cluster.url import ClusterUrl

SERVER = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"

# Quiet logging (the server's trace level writes per-insert lines, which cost
# CPU the bench measures), loopback only, everything under one root.
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
# One passwordless user, reachable from loopback only.
_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password>
    <networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ClickHouseServer:
    """One clickhouse-server process with its files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.http = free_port()
        self.tcp = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra = ""  # more config inside <yandex>, e.g. remote_servers (tests' ``shards``)

    def url(self, database: str) -> str:
        """The address a daemon's ``--clickhouse`` and ``Api(clickhouse=)`` take."""
        return f"http://default@127.0.0.1:{self.http}/{database}"

    def client(self, database: str = "default", timeout: float = 60.0) -> ClickHouse:
        return ClickHouse(ClusterUrl.parse(self.url(database)), timeout=timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ClickHouseServer:
        """Start the server; return once it answers a query."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.xml"
        config.write_text(
            _CONFIG.format(root=self.root, http=self.http, tcp=self.tcp, extra=self.extra)
        )
        (self.root / "users.xml").write_text(_USERS)
        with open(self.root / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                [SERVER, f"--config-file={config}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stop() signals it whole
            )
        probe = self.client(timeout=1.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe.execute("SELECT 1")
                return self
            except ClickHouseError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    errors = self.root / "error.log"
                    tail = errors.read_text()[-2000:] if errors.exists() else ""
                    self.stop()
                    raise RuntimeError(f"clickhouse-server did not start: {tail}") from None
                time.sleep(0.05)  # polling a condition (the server answering), with a deadline

    def kill(self) -> None:
        """SIGKILL: whatever the server was doing stops mid-way."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace``: 18.16 can take seconds to stop
        gracefully, and the bench's data is disposable."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
