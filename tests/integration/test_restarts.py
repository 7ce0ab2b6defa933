"""Every request survives a daemon restart.

One process, many requests (a sweep agent, a notebook, an HPO loop), and a
daemon restarted between or during them. For each request kind, against the
real daemon process and the real client:

* ``idle-term`` / ``idle-kill``: the daemon restarted (SIGTERM, or SIGKILL)
  while the client sat idle, so its connection is dead when the call comes;
* ``receive``: the daemon dies on reading the request, before any of it is done;
* ``reply``: the daemon dies once the request is done (committed and synced),
  before its reply goes out.

Each call must return normally, and exactly one run, row or update be stored.
The two crash points are the daemon's test-only ones (``stepline_daemon.faults``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import stepline
from stepline import protocol
from stepline_daemon import faults
from stepline_daemon.check import check
from tests.conftest import Daemon
from tests.wire import greeted, read_replies

P = "restarts"
# Each call's timeout: far longer than a restart takes, so a failure is real.
T = 60.0
IDLE = ("idle-term", "idle-kill")
CRASHES = ("receive", "reply")


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[Daemon]:
    """The suite's daemon without HTTP: nothing here reads over it, and each
    test starts it three or four times (aiohttp costs ~0.3 s of every start)."""
    d = Daemon(short_tmp)
    d.http = "off"
    d.start()
    yield d
    if d.alive:
        assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log(), d.log()


@dataclass
class Ctx:
    daemon: Daemon
    tmp: Path
    api: stepline.Api = field(init=False)
    run: stepline.Run | None = None
    kept: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.api = stepline.Api(socket=self.sock, timeout=T)

    @property
    def sock(self) -> str:
        return str(self.daemon.socket)

    def init(self, **kw: Any) -> stepline.Run:
        return stepline.init(project=P, socket=self.sock, timeout=T, autostart=False, **kw)

    def timelines(self, run_id: str) -> list[dict[str, Any]]:
        return [n for n in self.api.tree(P) if n["id"] == run_id]


@dataclass(frozen=True)
class Kind:
    op: str  # the request's op on the wire, which the crash points name
    setup: Callable[[Ctx], None]
    call: Callable[[Ctx], Any]
    check: Callable[[Ctx, Any], None]
    cases: tuple[str, ...] = IDLE + CRASHES


# ------------------------------------------------------------------ init kinds


def _setup_connected(ctx: Ctx) -> None:
    # The process has talked to the daemon before: its connection goes stale.
    first = ctx.init(id="first")
    first.finish()


def _check_new(ctx: Ctx, run: stepline.Run) -> None:
    # No id was given: a second application would make a second run, silently.
    assert sorted(r.id for r in ctx.api.runs(P)) == sorted(["first", run.id])
    assert len(ctx.api.tree(P)) == 2
    _log_and_finish(ctx, run, run.start_step)


def _log_and_finish(ctx: Ctx, run: stepline.Run, start: int) -> None:
    """The run the call returned is the stored one, and takes rows."""
    run.log({"x": 1.0})
    run.finish(timeout=T)
    r = ctx.api.run(f"{P}/{run.id}")
    assert (r.state, r.last_step) == ("finished", start)


def _setup_parent(ctx: Ctx) -> None:
    parent = ctx.init(id="parent")
    for i in range(10):
        parent.log({"loss": float(i)})
    parent.finish(timeout=T)


def _check_fork(ctx: Ctx, child: stepline.Run) -> None:
    assert child.start_step == 5
    assert [c for c in ctx.api.run(f"{P}/parent").children] == [(child.id, 4)]
    assert sorted(r.id for r in ctx.api.runs(P)) == sorted(["parent", child.id])
    _log_and_finish(ctx, child, 5)


def _check_rewind(ctx: Ctx, run: stepline.Run) -> None:
    assert (run.id, run.start_step) == ("parent", 5)
    # One rewind: one archived timeline. A second would archive the first rewind.
    nodes = ctx.timelines("parent")
    assert len(nodes) == 2, nodes
    old = ctx.api.run(f"{P}/parent").rewound_from
    assert old is not None and old.archived and old.last_step == 9
    _log_and_finish(ctx, run, 5)


# ------------------------------------------------------------ run update kinds


def _setup_open_run(ctx: Ctx) -> None:
    ctx.run = run = ctx.init(id="open")
    for i, loss in enumerate([3.0, 1.0, 2.0]):
        run.log({"loss": loss, "i": i})
    with pytest.warns(RuntimeWarning, match="behind the current step"):
        run.log({"late": 1}, step=1)  # dropped and counted in the run's stats
    run.flush(timeout=T)


def _open(ctx: Ctx) -> stepline.Run:
    assert ctx.run is not None
    return ctx.run


def _finish_open(ctx: Ctx) -> stepline.ApiRun:
    run = _open(ctx)
    run.log({"loss": 5.0, "i": 3})
    run.finish(timeout=T)
    r = ctx.api.run(f"{P}/open")
    assert (r.state, r.last_step, r.dropped) == ("finished", 3, 1)
    assert [row["i"] for row in r.scan_history()] == [0, 1, 2, 3]
    return r


def _call_config(ctx: Ctx) -> None:
    _open(ctx).config.update({"lr": 0.1})
    _open(ctx).flush(timeout=T)


def _check_config(ctx: Ctx, _: Any) -> None:
    assert ctx.api.run(f"{P}/open").config == {"lr": 0.1}
    _finish_open(ctx)


def _call_summary(ctx: Ctx) -> None:
    _open(ctx).summary["best"] = 7
    _open(ctx).flush(timeout=T)


def _check_summary(ctx: Ctx, _: Any) -> None:
    assert ctx.api.run(f"{P}/open").summary["best"] == 7
    assert _finish_open(ctx).summary["best"] == 7  # explicit values win


def _call_metric(ctx: Ctx) -> None:
    _open(ctx).define_metric("loss", summary="min")
    _open(ctx).flush(timeout=T)


def _check_metric(ctx: Ctx, _: Any) -> None:
    assert ctx.api.run(f"{P}/open").summary["loss"] == 1.0
    assert _finish_open(ctx).summary["loss"] == 1.0


def _call_log(ctx: Ctx) -> None:
    run = _open(ctx)
    for i in range(3, 1003):
        run.log({"i": i})
    run.flush(timeout=T)


def _check_log(ctx: Ctx, _: Any) -> None:
    r = ctx.api.run(f"{P}/open")
    assert [row["i"] for row in r.scan_history()] == list(range(1003))
    assert r.last_step == 1002
    _open(ctx).finish(timeout=T)


def _call_finish(ctx: Ctx) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finish() warns when it gives up waiting
        _open(ctx).finish(timeout=T)


def _check_finish(ctx: Ctx, _: Any) -> None:
    r = ctx.api.run(f"{P}/open")
    # Applied twice, the dropped count would double (or the resend be refused).
    assert (r.state, r.last_step, r.dropped) == ("finished", 2, 1)


# ------------------------------------------------------------------ Api reads


def _setup_reads(ctx: Ctx) -> None:
    run = ctx.init(id="read")
    for i in range(50):
        run.log({"i": i})
    run.finish(timeout=T)
    ctx.kept["run_no"] = ctx.api.run(f"{P}/read")  # the Api's connection, now idle


def _read_run(ctx: Ctx) -> stepline.ApiRun:
    r: stepline.ApiRun = ctx.kept["run_no"]
    return r


READS: dict[str, tuple[str, Callable[[Ctx], Any], Callable[[Any], bool]]] = {
    "info": ("info", lambda c: c.api.run(f"{P}/read"), lambda r: r.last_step == 49),
    "history": (
        "history",
        lambda c: _read_run(c).history(samples=10, pandas=False),
        lambda rows: [r["i"] for r in rows][:1] == [0] and rows[-1]["i"] == 49 and len(rows) == 10,
    ),
    "scan": (
        "scan",
        lambda c: list(_read_run(c).scan_history(page_size=7)),
        lambda rows: [r["i"] for r in rows] == list(range(50)),
    ),
    "runs": ("runs", lambda c: c.api.runs(P), lambda runs: [r.id for r in runs] == ["read"]),
    "projects": (
        "projects",
        lambda c: c.api.project_list(),
        lambda ps: [(p["name"], p["runs"]) for p in ps] == [(P, 1)],
    ),
    "tree": ("tree", lambda c: c.api.tree(P), lambda nodes: [n["id"] for n in nodes] == ["read"]),
    "status": ("status", lambda c: c.api.status(), lambda s: s["writer_healthy"] is True),
}


def _read_kind(op: str, call: Callable[[Ctx], Any], ok: Callable[[Any], bool]) -> Kind:
    def check_read(ctx: Ctx, out: Any) -> None:
        assert ok(out), out

    # A read commits nothing: there is no reply to lose after a commit.
    return Kind(op, _setup_reads, call, check_read, (*IDLE, "receive"))


# -------------------------------------------------------------- Api mutations


def _setup_finished(ctx: Ctx) -> None:
    for run_id in ("keep", "gone"):
        run = ctx.init(id=run_id)
        run.log({"a": 1})
        run.finish(timeout=T)
    ctx.api.runs(P)  # the Api's connection, now idle


def _check_delete(ctx: Ctx, out: dict[str, Any]) -> None:
    # Applied twice, the second would find no run (RunNotFound), not this outcome.
    assert (out["id"], out["timelines"]) == ("gone", 1)
    assert [r.id for r in ctx.api.runs(P)] == ["keep"]


def _setup_deleted(ctx: Ctx) -> None:
    _setup_finished(ctx)
    ctx.api.delete(f"{P}/gone")


def _check_purge(ctx: Ctx, out: dict[str, Any]) -> None:
    # Applied twice, the second would purge nothing and say so.
    assert (out["purged"], out["rows"]) == (1, 1)
    assert [n["id"] for n in ctx.api.tree(P)] == ["keep"]


def _call_backup(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = ctx.api.backup(str(ctx.tmp / "backup"))
    return out


def _check_backup(ctx: Ctx, out: dict[str, Any]) -> None:
    dest = ctx.tmp / "backup"
    # Repeated, the request would find its destination not empty.
    assert out == {"path": str(dest), "bytes": (dest / "data.mdb").stat().st_size}
    problems, counts = check(dest)
    assert problems == [] and counts["runs"] == 2


KINDS: dict[str, Kind] = {
    "init": Kind("init", _setup_connected, lambda c: c.init(), _check_new),
    "fork": Kind("init", _setup_parent, lambda c: c.init(fork_from="parent?_step=4"), _check_fork),
    "rewind": Kind(
        "init",
        _setup_parent,
        lambda c: c.init(id="parent", resume_from="parent?_step=4"),
        _check_rewind,
    ),
    "config": Kind("config", _setup_open_run, _call_config, _check_config),
    "summary": Kind("summary", _setup_open_run, _call_summary, _check_summary),
    "define_metric": Kind("metric", _setup_open_run, _call_metric, _check_metric),
    "log+flush": Kind("log", _setup_open_run, _call_log, _check_log),
    "finish": Kind("finish", _setup_open_run, _call_finish, _check_finish),
    **{name: _read_kind(*spec) for name, spec in READS.items()},
    "delete": Kind("delete", _setup_finished, lambda c: c.api.delete(f"{P}/gone"), _check_delete),
    "purge": Kind("purge", _setup_deleted, lambda c: c.api.purge(), _check_purge),
    "backup": Kind("backup", _setup_finished, _call_backup, _check_backup),
}


def _through_crash(ctx: Ctx, point: str, call: Callable[[], Any]) -> Any:
    """Restart the daemon armed to die at ``point``, make the call, and bring the
    daemon back (unarmed) once it died; the call's result."""
    d = ctx.daemon
    assert d.stop() == 0
    d.env = {faults.ENV: point}
    try:
        d.start()
    finally:
        d.env = {}
    assert d.proc is not None
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call)
        try:
            code = d.proc.wait(T)
        except subprocess.TimeoutExpired:
            d.kill()  # the call then ends with the daemon restarted below
            code = None
        d.proc = None
        d.start()
        out = pending.result(T)
    assert code == -signal.SIGKILL, f"the daemon never reached crash point {point}"
    assert f"crash point {point} reached" in d.log()
    return out


