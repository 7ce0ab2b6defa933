"""What the commands that ask the daemon share: options, the error policy, output."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import select
import shutil
import sys
from collections.abc import Callable, Iterable

from stepline.api import Api
from stepline.commands import Command
from stepline.errors import Error

# Seconds a command waits for the daemon, retrying while it is away (a restart).
TIMEOUT = 30.0


def guarded(command: Command) -> Command:
    """``command`` with a stepline error as one line on stderr and exit 1."""

    @functools.wraps(command)
    def run(argv: list[str]) -> int:
        try:
            return command(argv)
        except Error as exc:
            print(f"stepline: {exc.message}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            return _broken_pipe()
        except OSError as exc:  # a connection the daemon dropped mid-request
            print(f"stepline: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstepline: interrupted", file=sys.stderr)
            return 130

    return run


def _broken_pipe() -> int:
    if _reader_gone():
        # `| head` stopped reading: stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    print("stepline: the connection to the daemon broke", file=sys.stderr)
    return 1


def _reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (not the daemon's socket)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):  # no file descriptor (captured output)
        return False


def fail(message: str) -> int:
    print(f"stepline: {message}", file=sys.stderr)
    return 1


def parser(
    command: str, description: str, timeout: float = TIMEOUT, reads: bool = False
) -> argparse.ArgumentParser:
    """A command's parser, with the ``--socket`` and ``--timeout`` every one takes;
    ``reads``: also ``--clickhouse``, to read the cluster store instead."""
    ap = argparse.ArgumentParser(prog=f"stepline {command}", description=description)
    ap.add_argument("--socket", help="daemon socket (env STEPLINE_SOCKET; default XDG)")
    if reads:
        ap.add_argument(
            "--clickhouse",
            metavar="URL",
            help="read the cluster store every node replicates into "
            "(http://user:password@host:8123/database), not this node's daemon",
        )
    ap.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="SECONDS",
        help="how long to wait for the daemon's answer, retrying while it restarts "
        f"(default {timeout:g})",
    )
    return ap


def add_run(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("run", metavar="PROJECT/RUN_ID", type=run_path, help="the run, as in Api.run()")


def run_path(text: str) -> str:
    project, _, run_id = text.partition("/")
    if not project or not run_id or "/" in run_id:
        raise argparse.ArgumentTypeError(f"expected PROJECT/RUN_ID, got {text!r}")
    return text


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def key_list(text: str) -> list[str]:
    """An argparse type: comma-separated keys, blanks and repeats dropped."""
    keys = list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not keys:
        raise argparse.ArgumentTypeError("expected comma-separated keys, e.g. loss,acc")
    return keys


def width() -> int | None:
    """The terminal's width when printing to one (or COLUMNS is set); else no limit."""
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def open_api(args: argparse.Namespace) -> Api:
    """An Api on the parsed ``--socket``, waiting up to ``--timeout``."""
    return Api(
        socket=args.socket, timeout=args.timeout, clickhouse=getattr(args, "clickhouse", None)
    )


def print_lines(lines: Iterable[str]) -> None:
    write = sys.stdout.write
    for line in lines:
        write(line + "\n")
