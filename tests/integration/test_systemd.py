"""The systemd units and the daemon's systemd protocols, checked by systemd's own tools.

* ``systemd-analyze verify`` reads every unit, rendered with a real executable;
  any complaint about our units fails the test. ``systemd-analyze security``
  scores the system service's sandbox.
* ``systemd-socket-activate`` passes the daemon a listening socket the way
  ``stepline.socket`` does, and a real client logs and reads through it.
* A datagram socket bound here stands in for systemd's ``NOTIFY_SOCKET``.
* ``strace`` records every system call, socket family and memory protection
  the daemon uses in a full session; each must be one the system service's
  ``SystemCallFilter=``, ``RestrictAddressFamilies=`` and
  ``MemoryDenyWriteExecute=`` allow, or the service would die or fail under
  systemd.

systemd is not PID 1 on the test machines, so no test starts a unit for real.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

import stepline
from stepline import units
from tests.conftest import STARTUP_TIMEOUT, wait_for

ANALYZE = shutil.which("systemd-analyze")
ACTIVATE = shutil.which("systemd-socket-activate")
STRACE = shutil.which("strace")
F = TypeVar("F", bound=Callable[..., Any])


def _requires(tool: str | None, name: str) -> Callable[[F], F]:
    """Fail, never skip, without ``name``: `make test` installs it."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if tool is None:
                pytest.fail(
                    f"{name} is missing: `make test` installs it (apt-get install systemd strace)"
                )
            return fn(*args, **kwargs)

        return cast(F, wrapper)

    return deco


needs_analyze = _requires(ANALYZE, "systemd-analyze")
needs_activate = _requires(ACTIVATE, "systemd-socket-activate")
needs_strace = _requires(STRACE, "strace")
WATCHDOG_USEC = 200_000  # the daemon pings every 0.1 s


def stepline_command() -> list[str]:
    """This environment's stepline, as ``stepline systemd install`` would name it."""
    return units.default_command()


# ------------------------------------------------------------------ verify


def verify(unit_dir: Path, user: bool, runtime_dir: Path) -> tuple[int, list[str]]:
    """``systemd-analyze verify`` on the units in ``unit_dir``: its exit code and
    every line it printed about them (lines about the host's own units are noise)."""
    assert ANALYZE is not None
    files = sorted(str(p) for p in unit_dir.iterdir())
    proc = subprocess.run(
        [ANALYZE, "verify", "--man=no", *(["--user"] if user else []), *files],
        capture_output=True,
        text=True,
        timeout=60,
        # The user manager resolves %t from XDG_RUNTIME_DIR; without one it refuses.
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)},
    )
    ours = re.compile(rf"{re.escape(str(unit_dir))}|\bstepline\.(service|socket)\b")
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in lines if ours.search(line)]


def write_units(d: Path, command: list[str], user: bool) -> Path:
    d.mkdir(parents=True)
    for name, text in units.render(command, user).items():
        (d / name).write_text(text)
    return d


@needs_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_accepts_the_units(short_tmp: Path, user: bool) -> None:
    d = write_units(short_tmp / "units", stepline_command(), user)
    code, problems = verify(d, user, short_tmp)
    assert problems == [], "\n".join(problems)
    assert code == 0


@needs_analyze
def test_verify_reports_what_is_wrong_with_a_unit(short_tmp: Path) -> None:
    # The check above can fail: a misspelt value, a bad key, a missing binary.
    d = write_units(short_tmp / "units", ["/nonexistent/stepline"], user=False)
    service = d / "stepline.service"
    text = service.read_text().replace("ProtectSystem=strict", "ProtectSystem=strct")
    service.write_text(text.replace("UMask=0077", "UMask=0077\nWatchdogSecs=30s"))
    code, problems = verify(d, False, short_tmp)
    assert code != 0
    assert any("strct" in line for line in problems), problems
    assert any("WatchdogSecs" in line for line in problems), problems
    assert any("/nonexistent/stepline" in line for line in problems), problems


