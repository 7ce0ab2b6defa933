"""``stepline sync``: deliver the runs recorded with ``mode="offline"``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stepline import offline, paths
from stepline.commands import Command
from stepline.errors import Error
from stepline.settings import ClientSettings


def sync(argv: list[str]) -> int:
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


# Not guarded: sync reports each file's failure itself and goes on to the next.
COMMANDS: dict[str, Command] = {"sync": sync}
