"""Daemon lifecycle, top to bottom: claim, start up, serve, drain, shut down.

Signal handlers only set an event; shutdown stops accepting, stops reading,
waits (with a deadline) for every queued write to commit and be acknowledged,
then closes connections, LMDB, the socket file and the lock, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import grp
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import uvloop

from stepline_daemon import logs, sdnotify
from stepline_daemon.connection import Connection
from stepline_daemon.faults import CrashPoints
from stepline_daemon.hub import Hub
from stepline_daemon.process import INFO_FILE
from stepline_daemon.settings import Settings
from stepline_daemon.store import Store, TruncatedStore, runs

if TYPE_CHECKING:
    from stepline_daemon.cluster.shipper import Shipper
    from stepline_daemon.http import Http

log = logging.getLogger("stepline.daemon")


class StartupError(Exception):
    """The daemon cannot start; the message says why, for a human."""


@contextlib.contextmanager
def _claim_data_dir(data_dir: Path) -> Iterator[IO[bytes]]:
    """An exclusive lock held for the daemon's life: one daemon per data dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    f = open(data_dir / "daemon.lock", "ab")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise StartupError(
                f"another stepline daemon is already serving data dir {data_dir}"
            ) from None
        raise
    try:
        yield f
    finally:
        f.close()


def _claim_socket(path: Path) -> None:
    """Refuse a socket another daemon answers on; remove one a dead daemon left."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise StartupError(f"socket path {path} exists and cannot be probed: {exc}") from None
    finally:
        probe.close()
    raise StartupError(f"another stepline daemon is already listening on {path}")


async def _start_http(settings: Settings, hub: Hub) -> Http | None:
    if settings.http is None:
        return None
    # Imported only when serving HTTP: aiohttp takes ~0.3 s of every start.
    from stepline_daemon.http import Http

    http = Http(hub)
    host, port = settings.http
    try:
        await http.start(host, port)
    except OSError as exc:
        await http.stop()
        if settings.http_required:
            raise StartupError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from None
        log.warning("dashboard off: cannot serve HTTP on %s:%d: %s", host, port, exc.strerror)
        return None
    return http


def _write_info(settings: Settings, http: Http | None) -> Path:
    """``daemon.json`` in the data dir: how to reach this daemon (CLI, tests, demo)."""
    path = settings.data_dir / INFO_FILE
    tmp = path.with_suffix(".tmp")
    info = {
        "pid": os.getpid(),
        "socket": str(settings.socket),
        "http": http.url if http is not None else None,
        "started": time.time(),
    }
    tmp.write_text(json.dumps(info) + "\n")
    tmp.replace(path)
    return path


def _status(hub: Hub) -> str:
    m = hub.writer.metrics
    return (
        f"STATUS={m.rate():,.0f} rows/s, {m.rows:,} rows since start, "
        f"{len(hub.connections)} clients"
    )


async def _heartbeat(hub: Hub, notifier: sdnotify.Notifier, watchdog: float | None) -> None:
    """``WATCHDOG=1`` at half systemd's interval, only while the writer is healthy
    (a wedged writer with a live event loop must still get the daemon restarted),
    and ``STATUS=`` with throughput."""
    period = watchdog / 2 if watchdog else 10.0
    while True:
        await asyncio.sleep(period)
        fields = [_status(hub)]
        if watchdog:
            if hub.writer.healthy(stuck_after=watchdog / 2):
                fields.append("WATCHDOG=1")
            else:
                log.error("writer thread unhealthy: withholding the watchdog ping")
        notifier.notify(*fields)


async def _listen(
    settings: Settings, hub: Hub, listener: socket.socket | None
) -> asyncio.AbstractServer:
    loop = hub.loop

    def connect() -> Connection:
        return Connection(hub)

    if listener is not None:  # socket activation: systemd made it and set its mode
        return await loop.create_unix_server(connect, sock=listener)
    server = await loop.create_unix_server(connect, path=str(settings.socket))
    if settings.socket_group is not None:
        os.chown(settings.socket, -1, grp.getgrnam(settings.socket_group).gr_gid)
    os.chmod(settings.socket, settings.socket_mode)
    return server


class Daemon:
    """One daemon's life: ``startup()``, ``main_loop()``, ``shutdown()``."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        listener: socket.socket | None,
        crash: CrashPoints | None,
    ) -> None:
        self.settings = settings
        self.hub = Hub(settings, store, asyncio.get_running_loop(), crash)
        self.listener = listener
        self.notifier = sdnotify.Notifier(settings.notify_socket)
        self.stop = asyncio.Event()
        self.http: Http | None = None
        self.server: asyncio.AbstractServer | None = None
        self.info: Path | None = None
        self.heartbeat: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        settings, hub, loop = self.settings, self.hub, self.hub.loop
        hub.writer.start()
        self.http = await _start_http(settings, hub)
        hub.http_url = self.http.url if self.http is not None else None
        self.server = await _listen(settings, hub, self.listener)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self.info = _write_info(settings, self.http)
        url = hub.http_url or "off"
        log.info(
            "serving data dir %s on %s%s, HTTP %s (pid %d)",
            settings.data_dir,
            settings.socket,
            " (socket-activated)" if self.listener is not None else "",
            url,
            os.getpid(),
        )
        print(f"stepline daemon: ready on {settings.socket}; dashboard {url}", flush=True)
        if settings.clickhouse is not None:
            hub.shipper = _shipper(settings, hub)
        self.notifier.notify("READY=1", f"MAINPID={os.getpid()}", _status(hub))
        if self.notifier.enabled:
            self.heartbeat = loop.create_task(_heartbeat(hub, self.notifier, settings.watchdog))

    async def main_loop(self) -> None:
        await self.stop.wait()

    async def shutdown(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=draining and committing")
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        if self.info is not None:
            self.info.unlink(missing_ok=True)
        if self.http is not None:
            await self.http.stop()
        log.info("shutting down: draining %d connections", len(self.hub.connections))
        if self.server is not None:
            self.server.close()
        await self.hub.shutdown()
        self.notifier.close()


def _shipper(settings: Settings, hub: Hub) -> Shipper:
    """Replication into the cluster: the change index kept from now on, and the
    task that ships it."""
    from stepline_daemon.cluster.shipper import Shipper

    assert settings.clickhouse is not None and hub.store.store_id is not None
    store_id = hub.store.store_id
    shipper = Shipper(
        settings.clickhouse, settings.node, hub.store, store_id, hub.gate, hub.writer, hub.crash
    )
    shipper.start()
    log.info(
        "replicating to %s as node %r (store id %d)", settings.clickhouse, settings.node, store_id
    )
    return shipper


async def serve(
    settings: Settings,
    store: Store,
    listener: socket.socket | None = None,
    crash: CrashPoints | None = None,
) -> None:
    daemon = Daemon(settings, store, listener, crash)
    await daemon.startup()
    await daemon.main_loop()
    await daemon.shutdown()


def _inherited(settings: Settings) -> tuple[Settings, socket.socket | None]:
    """The listening socket systemd passed, with settings naming its real path."""
    if settings.listen_fd is None:
        return settings, None
    sock = socket.socket(fileno=settings.listen_fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise StartupError("the socket systemd passed is not a Unix stream socket (ListenStream=)")
    sock.setblocking(False)
    name = sock.getsockname()
    path = Path(name) if isinstance(name, str) and name else settings.socket
    return dataclasses.replace(settings, socket=path), sock


def run(settings: Settings) -> int:
    try:
        settings, listener = _inherited(settings)
        with _claim_data_dir(settings.data_dir):
            if listener is None:
                _claim_socket(settings.socket)
            try:
                store = Store(
                    settings.data_dir, settings.map_size, max_runs=settings.max_runs_per_project
                )
            except TruncatedStore as exc:
                raise StartupError(f"{exc}; restore it from a backup (stepline backup)") from None
            # Before anything is written: every change from here on is indexed
            # for the shipper. Without a cluster the index goes, and a later
            # start with one ships everything again.
            store.track_changes(settings.clickhouse is not None)
            orphans = runs.crash_orphans(store)
            if orphans:
                log.info("marked %d runs left running by a previous daemon as crashed", orphans)
            try:
                uvloop.run(serve(settings, store, listener, CrashPoints.from_env()))
            finally:
                store.close()
                if listener is None:  # an activated socket is systemd's to remove
                    settings.socket.unlink(missing_ok=True)
    except StartupError as exc:
        print(f"stepline daemon: {exc}", file=sys.stderr)
        return 1
    log.info("stopped cleanly")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_args(argv)
    logs.configure(settings.log_level, settings.log_format)
    return run(settings)
