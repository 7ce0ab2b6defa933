"""Write the gauntlet's recorded figures into the README, between markers.

``python -m tests.gauntlet.report`` (run by ``make gauntlet`` after the tests).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from tests.gauntlet.conftest import RESULTS

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- gauntlet:begin -->"
END = "<!-- gauntlet:end -->"
COLUMNS = [
    ("test", "scenario"),
    ("faults", "faults injected"),
    ("acknowledged", "rows acknowledged"),
    ("lost", "rows lost"),
    ("duplicates", "duplicates"),
    ("recovery_s", "longest recovery (s)"),
    ("notes", "notes"),
]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def table(results: list[dict[str, object]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    rows = ["| " + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + " |" for r in results]
    forms = sorted({str(r.get("form")) for r in results})
    stamp = (
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}, form: {', '.join(forms)}"
    )
    return "\n".join([stamp, "", head, rule, *rows])


def main() -> int:
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    if not results:
        print("no gauntlet results: run the gauntlet tests first", file=sys.stderr)
        return 1
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"{README} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")
    print(f"wrote {len(results)} gauntlet rows into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
