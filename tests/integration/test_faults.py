"""Faults with real parts: a full disk, a daemon restart, a forked client process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepline
from tests.conftest import Daemon

P = "faults"


@pytest.fixture
def tiny_disk(short_tmp: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs the test can fill, then grow."""
    mnt = short_tmp / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to make a small filesystem")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_keeps_rows_and_recovers(short_tmp: Path, tiny_disk: Path) -> None:
    d = Daemon(short_tmp)
    d.data_dir = tiny_disk / "data"
    d.start()
    try:
        run = stepline.init(project=P, id="big", socket=str(d.socket))
        blob = "x" * 2000
        n = 3000  # ~6 MB of rows: cannot fit in 2 MiB
        for i in range(n):
            run.log({"i": i, "blob": blob})
        with pytest.raises(stepline.Timeout, match="storage") as caught:
            run.flush(timeout=3)  # the disk is full: not everything can be acknowledged
        assert isinstance(caught.value.__cause__, stepline.StorageFull)  # the typed reason
        api = stepline.Api(socket=str(d.socket))
        stored = api.run(f"{P}/big").last_step
        assert stored < n - 1  # reads still work while the disk is full
        assert len(list(api.run(f"{P}/big").scan_history())) == stored + 1
        with urllib.request.urlopen(d.http_url + f"/api/projects/{P}/runs/big") as resp:
            assert json.loads(resp.read())["last_step"] == stored  # HTTP reads too
        with urllib.request.urlopen(d.http_url + "/metrics") as resp:
            assert 'stepline_errors_total{code="storage_full"}' in resp.read().decode()
        assert "commit failed" in d.log()

        subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
        run.flush(timeout=60)  # the client kept every row and resends them
        run.finish()
        rows = list(api.run(f"{P}/big").scan_history(keys=["i"]))
        assert [r["i"] for r in rows] == list(range(n))
    finally:
        assert d.stop() == 0


def test_restart_marks_orphaned_runs_crashed_until_they_write(daemon: Daemon) -> None:
    run = stepline.init(project=P, id="idle", socket=str(daemon.socket))
    run.log({"a": 0})
    run.flush()
    assert daemon.stop() == 0
    daemon.start()
    api = stepline.Api(socket=str(daemon.socket))
    assert api.run(f"{P}/idle").state == "crashed"
    run.log({"a": 1})
    run.flush(timeout=30)
    assert api.run(f"{P}/idle").state == "running"
    run.finish()
    r = api.run(f"{P}/idle")
    assert r.state == "finished" and r.last_step == 1


def test_oversized_update_is_refused_at_the_call_and_loses_nothing(daemon: Daemon) -> None:
    run = stepline.init(project=P, id="upd", socket=str(daemon.socket))
    run.log({"a": 1})
    with pytest.raises(ValueError, match="limit"):
        run.config.update({"huge": "x" * (9 * 1024 * 1024)})
    run.log({"a": 2})
    run.finish()
    r = stepline.Api(socket=str(daemon.socket)).run(f"{P}/upd")
    assert [row["a"] for row in r.scan_history()] == [1, 2]
    assert "huge" not in r.config


def test_forked_child_gets_its_own_sender(daemon: Daemon) -> None:
    script = textwrap.dedent(f"""
        import os, sys, stepline
        S = {str(daemon.socket)!r}
        parent = stepline.init(project={P!r}, id="forker", socket=S)
        for i in range(100):
            parent.log({{"p": i}})
        parent.flush()
        pid = os.fork()
        if pid == 0:
            # The child logs to a run of its own, over a connection of its own.
            child = stepline.init(project={P!r}, id="forked-child", socket=S)
            for i in range(100):
                child.log({{"c": i}})
            child.finish()
            sys.exit(0)  # atexit runs: it must not finish the parent's run
        for i in range(100, 200):
            parent.log({{"p": i}})
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        api = stepline.Api(socket=S)
        assert api.run({P!r} + "/forker").state == "running"
        parent.finish()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    api = stepline.Api(socket=str(daemon.socket))
    parent = api.run(f"{P}/forker")
    assert [r["p"] for r in parent.scan_history()] == list(range(200))
    assert parent.state == "finished"
    child = api.run(f"{P}/forked-child")
    assert [r["c"] for r in child.scan_history()] == list(range(100))


def test_daemon_killed_and_restarted_while_logging_loses_and_duplicates_nothing(
    daemon: Daemon,
) -> None:
    n, kills = 200_000, 10
    run = stepline.init(project=P, id="killed", socket=str(daemon.socket))
    for i in range(n):
        run.log({"i": i, "half": i / 2}, step=i, commit=True)
        if i % (n // kills) == n // kills // 2:
            daemon.kill()  # SIGKILL, mid-stream: batches in flight are lost to it
            daemon.start()
    run.flush(timeout=180)  # raises if any batch was refused (a duplicate would be)
    run.finish()
    r = stepline.Api(socket=str(daemon.socket)).run(f"{P}/killed")
    rows = list(r.scan_history(page_size=10_000))
    assert [row["_step"] for row in rows] == list(range(n))
    assert all(row["i"] == row["_step"] and row["half"] == row["_step"] / 2 for row in rows)
    assert r.state == "finished" and r.summary["i"] == n - 1
