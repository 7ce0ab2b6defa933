"""The daemon's settings: built once at start-up from flags, environment, defaults.

Nothing else in the daemon reads ``os.environ`` for its configuration;
everything it needs to know is on the frozen :class:`Settings` it was handed.
(The one other read is ``faults``: crash points for test suites, not a setting.)
"""

from __future__ import annotations

import argparse
import grp
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from socket import gethostname
from typing import Any

from stepline import paths
from stepline.protocol import MAX_FRAME_SIZE
from stepline.rows import MAX_KEYS_PER_ROW
from stepline_daemon import logs, sdnotify
from stepline_daemon.cluster.url import BadClusterUrl, ClusterUrl

ENV_PREFIX = "STEPLINE_"
# The dashboard and JSON API; loopback only (issue: security).
DEFAULT_HTTP = ("127.0.0.1", 7750)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_NODE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


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
    # Where this node replicates its runs (a ClickHouse server's HTTP
    # interface), and the name its runs carry there. None: the node stands alone.
    clickhouse: ClusterUrl | None = None
    node: str = field(default_factory=gethostname)

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ
    ) -> Settings:
        """Parse ``argv`` and resolve it against ``env``; bad values exit as argparse does."""
        p = parser()
        args = p.parse_args(argv)
        try:
            return cls.from_sources(args, env)
        except SettingsError as exc:
            p.error(str(exc))

    @classmethod
    def from_sources(cls, args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
        """Validate parsed flags, falling back to ``STEPLINE_*`` in ``env``.

        Raises :class:`SettingsError` for the first bad value, in a fixed order so
        a command line with several mistakes always names the same one.
        """
        src = _Sources(args, env)
        data_dir = src.pick("data_dir")
        sock = src.pick("socket")
        kw: dict[str, object] = {
            "data_dir": Path(data_dir) if data_dir else paths.default_data_dir(env),
            "socket": Path(sock) if sock else paths.default_socket(env),
        }
        kw.update(_http_settings(src))
        kw.update(_socket_group(src))
        kw.update(_log_settings(src))
        kw.update(_systemd(env))
        kw.update(_limits(src))
        kw.update(_cluster(src))
        return cls(**kw)  # type: ignore[arg-type]


class SettingsError(ValueError):
    """A flag or environment value the daemon cannot start with."""


# Flags whose value is an integer with a floor; the environment gives them as text.
_LOWER_BOUNDS = {
    "map_size": 1024 * 1024,
    "read_threads": 1,
    "read_processes": 0,
    "max_frame": 64 * 1024,
    "max_keys_per_row": 1,
    "max_value_len": 1,
    "max_runs_per_project": 1,
}
# Limits clients are told by the protocol itself: the daemon may only be stricter.
_UPPER_BOUNDS = {
    "max_keys_per_row": MAX_KEYS_PER_ROW,
    "max_frame": MAX_FRAME_SIZE,
}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _defaults() -> dict[str, Any]:
    """Settings' field defaults, so the help text always states the real ones."""
    return {f.name: f.default for f in fields(Settings) if f.default is not MISSING}


def _mebibytes(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else str(n)


def parser() -> argparse.ArgumentParser:
    """The daemon's command line."""
    d = _defaults()
    host, port = d["http"]
    keys = d["max_keys_per_row"]
    keys_help = (
        f"default and most {keys}"
        if keys == MAX_KEYS_PER_ROW
        else f"default {keys}, most {MAX_KEYS_PER_ROW}"
    )
    p = argparse.ArgumentParser(prog="stepline daemon", description="Run the stepline daemon.")
    p.add_argument("--data-dir", help="LMDB data dir (env STEPLINE_DATA_DIR; default XDG)")
    p.add_argument("--socket", help="Unix socket path (env STEPLINE_SOCKET; default XDG)")
    p.add_argument("--map-size", type=int, help="initial LMDB map size in bytes")
    p.add_argument("--read-threads", type=int)
    p.add_argument(
        "--read-processes",
        type=int,
        help=f"history read worker processes (default {d['read_processes']}; 0: none)",
    )
    p.add_argument(
        "--http",
        help=f"HOST:PORT for the dashboard and JSON API, or off (env STEPLINE_HTTP; default {host}:{port})",
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
    p.add_argument("--max-frame", type=int, help=f"bytes per frame (default {d['max_frame']})")
    p.add_argument("--max-keys-per-row", type=int, help=f"keys per row ({keys_help})")
    p.add_argument(
        "--max-value-len",
        type=int,
        help=f"characters per string value (default {_mebibytes(d['max_value_len'])})",
    )
    p.add_argument(
        "--max-runs-per-project",
        type=int,
        help=f"run ids per project (default {d['max_runs_per_project']})",
    )
    p.add_argument(
        "--log-format",
        help="text, journal or json (env STEPLINE_LOG_FORMAT; journal when run by systemd)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (env STEPLINE_LOG_LEVEL)")
    p.add_argument(
        "--clickhouse",
        metavar="URL",
        help="replicate into this ClickHouse: http://user:password@host:8123/database "
        "(env STEPLINE_CLICKHOUSE; default: the node stands alone)",
    )
    p.add_argument(
        "--node", help="this node's name in the cluster (env STEPLINE_NODE; default the host name)"
    )
    return p


class _Sources:
    """Parsed flags over the environment: a flag given wins over ``STEPLINE_<NAME>``."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str]) -> None:
        self.args = args
        self.env = env

    def pick(self, name: str) -> str | None:
        flag = getattr(self.args, name)
        if flag is not None:
            return str(flag)
        # An empty variable counts as unset, as a shell's ``VAR= cmd`` intends.
        return self.env.get(ENV_PREFIX + name.upper()) or None


def _http_settings(src: _Sources) -> dict[str, object]:
    kw: dict[str, object] = {}
    token = src.pick("http_token")
    if token is not None:
        if len(token) < 16:
            raise SettingsError("--http-token must be at least 16 characters")
        kw["http_token"] = token
    http = src.pick("http")
    if http is not None:
        # parse_http's messages already name the flag.
        try:
            kw["http"] = parse_http(http, token=token is not None)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        kw["http_required"] = True
    return kw


def _socket_group(src: _Sources) -> dict[str, object]:
    group = src.pick("socket_group")
    if group is None:
        return {}
    # Checked now: a typo would otherwise surface only when chown fails at bind.
    try:
        grp.getgrnam(group)
    except KeyError:
        raise SettingsError(f"--socket-group: no group named {group!r}") from None
    return {"socket_group": group, "socket_mode": 0o660}


def _log_settings(src: _Sources) -> dict[str, object]:
    kw: dict[str, object] = {}
    fmt = src.pick("log_format") or ("journal" if src.env.get("JOURNAL_STREAM") else None)
    if fmt is not None:
        if fmt not in logs.FORMATS:
            raise SettingsError(f"log format must be one of {', '.join(logs.FORMATS)}, got {fmt!r}")
        kw["log_format"] = fmt
    level = src.pick("log_level")
    if level is not None:
        if level.upper() not in _LOG_LEVELS:
            raise SettingsError(f"log level must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        kw["log_level"] = level.upper()
    return kw


def _cluster(src: _Sources) -> dict[str, object]:
    kw: dict[str, object] = {}
    url = src.pick("clickhouse")
    if url is not None:
        try:
            kw["clickhouse"] = ClusterUrl.parse(url)
        except BadClusterUrl as exc:
            raise SettingsError(f"--clickhouse: {exc}") from None
    node = src.pick("node")
    if node is not None:
        if not _NODE_RE.fullmatch(node):
            raise SettingsError(
                f"--node {node!r}: 1-64 letters, digits, '.', '_' or '-', as host names are"
            )
        kw["node"] = node
    return kw


def _systemd(env: Mapping[str, str]) -> dict[str, object]:
    fds = sdnotify.listen_fds(env, os.getpid())
    if len(fds) > 1:
        raise SettingsError(
            f"systemd passed {len(fds)} sockets; stepline listens on one (ListenStream=)"
        )
    return {
        "notify_socket": env.get("NOTIFY_SOCKET") or None,
        "watchdog": sdnotify.watchdog_interval(env, os.getpid()),
        "listen_fd": fds[0] if fds else None,
    }


def _limits(src: _Sources) -> dict[str, int]:
    kw: dict[str, int] = {}
    for name, least in _LOWER_BOUNDS.items():
        raw = src.pick(name)
        if raw is None:
            continue
        try:
            kw[name] = value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if value < least:
            raise SettingsError(f"{name} must be at least {least}, got {value}")
    for name, most in _UPPER_BOUNDS.items():
        if kw.get(name, 0) > most:
            raise SettingsError(f"{name} cannot exceed the protocol's {most}")
    return kw
