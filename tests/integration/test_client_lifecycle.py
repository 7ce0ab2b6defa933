"""The training process's own life: signals and exit, with the real daemon."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import stepline
from tests.conftest import Daemon

P = "life"


def _script(daemon: Daemon, run_id: str, ending: str) -> str:
    return textwrap.dedent(f"""
        import os, signal, time, stepline
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
    assert proc.returncode != 0 and b"KeyboardInterrupt" in proc.stderr
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
