"""``backup``: a consistent, compacted copy of the store, taken while serving.

With a token, the copy is marked with it (``BACKUP_MARK`` in ``dest``): a
resend finds its own finished copy and gets the same answer, or its own
interrupted one and starts it again; anything else in ``dest`` is refused.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from stepline import protocol
from stepline.errors import RequestError
from stepline_daemon.faults import CrashPoints
from stepline_daemon.store.records import Store
from stepline_daemon.writer import ResizeGate

# Written into a backup's directory when the request carried a token: which
# request made it, and once done, its answer (for a resend after a lost reply).
BACKUP_MARK = "stepline-backup.json"
_MARKS = frozenset({BACKUP_MARK, BACKUP_MARK + ".tmp"})


def _read_mark(path: Path) -> dict[str, Any]:
    """The backup mark in ``path``, newest first (a rename may not have happened);
    {} when there is none that reads."""
    for name in (BACKUP_MARK + ".tmp", BACKUP_MARK):
        try:
            done = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(done, dict):
            return done
    return {}


def _write_mark(path: Path, done: dict[str, Any]) -> None:
    tmp = path / (BACKUP_MARK + ".tmp")
    tmp.write_text(json.dumps(done))
    tmp.replace(path / BACKUP_MARK)


def _remove(path: Path, names: set[str]) -> set[str]:
    """Remove these files of ``path``; the names left in it."""
    for name in names:
        (path / name).unlink(missing_ok=True)
    return {p.name for p in path.iterdir()}


class Backups:
    """Backups of one store; one at a time per destination."""

    def __init__(self, store: Store, gate: ResizeGate, crash: CrashPoints) -> None:
        self.store = store
        self.gate = gate
        self.crash = crash
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        """On a read thread: the ``backup`` request ``msg``, checked and carried out."""
        dest = msg.get("dest")
        if not isinstance(dest, str) or not os.path.isabs(dest):
            raise RequestError("backup: dest must be an absolute directory path")
        token = msg.get("token")
        if token is not None and (
            not isinstance(token, str) or not 0 < len(token) <= protocol.MAX_TOKEN
        ):
            raise RequestError(f"backup: token must be a 1-{protocol.MAX_TOKEN} character string")
        # One at a time per destination: a resend that arrives while the first
        # attempt still copies waits for it, then finds it done.
        with self._guard:
            lock = self._locks.setdefault(os.path.normpath(dest), threading.Lock())
        with lock:
            try:
                out = self._into(Path(dest), token)
            except OSError as exc:
                raise RequestError(f"backup: cannot write {dest}: {exc.strerror}") from None
        if self.crash:
            self.crash.reached("reply", "backup")
        return out

    def _into(self, path: Path, token: str | None) -> dict[str, Any]:
        path.mkdir(parents=True, exist_ok=True)
        names = {p.name for p in path.iterdir()}
        if token is not None and names:
            done = _read_mark(path)
            if done.get("token") == token:
                if "bytes" in done and "data.mdb" in names:  # answered already
                    return {"path": str(path), "bytes": done["bytes"]}
                names = _remove(path, names & {"data.mdb", *_MARKS})  # cut short: again
            elif not done and names <= _MARKS:
                names = _remove(path, names)  # only a mark torn as it was first written
        if names:
            raise RequestError(f"backup: {path} is not empty")
        if token is not None:
            _write_mark(path, {"token": token})
        with self.gate.shared():
            self.store.env.copy(str(path), compact=True)
        out = {"path": str(path), "bytes": (path / "data.mdb").stat().st_size}
        if token is not None:
            _write_mark(path, {"token": token, "bytes": out["bytes"]})
        return out
