"""systemd units for the daemon, and ``stepline systemd install`` to put them in place.

The unit texts live here, as templates, so that an installed wheel carries
them. ``@STEPLINE@`` stands for the command that runs ``stepline``; rendering
replaces it with this environment's executable. The files in the repository's
``systemd/`` directory are this module's output for ``/usr/local/bin/stepline``
(where ``pip install`` as root puts the script), and a test keeps them equal;
regenerate them with::

    stepline systemd install --dir systemd --bin /usr/local/bin/stepline
    stepline systemd install --user --dir systemd/user --bin /usr/local/bin/stepline

Two sets of units:

* system (``/etc/systemd/system``): ``stepline.socket`` listens on
  ``/run/stepline/stepline.sock`` (mode 0660, group ``stepline``) and starts
  ``stepline.service`` on the first connection; the daemon runs as the system
  user ``stepline``, on ``/var/lib/stepline``, heavily sandboxed.
* user (``~/.config/systemd/user``, for ``systemctl --user``): the socket is
  ``$XDG_RUNTIME_DIR/stepline.sock`` and the data dir ``~/.local/share/stepline``,
  the defaults the client and an autostarted daemon use.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

PLACEHOLDER = "@STEPLINE@"
# The command the repository's systemd/ files name: pip's script dir as root.
DEFAULT_BIN = "/usr/local/bin/stepline"
SYSTEM_DIR = Path("/etc/systemd/system")
SOCKET_NAME = "stepline.socket"
SERVICE_NAME = "stepline.service"
SYSTEM_SOCKET_PATH = "/run/stepline/stepline.sock"  # %t/stepline/stepline.sock
# What the daemon needs importable; `pip install 'stepline[daemon]'` brings them.
DAEMON_EXTRA = ("lmdb", "uvloop", "aiohttp")
# Hidden from the system service by ProtectHome=yes and PrivateTmp=yes.
HIDDEN_FROM_SERVICE = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")

_HEADER = "# Written by `stepline systemd install`; override with `systemctl edit`, not here.\n"

SYSTEM_SOCKET = (
    _HEADER
    + """\
[Unit]
Description=stepline metrics store socket

[Socket]
ListenStream=%t/stepline/stepline.sock
SocketUser=stepline
SocketGroup=stepline
# Members of the group stepline may log runs and read them.
SocketMode=0660
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""
)

SYSTEM_SERVICE = (
    _HEADER
    + """\
[Unit]
Description=stepline metrics store daemon
Requires=stepline.socket
After=stepline.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=@STEPLINE@ daemon --data-dir %S/stepline --socket %t/stepline/stepline.sock
SyslogIdentifier=stepline
# HTTP (dashboard, /metrics) takes the daemon's default, 127.0.0.1:7750: if that
# port is taken only the dashboard is lost, never ingestion. A drop-in with
# Environment=STEPLINE_HTTP=HOST:PORT names another (then a taken port fails
# the start) or `off`.
User=stepline
Group=stepline
StateDirectory=stepline
StateDirectoryMode=0700
# stepline.socket creates /run/stepline and the socket in it before this
# service starts. Without Preserve, stopping the service would remove the
# directory, and with it the socket systemd still listens on.
RuntimeDirectory=stepline
RuntimeDirectoryPreserve=yes
UMask=0077
# The ping comes at half this interval, and only while the writer thread
# commits; a wedged writer gets the daemon restarted.
WatchdogSec=30s
Restart=on-failure
RestartSec=2s
# SIGTERM drains: up to 30 s for queued writes, 5 s for connections, 30 s for
# the writer thread. Only the daemon gets it; it winds down its own workers.
KillMode=mixed
TimeoutStopSec=90s

CapabilityBoundingSet=
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
IPAddressDeny=any
IPAddressAllow=localhost
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
Also=stepline.socket
"""
)

