"""mode="offline" records a run to disk with no daemon; `stepline sync` delivers it, once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import stepline
from tests.conftest import Daemon

P = "off"


def sync(daemon: Daemon, *files: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "stepline"
    return subprocess.run(
        [str(exe), "sync", "--socket", str(daemon.socket), *files],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )


def test_offline_run_syncs_exactly_once(
    daemon: Daemon, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state"))
    parent = stepline.init(project=P, id="base", socket=str(daemon.socket))
    for i in range(10):
        parent.log({"loss": float(i)})
    parent.finish()

    daemon.stop()  # offline needs no daemon
    run = stepline.init(project=P, id="offline1", mode="offline", config={"lr": 1})
    for i in range(2500):
        run.log({"loss": 1.0 / (i + 1), "i": i})
    run.config.update({"bs": 8})
    run.summary["best"] = 0.5
    run.finish()
    fork = stepline.init(project=P, id="offfork", mode="offline", fork_from="base?_step=4")
    assert fork.step == 5
    fork.log({"loss": -1.0})
    fork.finish()
    with pytest.raises(stepline.UsageError, match="offline"):
        stepline.init(project=P, id="base", mode="offline", resume="allow")
    pending = sorted((short_tmp / "state" / "stepline" / "offline").glob("*.stepline"))
    assert len(pending) == 2  # the refused resume recorded nothing

    daemon.start()
    out = sync(daemon)
    assert out.returncode == 0, out.stderr
    api = stepline.Api(socket=str(daemon.socket))
    r = api.run(f"{P}/offline1")
    assert [row["i"] for row in r.scan_history(keys=["i"])] == list(range(2500))
    assert r.state == "finished" and r.config == {"lr": 1, "bs": 8} and r.summary["best"] == 0.5
    f = api.run(f"{P}/offfork")
    assert f.parent == ("base", 4)
    assert [row["loss"] for row in f.scan_history()] == [0.0, 1.0, 2.0, 3.0, 4.0, -1.0]

    # Syncing the same files again changes nothing.
    synced = sorted((short_tmp / "state" / "stepline" / "offline" / "synced").glob("*.stepline"))
    again = sync(daemon, *map(str, synced))
    assert again.returncode == 0, again.stderr
    again1 = api.run(f"{P}/offline1")
    assert again1.last_step == 2499 and again1.state == "finished"
    assert len(list(api.run(f"{P}/offfork").scan_history())) == 6


def test_sync_never_writes_into_a_run_it_did_not_make(
    daemon: Daemon, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state"))
    online = stepline.init(project=P, id="taken", socket=str(daemon.socket))
    online.log({"online": 1})
    online.finish()
    off = stepline.init(project=P, id="taken", mode="offline")
    off.log({"offline": 1})
    off.finish()
    out = sync(daemon)
    assert out.returncode == 1 and "not made by this offline file" in out.stderr
    rows = list(stepline.Api(socket=str(daemon.socket)).run(f"{P}/taken").scan_history())
    assert [set(r) - {"_step", "_timestamp", "_runtime"} for r in rows] == [{"online"}]