CASES = [(name, case) for name, kind in KINDS.items() for case in kind.cases]


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_every_request_survives_a_restart(name: str, case: str, daemon: Daemon) -> None:
    kind = KINDS[name]
    ctx = Ctx(daemon, daemon.data_dir.parent)
    kind.setup(ctx)
    if case == "idle-term":
        assert daemon.stop() == 0
        daemon.start()
        out = kind.call(ctx)
    elif case == "idle-kill":
        daemon.kill()
        daemon.start()
        out = kind.call(ctx)
    else:
        out = _through_crash(ctx, f"{case}:{kind.op}", lambda: kind.call(ctx))
    kind.check(ctx, out)
    ctx.api.close()


def test_every_request_kind_is_covered() -> None:
    # Every op a client sends that may outlive a restart has a kind above.
    ops = {kind.op for kind in KINDS.values()}
    assert ops >= {"init", "config", "summary", "metric", "log", "finish", "delete", "purge"}
    assert ops >= {"info", "history", "scan", "runs", "projects", "tree", "status", "backup"}


# ------------------------------------------------------------------------ CLI


@pytest.mark.parametrize(
    ("args", "op", "expect"),
    [
        (["show", f"{P}/read"], "info", "read"),
        (["history", f"{P}/read", "--csv"], "scan", "49,"),
        (["runs", "--project", P], "runs", "read"),
    ],
    ids=["show", "history", "runs"],
)
def test_cli_reads_survive_the_daemon_dying_under_them(
    args: list[str], op: str, expect: str, daemon: Daemon
) -> None:
    ctx = Ctx(daemon, daemon.data_dir.parent)
    _setup_reads(ctx)
    ctx.api.close()
    cmd = [sys.executable, "-m", "stepline.cli", *args, "--socket", ctx.sock]

    def cli() -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=T)

    # Dies on the command's request; the command retries while the daemon is
    # down (restarting it takes far longer than the first retry's backoff).
    out = _through_crash(ctx, f"receive:{op}", cli)
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout and out.stderr == ""


