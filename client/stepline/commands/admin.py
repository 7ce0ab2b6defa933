"""Operator commands: ``stepline status``, ``delete``, ``purge``, ``backup``.

Each asks the running daemon over its socket; ``stepline check`` (which reads
the store files) lives with the daemon, in ``stepline_daemon.check``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

from stepline import units
from stepline.api import Api
from stepline.commands import Command, daemon_main
from stepline.commands.common import add_run, guarded, parser
from stepline.errors import DaemonUnavailable, Error


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def _cluster_line(c: dict[str, object] | None) -> str:
    """Replication, in one line: where to, and how far behind."""
    if not c:
        return "off (this node stands alone)"
    lag = f"lag {c['lag_rows']:,} rows, {c['lag_seconds']:.1f} s"
    health = "connected" if c["connected"] else f"NOT REACHED ({c['last_error'] or 'not yet'})"
    return f"{c['url']} as node {c['node']}: {health}; {lag}"


def status(argv: list[str]) -> int:
    """Exit 0 with a report when a daemon answers; 1 when none does."""
    ap = parser("status", "Report the running daemon; exit non-zero when none answers.", timeout=5)
    ap.add_argument("--json", action="store_true", help="the daemon's report as JSON")
    args = ap.parse_args(argv)
    api = Api(socket=args.socket, timeout=args.timeout)
    try:
        s = api.status()
    except (DaemonUnavailable, Error) as exc:
        print(f"stepline: no daemon answers on {api.socket}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        api.close()
    if args.json:
        print(json.dumps(s, indent=2, sort_keys=True))
        return 0
    errors = ", ".join(f"{c} {n}" for c, n in sorted(s["errors"].items())) or "none"
    lines = [
        (
            "daemon",
            f"running, pid {s['pid']}, stepline {s['version']}, up {_duration(s['uptime'])}",
        ),
        ("data dir", s["data_dir"]),
        ("socket", s["socket"]),
        ("dashboard", s["http"] or "off"),
        ("clients", str(s["clients"])),
        ("ingested", f"{s['rows']:,} rows in {s['batches']:,} requests, {s['commits']:,} commits"),
        ("queued", f"{s['queued_requests']} requests, {s['queued_bytes']:,} bytes"),
        ("writer", "healthy" if s["writer_healthy"] else "STUCK"),
        ("read workers", str(s.get("read_workers", 0))),
        ("errors", errors),
        ("cluster", _cluster_line(s.get("cluster"))),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0 if s["writer_healthy"] else 1


def delete(argv: list[str]) -> int:
    ap = parser(
        "delete",
        "Delete a run (every timeline of its id). Soft while forks read its rows: the id is "
        "free again and reads no longer find it. --purge also removes the rows, refused "
        "while a fork that is not deleted reads them.",
    )
    add_run(ap)
    ap.add_argument("--purge", action="store_true", help="remove the rows for good too")
    ap.add_argument(
        "--force", action="store_true", help="also a run that crashed in the last minute"
    )
    args = ap.parse_args(argv)
    with Api(socket=args.socket, timeout=args.timeout) as api:
        out = api.delete(args.run, purge=args.purge, force=args.force)
    what = f"deleted {args.run} ({out['timelines']} timelines)"
    if args.purge:
        what += f"; purged {out['purged']} timelines, {out['rows']:,} rows"
    else:
        what += "; rows kept until `stepline purge` finds nothing reading them"
    print(what)
    return 0


def purge(argv: list[str]) -> int:
    ap = parser("purge", "Remove the rows of every deleted run that no live fork reads.")
    args = ap.parse_args(argv)
    with Api(socket=args.socket, timeout=args.timeout) as api:
        out = api.purge()
    print(
        f"purged {out['purged']} timelines, {out['rows']:,} rows; "
        f"{out['kept']} deleted timelines kept (live forks read them)"
    )
    return 0


def backup(argv: list[str]) -> int:
    ap = parser(
        "backup",
        "Have the daemon write a consistent, compacted copy of its store to DEST while it "
        "keeps serving. DEST must be new or empty, and writable by the daemon's user.",
        timeout=3600,
    )
    ap.add_argument("dest", type=Path, help="a directory (created if missing)")
    args = ap.parse_args(argv)
    with Api(socket=args.socket, timeout=args.timeout) as api:
        out = api.backup(os.path.abspath(args.dest))
    print(
        f"backed up to {out['path']} ({out['bytes']:,} bytes); check it: stepline check --data-dir {out['path']}"
    )
    return 0


def check(argv: list[str]) -> int:
    check_main = daemon_main("check", "check")
    return 2 if check_main is None else check_main(argv)


COMMANDS: dict[str, Command] = {
    "status": guarded(status),
    "delete": guarded(delete),
    "purge": guarded(purge),
    "backup": guarded(backup),
    "check": guarded(check),
    "systemd": guarded(units.main),
}
