"""Offline mode: a run recorded to a file on disk, delivered later by ``stepline sync``.

The file holds checksummed records (the spool's format): a header with the
recording client's id, the ``init`` request, then the run's log batches and
updates in order, without run numbers or sequence numbers. ``sync`` replays a
file as that client, numbering the batches 1, 2, ...: the daemon's per (client,
run) sequence numbers make a repeated or interrupted sync exactly-once.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from stepline import protocol
from stepline.channel import Channel, Retry
from stepline.errors import DaemonUnavailable, RunExists, UsageError
from stepline.settings import ClientSettings
from stepline.spool import pack_record, read_records

SUFFIX = ".stepline"
BATCH_ROWS = 1000


def offline_dir(settings: ClientSettings) -> Path:
    return settings.spool_dir.parent / "offline"


class OfflineSender:
    """Stands in for the sender of one offline run: writes to its file, never to a socket."""

    def __init__(self, path: Path, socket: Path, settings: ClientSettings) -> None:
        self.path = socket  # where an os.fork() child would log to
        self.settings = settings
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._steps: list[int] = []
        self._values: list[bytes] = []
        self._write({"op": "offline", "client": os.urandom(16).hex(), "version": 1})

    def _write(self, msg: dict[str, Any]) -> None:
        os.write(self._fd, pack_record(protocol.encode(msg)))

    def _write_batch(self) -> None:
        if self._steps:
            self._write({"op": "log", "steps": self._steps, "values": self._values})
            self._steps, self._values = [], []

    def add_row(self, run: int, step: int, packed: bytes) -> bool:
        with self._lock:
            self._steps.append(step)
            self._values.append(packed)
            if len(self._steps) >= BATCH_ROWS:
                self._write_batch()
        return True

    def add_op(self, run: int, op: dict[str, Any]) -> int:
        with self._lock:
            self._write_batch()
            self._write(op)
        return 0

    def flush(self, timeout: float | None) -> None:
        with self._lock:
            self._write_batch()
            os.fsync(self._fd)

    def request(self, msg: dict[str, Any], timeout: float) -> Any:
        """Record the ``init``; answer it as the daemon will when the file is synced."""
        msg.setdefault(
            "id", "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
        )
        self._write(msg)
        fork = msg.get("fork_from")
        return {
            "run_no": 0,
            "id": msg["id"],
            "project": msg["project"],
            "name": msg.get("name") or msg["id"],
            "start_step": 0 if fork is None else fork[1] + 1,
            "config": msg.get("config") or {},
            "how": "offline",
        }


def check_init(msg: dict[str, Any]) -> None:
    if msg.get("resume") or msg.get("resume_from"):
        raise UsageError("offline runs cannot resume or rewind: their last step is not known here")


def pending(settings: ClientSettings) -> list[Path]:
    d = offline_dir(settings)
    return sorted(d.glob("*" + SUFFIX)) if d.exists() else []


def sync_file(path: Path, socket: Path, timeout: float = 60.0) -> tuple[str, int]:
    """Deliver one offline run; returns (run id, batches). Safe to repeat, so a
    daemon that goes away mid-sync (a restart) gets the whole file again, within
    ``timeout``."""
    retry = Retry(timeout)
    while True:
        try:
            return _sync_once(path, socket, retry)
        except DaemonUnavailable as exc:
            retry.pause(exc)


def _sync_once(path: Path, socket: Path, retry: Retry) -> tuple[str, int]:
    timeout = retry.left()
    records = iter(read_records(path))
    first = [_decode(r) for r in itertools.islice(records, 2)]
    if len(first) < 2 or first[0].get("op") != "offline" or first[1].get("op") != "init":
        raise UsageError(f"{path} is not a stepline offline run")
    header, init = first
    init.pop("rid", None)
    chan = Channel(socket, timeout)
    try:
        chan.send(
            protocol.encode(
                {"op": "hello", "client": header["client"], "version": protocol.PROTOCOL_VERSION}
            )
        )
        if chan.receive(time.monotonic() + timeout).get("op") != "welcome":
            raise UsageError(f"{socket} did not greet as a stepline daemon")
        try:
            info = chan.request(init, timeout)
        except RunExists:
            # Synced before, maybe in part: write to the same run, whose seqs make
            # the daemon acknowledge, not apply, what it already has. (Looked up,
            # not resumed: a resume would reopen a finished run.)
            found = chan.request(
                {"op": "info", "project": init["project"], "id": init["id"]}, timeout
            )
            if found.get("client") != header["client"]:
                raise RunExists(
                    f"run {init['id']!r} already exists in {init['project']!r} and was not "
                    f"made by this offline file ({path.name}); nothing was synced"
                ) from None
            info = {"run_no": found["run_no"]}
        run_no, sent = info["run_no"], 0
        for sent, frame in enumerate(records, start=1):
            msg = _decode(frame)
            msg.pop("run", None)  # files written before the run number was named run_no
            chan.send(protocol.encode({**msg, "run_no": run_no, "seq": sent}))
        for _ in range(sent):
            reply = chan.receive(time.monotonic() + timeout)
            if reply.get("op") != "ack":
                raise UsageError(
                    f"sync of {path.name}: the daemon refused a batch: {reply.get('message')}"
                )
        return init["id"], sent
    finally:
        chan.close()


def _decode(frame: bytes) -> dict[str, Any]:
    dec = protocol.Decoder()
    dec.feed(frame)
    msg = dec.next_message()
    assert msg is not None
    return msg
