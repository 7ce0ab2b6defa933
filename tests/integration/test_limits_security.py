"""Operator settings against the real daemon: limits, socket group, HTTP token."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import stepline
from stepline import protocol
from tests.conftest import Daemon
from tests.wire import greeted, read_replies

TOKEN = "s3cret-token-0123456789"


def _daemon(root: Path, *args: str, http: str = "127.0.0.1:0") -> Daemon:
    d = Daemon(root)
    d.args = args
    d.http = http
    return d.start()


def _ask(s: Any, msg: dict[str, Any]) -> dict[str, Any]:
    s.sendall(protocol.encode(msg))
    return read_replies(s, 1)[0]


def test_limits_refuse_a_batch_whole_with_a_typed_error(short_tmp: Path) -> None:
    d = _daemon(short_tmp, "--max-keys-per-row", "3", "--max-value-len", "10")
    try:
        s = greeted(d, "lim")
        run_no = _ask(s, {"op": "init", "project": "p", "id": "r", "rid": 1})["result"]["run_no"]
        wide = {"a": 1, "b": 2, "c": 3, "d": 4, "_timestamp": 1.0, "_runtime": 0.0}
        reply = _ask(
            s, {"op": "log", "run_no": run_no, "seq": 1, "rows": [[0, {"a": 1}], [1, wide]]}
        )
        assert reply["op"] == "error" and reply["code"] == "bad_request"
        assert "row 1 has 6 keys" in reply["message"] and "at most 3" in reply["message"]
        long = {"note": "x" * 11}
        reply = _ask(s, {"op": "log", "run_no": run_no, "seq": 2, "rows": [[0, long]]})
        assert reply["op"] == "error" and "'note' is 11 characters" in reply["message"]
        # Within the limits (reserved keys do not count): stored; nothing of the refused.
        ok = {"a": 1, "b": 2, "c": "x" * 10, "_timestamp": 1.0, "_runtime": 0.0}
        assert _ask(s, {"op": "log", "run_no": run_no, "seq": 3, "rows": [[0, ok]]})["op"] == "ack"
        s.close()
        api = stepline.Api(socket=str(d.socket))
        assert [r["_step"] for r in api.run("p/r").scan_history()] == [0]
        api.close()
    finally:
        assert d.stop() == 0


def test_runs_per_project_limit(short_tmp: Path) -> None:
    d = _daemon(short_tmp, "--max-runs-per-project", "2")
    try:
        for i in range(2):
            run = stepline.init(project="p", id=f"r{i}", socket=str(d.socket))
            run.log({"x": 1})
            run.finish()
        with pytest.raises(stepline.LimitExceeded, match="holds 2 runs"):
            stepline.init(project="p", id="r2", socket=str(d.socket))
        with pytest.raises(stepline.LimitExceeded):
            stepline.init(project="p", fork_from="r0?_step=0", socket=str(d.socket))
        # A rewind or resume keeps its id: not a new run. Another project has room.
        stepline.init(project="p", id="r0", resume="allow", socket=str(d.socket)).finish()
        stepline.init(project="other", id="r0", socket=str(d.socket)).finish()
    finally:
        assert d.stop() == 0


def test_socket_is_private_unless_a_group_is_named(short_tmp: Path) -> None:
    d = _daemon(short_tmp / "a")
    try:
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    finally:
        assert d.stop() == 0
    group = grp.getgrgid(os.getgid()).gr_name
    g = _daemon(short_tmp / "b", "--socket-group", group)
    try:
        st = os.stat(g.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
    finally:
        assert g.stop() == 0


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_http_token_guards_every_request_and_allows_binding_beyond_loopback(
    short_tmp: Path,
) -> None:
    d = _daemon(short_tmp, "--http-token", TOKEN, http="0.0.0.0:0")
    try:
        port = d.http_url.rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        status, _, body = _get(base + "/api/projects")
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
        assert _get(base + "/metrics")[0] == 401
        assert (
            _get(base + "/api/projects", {"Authorization": "Bearer wrong-token-xxxxxxxx"})[0] == 401
        )
        status, _, body = _get(base + "/api/projects", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body) == {"projects": []}
        # A browser's first visit with ?token= gets a cookie its later requests carry.
        status, headers, _ = _get(base + f"/?token={TOKEN}")
        assert status == 200
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        jar = cookie.split(";", 1)[0]
        assert _get(base + "/api/projects", {"Cookie": jar})[0] == 200
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--http", "0.0.0.0:0"), "loopback only"),
        (("--http-token", "short"), "at least 16 characters"),
        (("--max-keys-per-row", "20000"), "cannot exceed"),
        (("--max-runs-per-project", "0"), "at least 1"),
        (("--socket-group", "no-such-group-here"), "no group named"),
    ],
)
def test_bad_settings_are_refused_at_start(
    short_tmp: Path, args: tuple[str, ...], message: str
) -> None:
    d = Daemon(short_tmp)
    d.http = "off"
    proc = d.spawn(*args)
    assert proc.wait(30) == 2
    assert message in d.log()


def test_the_map_starts_small_and_grows_under_writers_and_readers(short_tmp: Path) -> None:
    d = _daemon(short_tmp, "--map-size", str(1024 * 1024))
    try:
        run = stepline.init(project="p", id="grow", socket=str(d.socket))
        run.log({"x": 0})
        run.flush()
        chart = f"{d.http_url}/api/projects/p/runs/grow/history?keys=x&samples=100&format=columns"
        # A worker process opens the store now, at the small map size.
        assert json.loads(urllib.request.urlopen(chart).read())["_step"] == [0]
        blob = "y" * 1000
        for i in range(1, 20_000):  # ~20 MB: the map must double several times
            run.log({"x": i, "blob": blob})
        run.finish()
        assert d.log().count("LMDB map full; growing it") >= 4
        cols = json.loads(urllib.request.urlopen(chart).read())  # the worker adopts the new size
        assert cols["_step"][0] == 0 and cols["_step"][-1] == 19_999
        api = stepline.Api(socket=str(d.socket))
        assert [r["x"] for r in api.run("p/grow").scan_history(keys=["x"])] == list(range(20_000))
        api.close()
    finally:
        assert d.stop() == 0


def test_a_fork_refused_at_the_run_limit_leaves_no_trace(short_tmp: Path) -> None:
    d = _daemon(short_tmp, "--max-runs-per-project", "2")
    try:
        for run_id in ("a", "b"):
            run = stepline.init(project="p", id=run_id, socket=str(d.socket))
            run.log({"x": 1})
            run.log({"x": 2})
            run.finish()
        with pytest.raises(stepline.LimitExceeded):
            stepline.init(project="p", id="c", fork_from="a?_step=1", socket=str(d.socket))
        api = stepline.Api(socket=str(d.socket))
        assert api.run("p/a").children == []
        assert [r["x"] for r in api.run("p/a").scan_history()] == [1, 2]
        api.close()
    finally:
        assert d.stop() == 0
    done = subprocess.run(
        [sys.executable, "-m", "stepline_daemon.check", "--data-dir", str(d.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout
