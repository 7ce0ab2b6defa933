"""The daemon's settings: built once at start-up from flags, environment, defaults.

Nothing else in the daemon reads ``os.environ`` for its configuration;
everything it needs to know is on the frozen :class:`Settings` it was handed.
(The one other read is ``faults``: crash points for test suites, not a setting.)
"""

from __future__ import annotations

import argparse
import grp
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stepline import paths
from stepline.protocol import MAX_FRAME_SIZE
from stepline.rows import MAX_KEYS_PER_ROW
from stepline_daemon import logs, sdnotify

ENV_PREFIX = "STEPLINE_"
# The dashboard and JSON API; loopback only (issue: security).
DEFAULT_HTTP = ("127.0.0.1", 7750)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def parse_http(value: str, token: bool = False) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) or ``off``; port 0 picks a free one.

    Without a token only loopback addresses are accepted.
    """
    if value.strip().lower() == "off":
        return None
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http must be HOST:PORT or off, got {value!r}")
    if host not in _LOOPBACK and not token:
        raise ValueError(
            f"--http {value}: the HTTP API serves loopback only (127.0.0.1, ::1, localhost) "
            "unless --http-token is set"
        )
    return host, int(port)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    socket: Path
    # Starting LMDB map size; it doubles whenever a write finds the map full.
    map_size: int = 256 * 1024 * 1024
    max_frame: int = MAX_FRAME_SIZE
    # Most requests one write transaction takes; bounds the latency a commit adds.
    max_group: int = 1024
    read_threads: int = 4
    # Worker processes for history reads (0: on the read threads instead). Their
    # own interpreters keep a dashboard's reads from slowing ingest.
    read_processes: int = 2
    # Frame bytes queued for the writer, all connections together, before the
    # daemon stops reading from the ones sending more. Decoded rows take several
    # times their frame size in memory, so this bounds the daemon's RSS.
    max_queued_bytes: int = 2 * 1024 * 1024
    # How long SIGTERM waits for queued writes to commit before giving up.
    drain_timeout: float = 30.0
    socket_mode: int = 0o600
    log_level: str = "INFO"
    log_format: str = "text"  # or journal (the default under systemd's journal), json
    http: tuple[str, int] | None = DEFAULT_HTTP
    # Set when --http or STEPLINE_HTTP named the address: failing to bind it is
    # then fatal; the default address being taken only costs the dashboard.
    http_required: bool = False
    # Required from every HTTP client when set (header, cookie or ?token=); lets
    # HTTP bind beyond loopback.
    http_token: str | None = None
    # The socket's group: with one, the socket is 0660 so that group's users log.
    socket_group: str | None = None
    # Limits on what clients send, beyond the frame size. Keys per row can only be
    # lowered below the protocol's 10,000.
    max_keys_per_row: int = MAX_KEYS_PER_ROW
    max_value_len: int = 1024 * 1024  # characters of one string value
    max_runs_per_project: int = 100_000
    # From systemd, when it started us: where sd_notify messages go, how often
    # it wants a watchdog ping (seconds), and an inherited listening socket.
    notify_socket: str | None = None
    watchdog: float | None = None
    listen_fd: int | None = None

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ
    ) -> Settings:
        p = argparse.ArgumentParser(prog="stepline daemon", description="Run the stepline daemon.")
        p.add_argument("--data-dir", help="LMDB data dir (env STEPLINE_DATA_DIR; default XDG)")
        p.add_argument("--socket", help="Unix socket path (env STEPLINE_SOCKET; default XDG)")
        p.add_argument("--map-size", type=int, help="initial LMDB map size in bytes")
        p.add_argument("--read-threads", type=int)
        p.add_argument(
            "--read-processes", type=int, help="history read worker processes (default 2; 0: none)"
        )
        p.add_argument(
            "--http",
            help="HOST:PORT for the dashboard and JSON API, or off "
            f"(env STEPLINE_HTTP; default {DEFAULT_HTTP[0]}:{DEFAULT_HTTP[1]})",
        )
        p.add_argument(
            "--http-token",
            help="require this token of HTTP clients; allows a non-loopback --http "
            "(env STEPLINE_HTTP_TOKEN)",
        )
        p.add_argument(
            "--socket-group",
            help="group allowed to use the socket, mode 0660 (env STEPLINE_SOCKET_GROUP)",
        )
        p.add_argument("--max-frame", type=int, help=f"bytes per frame (default {MAX_FRAME_SIZE})")
        p.add_argument(
            "--max-keys-per-row",
            type=int,
            help=f"keys per row (default and most {MAX_KEYS_PER_ROW})",
        )
        p.add_argument(
            "--max-value-len", type=int, help="characters per string value (default 1 MiB)"
        )
        p.add_argument(
            "--max-runs-per-project", type=int, help="run ids per project (default 100000)"
        )
        p.add_argument(
            "--log-format",
            help="text, journal or json (env STEPLINE_LOG_FORMAT; journal when run by systemd)",
        )
        p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (env STEPLINE_LOG_LEVEL)")
        args = p.parse_args(argv)

        def pick(flag: object, name: str) -> str | None:
            if flag is not None:
                return str(flag)
            return env.get(ENV_PREFIX + name.upper()) or None

        data_dir = pick(args.data_dir, "data_dir")
        sock = pick(args.socket, "socket")
        kw: dict[str, object] = {
            "data_dir": Path(data_dir) if data_dir else paths.default_data_dir(env),
            "socket": Path(sock) if sock else paths.default_socket(env),
        }
        token = pick(args.http_token, "http_token")
        if token is not None:
            if len(token) < 16:
                p.error("--http-token must be at least 16 characters")
            kw["http_token"] = token
        http = pick(args.http, "http")
        if http is not None:
            try:
                kw["http"] = parse_http(http, token=token is not None)
                kw["http_required"] = True
            except ValueError as exc:
                p.error(str(exc))
        group = pick(args.socket_group, "socket_group")
        if group is not None:
            try:
                grp.getgrnam(group)
            except KeyError:
                p.error(f"--socket-group: no group named {group!r}")
            kw["socket_group"] = group
            kw["socket_mode"] = 0o660
        fmt = pick(args.log_format, "log_format") or (
            "journal" if env.get("JOURNAL_STREAM") else None
        )
        if fmt is not None:
            if fmt not in logs.FORMATS:
                p.error(f"log format must be one of {', '.join(logs.FORMATS)}, got {fmt!r}")
            kw["log_format"] = fmt
        level = pick(args.log_level, "log_level")
        if level is not None:
            if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                p.error(f"log level must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
            kw["log_level"] = level.upper()
        kw["notify_socket"] = env.get("NOTIFY_SOCKET") or None
        kw["watchdog"] = sdnotify.watchdog_interval(env, os.getpid())
        fds = sdnotify.listen_fds(env, os.getpid())
        if len(fds) > 1:
            p.error(f"systemd passed {len(fds)} sockets; stepline listens on one (ListenStream=)")
        kw["listen_fd"] = fds[0] if fds else None
        bounds = {
            "map_size": (args.map_size, 1024 * 1024),
            "read_threads": (args.read_threads, 1),
            "read_processes": (args.read_processes, 0),
            "max_frame": (args.max_frame, 64 * 1024),
            "max_keys_per_row": (args.max_keys_per_row, 1),
            "max_value_len": (args.max_value_len, 1),
            "max_runs_per_project": (args.max_runs_per_project, 1),
        }
        for name, (flag, least) in bounds.items():
            raw = pick(flag, name)
            if raw is None:
                continue
            try:
                kw[name] = value = int(raw)
            except ValueError:
                p.error(f"{name} must be an integer, got {raw!r}")
            if value < least:
                p.error(f"{name} must be at least {least}, got {value}")
        if kw.get("max_keys_per_row", 0) > MAX_KEYS_PER_ROW:  # type: ignore[operator]
            p.error(f"max_keys_per_row cannot exceed the protocol's {MAX_KEYS_PER_ROW}")
        if kw.get("max_frame", 0) > MAX_FRAME_SIZE:  # type: ignore[operator]
            p.error(f"max_frame cannot exceed the protocol's {MAX_FRAME_SIZE}")
        return cls(**kw)  # type: ignore[arg-type]
