"""Default locations, following the XDG base directory conventions.

Environment is read only when a default is asked for, at start-up; nothing here
is cached in a module global.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_DATA_HOME") or str(_home(env) / ".local" / "share")
    return Path(base) / "stepline"


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_STATE_HOME") or str(_home(env) / ".local" / "state")
    return Path(base) / "stepline"


def default_socket(env: Mapping[str, str] = os.environ) -> Path:
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "stepline.sock"
    # No per-user runtime dir (containers, cron): fall back to a private dir in
    # /tmp named after the uid, as other XDG-following tools do.
    return Path("/tmp") / f"stepline-{os.getuid()}" / "stepline.sock"


def resolve_socket(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str] = os.environ
) -> Path:
    """``explicit``, else ``STEPLINE_SOCKET``, else the XDG default."""
    if explicit:
        return Path(explicit)
    if env.get("STEPLINE_SOCKET"):
        return Path(env["STEPLINE_SOCKET"])
    return default_socket(env)