# ---------------------------------------------------------------- tokens, raw


def _call(sock: Any, msg: dict[str, Any]) -> dict[str, Any]:
    sock.sendall(protocol.encode(msg))
    (reply,) = read_replies(sock, 1)
    return reply


def test_a_resent_token_gets_the_first_outcome_and_nothing_more(daemon: Daemon) -> None:
    s = greeted(daemon, "raw")
    init = {"op": "init", "rid": 1, "token": "t-init", "project": P, "config": {"a": 1}}
    first = _call(s, init)
    assert first["op"] == "ok" and first["result"]["how"] == "new"
    again = _call(s, {**init, "rid": 2})  # the same request, resent
    assert again["rid"] == 2 and again["result"] == first["result"]  # config included
    api = stepline.Api(socket=str(daemon.socket))
    assert [r.id for r in api.runs(P)] == [first["result"]["id"]]
    # A token names one request: reusing it for another op is refused, unapplied.
    clash = _call(s, {"op": "purge", "rid": 3, "token": "t-init"})
    assert clash["op"] == "error" and "already used for another" in clash["message"]
    # A request refused is not remembered: its resend is decided afresh.
    dup = {"op": "init", "rid": 4, "token": "t-dup", "project": P, "id": first["result"]["id"]}
    assert _call(s, dup)["code"] == "exists"
    s.close()
    stepline.Api(socket=str(daemon.socket)).delete(f"{P}/{first['result']['id']}", force=True)
    s = greeted(daemon, "raw")
    made = _call(s, {**dup, "rid": 5})
    assert made["op"] == "ok" and made["result"]["id"] == first["result"]["id"]
    # Malformed tokens are refused with a message.
    for bad in ("", "x" * 65, 7, 1.5, ["t"], {"t": 1}):  # (nil is no token)
        reply = _call(s, {**init, "rid": 6, "token": bad})
        assert reply["op"] == "error" and "token" in reply["message"], (bad, reply)
    s.close()
    api.close()


