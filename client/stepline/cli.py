"""The ``stepline`` command."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

USAGE = """usage: stepline COMMAND [ARGS]

commands:
  daemon    run the daemon in the foreground (stepline daemon --help)
  sync      deliver runs recorded with mode="offline" (stepline sync [--socket P] [FILE...])
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "daemon":
        try:
            from stepline_daemon.main import main as daemon_main
        except ImportError as exc:
            print(
                f"stepline daemon needs the daemon extra: pip install 'stepline[daemon]' ({exc})",
                file=sys.stderr,
            )
            return 1
        return daemon_main(rest)
    if cmd == "sync":
        return _sync(rest)
    print(f"stepline: unknown command {cmd!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


def _sync(argv: list[str]) -> int:
    import argparse

    from stepline import offline, paths
    from stepline.errors import Error
    from stepline.settings import ClientSettings

    ap = argparse.ArgumentParser(prog="stepline sync", description="Deliver offline runs.")
    ap.add_argument("--socket", help="daemon socket (env STEPLINE_SOCKET; default XDG)")
    ap.add_argument("files", nargs="*", type=Path, help="offline run files (default: all pending)")
    args = ap.parse_args(argv)
    settings = ClientSettings.from_env()
    files = args.files or offline.pending(settings)
    socket = paths.resolve_socket(args.socket)
    failed = 0
    for f in files:
        try:
            run_id, batches = offline.sync_file(f, socket)
        except (Error, OSError) as exc:
            print(f"{f.name}: not synced: {exc}", file=sys.stderr)
            failed += 1
            continue
        done = f.parent / "synced"
        done.mkdir(exist_ok=True)
        f.rename(done / f.name)  # kept: a later sync of it again is harmless
        print(f"{f.name}: run {run_id}, {batches} batches delivered")
    if not files:
        print("nothing to sync")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
