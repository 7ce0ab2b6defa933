"""The training process's own life: signals and exit, with the real daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import stepline
from tests.conftest import Daemon

P = "life"


def _script(daemon: Daemon, run_id: str, ending: str) -> str:
    return textwrap.dedent(f"""
        import faulthandler, signal
        faulthandler.dump_traceback_later(45, exit=True)  # a hang shows every thread's stack
        # As a process started from a terminal has them, whatever the test run
        # inherited: a shell without job control starts background jobs (a CI
        # script's `make test &`, say) with SIGINT ignored, and exec keeps that.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import os, time, stepline
        run = stepline.init(project={P!r}, id={run_id!r}, socket={str(daemon.socket)!r})
        for i in range(5000):
            run.log({{"i": i}})
        {ending}
        time.sleep(60)  # never reached: the signal ends the process
    """)


def test_sigterm_flushes_then_dies_of_the_signal(daemon: Daemon) -> None:
    script = _script(daemon, "termed", "os.kill(os.getpid(), signal.SIGTERM)")
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -signal.SIGTERM  # the signal was not swallowed
    r = stepline.Api(socket=str(daemon.socket)).run(f"{P}/termed")
    assert [row["i"] for row in r.scan_history()] == list(range(5000))
    assert r.state == "failed" and r.summary["i"] == 4999


def test_sigint_flushes_through_keyboard_interrupt(daemon: Daemon) -> None:
    script = _script(daemon, "interrupted", "os.kill(os.getpid(), signal.SIGINT)")
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in proc.stderr, proc.stderr.decode()
    r = stepline.Api(socket=str(daemon.socket)).run(f"{P}/interrupted")
    assert r.last_step == 4999


def test_user_sigterm_handler_is_left_alone(daemon: Daemon) -> None:
    script = textwrap.dedent(f"""
        import os, signal, stepline
        seen = []
        signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
        run = stepline.init(project={P!r}, id="handled", socket={str(daemon.socket)!r})
        run.log({{"i": 0}})
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
        run.finish()
    """)
    subprocess.run([sys.executable, "-c", script], timeout=60, check=True)
    assert stepline.Api(socket=str(daemon.socket)).run(f"{P}/handled").state == "finished"


def test_a_wandb_style_script_runs_unchanged(daemon: Daemon) -> None:
    script = textwrap.dedent("""
        import numpy as np
        import stepline as wandb

        wandb.init(project="life", config={"lr": 0.1, "epochs": 2}, name="exp", tags=["a"],
                   entity="ignored", reinit=True)
        wandb.define_metric("val/loss", summary="min")
        for epoch in range(wandb.config.epochs):
            for step in range(50):
                wandb.log({"train": {"loss": 1.0 / (step + 1)}, "epoch": epoch, "lr": np.float32(0.1)})
            wandb.log({"val/loss": 0.5 - epoch * 0.1}, commit=False)
        wandb.config.update({"batch_size": 32})
        wandb.run.summary["best_epoch"] = 1
        print(wandb.run.id)
        wandb.finish()
    """)
    env = {**os.environ, "STEPLINE_SOCKET": str(daemon.socket)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    r = stepline.Api(socket=str(daemon.socket)).run(f"{P}/{out.stdout.strip()}")
    assert r.state == "finished" and r.name == "exp" and r.tags == ["a"]
    assert r.config == {"lr": 0.1, "epochs": 2, "batch_size": 32}
    # W&B semantics: each commit=False row merges into the next epoch's first row,
    # and finish() commits the last one.
    assert r.last_step == 100 and r.summary["best_epoch"] == 1
    assert r.summary["val/loss"] == pytest.approx(0.4)  # min over the epochs
    rows = list(r.scan_history(keys=["val/loss"]))
    assert [row["_step"] for row in rows] == [50, 100]


def test_sigterm_while_log_holds_the_senders_lock_still_flushes(daemon: Daemon) -> None:
    script = textwrap.dedent(f"""
        import os, signal, time, stepline
        run = stepline.init(project={P!r}, id="locked", socket={str(daemon.socket)!r})
        for i in range(100):
            run.log({{"i": i}})
        lock = run._sender._lock
        lock.acquire()  # as if SIGTERM landed inside log(), mid-queueing
        os.kill(os.getpid(), signal.SIGTERM)
        lock.release()
        time.sleep(60)  # never reached: the signal ends the process
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -signal.SIGTERM
    r = stepline.Api(socket=str(daemon.socket)).run(f"{P}/locked")
    assert r.last_step == 99 and r.state == "failed"
