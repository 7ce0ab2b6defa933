"""The daemon's log formats."""

from __future__ import annotations

import json
import logging
import sys

from stepline_daemon.logs import JournalFormatter, JsonFormatter


def _record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("stepline.writer", level, __file__, 1, msg, (), info)


def test_journal_lines_carry_the_priority_on_every_line() -> None:
    f = JournalFormatter()
    assert f.format(_record(logging.INFO, "ready")) == "<6>stepline.writer: ready"
    assert f.format(_record(logging.WARNING, "w")).startswith("<4>")
    lines = f.format(_record(logging.ERROR, "commit failed", exc=True)).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


def test_json_lines_are_one_object_each() -> None:
    line = JsonFormatter().format(_record(logging.ERROR, "commit failed", exc=True))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "error" and obj["logger"] == "stepline.writer"
    assert obj["msg"] == "commit failed" and "ValueError: boom" in obj["exc"]