@needs_analyze
def test_exec_start_quoting_reaches_the_right_file(short_tmp: Path) -> None:
    # systemd must find the executable behind a space, % and $ in its path:
    # verify names ExecStart's command when the file is not there.
    odd = short_tmp / "a dir" / "pe%rc$ent"
    odd.parent.mkdir()
    odd.write_text("#!/bin/sh\n")
    odd.chmod(0o755)
    d = write_units(short_tmp / "units", [str(odd)], user=False)
    code, problems = verify(d, False, short_tmp)
    assert problems == [], "\n".join(problems)
    assert code == 0
    odd.chmod(0o644)
    code, problems = verify(d, False, short_tmp)
    assert any("is not executable" in line for line in problems), problems


@needs_analyze
def test_system_service_sandbox_scores_ok(short_tmp: Path) -> None:
    assert ANALYZE is not None
    d = write_units(short_tmp / "units", stepline_command(), user=False)
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(d / "stepline.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for stepline\.service: ([\d.]+)", proc.stdout)
    assert m is not None, proc.stdout + proc.stderr
    # 1.2 as shipped (0 is perfect, 10 unsandboxed); a loosened unit fails here.
    assert float(m.group(1)) <= 1.5, proc.stdout


# ------------------------------------------------------ socket activation


@dataclasses.dataclass
class Activated:
    """A daemon behind ``systemd-socket-activate``, as stepline.socket would start it."""

    proc: subprocess.Popen[bytes]
    sock: Path
    data_dir: Path
    log_path: Path
    notify: socket.socket

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def trigger(self) -> None:
        """Connect once: systemd-socket-activate execs the daemon on the first connection.

        The socket file appears at bind(), a moment before listen(): a connect in
        between is refused (one make test run in the hundreds), so refusals are
        retried until it listens.
        """
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(self.sock))
                    return
                except ConnectionRefusedError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
            time.sleep(0.01)  # polling a condition: the socket listening

    def notifications(self, until: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
        """sd_notify datagrams, each as its fields, up to the first ``until`` accepts."""
        got: list[dict[str, str]] = []
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not got or not until(got[-1]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such notification within {STARTUP_TIMEOUT}s: {got}")
            self.notify.settimeout(left)
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                raise AssertionError(
                    f"no such notification within {STARTUP_TIMEOUT}s: {got}\n{self.log()}"
                ) from None
            got.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        return got

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(STARTUP_TIMEOUT)


@contextlib.contextmanager
def activate(
    root: Path, *, prefix: Sequence[str] = (), setenv: Sequence[str] = (), http: str = "off"
) -> Iterator[Activated]:
    """``[prefix...] systemd-socket-activate -l SOCKET stepline daemon ...``, in a
    session of its own so that cleanup reaches whatever it started."""
    assert ACTIVATE is not None
    sock, data, log_path = root / "s.sock", root / "data", root / "daemon.log"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(root / "notify"))
    argv = [
        *prefix,
        ACTIVATE,
        "--listen",
        str(sock),
        # systemd hands a service only the environment its unit names; so does this.
        f"--setenv=NOTIFY_SOCKET={root / 'notify'}",
        f"--setenv=WATCHDOG_USEC={WATCHDOG_USEC}",
        *(f"--setenv={kv}" for kv in setenv),
        *stepline_command(),
        "daemon",
        "--data-dir",
        str(data),
        "--socket",
        str(sock),
        "--http",
        http,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    a = Activated(proc, sock, data, log_path, notify)
    try:
        wait_for(lambda: sock.exists() or proc.poll() is not None, STARTUP_TIMEOUT, "the socket")
        assert proc.poll() is None, a.log()
        yield a
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        notify.close()


@pytest.fixture
def activated(short_tmp: Path) -> Iterator[Activated]:
    with activate(short_tmp) as a:
        yield a


@needs_activate
def test_socket_activated_daemon_serves_a_client(activated: Activated) -> None:
    a = activated
    before = a.sock.stat()
    run = stepline.init(project="svc", socket=str(a.sock), autostart=False)
    rows = [{"loss": 1.0 / (s + 1), "tag": f"s{s}"} for s in range(200)]
    for s, row in enumerate(rows):
        run.log(row, step=s)
    run.finish()

    api = stepline.Api(socket=str(a.sock))
    try:
        got = list(api.run(f"svc/{run.id}").scan_history())
    finally:
        api.close()
    assert [{k: r[k] for k in ("_step", "loss", "tag")} for r in got] == [
        {"_step": s, **row} for s, row in enumerate(rows)
    ]

    # systemd-socket-activate execs the daemon in place: the pid is the daemon's.
    info = json.loads((a.data_dir / "daemon.json").read_text())
    assert info["pid"] == a.proc.pid
    assert info["socket"] == str(a.sock)
    assert f"on {a.sock} (socket-activated)" in a.log()
    after = a.sock.stat()
    # The socket is systemd's: the daemon neither rebinds it nor changes its mode.
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)

    assert a.terminate() == 0, a.log()
    assert a.sock.exists(), "the daemon removed the socket systemd made"
    assert "stopped cleanly" in a.log()
    assert "Traceback" not in a.log(), a.log()


# As systemd sets it (the main pid), and unset (the daemon then takes it as its own).
_OWN_PID = ["sh", "-c", 'exec "$0" "--setenv=WATCHDOG_PID=$$" "$@"']


@needs_activate
@pytest.mark.parametrize("prefix", [_OWN_PID, []], ids=["watchdog-pid", "no-watchdog-pid"])
def test_daemon_speaks_sd_notify(short_tmp: Path, prefix: list[str]) -> None:
    with activate(short_tmp, prefix=prefix) as a:
        a.trigger()
        (ready,) = a.notifications(lambda m: True)
        assert ready["READY"] == "1"
        # sh and systemd-socket-activate exec in place: the pid is the daemon's.
        assert ready["MAINPID"] == str(a.proc.pid)
        assert "rows/s" in ready["STATUS"]

        pings = a.notifications(lambda m: m.get("WATCHDOG") == "1")
        assert "rows since start" in pings[-1]["STATUS"]

        a.proc.send_signal(signal.SIGTERM)
        stopping = a.notifications(lambda m: m.get("STOPPING") == "1")[-1]
        assert stopping["STATUS"].startswith("draining")
        assert a.proc.wait(STARTUP_TIMEOUT) == 0, a.log()


@needs_activate
def test_watchdog_meant_for_another_process_is_not_answered(short_tmp: Path) -> None:
    with activate(short_tmp, setenv=["WATCHDOG_PID=1"]) as a:
        a.trigger()
        a.notifications(lambda m: m.get("READY") == "1")
        # Pings would come every WATCHDOG_USEC / 2; ten intervals of silence.
        a.notify.settimeout(10 * WATCHDOG_USEC / 1e6)
        with pytest.raises(TimeoutError):
            a.notify.recv(4096)
        assert a.terminate() == 0, a.log()


# ------------------------------------------------------------ the sandbox


def syscall_groups() -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: each @group and its members (calls or @groups)."""
    assert ANALYZE is not None
    out = subprocess.run(
        [ANALYZE, "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    members: list[str] = []
    for line in out.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and line.strip() and not line.strip().startswith("#"):
            members.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for n in names:
        out |= expand(groups[n], groups) if n.startswith("@") else {n}
    return out


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """What a unit's seccomp settings let its processes do."""

    syscalls: set[str]
    families: set[str]
    deny_write_execute: bool

    @classmethod
    def of(cls, unit: str, groups: dict[str, list[str]]) -> Sandbox:
        allowed: set[str] | None = None
        families: set[str] = set()
        mdwe = False
        for line in unit.splitlines():
            key, _, value = line.partition("=")
            if key == "SystemCallFilter":
                deny = value.startswith("~")
                calls = expand(value.removeprefix("~").split(), groups)
                assert allowed is not None or not deny, "this reader handles allow lists only"
                allowed = (allowed or set()) - calls if deny else (allowed or set()) | calls
            elif key == "RestrictAddressFamilies":
                families |= set(value.split())
            elif key == "MemoryDenyWriteExecute":
                mdwe = value == "yes"
        assert allowed is not None and families, "the unit filters nothing"
        return cls(allowed, families, mdwe)

    def refuses(self, name: str, args: str) -> bool:
        """Whether the call ``name(args)``, as strace prints it, would be refused."""
        if name not in self.syscalls:
            return True
        if name == "socket":
            return args.split(",")[0] not in self.families
        if not self.deny_write_execute:
            return False
        if name == "mmap":
            return "PROT_WRITE" in args and "PROT_EXEC" in args
        if name in ("mprotect", "pkey_mprotect"):
            return "PROT_EXEC" in args
        return name == "shmat" and "SHM_EXEC" in args

    def violations(self, trace: list[str]) -> list[str]:
        """The lines of an ``strace -f`` log this sandbox would refuse."""
        calls = (re.match(r"\d+\s+([a-z0-9_]+)\((.*)", line) for line in trace)
        # Lines that start no call (a resumed one, a signal, an exit) match nothing.
        return [m.string for m in calls if m is not None and self.refuses(*m.groups())]


def system_sandbox() -> Sandbox:
    return Sandbox.of(
        units.render(stepline_command(), user=False)["stepline.service"], syscall_groups()
    )


@needs_analyze
def test_sandbox_reader_finds_violations() -> None:
    sandbox = system_sandbox()
    assert (
        sandbox.violations(
            [
                '12 openat(AT_FDCWD, "/x", O_RDONLY) = 3',
                "12 <... read resumed>) = 0",
                "13 mmap(NULL, 4096, PROT_READ|PROT_EXEC, MAP_PRIVATE, 3, 0) = 0x7f0000000000",
                "--- SIGTERM {si_signo=SIGTERM} ---",
            ]
        )
        == []
    )
    bad = [
        "12 ptrace(PTRACE_ATTACH, 1) = -1 EPERM",
        '12 chown("/x", 0, 0) = 0',  # @privileged, taken out of @system-service
        "12 socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) = 3",
        "13 mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE, -1, 0) = 0x7f00",
        "13 mprotect(0x7f00, 4096, PROT_READ|PROT_EXEC) = 0",
    ]
    assert sandbox.violations(bad) == bad
    # The user service filters the same, so the trace below vouches for it too.
    user_unit = units.render(stepline_command(), user=True)["stepline.service"]
    assert Sandbox.of(user_unit, syscall_groups()) == sandbox


@needs_analyze
@needs_activate
@needs_strace
def test_sandbox_allows_everything_the_daemon_does(short_tmp: Path) -> None:
    """A whole session under strace: start by activation, log, read on every
    path (thread pool, worker processes, HTTP), then SIGTERM."""
    assert STRACE is not None
    trace = short_tmp / "trace"
    strace = [STRACE, "-f", "-qq", "-o", str(trace)]
    with activate(short_tmp, prefix=strace, http="127.0.0.1:0") as a:
        run = stepline.init(project="sbx", socket=str(a.sock), autostart=False)
        for s in range(300):
            run.log({"loss": 1.0 / (s + 1), "acc": s / 300}, step=s)
        run.finish()
        api = stepline.Api(socket=str(a.sock))
        try:
            ref = api.run(f"sbx/{run.id}")
            assert len(list(ref.scan_history())) == 300
            assert len(ref.history(samples=50, pandas=False)) == 50  # a read worker process
        finally:
            api.close()
        info = json.loads((a.data_dir / "daemon.json").read_text())
        for path in ("/", "/api/projects", f"/api/projects/sbx/runs/{run.id}/history"):
            with urllib.request.urlopen(info["http"] + path, timeout=STARTUP_TIMEOUT) as r:
                assert r.status == 200
        # strace is the child here; the daemon is its tracee.
        os.kill(info["pid"], signal.SIGTERM)
        assert a.proc.wait(STARTUP_TIMEOUT) == 0, a.log()
        assert "stopped cleanly" in a.log()

    lines = trace.read_text().splitlines()
    # Everything from the exec of stepline on (systemd-socket-activate's calls before it
    # are not the service's), in every process: threads and read workers alike.
    exe = re.escape(stepline_command()[0])
    start = next(i for i, line in enumerate(lines) if re.match(rf'\d+\s+execve\("{exe}"', line))
    daemon = lines[start:]
    assert any(re.match(r"\d+\s+setpriority\(", line) for line in daemon), (
        "no read worker started: the trace misses the worker processes' system calls"
    )
    assert any("socket(AF_INET" in line for line in daemon), "HTTP did not run"
    bad = system_sandbox().violations(daemon)
    assert bad == [], "the service's sandbox would refuse:\n" + "\n".join(bad[:50])


def test_stepline_systemd_command(tmp_path: Path) -> None:
    # The CLI routes `stepline systemd ...` here.
    proc = subprocess.run(
        [sys.executable, "-m", "stepline.cli", "systemd", "install", "--user", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"# --- {tmp_path}/systemd/user/stepline.socket ---\n{units.USER_SOCKET}" in proc.stdout
    assert list(tmp_path.iterdir()) == []
