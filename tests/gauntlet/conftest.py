"""The gauntlet: crashes, faults, bad input and load, with figures.

`make test` runs the short form; `make gauntlet` sets ``STEPLINE_GAUNTLET=long``
for the long form and then writes the figures every test recorded into the
README (``python -m tests.gauntlet.report``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

LONG = os.environ.get("STEPLINE_GAUNTLET") == "long"
RESULTS = Path(__file__).parent / "results"


def scale(short: int, long: int) -> int:
    """A size for the short form (make test) or the long one (make gauntlet)."""
    return long if LONG else short


Record = Callable[..., None]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """``record(faults=..., acknowledged=..., lost=..., duplicates=..., recovery_s=...)``:
    one row of the README's gauntlet table, kept per test in ``results/``."""

    def write(**figures: Any) -> None:
        RESULTS.mkdir(exist_ok=True)
        name = request.node.name
        out = {"test": name, "form": "long" if LONG else "short", **figures}
        (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")

    return write