USER_SOCKET = (
    _HEADER
    + """\
[Unit]
Description=stepline metrics store socket

[Socket]
# The client's default socket: $XDG_RUNTIME_DIR/stepline.sock.
ListenStream=%t/stepline.sock
SocketMode=0600
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""
)

USER_SERVICE = (
    _HEADER
    + """\
[Unit]
Description=stepline metrics store daemon
Requires=stepline.socket
After=stepline.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=@STEPLINE@ daemon --data-dir %h/.local/share/stepline --socket %t/stepline.sock
SyslogIdentifier=stepline
# HTTP stays at the daemon's default, 127.0.0.1:7750 when free: another user's
# daemon may hold that port, which then costs this one the dashboard only.
# Environment=STEPLINE_HTTP=127.0.0.1:7751
UMask=0077
WatchdogSec=30s
Restart=on-failure
RestartSec=2s
KillMode=mixed
TimeoutStopSec=90s

# Only what works without privileges and without user namespaces: seccomp.
NoNewPrivileges=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

[Install]
WantedBy=default.target
Also=stepline.socket
"""
)


def templates(user: bool) -> dict[str, str]:
    """Unit name to template text, with ``@STEPLINE@`` still in it."""
    if user:
        return {SOCKET_NAME: USER_SOCKET, SERVICE_NAME: USER_SERVICE}
    return {SOCKET_NAME: SYSTEM_SOCKET, SERVICE_NAME: SYSTEM_SERVICE}


def render(command: Sequence[str], user: bool) -> dict[str, str]:
    """The units, their ``ExecStart=`` running ``command`` (argv: the stepline executable)."""
    line = exec_line(command)
    return {name: text.replace(PLACEHOLDER, line) for name, text in templates(user).items()}


_PLAIN = re.compile(r"[A-Za-z0-9_./+,=:@-]+")
# systemd refuses an executable path holding any of these (string_is_safe()).
_UNSAFE_IN_PATH = frozenset("\"'\\")


def _quoted(word: str) -> str:
    return (
        word
        if _PLAIN.fullmatch(word)
        else '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )


def exec_line(command: Sequence[str]) -> str:
    """``command`` as the words of an ``ExecStart=`` line, quoted where needed.

    systemd expands ``%`` specifiers everywhere and ``$VAR`` in the arguments
    (not in the executable's path); both are escaped so neither happens.
    """
    if not command or not os.path.isabs(command[0]):
        raise ValueError(f"ExecStart needs an absolute executable path, got {command!r}")
    for arg in command:
        if any(ord(c) < 0x20 or c == "\x7f" for c in arg):
            raise ValueError(f"control character in {arg!r}")
    exe, *args = command
    if _UNSAFE_IN_PATH.intersection(exe):
        raise ValueError(f"systemd cannot run an executable whose path holds quotes or \\: {exe}")
    words = [_quoted(exe.replace("%", "%%"))]
    words += [_quoted(a.replace("%", "%%").replace("$", "$$")) for a in args]
    return " ".join(words)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def default_command(argv0: str | None = None) -> list[str]:
    """How the units should run this environment's ``stepline``.

    The ``stepline`` script running now, else the one in this interpreter's
    script directory, else this interpreter with ``-m stepline.cli``. Paths are
    made absolute but not resolved: a venv's ``bin/python`` symlink is what
    selects the venv.
    """
    running = Path(sys.argv[0] if argv0 is None else argv0)
    if running.name == "stepline" and _executable(running):
        return [os.path.abspath(running)]
    scripts = Path(sysconfig.get_path("scripts")) / "stepline"
    if _executable(scripts):
        return [os.path.abspath(scripts)]
    return [os.path.abspath(sys.executable), "-m", "stepline.cli"]


def user_unit_dir(env: Mapping[str, str]) -> Path:
    """Where ``systemctl --user`` looks for the units a user wrote."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "systemd" / "user"


def hidden_paths(command: Sequence[str], own_env: bool) -> list[str]:
    """Paths the system service must read that its sandbox hides: the executable
    (and, for this environment's, the interpreter and the stepline package)."""
    paths = [command[0], os.path.realpath(command[0])]
    if own_env:
        paths += [os.path.realpath(sys.executable), str(Path(__file__).resolve().parent)]
    hidden = []
    for p in dict.fromkeys(paths):
        if any(p == top or p.startswith(top + "/") for top in HIDDEN_FROM_SERVICE):
            hidden.append(p)
    return hidden


def _missing_extra() -> list[str]:
    return [m for m in DAEMON_EXTRA if importlib.util.find_spec(m) is None]


def _write(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` atomically; what happened, as a word."""
    try:
        if path.read_text() == text:
            return "unchanged"
        verb = "updated"
    except FileNotFoundError:
        verb = "wrote"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)
    return verb


def next_steps(user: bool, unit_dir: Path, default_dir: Path) -> list[str]:
    """What to run after the units are written, as lines for a human."""
    lines = []
    if unit_dir != default_dir:
        lines.append(f"copy them to {default_dir}, then:")
    if user:
        lines += [
            "# a daemon stepline.init() started holds the socket and data dir: stop it",
            "# first (`stepline status` shows its pid)",
            "systemctl --user daemon-reload",
            "systemctl --user enable --now stepline.socket",
            "# optional, to start it at login rather than on the first connection",
            "# (the dashboard is served only while the daemon runs):",
            "systemctl --user enable stepline.service",
            "# to keep it running while you are logged out: loginctl enable-linger",
            "# clients find it at $XDG_RUNTIME_DIR/stepline.sock, their default",
        ]
        return lines
    lines += [
        "getent passwd stepline >/dev/null || useradd --system --user-group "
        "--home-dir /var/lib/stepline --no-create-home --shell /usr/sbin/nologin stepline",
        "systemctl daemon-reload",
        "systemctl enable --now stepline.socket",
        "# optional, to start it at boot rather than on the first connection",
        "# (the dashboard is served only while the daemon runs):",
        "systemctl enable stepline.service",
        "# each user whose jobs log to it: usermod -aG stepline USER (then log in again)",
        f"# clients: export STEPLINE_SOCKET={SYSTEM_SOCKET_PATH}",
    ]
    return lines


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stepline systemd", description="systemd units for stepline.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inst = sub.add_parser(
        "install",
        help="write the units (system, or --user)",
        description="Write stepline.socket and stepline.service, their ExecStart running "
        "this environment's stepline, and print the commands that enable them.",
    )
    inst.add_argument(
        "--user",
        action="store_true",
        help="units for systemctl --user (default: system units, run as user stepline)",
    )
    inst.add_argument(
        "--dir",
        type=Path,
        help="write them here (default: /etc/systemd/system, or ~/.config/systemd/user)",
    )
    inst.add_argument(
        "--bin",
        metavar="PATH",
        help="the stepline executable the units run (default: this environment's)",
    )
    inst.add_argument(
        "--dry-run", action="store_true", help="print the units instead of writing them"
    )
    return ap


class _Refused(Exception):
    """The units cannot be installed; the message says why, for a human."""


def _command_and_warnings(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The command the units run, and what the user should hear about it."""
    own_env = args.bin is None
    command = default_command() if own_env else [os.path.abspath(args.bin)]
    warnings = []
    if own_env:
        missing = _missing_extra()
        if missing:
            raise _Refused(
                f"this environment cannot run the daemon (missing {', '.join(missing)}): "
                "pip install 'stepline[daemon]', or pass --bin"
            )
    elif not _executable(Path(command[0])):
        warnings.append(f"{command[0]} is not an executable file (yet)")
    if not args.user:
        hidden = hidden_paths(command, own_env)
        if hidden:
            warnings.append(
                f"the service cannot start from {', '.join(hidden)}: its sandbox "
                "(ProtectHome=yes, PrivateTmp=yes) hides that. Install stepline where "
                "it can read it, e.g. /usr/bin/python3 -m venv /opt/stepline && "
                "/opt/stepline/bin/pip install 'stepline[daemon]', then run "
                "/opt/stepline/bin/stepline systemd install"
            )
    return command, warnings


def _install(args: argparse.Namespace, units: dict[str, str], unit_dir: Path) -> int:
    for name, text in units.items():
        path = unit_dir / name
        try:
            verb = _write(path, text)
        except OSError as exc:
            hint = "" if args.user or args.dir else " (run it as root, or pass --user or --dir)"
            print(f"stepline systemd: cannot write {path}: {exc.strerror}{hint}", file=sys.stderr)
            return 1
        print(f"{verb} {path}")
    return 0


def main(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> int:
    """``stepline systemd install [--user] [--dir DIR] [--bin PATH] [--dry-run]``;
    ``argv`` holds the words after ``stepline systemd``."""
    args = _parser().parse_args(list(argv))
    try:
        command, warnings = _command_and_warnings(args)
    except _Refused as exc:
        print(f"stepline systemd: {exc}", file=sys.stderr)
        return 1
    try:
        units = render(command, args.user)
    except ValueError as exc:
        print(f"stepline systemd: {exc}", file=sys.stderr)
        return 2
    default_dir = user_unit_dir(env) if args.user else SYSTEM_DIR
    unit_dir: Path = args.dir if args.dir is not None else default_dir
    for w in warnings:
        print(f"stepline systemd: warning: {w}", file=sys.stderr)
    if args.dry_run:
        for name, text in units.items():
            print(f"# --- {unit_dir / name} ---")
            print(text)
        return 0
    if _install(args, units, unit_dir):
        return 1
    print("next:")
    for line in next_steps(args.user, unit_dir, default_dir):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
