"""The client's settings, read once when a process's sender starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stepline import paths
from stepline.errors import UsageError

POLICIES = ("spill", "block", "drop")


@dataclass(frozen=True)
class ClientSettings:
    # Bytes of rows a process holds in memory (queued, or sent and not yet
    # acknowledged) before the overflow policy applies.
    buffer_bytes: int = 64 * 1024 * 1024
    # spill: write the oldest queued rows to a spool file (the default);
    # block: log() waits for room, up to block_timeout, then drops;
    # drop: log() drops the row at once. Drops are counted in the run's stats.
    overflow: str = "spill"
    # The longest log() may wait for room (block policy, or a spill falling
    # behind a hung daemon) before it drops the row.
    block_timeout: float = 10.0
    spool_dir: Path = field(default_factory=lambda: paths.default_state_dir() / "spool")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ClientSettings:
        kw: dict[str, object] = {"spool_dir": paths.default_state_dir(env) / "spool"}
        try:
            if env.get("STEPLINE_BUFFER_BYTES"):
                kw["buffer_bytes"] = int(env["STEPLINE_BUFFER_BYTES"])
            if env.get("STEPLINE_BLOCK_TIMEOUT"):
                kw["block_timeout"] = float(env["STEPLINE_BLOCK_TIMEOUT"])
        except ValueError as exc:
            raise UsageError(f"stepline: bad buffer setting in the environment: {exc}") from None
        overflow = env.get("STEPLINE_OVERFLOW", "spill")
        if overflow not in POLICIES:
            raise UsageError(f"STEPLINE_OVERFLOW must be one of {POLICIES}, got {overflow!r}")
        kw["overflow"] = overflow
        return cls(**kw)  # type: ignore[arg-type]