def test_a_backup_resent_finds_its_own_copy_whatever_state_it_was_left_in(
    daemon: Daemon, short_tmp: Path
) -> None:
    run = stepline.init(project=P, id="b", socket=str(daemon.socket), autostart=False)
    run.log({"a": 1})
    run.finish()
    s = greeted(daemon, "raw")

    def backup(dest: Path, token: str) -> dict[str, Any]:
        return _call(s, {"op": "backup", "rid": 1, "token": token, "dest": str(dest)})

    def left_as(name: str, files: dict[str, str]) -> Path:
        dest = short_tmp / name
        dest.mkdir()
        for fname, text in files.items():
            (dest / fname).write_text(text)
        return dest

    mark = "stepline-backup.json"
    # Cut short mid-copy (the mark names this request): copied again, whole.
    cut = left_as("cut", {mark: '{"token": "T"}', "data.mdb": "half a copy"})
    # Killed as the first mark was written: a torn temporary mark alone.
    torn = left_as("torn", {mark + ".tmp": '{"tok'})
    # Killed before the last mark's rename: the copy finished, the answer is there.
    for dest in (cut, torn):
        reply = backup(dest, "T")
        assert reply["op"] == "ok", reply
        assert sorted(os.listdir(dest)) == ["data.mdb", mark]
        assert check(dest)[0] == []
    done = left_as("done", {mark: '{"token": "T"}', mark + ".tmp": '{"token": "T", "bytes": 7}'})
    (done / "data.mdb").write_bytes(b"x" * 7)
    assert backup(done, "T")["result"] == {"path": str(done), "bytes": 7}  # not copied again
    # Another request's copy, or anything else, is never touched.
    other = left_as("other", {mark: '{"token": "U", "bytes": 7}', "data.mdb": "theirs"})
    for dest in (other, left_as("mine", {"notes.txt": "keep"})):
        before = {p.name: p.read_bytes() for p in dest.iterdir()}
        reply = backup(dest, "T")
        assert reply["op"] == "error" and "not empty" in reply["message"], reply
        assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    s.close()


