"""The ``stepline`` command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: stepline COMMAND [ARGS]

commands:
  daemon    run the daemon in the foreground (stepline daemon --help)
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
    print(f"stepline: unknown command {cmd!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
