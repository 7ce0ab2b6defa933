"""A read worker process: history reads, off the daemon's interpreter.

Decoding and downsampling thousands of rows is pure Python work; done on the
daemon's threads it takes the GIL from the event loop and the writer, and
ingest slows by a third while a dashboard reads (bench: readers). Here it runs
in its own interpreter, at a lower CPU priority, on its own read-only LMDB
handle, and returns rendered bytes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path
from typing import Any

import lmdb

from stepline_daemon import ops, render
from stepline_daemon.store import Store
from stepline_daemon.store.reads import LmdbReads

NICE = 10

_store: Store | None = None


def start(data_dir: str, daemon_pid: int) -> None:
    """Process initializer: die with the daemon, step aside for ingest, open the store."""
    global _store
    # PR_SET_PDEATHSIG: a SIGKILLed daemon must not leave workers behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    if os.getppid() != daemon_pid:
        # The daemon died before the line above ran: no signal will come, and
        # this process would wait on the pool's queue for ever.
        os._exit(0)
    os.nice(NICE)
    _store = Store(Path(data_dir), map_size=0, readonly=True)


def ready() -> bool:
    """A task that only makes the pool start a worker (the daemon does so on its first read)."""
    return _store is not None


def run(op: str, msg: dict[str, Any], spec: render.Spec) -> Any:
    store = _store
    assert store is not None, "read worker used before start()"
    for _ in range(5):
        try:
            with store.env.begin() as txn:
                result = ops.answer(LmdbReads(store, txn), op, msg)
            break
        except lmdb.MapResizedError:
            # The daemon grew the map since this process last looked: adopt it.
            store.env.set_mapsize(0)
    else:
        raise lmdb.MapResizedError("the LMDB map kept growing during a read")
    return render.render(spec, result)
