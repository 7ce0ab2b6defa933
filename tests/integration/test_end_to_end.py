"""The whole path with real parts: client -> Unix socket -> daemon process -> LMDB -> read."""

from __future__ import annotations

import math
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

import stepline
from stepline import protocol
from tests.conftest import Daemon, wait_for
from tests.wire import greeted, raw_conn, read_replies

P = "proj"


def init(d: Daemon, **kw: Any) -> stepline.Run:
    return stepline.init(project=P, socket=str(d.socket), **kw)


def api(d: Daemon) -> stepline.Api:
    return stepline.Api(socket=str(d.socket))


def metrics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the wall-clock keys, NaN made comparable."""
    out = []
    for r in rows:
        clean = {}
        for k, v in r.items():
            if k in ("_timestamp", "_runtime"):
                continue
            clean[k] = "NaN" if isinstance(v, float) and math.isnan(v) else v
        out.append(clean)
    return out


def expected(steps: range, f: Any) -> list[dict[str, Any]]:
    return [{"_step": s, **f(s)} for s in steps]


def log_range(run: stepline.Run, steps: range, f: Any) -> None:
    for s in steps:
        run.log(f(s), step=s, commit=True)


def val(s: int) -> dict[str, Any]:
    return {"loss": 1.0 / (s + 1), "s": s}


def child_val(s: int) -> dict[str, Any]:
    return {"loss": -float(s), "s": s, "child": True}


# ----------------------------------------------------------------- basic path


def test_10k_steps_read_back_exactly(daemon: Daemon) -> None:
    def row(i: int) -> dict[str, Any]:
        special = [math.nan, math.inf, -math.inf, 0.0, -0.0]
        return {
            "loss": 1.0 / (i + 1),
            "odd": special[i % 5],
            "nested": {"acc": i % 7, "ok": i % 2 == 0},
            "tag": f"t{i}",
            "none": None,
        }

    run = init(daemon, config={"lr": 3e-4})
    for i in range(10_000):
        run.log(row(i))
    run.flush()
    run.finish()

    r = api(daemon).run(f"{P}/{run.id}")
    rows = list(r.scan_history(page_size=777))
    assert len(rows) == 10_000
    want = [{"_step": i, **stepline.rows.flatten(row(i))} for i in range(10_000)]
    assert metrics(rows) == metrics(want)
    # Bit-exact special floats.
    assert struct.pack(">d", rows[4]["odd"]) == struct.pack(">d", -0.0)
    assert all(set(r) >= {"_timestamp", "_runtime"} for r in rows)
    assert r.state == "finished"
    assert r.config == {"lr": 3e-4}
    assert r.summary["_step"] == 9999 and r.summary["tag"] == "t9999"

    sampled = r.history(samples=500, pandas=False)
    assert len(sampled) == 500
    assert sampled[0]["_step"] == 0 and sampled[-1]["_step"] == 9999
    assert metrics(r.history(samples=500, pandas=False)) == metrics(sampled)  # deterministic
    window = list(r.scan_history(min_step=100, max_step=200, keys=["loss"]))
    assert [w["_step"] for w in window] == list(range(100, 200))
    assert set(window[0]) == {"_step", "loss"}


def test_step_semantics_through_the_daemon(daemon: Daemon) -> None:
    run = init(daemon)
    run.log({"a": 1})  # step 0
    run.log({"b": 2}, commit=False)
    run.log({"c": 3})  # merges with b at step 1
    run.log({"d": 4}, step=5)  # pending at 5
    run.log({"e": 5}, step=5)  # merges
    with pytest.warns(RuntimeWarning, match="behind"):
        run.log({"x": 0}, step=2)  # dropped
    run.log({"x": 0}, step=3)  # dropped, counted, no second warning
    run.log({"f": 6}, step=7)  # commits 5, pending at 7
    run.finish()
    r = api(daemon).run(f"{P}/{run.id}")
    assert metrics(list(r.scan_history())) == [
        {"_step": 0, "a": 1},
        {"_step": 1, "b": 2, "c": 3},
        {"_step": 5, "d": 4, "e": 5},
        {"_step": 7, "f": 6},
    ]
    assert r.dropped == 2


def test_bad_values_raise_at_the_call(daemon: Daemon) -> None:
    run = init(daemon)
    with pytest.raises(TypeError, match="list"):
        run.log({"a": [1, 2]})
    with pytest.raises(TypeError, match="keys must be str"):
        run.log({1: 2})
    with pytest.raises(TypeError, match="mapping"):
        run.log([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="64 bits"):
        run.log({"big": 2**70})
    with pytest.raises(ValueError, match="bytes"):
        run.log({"s": "x" * (2 * 1024 * 1024)})
    run.log({"ok": 1})
    run.finish()
    rows = list(api(daemon).run(f"{P}/{run.id}").scan_history())
    assert metrics(rows) == [{"_step": 0, "ok": 1}]


def test_summary_config_and_define_metric(daemon: Daemon) -> None:
    with init(daemon, config={"lr": 1, "bs": 8}) as run:
        run.define_metric("loss", summary="min")
        run.define_metric("acc", summary="max")
        for v in (3.0, 1.0, 2.0):
            run.log({"loss": v, "acc": v, "last": v})
        run.config.update({"bs": 16, "wd": 0.1})
        run.config.epochs = 3
        run.summary["best"] = "yes"
    r = api(daemon).run(f"{P}/{run.id}")
    assert r.summary["loss"] == 1.0 and r.summary["acc"] == 3.0 and r.summary["last"] == 2.0
    assert r.summary["best"] == "yes"
    assert r.config == {"lr": 1, "bs": 16, "wd": 0.1, "epochs": 3}
    assert r.state == "finished"


def test_module_level_api_like_wandb(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLINE_SOCKET", str(daemon.socket))
    import stepline as wandb

    wandb.init(project=P, config={"lr": 0.1}, name="first", tags=["a"])
    assert wandb.run is not None and wandb.config["lr"] == 0.1
    for i in range(3):
        wandb.log({"loss": i})
    wandb.summary["final"] = 1
    run_id = wandb.run.id
    wandb.finish()
    assert wandb.run is None
    r = wandb.Api().run(f"{P}/{run_id}")
    assert r.name == "first" and r.tags == ["a"] and r.last_step == 2 and r.summary["final"] == 1


def test_exception_in_with_block_marks_failed(daemon: Daemon) -> None:
    with pytest.raises(RuntimeError), init(daemon) as run:
        run.log({"a": 1})
        raise RuntimeError("boom")
    assert api(daemon).run(f"{P}/{run.id}").state == "failed"


def test_many_threads_log_to_one_run(daemon: Daemon) -> None:
    run = init(daemon)

    def work(t: int) -> None:
        for i in range(500):
            run.log({f"t{t}": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.finish()
    rows = list(api(daemon).run(f"{P}/{run.id}").scan_history())
    assert [r["_step"] for r in rows] == list(range(2000))
    for t in range(4):
        assert [r[f"t{t}"] for r in rows if f"t{t}" in r] == list(range(500))


# ------------------------------------------------------ forks, rewinds, resume


def test_fork_and_fork_of_fork(daemon: Daemon) -> None:
    parent = init(daemon, id="parent")
    log_range(parent, range(100), val)
    parent.finish()

    child = init(daemon, id="child", fork_from="parent?_step=39", config={"lr": 2})
    assert child.step == 40
    log_range(child, range(40, 60), child_val)
    child.finish()

    grand = init(daemon, id="grand", fork_from="child?_step=49")
    assert grand.step == 50
    log_range(grand, range(50, 55), lambda s: {"g": s})
    grand.finish()

    a = api(daemon)
    want_child = expected(range(40), val) + expected(range(40, 60), child_val)
    assert metrics(list(a.run(f"{P}/child").scan_history())) == want_child
    want_grand = want_child[:50] + expected(range(50, 55), lambda s: {"g": s})
    assert metrics(list(a.run(f"{P}/grand").scan_history())) == want_grand
    # Own rows only.
    own = a.run(f"{P}/grand").scan_history(include_parent=False)
    assert metrics(list(own)) == expected(range(50, 55), lambda s: {"g": s})

    g = a.run(f"{P}/grand")
    assert g.parent == ("child", 49)
    assert g.lineage == [("child", 49), ("parent", 39)]
    assert a.run(f"{P}/parent").children == [("child", 39)]
    assert a.run(f"{P}/child").config == {"lr": 2}
    # Summary of a fork covers the inherited rows too.
    assert g.summary["s"] == 49 and g.summary["g"] == 54 and g.summary["_step"] == 54

    # The parent goes on (resumed); the forks' views stay pinned.
    p2 = init(daemon, id="parent", resume="allow")
    assert p2.step == 100
    log_range(p2, range(100, 110), val)
    p2.finish()
    assert metrics(list(a.run(f"{P}/grand").scan_history())) == want_grand


def test_rewind_keeps_id_and_children_views(daemon: Daemon) -> None:
    run = init(daemon, id="r", config={"lr": 1, "bs": 4})
    log_range(run, range(100), val)
    run.finish()
    kid = init(daemon, id="kid", fork_from="r?_step=79")
    log_range(kid, range(80, 85), child_val)
    kid.finish()
    a = api(daemon)
    kid_view = list(a.run(f"{P}/kid").scan_history())

    again = init(daemon, id="r", resume_from="r?_step=49", config={"lr": 0.5})
    assert again.id == "r" and again.step == 50
    log_range(again, range(50, 60), child_val)
    again.finish()

    r = a.run(f"{P}/r")
    assert metrics(list(r.scan_history())) == expected(range(50), val) + expected(
        range(50, 60), child_val
    )
    assert r.config == {"lr": 0.5, "bs": 4}
    assert r.summary["s"] == 59 and r.summary["loss"] == -59.0
    # The old timeline is archived, readable, and linked from the run.
    old = r.rewound_from
    assert old is not None and old.archived and old.id == "r"
    assert metrics(list(old.scan_history())) == expected(range(100), val)
    assert r.parent == ("r", 49)
    # The child forked from the old timeline sees exactly what it saw.
    assert list(a.run(f"{P}/kid").scan_history()) == kid_view
    # Rewind again, of a rewound run: still consistent.
    third = init(daemon, id="r", resume_from="r?_step=54")
    log_range(third, range(55, 57), lambda s: {"third": s})
    third.finish()
    want = expected(range(50), val) + expected(range(50, 55), child_val)
    want += expected(range(55, 57), lambda s: {"third": s})
    assert metrics(list(a.run(f"{P}/r").scan_history())) == want
    assert list(a.run(f"{P}/kid").scan_history()) == kid_view


def test_resume_continues_at_last_step_plus_one(daemon: Daemon) -> None:
    run = init(daemon, id="res", config={"a": 1})
    log_range(run, range(10), val)
    run.finish()
    again = init(daemon, id="res", resume="must", config={"b": 2})
    assert again.step == 10
    again.log({"loss": 0.0})
    again.finish()
    r = api(daemon).run(f"{P}/res")
    assert r.last_step == 10 and r.state == "finished" and r.config == {"a": 1, "b": 2}
    assert [row["_step"] for row in r.scan_history()] == list(range(11))
    fresh = init(daemon, id="fresh", resume="allow")
    assert fresh.step == 0
    fresh.finish()


# ------------------------------------------------------------- refused cases


def test_refused_init_cases(daemon: Daemon) -> None:
    base = init(daemon, id="base")
    log_range(base, range(10), val)
    base.finish()
    cases: list[tuple[dict[str, Any], type[stepline.Error], str]] = [
        ({"fork_from": "nope?_step=1"}, stepline.InvalidFork, "does not exist"),
        ({"fork_from": "base?_step=10"}, stepline.InvalidFork, "beyond"),
        ({"id": "base", "fork_from": "base?_step=1"}, stepline.InvalidFork, "parent's own id"),
        ({"fork_from": "base?epoch=1"}, stepline.InvalidFork, "_step"),
        (
            {"fork_from": "base?_step=1", "resume": "allow", "id": "x"},
            stepline.InvalidFork,
            "combined",
        ),
        (
            {"fork_from": "base?_step=1", "resume_from": "base?_step=1"},
            stepline.InvalidFork,
            "combined",
        ),
        ({"id": "other", "resume_from": "base?_step=1"}, stepline.InvalidResume, "same|keeps"),
        ({"id": "base", "resume_from": "base?_step=99"}, stepline.InvalidResume, "beyond"),
        ({"id": "ghost", "resume_from": "ghost?_step=0"}, stepline.RunNotFound, "does not exist"),
        ({"id": "ghost", "resume": "must"}, stepline.RunNotFound, "does not exist"),
        ({"id": "base", "resume": "never"}, stepline.RunExists, "already exists"),
        ({"id": "base"}, stepline.RunExists, "already exists"),
        ({"id": "../etc"}, stepline.RequestError, "not valid"),
    ]
    for kwargs, err, match in cases:
        with pytest.raises(err, match=match):
            init(daemon, **kwargs)
    # Every refusal is a stepline.Error; the store is unchanged.
    r = api(daemon).run(f"{P}/base")
    assert r.last_step == 9 and r.state == "finished" and r.children == []
    assert [x.id for x in api(daemon).runs(P)] == ["base"]
    with pytest.raises(stepline.RunNotFound):
        api(daemon).run(f"{P}/ghost")


def test_garbage_bytes_leave_the_daemon_serving(daemon: Daemon) -> None:
    good = init(daemon, id="good")
    good.log({"a": 0})
    good.flush()

    garbage = [
        struct.pack(">I", protocol.MAX_FRAME_SIZE + 1),  # length over the maximum
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # not msgpack
        protocol.encode({"op": "hello", "client": "z"})[:4] + b"",  # truncated, then EOF
        struct.pack(">I", 1) + b"\x05",  # msgpack, but not a map
    ]
    for blob in garbage:
        s = raw_conn(daemon)
        s.sendall(blob)
        s.shutdown(socket.SHUT_WR)
        replies = read_replies(s, 1)
        s.close()
        if replies:
            assert replies[0]["op"] == "error"
            assert replies[0]["code"] in ("frame_too_large", "bad_frame")

    good.log({"a": 1})
    good.flush()
    assert daemon.alive


def test_bad_requests_get_typed_errors_and_store_nothing(daemon: Daemon) -> None:
    run = init(daemon, id="target")
    run.log({"a": 0})
    run.flush()
    run_no = run._run_no

    s = greeted(daemon, "raw-client")
    # Refusals of well-addressed batches still use up their seq, in order (1-8).
    bad: dict[str, dict[str, Any]] = {
        "step_order": {"seq": 1, "rows": [[5, {"a": 1}], [6, {"a": 2}], [4, {"a": 3}]]},
        "not_after_last": {"seq": 2, "rows": [[0, {"a": 1}]]},
        "list_value": {"seq": 3, "rows": [[7, {"a": [1]}]]},
        "int_key": {"seq": 4, "rows": [[7, {1: 2}]]},
        "negative_step": {"seq": 5, "rows": [[-1, {"a": 1}]]},
        "huge_step": {"seq": 6, "rows": [[2**63, {"a": 1}]]},
        "float_step": {"seq": 7, "rows": [[1.5, {"a": 1}]]},
        "empty_rows": {"seq": 8, "rows": []},
        "seq_gap": {"seq": 10},
        "run_type": {"run_no": "x"},
        "seq_type": {"seq": -1},
        "unknown_run": {"run_no": 99999, "seq": 1},
        "init_type": {"op": "init", "project": 5},
        "read_type": {"op": "scan", "project": P, "id": "target", "limit": "many"},
        "unknown_op": {"op": "nonsense"},
    }
    for name, fields in bad.items():
        msg = {"op": "log", "run_no": run_no, "rows": [[7, {"a": 1}]], "rid": name}
        s.sendall(protocol.encode({**msg, **fields}))
    replies = {r["rid"]: r for r in read_replies(s, len(bad))}
    assert set(replies) == set(bad)
    assert all(r["op"] == "error" and r["message"] for r in replies.values())
    codes = {name: r["code"] for name, r in replies.items()}
    assert codes["step_order"] == "step_order" and "step 4" in replies["step_order"]["message"]
    assert codes["not_after_last"] == "step_order"
    assert codes["seq_gap"] == "seq_gap"
    assert codes["unknown_run"] == "not_found"
    assert codes["unknown_op"] == "unknown_op"
    special = ("step_order", "not_after_last", "seq_gap", "unknown_run", "unknown_op")
    assert all(c == "bad_request" for n, c in codes.items() if n not in special)
    seq = 9
    # The connection still works after refusals.
    s.sendall(protocol.encode({"op": "log", "run_no": run_no, "seq": seq, "rows": [[8, {"a": 8}]]}))
    assert read_replies(s, 1)[0] == {"op": "ack", "run_no": run_no, "seq": seq}
    # A resent batch is acknowledged and not applied twice.
    s.sendall(protocol.encode({"op": "log", "run_no": run_no, "seq": seq, "rows": [[9, {"a": 9}]]}))
    assert read_replies(s, 1)[0] == {"op": "ack", "run_no": run_no, "seq": seq}
    s.close()
    run.finish()
    rows = list(api(daemon).run(f"{P}/target").scan_history())
    assert metrics(rows) == [{"_step": 0, "a": 0}, {"_step": 8, "a": 8}]


# ------------------------------------------------------------ process faults


def test_flushed_rows_survive_sigkill_and_restart(daemon: Daemon) -> None:
    run = init(daemon, id="durable")
    log_range(run, range(5000), val)
    run.flush()
    daemon.kill()
    assert daemon.socket.exists()  # a stale socket file is left behind
    daemon.start()
    rows = list(api(daemon).run(f"{P}/durable").scan_history())
    assert metrics(rows) == expected(range(5000), val)
    run.finish()


def test_sender_resends_across_a_daemon_restart(daemon: Daemon) -> None:
    run = init(daemon, id="resend")
    log_range(run, range(1000), val)
    run.flush()
    daemon.kill()
    log_range(run, range(1000, 2000), val)  # queued while the daemon is down
    daemon.start()
    run.flush(timeout=60)
    run.finish()
    r = api(daemon).run(f"{P}/resend")
    assert metrics(list(r.scan_history())) == expected(range(2000), val)
    assert r.state == "finished"


def test_disconnect_without_finish_leaves_run_crashed(daemon: Daemon) -> None:
    script = textwrap.dedent(f"""
        import os, stepline
        run = stepline.init(project={P!r}, id="crashy", socket={str(daemon.socket)!r})
        for i in range(100):
            run.log({{"a": i}})
        run.flush()
        os._exit(0)  # no finish, no atexit
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    a = api(daemon)
    wait_for(lambda: a.run(f"{P}/crashy").state == "crashed", 20, "the run to be marked crashed")
    assert a.run(f"{P}/crashy").last_step == 99


def test_sigterm_drains_and_exits_zero(daemon: Daemon) -> None:
    run = init(daemon, id="term")
    log_range(run, range(100), val)
    run.flush()
    assert daemon.stop() == 0
    assert not daemon.socket.exists()
    daemon.start()
    assert api(daemon).run(f"{P}/term").last_step == 99
    run.finish()
    assert api(daemon).run(f"{P}/term").state == "finished"


def test_second_daemon_is_refused(daemon: Daemon, short_tmp: Path) -> None:
    same_dir = daemon.spawn()
    assert same_dir.wait(20) != 0
    assert "already serving data dir" in daemon.log()

    other = Daemon(short_tmp / "other")
    other.socket = daemon.socket  # another data dir, the same socket
    proc = other.spawn()
    assert proc.wait(20) != 0
    assert "already listening" in other.log()
    assert daemon.alive


def test_unreachable_daemon_is_a_typed_error_after_the_timeout(short_tmp: Path) -> None:
    # Retried until the timeout (a restarting daemon is away for a moment), then
    # a typed error naming the socket and the last reason.
    sock = str(short_tmp / "none.sock")
    began = time.monotonic()
    with pytest.raises(stepline.DaemonUnavailable, match="no stepline daemon") as caught:
        stepline.init(project=P, socket=sock, timeout=0.5)
    assert time.monotonic() - began >= 0.5
    assert "init: no answer within 0.5s" in str(caught.value) and sock in str(caught.value)
    began = time.monotonic()
    with pytest.raises(ConnectionError, match="no stepline daemon"):
        stepline.Api(socket=sock, timeout=0.5).runs(P)
    assert time.monotonic() - began >= 0.5


