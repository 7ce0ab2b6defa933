"""History reads in worker processes: failures stay one request's problem."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

import stepline
from tests.conftest import Daemon, wait_for


def _workers(daemon: Daemon) -> list[int]:
    """The daemon's read worker processes (spawned children running spawn_main)."""
    out = subprocess.run(["pgrep", "-P", str(daemon.pid)], capture_output=True, text=True)
    kids = [int(p) for p in out.stdout.split()]
    return [p for p in kids if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]


def _chart(daemon: Daemon, run_id: str) -> bytes:
    url = f"{daemon.http_url}/api/projects/p/runs/{run_id}/history?keys=x&samples=50&format=columns"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def _serving(daemon: Daemon) -> int:
    """How many read workers the daemon sends history reads to."""
    with stepline.Api(socket=str(daemon.socket)) as api:
        n: int = api.status()["read_workers"]
        return n


def test_a_dead_worker_is_replaced_and_reads_go_on(daemon: Daemon) -> None:
    run = stepline.init(project="p", id="r", socket=str(daemon.socket))
    for i in range(100):
        run.log({"x": i})
    run.finish()
    first = _chart(daemon, "r")  # starts the workers; read on a thread till they are up
    wait_for(lambda: _serving(daemon) == 2, 30, "the read workers to serve")
    assert _chart(daemon, "r") == first
    workers = _workers(daemon)
    assert workers, "history reads run in worker processes"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    assert _chart(daemon, "r") == first
    assert _chart(daemon, "r") == first
    assert "a read worker died" in daemon.log()


def test_a_reply_over_the_frame_limit_is_a_typed_error_and_reads_go_on(daemon: Daemon) -> None:
    run = stepline.init(project="p", id="big", socket=str(daemon.socket))
    blob = "z" * 200_000
    for i in range(100):
        run.log({"x": i, "blob": blob})  # 100 rows x 200 KB: a 20 MB reply
    run.finish()
    api = stepline.Api(socket=str(daemon.socket))
    with pytest.raises(stepline.RequestError, match="exceeds") as caught:
        api.run("p/big").history(samples=100, pandas=False)
    assert caught.value.code == "reply_too_large"
    # The pool survived: small reads still work, over the socket and HTTP.
    rows = api.run("p/big").history(keys=["x"], samples=10, pandas=False)
    assert rows[0]["x"] == 0 and rows[-1]["x"] == 99
    api.close()
    assert b'"x":[0' in _chart(daemon, "big")


def _ready(pid: int, daemon: Daemon) -> bool:
    """The worker opened the store (its initializer ran): data.mdb is mapped."""
    try:
        return str(daemon.data_dir / "data.mdb") in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


def test_read_workers_start_with_the_first_read(daemon: Daemon) -> None:
    run = stepline.init(project="p", id="r", socket=str(daemon.socket))
    run.log({"x": 1})
    run.finish()
    # A daemon that only ingests starts none (they cost CPU and memory) ...
    assert _workers(daemon) == [] and _serving(daemon) == 0
    api = stepline.Api(socket=str(daemon.socket))
    r = api.run("p/r")  # ... the first read of any kind starts them, in the background:
    # spawning one (a new interpreter, its imports, the store opened) once cost
    # the first chart ~120 ms; meanwhile heavy reads run on a read thread.
    wait_for(
        lambda: len(w := _workers(daemon)) == 2 and all(_ready(p, daemon) for p in w),
        30,
        "two read workers with the store open",
    )
    wait_for(lambda: _serving(daemon) == 2, 30, "the daemon to send reads to them")
    before = sorted(_workers(daemon))
    assert r.history(samples=10, pandas=False)[0]["x"] == 1
    assert _chart(daemon, "r")
    api.close()
    assert sorted(_workers(daemon)) == before  # served by them; none started late


def _marked(marker: bytes) -> list[int]:
    """Live processes whose environment holds ``marker``."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if marker in f.read():
                    out.append(int(entry.name))
        except OSError:
            continue  # gone, or not ours to read
    return out


def test_a_daemon_killed_while_its_workers_start_leaves_none_behind(short_tmp: Path) -> None:
    # Killed before a worker set its parent-death signal, the daemon once left it
    # waiting on the pool's queue for ever (hundreds over a test suite).
    marker = f"STEPLINE_TEST_WORKERS=w{os.getpid()}".encode()
    d = Daemon(short_tmp)
    d.env = {"STEPLINE_TEST_WORKERS": f"w{os.getpid()}"}
    d.start()
    daemon_pid = d.pid
    api = stepline.Api(socket=str(d.socket))
    with pytest.raises(stepline.RunNotFound):
        api.run("p/none")  # a read: the workers start
    api.close()
    wait_for(lambda: set(_marked(marker)) - {daemon_pid}, 30, "a read worker to be starting")
    d.kill()
    wait_for(lambda: not _marked(marker), 30, "the read workers to end with the daemon")
