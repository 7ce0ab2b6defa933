"""Peer trackers for the side-by-side benchmark: W&B offline, trackio local, MLflow on SQLite.

Each peer runs bench/peers/workload.py with the python of its own virtualenv (made on
first use by ``bench.peers.venvs``), in a fresh directory, with no network: offline
modes on, telemetry off, inherited tool settings dropped so every tool runs with its
defaults. Nothing here is imported by stepline or its tests.

    from bench.peers import PEERS, run_peer
    doc = run_peer("mlflow", 2000, Path("bench/.venvs"), Path("/tmp/slb-peers"))
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.peers.venvs import ensure_venv

PEERS = ("wandb", "trackio", "mlflow")
# Steps per run that keep 3 interleaved repetitions of all three peers near 1.5 min
# on a 2-core machine. MLflow's synchronous SQLite logging costs ~6 ms a step, so it
# gets fewer steps; its per-step figures (steps/s, log() percentiles) stay comparable.
DEFAULT_STEPS = {"wandb": 20_000, "trackio": 20_000, "mlflow": 2_000}
WORKLOAD = Path(__file__).with_name("workload.py")

# Inherited settings that would change a tool's behaviour away from its defaults.
_DROP_PREFIXES = ("WANDB_", "MLFLOW_", "TRACKIO_", "HF_", "GRADIO_")
_DROP = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "DO_NOT_TRACK"}


class PeerError(RuntimeError):
    """A peer's workload failed, timed out, or did not read back every row."""


def peer_env(rundir: Path) -> dict[str, str]:
    """The environment of a peer's workload: offline, no telemetry, state kept in rundir."""
    env = {
        k: v for k, v in os.environ.items() if k not in _DROP and not k.startswith(_DROP_PREFIXES)
    }
    state = rundir / "state"
    env.update(
        {
            "PYTHONNOUSERSITE": "1",
            "TMPDIR": str(state / "tmp"),  # W&B leaves tmp*wandb-media dirs behind
            "DO_NOT_TRACK": "1",
            # W&B: offline run, no Sentry reports, config and caches out of $HOME.
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_CONFIG_DIR": str(state / "wandb-config"),
            "WANDB_CACHE_DIR": str(state / "wandb-cache"),
            "WANDB_DATA_DIR": str(state / "wandb-data"),
            "WANDB_ARTIFACT_DIR": str(state / "wandb-artifacts"),
            # MLflow: no usage telemetry (the tracking store itself is a local file).
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # trackio: the Hugging Face hub and Gradio are never asked anything.
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": str(state / "hf"),
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
    )
    return env


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _end_group(proc: subprocess.Popen[bytes]) -> int:
    """Kill the workload and what it left in its process group, then reap it.

    The leader is not reaped until the end: while it is a zombie its group id cannot
    be reused, so the group kill reaches only processes the workload started. A second
    kill catches a child forked while the first was being delivered. (wandb-core puts
    itself in a session of its own and exits by itself once its client is gone.)
    """
    for _ in range(2):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        time.sleep(0.05)
    return proc.wait()


def run_peer(
    tool: str,
    steps: int,
    root: Path,
    workdir: Path,
    *,
    timeout: float = 900.0,
    keep: bool = False,
) -> dict[str, Any]:
    """Run the comparison workload once with ``tool``; its result document.

    ``root`` holds the virtualenvs (``root/<tool>``, made if missing). Each call works
    in a new directory under ``workdir``, removed after success unless ``keep`` (its
    path is then in the result as ``rundir``) and kept on failure for inspection.
    The result has the fields of workload.py (tool, version, steps, elapsed_s,
    steps_per_s, log_p50_us, log_p99_us, log_max_us, rows_read_back, notes, and the
    phase split setup_s/init_s/log_loop_s/finish_s) plus ``wall_s``, the wall time of
    the whole subprocess (interpreter start, imports and read-back included).
    Raises PeerError, with the tail of the workload's stderr, if it fails or times out.
    """
    if tool not in PEERS:
        raise ValueError(f"unknown peer {tool!r}; known: {', '.join(PEERS)}")
    python = ensure_venv(tool, Path(root))
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=workdir))
    (rundir / "state" / "tmp").mkdir(parents=True)
    out = rundir / "result.json"
    cmd = [
        str(python),
        str(WORKLOAD),
        "--tool",
        tool,
        "--steps",
        str(steps),
        "--workdir",
        str(rundir / "data"),
        "--out",
        str(out),
    ]
    t0 = time.perf_counter()
    with open(rundir / "stdout.log", "wb") as so, open(rundir / "stderr.log", "wb") as se:
        proc = subprocess.Popen(
            cmd,
            cwd=rundir,
            env=peer_env(rundir),
            stdin=subprocess.DEVNULL,
            stdout=so,
            stderr=se,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        try:
            while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() > deadline:
                    raise PeerError(
                        f"{tool}: workload timed out after {timeout:.0f}s ({steps} steps); "
                        f"files in {rundir}; stderr tail:\n{_tail(rundir / 'stderr.log')}"
                    )
                time.sleep(0.05)
        except BaseException:  # the timeout, or ^C: the workload is in its own session
            _end_group(proc)
            raise
        wall = time.perf_counter() - t0
        rc = _end_group(proc)
    if rc != 0 or not out.exists():
        raise PeerError(
            f"{tool}: workload exited {rc} ({steps} steps); files in {rundir}; "
            f"stderr tail:\n{_tail(rundir / 'stderr.log')}"
        )
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["wall_s"] = wall
    if keep:
        doc["rundir"] = str(rundir)
    else:
        shutil.rmtree(rundir, ignore_errors=True)
    return doc