def test_scan_history_carries_on_where_it_was_when_the_daemon_died(daemon: Daemon) -> None:
    run = stepline.init(project=P, id="long", socket=str(daemon.socket), autostart=False)
    pad = "p" * 1000  # 5 MB in all: far more than the socket buffers hold at the kill
    for i in range(5000):
        run.log({"i": i, "pad": pad})
    run.finish()
    api = stepline.Api(socket=str(daemon.socket), timeout=T)
    rows = api.run(f"{P}/long").scan_history(page_size=50)
    got = [next(rows) for _ in range(120)]  # mid-page, pages streamed ahead of it
    daemon.kill()
    daemon.start()
    got += list(rows)  # the rest, on a new connection from the first row not handed out
    assert [r["i"] for r in got] == list(range(5000))
    api.close()


def test_a_request_goes_after_the_rows_queued_before_it(daemon: Daemon) -> None:
    """Rows and an init both wait for the daemon to come back: the init must not
    overtake the rows logged before it (the fork would find its step missing)."""
    ctx = Ctx(daemon, daemon.data_dir.parent)
    parent = ctx.init(id="par")
    parent.log({"i": 0})
    parent.flush(timeout=T)
    assert daemon.stop() == 0
    for i in range(1, 3000):
        parent.log({"i": i, "pad": "p" * 1000})  # queued, no daemon: more than one send
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(ctx.init, fork_from="par?_step=2999")
        daemon.start()
        child = pending.result(T)
    assert child.start_step == 3000
    child.finish(timeout=T)
    parent.finish(timeout=T)
    kid = ctx.api.run(f"{P}/{child.id}")
    assert [r["i"] for r in kid.scan_history()] == list(range(3000))
    ctx.api.close()
