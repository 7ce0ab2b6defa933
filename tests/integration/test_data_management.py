"""Delete, purge, backup and check, against the real daemon and real LMDB files."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest

import stepline
from stepline_daemon import check
from tests.conftest import Daemon

P = "dm"


def log(daemon: Daemon, run_id: str, n: int, **init: Any) -> None:
    run = stepline.init(project=P, id=run_id, socket=str(daemon.socket), **init)
    for _ in range(n):
        run.log({"loss": float(run.step)})
    run.finish()


def rows(api: stepline.Api, run_id: str) -> list[int]:
    return [r["_step"] for r in api.run(f"{P}/{run_id}").scan_history()]


def run_check(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepline_daemon.check", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_delete_is_soft_while_a_fork_reads_the_rows_then_purges(daemon: Daemon) -> None:
    log(daemon, "parent", 100)
    log(daemon, "kid", 10, fork_from="parent?_step=49")
    api = stepline.Api(socket=str(daemon.socket))
    before = list(api.run(f"{P}/kid").scan_history())

    assert api.delete(f"{P}/parent") == {"id": "parent", "timelines": 1, "purged": 0, "rows": 0}
    with pytest.raises(stepline.RunNotFound):
        api.run(f"{P}/parent")
    assert [r.id for r in api.runs(P)] == ["kid"]
    assert list(api.run(f"{P}/kid").scan_history()) == before, "a fork's view is pinned"
    assert api.run(f"{P}/kid").lineage == [("parent", 49)]

    # The id is free again; the new run shares nothing with the deleted one.
    log(daemon, "parent", 3)
    assert rows(api, "parent") == [0, 1, 2]
    assert rows(api, "kid") == list(range(60))

    # gc keeps the old rows while kid reads them, and never touches the new "parent".
    assert api.purge() == {"purged": 0, "rows": 0, "kept": 1}
    assert rows(api, "kid") == list(range(60))
    api.delete(f"{P}/kid")
    assert api.purge() == {"purged": 2, "rows": 100 + 10, "kept": 0}
    assert rows(api, "parent") == [0, 1, 2]
    api.close()


def test_purge_once_nothing_depends(daemon: Daemon) -> None:
    log(daemon, "a", 100)
    log(daemon, "b", 10, fork_from="a?_step=49")
    log(daemon, "a", 5, resume_from="a?_step=89")  # a rewind: two timelines of a
    api = stepline.Api(socket=str(daemon.socket))
    with pytest.raises(stepline.InUse, match=r"b \(forked at step 49\)"):
        api.delete(f"{P}/a", purge=True)
    api.delete(f"{P}/b")
    # b is deleted, so a's rows (both timelines) and b's own rows all go.
    out = api.delete(f"{P}/a", purge=True)
    assert out["timelines"] == 2 and out["purged"] == 3
    assert out["rows"] == 100 + 5 + 10
    assert api.projects() == []
    api.close()
    daemon.stop()
    done = run_check(daemon.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 rows" in done.stdout
    env = lmdb.open(str(daemon.data_dir), readonly=True, max_dbs=8)
    with env.begin() as txn:
        for name in (b"history", b"runs", b"names", b"children", b"snaps", b"seqs"):
            assert txn.stat(env.open_db(name, txn=txn))["entries"] == 0, name
    env.close()


def test_delete_refuses_a_running_run(daemon: Daemon) -> None:
    run = stepline.init(project=P, id="live", socket=str(daemon.socket))
    run.log({"x": 1})
    run.flush()
    api = stepline.Api(socket=str(daemon.socket))
    with pytest.raises(stepline.RunNotWritable, match="running"):
        api.delete(f"{P}/live")
    with pytest.raises(stepline.RunNotFound):
        api.delete(f"{P}/ghost")
    run.finish()
    api.delete(f"{P}/live")
    api.close()


def test_backup_while_serving_is_a_consistent_readable_copy(
    daemon: Daemon, short_tmp: Path
) -> None:
    log(daemon, "base", 2000)
    log(daemon, "fork", 100, fork_from="base?_step=999")
    writer = stepline.init(project=P, id="busy", socket=str(daemon.socket))
    for i in range(500):
        writer.log({"x": i})
    api = stepline.Api(socket=str(daemon.socket))
    dest = short_tmp / "backup"
    out = api.backup(str(dest))  # while "busy" is still running
    assert out["path"] == str(dest) and out["bytes"] > 0
    with pytest.raises(stepline.RequestError, match="not empty"):
        api.backup(str(dest))
    with pytest.raises(stepline.RequestError, match="absolute"):
        api.backup("relative/dir")
    writer.finish()
    api.close()

    done = run_check(dest)
    assert done.returncode == 0, done.stdout + done.stderr
    copy = Daemon(short_tmp / "restored")
    copy.data_dir = dest
    copy.start()
    try:
        capi = stepline.Api(socket=str(copy.socket))
        assert [r["_step"] for r in capi.run(f"{P}/fork").scan_history()] == list(range(1100))
        assert len(list(capi.run(f"{P}/base").scan_history())) == 2000
        capi.close()
    finally:
        assert copy.stop() == 0


def test_check_passes_a_healthy_store_while_the_daemon_serves(daemon: Daemon) -> None:
    log(daemon, "a", 300)
    log(daemon, "b", 30, fork_from="a?_step=99")
    log(daemon, "a", 10, resume_from="a?_step=199")
    done = run_check(daemon.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 runs" in done.stdout and f"{300 + 30 + 10} rows" in done.stdout


def _corrupt(data_dir: Path, how: str) -> None:
    env = lmdb.open(str(data_dir), max_dbs=8)
    runs, history, children = (env.open_db(n) for n in (b"runs", b"history", b"children"))
    with env.begin(write=True) as txn:
        if how == "dangling parent":
            key = struct.pack(">Q", 2)
            rec = msgpack.unpackb(txn.get(key, db=runs), raw=False)
            rec["parent"] = [999, 5]
            txn.put(key, msgpack.packb(rec), db=runs)
        elif how == "short key":
            txn.put(b"\x00\x01", msgpack.packb({"x": 1}), db=history)
        elif how == "row count":
            txn.delete(struct.pack(">QQ", 1, 7), db=history)
        elif how == "bad row":
            txn.put(struct.pack(">QQ", 1, 3), b"\xc1", db=history)
        elif how == "cycle":
            key = struct.pack(">Q", 1)
            rec = msgpack.unpackb(txn.get(key, db=runs), raw=False)
            rec["parent"] = [2, 0]
            txn.put(key, msgpack.packb(rec), db=runs)
            txn.put(struct.pack(">QQ", 2, 1), struct.pack(">Q", 0), db=children)
    env.close()


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("dangling parent", "parent timeline 999 does not exist"),
        ("short key", "is not 16 bytes"),
        ("row count", "record counts 300 rows, the store holds 299"),
        ("bad row", "step 3 does not decode"),
        ("cycle", "parent chain loops"),
    ],
)
def test_check_names_what_is_wrong_and_exits_non_zero(
    daemon: Daemon, how: str, message: str
) -> None:
    log(daemon, "a", 300)  # timeline 1
    log(daemon, "b", 30, fork_from="a?_step=99")  # timeline 2
    daemon.stop()
    _corrupt(daemon.data_dir, how)
    done = run_check(daemon.data_dir)
    assert done.returncode == 1, done.stdout
    assert message in done.stdout, done.stdout


def test_check_on_a_dir_without_a_store(short_tmp: Path) -> None:
    done = run_check(short_tmp)
    assert done.returncode == 2 and "no stepline store" in done.stderr


def test_check_main_in_process(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    log(daemon, "a", 5)
    assert check.main(["--data-dir", str(daemon.data_dir), "--quick"]) == 0
    assert "is consistent" in capsys.readouterr().out


def test_gc_keeps_a_rewind_chain_together(daemon: Daemon) -> None:
    log(daemon, "a", 50)
    log(daemon, "f", 5, fork_from="a?_step=9")  # reads a's first timeline
    log(daemon, "a", 5, resume_from="a?_step=29")  # a rewind: a's second timeline
    api = stepline.Api(socket=str(daemon.socket))
    api.delete(f"{P}/a")
    # The first timeline is kept (f reads it), so the second, which it names as
    # archived_by, is kept too.
    assert api.purge() == {"purged": 0, "rows": 0, "kept": 2}
    assert rows(api, "f") == list(range(15))
    api.delete(f"{P}/f")
    assert api.purge() == {"purged": 3, "rows": 50 + 5 + 5, "kept": 0}
    api.close()
    daemon.stop()
    done = run_check(daemon.data_dir)
    assert done.returncode == 0, done.stdout


def test_delete_waits_for_a_crashed_run_that_may_reconnect(daemon: Daemon) -> None:
    run = stepline.init(project=P, id="live", socket=str(daemon.socket))
    run.log({"x": 1})
    run.flush()
    daemon.stop()
    daemon.start()  # the run reads crashed until its client writes again
    api = stepline.Api(socket=str(daemon.socket))
    assert api.run(f"{P}/live").state == "crashed"
    with pytest.raises(stepline.RunNotWritable, match="may still reconnect"):
        api.delete(f"{P}/live")
    run.log({"x": 2})
    run.finish()  # it did reconnect: nothing was lost
    assert [r["x"] for r in api.run(f"{P}/live").scan_history()] == [1, 2]
    orphan = stepline.init(project=P, id="gone", socket=str(daemon.socket))
    orphan.log({"x": 1})
    orphan.flush()
    api.close()
    daemon.stop()
    daemon.start()
    with stepline.Api(socket=str(daemon.socket)) as api:
        assert api.delete(f"{P}/gone", force=True)["timelines"] == 1


def test_a_truncated_store_is_refused_with_a_message_not_a_sigbus(daemon: Daemon) -> None:
    log(daemon, "a", 20_000)
    daemon.stop()
    mdb = daemon.data_dir / "data.mdb"
    os.truncate(mdb, mdb.stat().st_size // 2)
    done = run_check(daemon.data_dir)
    assert done.returncode == 2 and "is truncated" in done.stderr, (done.returncode, done.stderr)
    proc = daemon.spawn()
    assert proc.wait(60) == 1
    assert "is truncated" in daemon.log()
