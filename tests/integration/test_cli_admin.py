"""The operator commands as a user runs them: real processes, real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import stepline
from tests.conftest import Daemon


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepline.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_status_reports_a_daemon_and_fails_without_one(daemon: Daemon, short_tmp: Path) -> None:
    done = cli("status", "--socket", str(daemon.socket))
    assert done.returncode == 0, done.stderr
    assert f"running, pid {daemon.pid}" in done.stdout
    assert daemon.http_url in done.stdout and "healthy" in done.stdout
    as_json = json.loads(cli("status", "--json", "--socket", str(daemon.socket)).stdout)
    assert as_json["pid"] == daemon.pid
    gone = cli("status", "--socket", str(short_tmp / "nobody.sock"), "--timeout", "0.3")
    assert gone.returncode == 1 and "no daemon answers" in gone.stderr
    assert "retried for 0.3s" in gone.stderr


def test_delete_purge_backup_check(daemon: Daemon, short_tmp: Path) -> None:
    sock = str(daemon.socket)
    run = stepline.init(project="p", id="a", socket=sock)
    for i in range(100):
        run.log({"x": i})
    run.finish()
    kid = stepline.init(project="p", id="k", fork_from="a?_step=9", socket=sock)
    kid.log({"x": -1})
    kid.finish()

    done = cli("delete", "p/a", "--purge", "--socket", sock)
    assert done.returncode == 1 and "k (forked at step 9)" in done.stderr
    done = cli("delete", "p/a", "--socket", sock)
    assert done.returncode == 0 and "deleted p/a (1 timelines)" in done.stdout
    assert cli("delete", "p/a", "--socket", sock).returncode == 1  # gone now
    assert cli("delete", "nonsense", "--socket", sock).returncode == 2

    dest = short_tmp / "bk"
    done = cli("backup", str(dest), "--socket", sock)
    assert done.returncode == 0 and str(dest) in done.stdout
    done = cli("check", "--data-dir", str(dest))
    assert done.returncode == 0 and "is consistent" in done.stdout, done.stdout + done.stderr

    assert cli("delete", "p/k", "--socket", sock).returncode == 0
    done = cli("purge", "--socket", sock)
    assert done.returncode == 0 and "purged 2 timelines, 101 rows" in done.stdout
    done = cli("check", "--data-dir", str(daemon.data_dir))
    assert done.returncode == 0, done.stdout + done.stderr


def test_usage_lists_the_operator_commands() -> None:
    done = cli("--help")
    for command in ("status", "delete", "purge", "backup", "check", "systemd"):
        assert f"\n  {command} " in done.stdout