def test_cli_daemon_entry_point(short_tmp: Path) -> None:
    exe = Path(sys.executable).parent / "stepline"
    out = subprocess.run([str(exe), "daemon", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--data-dir" in out.stdout
    env = {
        **os.environ,
        "STEPLINE_DATA_DIR": str(short_tmp / "d"),
        "STEPLINE_SOCKET": str(short_tmp / "s"),
    }
    d = Daemon(short_tmp)
    d.data_dir, d.socket = short_tmp / "d", short_tmp / "s"
    proc = subprocess.Popen(
        [str(exe), "daemon"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: d.socket.exists() or proc.poll() is not None, 20, "the socket from env")
        assert proc.poll() is None
        assert stepline.Api(socket=str(d.socket)).projects() == []
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    assert (short_tmp / "d" / "data.mdb").exists()


def test_streamed_scan_pages_and_early_stop(daemon: Daemon) -> None:
    run = init(daemon, id="pages")
    log_range(run, range(5000), val)
    run.finish()
    r = api(daemon).run(f"{P}/pages")
    for page_size in (1, 7, 1000, 100_000):
        rows = list(r.scan_history(page_size=page_size, min_step=10, max_step=4990))
        assert [x["_step"] for x in rows] == list(range(10, 4990))
    it = r.scan_history(page_size=10)
    assert [next(it)["_step"] for _ in range(25)] == list(range(25))
    it.close()  # the reader's connection closes mid-stream; the daemon carries on
    assert r.history(samples=3, pandas=False)[-1]["_step"] == 4999
    with pytest.raises(stepline.RequestError, match="limit"):
        list(r.scan_history(page_size=0))


def test_packed_row_values_are_checked_then_stored_as_sent(daemon: Daemon) -> None:
    run = init(daemon, id="packed")
    run.log({"a": 0})
    run.flush()
    s = greeted(daemon, "packer")
    bad = {
        "not_a_map": b"\x05",
        "trailing": msgpack.packb({"a": 1}) + b"\x00",
        "int_key": msgpack.packb({1: 2}),
        "list_value": msgpack.packb({"a": [1]}),
        "garbage": b"\xc1",
    }
    for seq, (name, blob) in enumerate(bad.items(), start=1):
        msg = {"op": "log", "run_no": run._run_no, "seq": seq, "rid": name, "rows": [[5, blob]]}
        s.sendall(protocol.encode(msg))
    replies = {r["rid"]: r for r in read_replies(s, len(bad))}
    assert {n: r["code"] for n, r in replies.items()} == dict.fromkeys(bad, "bad_request")
    assert "key 1" in replies["int_key"]["message"]
    good = msgpack.packb({"a": 6.5, "s": "x"})
    s.sendall(protocol.encode_log(run._run_no, len(bad) + 1, [6], [good]))
    assert read_replies(s, 1)[0]["op"] == "ack"
    s.close()
    run.finish()
    rows = list(api(daemon).run(f"{P}/packed").scan_history())
    assert metrics(rows) == [{"_step": 0, "a": 0}, {"_step": 6, "a": 6.5, "s": "x"}]


def test_column_batches_with_bad_steps_are_refused_whole(daemon: Daemon) -> None:
    run = init(daemon, id="columns")
    run.log({"a": 0})
    run.flush()
    s = greeted(daemon, "columnist")
    v = msgpack.packb({"a": 1})
    bad: dict[str, tuple[Any, Any, str]] = {
        "backwards": ([5, 6, 4], [v, v, v], "step_order"),
        "repeat": ([5, 5], [v, v], "step_order"),
        "negative": ([-1], [v], "bad_request"),
        "bool": ([True], [v], "bad_request"),
        "float": ([1.5], [v], "bad_request"),
        "too_big": ([2**63], [v], "bad_request"),
        "lengths": ([5, 6], [v], "bad_request"),
        "empty": ([], [], "bad_request"),
        "not_lists": ("5", v, "bad_request"),
    }
    for seq, (name, (steps, values, _)) in enumerate(bad.items(), start=1):
        msg = {
            "op": "log",
            "run_no": run._run_no,
            "seq": seq,
            "rid": name,
            "steps": steps,
            "values": values,
        }
        s.sendall(protocol.encode(msg))
    replies = {r["rid"]: r for r in read_replies(s, len(bad))}
    assert {n: r["code"] for n, r in replies.items()} == {n: c for n, (_, _, c) in bad.items()}
    assert "step 4" in replies["backwards"]["message"]
    s.close()
    run.finish()
    rows = list(api(daemon).run(f"{P}/columns").scan_history())
    assert metrics(rows) == [{"_step": 0, "a": 0}]
