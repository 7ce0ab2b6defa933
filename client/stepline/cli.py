"""The ``stepline`` command: picks the subcommand; ``stepline.commands`` runs it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from stepline.commands import Command, daemon_main

USAGE = """usage: stepline COMMAND [ARGS]

commands:
  daemon    run the daemon in the foreground (stepline daemon --help)
  serve     the HTTP API and dashboard over the cluster store (stepline serve --clickhouse URL)
  sync      deliver runs recorded with mode="offline" (stepline sync [--socket P] [FILE...])
  runs      list the projects, or a project's runs (stepline runs [--project P])
  show      one run: state, lineage, rewinds, config, summary (stepline show PROJECT/RUN_ID)
  history   a run's rows as a table or CSV (stepline history PROJECT/RUN_ID [--csv] ...)
  tree      the fork tree a run belongs to (stepline tree PROJECT/RUN_ID)
  export    a run's whole history to a file (stepline export PROJECT/RUN_ID --format csv|parquet)
  status    report the running daemon; exit 1 when none answers (stepline status [--json])
  delete    delete a run; rows stay while forks read them (stepline delete PROJECT/RUN_ID [--purge])
  purge     remove the rows of deleted runs nothing reads any more (stepline purge)
  backup    a consistent, compacted copy of the store, taken live (stepline backup DEST)
  check     verify a store's files; exit 1 on a problem (stepline check [--data-dir DIR])
  systemd   write the systemd units (stepline systemd install [--user])

Every command but daemon and serve takes --socket PATH (default: $STEPLINE_SOCKET,
else $XDG_RUNTIME_DIR/stepline.sock); runs, show, tree, history and export take
--clickhouse URL to read the cluster store instead. COMMAND --help shows its options.
"""

# The module in stepline.commands that holds each command. main() imports only
# the one it runs: importing them all up front would add 15 ms or more (argparse,
# shutil, csv, json, tables, units...) to every start, `stepline --help` included.
MODULES = {
    "sync": "sync",
    "runs": "reads",
    "show": "reads",
    "tree": "reads",
    "history": "history",
    "export": "history",
    "status": "admin",
    "delete": "admin",
    "purge": "admin",
    "backup": "admin",
    "check": "admin",
    "systemd": "admin",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd in ("daemon", "serve"):
        main = daemon_main(cmd, "main" if cmd == "daemon" else "cluster.serve")
        return 1 if main is None else main(rest)
    if cmd not in MODULES:
        print(f"stepline: unknown command {cmd!r}\n{USAGE}", file=sys.stderr, end="")
        return 2
    command: Command = importlib.import_module(f"stepline.commands.{MODULES[cmd]}").COMMANDS[cmd]
    return command(rest)


if __name__ == "__main__":
    sys.exit(main())
