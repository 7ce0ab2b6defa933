"""The ``stepline`` subcommands, one module per group; ``stepline.cli`` dispatches.

Each module maps its command names to functions in ``COMMANDS``.
"""

from __future__ import annotations

from collections.abc import Callable

Command = Callable[[list[str]], int]
"""A subcommand: takes the arguments after its name, returns the exit status."""


def daemon_main(command: str, module: str) -> Command | None:
    """``main`` of the daemon's ``module``, or None (said on stderr) when the
    daemon, an optional extra absent from client-only installs, is missing.
    Imported only when the command runs, so the client never loads it."""
    import importlib
    import sys

    try:
        main: Command = importlib.import_module(f"stepline_daemon.{module}").main
    except ImportError as exc:
        print(
            f"stepline {command} needs the daemon extra: pip install 'stepline[daemon]' ({exc})",
            file=sys.stderr,
        )
        return None
    return main
