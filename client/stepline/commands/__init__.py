"""The ``stepline`` subcommands, one module per group; ``stepline.cli`` dispatches.

Each module maps its command names to functions in ``COMMANDS``.
"""

from __future__ import annotations

from collections.abc import Callable

Command = Callable[[list[str]], int]
"""A subcommand: takes the arguments after its name, returns the exit status."""
