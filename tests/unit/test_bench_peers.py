"""bench/peers without the peers: venv reuse, read-back checks, and run_peer's plumbing.

The real trackers are never installed or run here; a stand-in workload script plays
the peer's part so the subprocess handling (result, failure, timeout) is exercised.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import bench.peers as peers
from bench.peers import venvs, workload
from bench.peers.venvs import MARKER, PINS, ensure_venv


def fake_venv(venv: Path, marker: dict[str, str] | None) -> None:
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    if marker is not None:
        (venv / MARKER).write_text(json.dumps(marker))


def test_ready_venv_is_reused_without_running_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_venv(tmp_path / "mlflow", {"requirement": PINS["mlflow"]})

    def no_run(cmd: list[str], what: str) -> None:
        raise AssertionError(f"ran {cmd}")

    monkeypatch.setattr(venvs, "_run", no_run)
    assert ensure_venv("mlflow", tmp_path) == tmp_path / "mlflow" / "bin" / "python"


@pytest.mark.parametrize("marker", [None, {"requirement": "mlflow==0.0.1"}])
def test_missing_or_stale_venv_is_rebuilt_and_marked_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: dict[str, str] | None
) -> None:
    venv = tmp_path / "mlflow"
    fake_venv(venv, marker)
    ran: list[list[str]] = []

    def record(cmd: list[str], what: str) -> None:
        assert not (venv / MARKER).exists(), "marker must be written only after install"
        ran.append(cmd)

    monkeypatch.setattr(venvs, "_run", record)
    py = ensure_venv("mlflow", tmp_path, base_python="/usr/bin/python3")
    assert ran[0] == ["/usr/bin/python3", "-m", "venv", "--clear", str(venv)]
    assert ran[1][:4] == [str(py), "-m", "pip", "install"]
    assert ran[1][-1] == "mlflow==3.17.2"
    assert json.loads((venv / MARKER).read_text()) == {"requirement": "mlflow==3.17.2"}
    assert (tmp_path / ".gitignore").read_text() == "*\n"


def test_unknown_tool_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown peer"):
        ensure_venv("neptune", tmp_path)
    with pytest.raises(ValueError, match="unknown peer"):
        peers.run_peer("neptune", 10, tmp_path, tmp_path)


def test_drive_logs_ten_changing_floats_per_step() -> None:
    seen: list[tuple[dict[str, float], int]] = []
    costs = workload.drive(lambda row, step: seen.append((row, step)), 3)
    assert len(costs) == 3 and all(c >= 0 for c in costs)
    assert [s for _, s in seen] == [0, 1, 2]
    assert seen[2][0] == {f"m{k}": 2.0 + k for k in range(10)}


def test_read_back_check_catches_lost_duplicated_and_wrong_rows() -> None:
    workload.check_read_back("t", 3, [(2, 2.0), (0, 0.0), (1, 1.0)])
    for bad in (
        [(0, 0.0), (1, 1.0)],
        [(0, 0.0), (1, 1.0), (1, 1.0)],
        [(0, 0.0), (1, 1.0), (2, 5.0)],
    ):
        with pytest.raises(SystemExit):
            workload.check_read_back("t", 3, bad)


def test_summary_percentiles_are_those_of_bench_quick() -> None:
    res: dict[str, Any] = {
        "timings": (0.0, 1.0, 2.0, 3.0, 4.0),
        "costs": [i * 1000 for i in range(100, 0, -1)],
        "pairs": [(0, 0.0)] * 100,
        "setup_s": 0.0,
        "notes": "",
    }
    doc = workload.summarize("pytest", 100, res)
    assert doc["elapsed_s"] == 3.0 and doc["read_back_s"] == 1.0
    assert (doc["log_p50_us"], doc["log_p99_us"], doc["log_max_us"]) == (51.0, 100.0, 100.0)
    with pytest.raises(SystemExit):
        workload.parse_args(["--tool", "wandb", "--steps", "0", "--workdir", ".", "--out", "o"])


STAND_IN = """
import argparse, json, os, subprocess, sys, time
ap = argparse.ArgumentParser()
for a in ("--tool", "--steps", "--workdir", "--out"):
    ap.add_argument(a)
args = ap.parse_args()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(os.path.join(os.path.dirname(args.out), "pids"), "w").write(f"{os.getpid()} {child.pid}")
MODE
"""


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN.replace("MODE", textwrap.dedent(mode)))
    monkeypatch.setattr(peers, "WORKLOAD", script)
    monkeypatch.setattr(peers, "ensure_venv", lambda tool, root: Path(sys.executable))


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.timeout(30)
def test_run_peer_returns_the_document_offline_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_ENTITY", "someone")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "true")
    stand_in(
        tmp_path,
        monkeypatch,
        """
        keys = ("WANDB_MODE", "WANDB_ENTITY", "MLFLOW_ENABLE_ASYNC_LOGGING", "HF_HUB_OFFLINE")
        doc = {"steps": int(args.steps), "env": {k: os.environ.get(k) for k in keys}}
        json.dump(doc, open(args.out, "w"))
        """,
    )
    doc = peers.run_peer("trackio", 7, tmp_path / "venvs", tmp_path / "work")
    assert doc["steps"] == 7 and doc["wall_s"] > 0
    assert doc["env"] == {
        "WANDB_MODE": "offline",
        "WANDB_ENTITY": None,
        "MLFLOW_ENABLE_ASYNC_LOGGING": None,
        "HF_HUB_OFFLINE": "1",
    }
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.timeout(30)
def test_run_peer_failure_carries_stderr_and_keeps_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in(tmp_path, monkeypatch, 'sys.exit("wandb: read back 9 rows, logged 10")')
    with pytest.raises(peers.PeerError, match="read back 9 rows, logged 10"):
        peers.run_peer("wandb", 10, tmp_path / "venvs", tmp_path / "work")
    (rundir,) = (tmp_path / "work").iterdir()
    assert (rundir / "stderr.log").exists()


@pytest.mark.timeout(30)
def test_run_peer_timeout_kills_the_workload_and_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in(tmp_path, monkeypatch, "time.sleep(60)")
    with pytest.raises(peers.PeerError, match="timed out"):
        peers.run_peer("mlflow", 10, tmp_path / "venvs", tmp_path / "work", timeout=3.0)
    (rundir,) = (tmp_path / "work").iterdir()
    pids = [int(p) for p in (rundir / "pids").read_text().split()]
    assert all(gone(p) for p in pids)
