"""The HTTP JSON API against the real daemon process, with the real client logging."""

from __future__ import annotations

import csv
import http.client
import io
import json
import math
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import stepline
from stepline_daemon import openapi
from stepline_daemon.http import Http
from tests.conftest import Daemon

P = "vision"


def get(daemon: Daemon, path: str) -> tuple[int, Any]:
    """Status and decoded body; JSON with NaN/Infinity parsed the way W&B's are."""
    try:
        with urllib.request.urlopen(daemon.http_url + path, timeout=30) as resp:
            status, ctype, body = resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        status, ctype, body = exc.code, exc.headers["Content-Type"], exc.read()
    if ctype and ctype.startswith("application/json"):
        return status, json.loads(body)
    return status, body.decode()


def ok(daemon: Daemon, path: str) -> Any:
    status, body = get(daemon, path)
    assert status == 200, (path, status, body)
    return body


def log_run(daemon: Daemon, run_id: str, steps: int, **init: Any) -> None:
    run = stepline.init(project=P, id=run_id, socket=str(daemon.socket), **init)
    start = run.step
    for i in range(start, start + steps):
        run.log({"loss": 1.0 / (i + 1), "acc": i * 0.001})
    run.finish()


@pytest.fixture
def family(daemon: Daemon) -> Daemon:
    """base (300 steps), a fork of it at 100, then base rewound at 200."""
    log_run(daemon, "base", 300, tags=["baseline"], config={"lr": 0.1})
    log_run(daemon, "kid", 50, fork_from="base?_step=100")
    log_run(daemon, "base", 20, resume_from="base?_step=200")
    return daemon


def test_projects_runs_detail_and_tree(family: Daemon) -> None:
    [project] = ok(family, "/api/projects")["projects"]
    assert project["name"] == P and project["runs"] == 2
    newest = max(r["updated"] for r in ok(family, f"/api/projects/{P}/runs")["runs"])
    assert project["updated"] == newest

    runs = {r["id"]: r for r in ok(family, f"/api/projects/{P}/runs")["runs"]}
    assert set(runs) == {"base", "kid"}
    kid = runs["kid"]
    assert kid["state"] == "finished" and kid["last_step"] == 150
    assert kid["parent"]["id"] == "base" and kid["parent"]["step"] == 100
    assert kid["summary"]["loss"] == pytest.approx(1.0 / 151)
    assert runs["base"]["tags"] == ["baseline"]

    base = ok(family, f"/api/projects/{P}/runs/base")
    assert base["config"] == {"lr": 0.1}
    assert base["last_step"] == 220
    [old] = base["archived"]
    assert old["step"] == 200 and old["last_step"] == 299 and old["state"] == "archived"
    # The fork hangs off the archived timeline: its view was pinned before the rewind.
    archived = ok(family, f"/api/projects/{P}/runs/base?run_no={old['run_no']}")
    children = {(c["id"], c["step"]) for c in archived["children"]}
    assert children == {("kid", 100), ("base", 200)}  # a fork, and the rewind
    assert archived["archived_by"] == base["run_no"]

    nodes = ok(family, f"/api/projects/{P}/tree")["nodes"]
    by_no = {n["run_no"]: n for n in nodes}
    assert len(nodes) == 3
    assert by_no[kid["run_no"]]["parent_run_no"] == old["run_no"]
    assert by_no[base["run_no"]]["parent_run_no"] == old["run_no"]
    assert by_no[base["run_no"]]["step"] == 200
    assert by_no[old["run_no"]]["parent_run_no"] is None


def test_history_exact_pages_follow_next(family: Daemon) -> None:
    url = f"/api/projects/{P}/runs/kid/history?limit=64"
    rows: list[dict[str, Any]] = []
    page = ok(family, url)
    while True:
        rows.extend(page["rows"])
        if page["next"] is None:
            break
        page = ok(family, f"{url}&min_step={page['next']}")
    assert [r["_step"] for r in rows] == list(range(151))  # parent 0..100, own 101..150
    assert all(r["loss"] == pytest.approx(1.0 / (r["_step"] + 1)) for r in rows)
    own = ok(family, f"/api/projects/{P}/runs/kid/history?include_parent=false")["rows"]
    assert [r["_step"] for r in own] == list(range(101, 151))
    window = ok(family, f"/api/projects/{P}/runs/kid/history?min_step=90&max_step=110")
    assert [r["_step"] for r in window["rows"]] == list(range(90, 110))


def test_columns_and_chart_downsample_keep_ends_and_spikes(daemon: Daemon) -> None:
    run = stepline.init(project=P, id="spiky", socket=str(daemon.socket))
    for i in range(20_000):
        row: dict[str, Any] = {"loss": 1.0}
        if i == 12_345:
            row["loss"] = 1e6  # one spike an evenly spaced sample would miss
        if i % 100 == 0:
            row["val"] = i  # a key logged at another cadence
        run.log(row)
    run.finish()
    cols = ok(daemon, f"/api/projects/{P}/runs/spiky/history?keys=loss&samples=200&format=columns")
    assert set(cols) == {"_step", "loss", "next"}
    assert len(cols["_step"]) <= 200 and cols["_step"] == sorted(cols["_step"])
    assert cols["_step"][0] == 0 and cols["_step"][-1] == 19_999
    assert cols == ok(
        daemon, f"/api/projects/{P}/runs/spiky/history?keys=loss&samples=200&format=columns"
    )
    # A window of at most 4 x samples steps is read whole: its extremes are exact
    # (a chart zoomed in sees every spike; the whole run is read by stride seeks).
    zoom = ok(
        daemon,
        f"/api/projects/{P}/runs/spiky/history?keys=loss&samples=200&format=columns"
        "&min_step=12000&max_step=12800",
    )
    assert len(zoom["_step"]) <= 200 and zoom["_step"][0] == 12_000
    assert zoom["_step"][-1] == 12_799
    assert 12_345 in zoom["_step"] and 1e6 in zoom["loss"]
    # Rows holding any of the keys, null where a row lacks one.
    both = ok(
        daemon, f"/api/projects/{P}/runs/spiky/history?keys=loss,val&format=columns&max_step=201"
    )
    assert both["_step"] == list(range(201))
    assert both["val"][100] == 100 and both["val"][101] is None
    only_val = ok(daemon, f"/api/projects/{P}/runs/spiky/history?keys=val&format=columns")
    assert only_val["_step"] == list(range(0, 20_000, 100))
    # A metric logged every 100 steps still charts evenly from a strided read.
    sparse = ok(daemon, f"/api/projects/{P}/runs/spiky/history?keys=val&samples=50&format=columns")
    assert sparse["_step"][0] == 0 and sparse["_step"][-1] == 19_900
    assert 40 <= len(sparse["_step"]) <= 50
    assert all(s % 100 == 0 for s in sparse["_step"])


def test_nan_and_infinities_as_w_and_b_writes_them(daemon: Daemon) -> None:
    run = stepline.init(project=P, id="odd", socket=str(daemon.socket))
    run.log({"x": float("nan")})
    run.log({"x": float("inf")})
    run.log({"x": float("-inf")})
    run.log({"x": 1.5, "label": "a,b"})
    run.finish()
    with urllib.request.urlopen(
        f"{daemon.http_url}/api/projects/{P}/runs/odd/history?keys=x,label&format=columns"
    ) as resp:
        text = resp.read().decode()
    assert '"x":[NaN,Infinity,-Infinity,1.5]' in text
    status, body = get(daemon, f"/api/projects/{P}/runs/odd/history?keys=x,label&format=csv")
    assert status == 200
    assert list(csv.reader(io.StringIO(body))) == [
        ["_step", "x", "label"],
        ["0", "NaN", ""],
        ["1", "Infinity", ""],
        ["2", "-Infinity", ""],
        ["3", "1.5", "a,b"],
    ]


def test_csv_streams_every_row_with_every_key(daemon: Daemon) -> None:
    n = 12_000  # more than two CSV pages
    run = stepline.init(project=P, id="long", socket=str(daemon.socket))
    for i in range(n):
        run.log({"loss": i / 7, **({"late": True} if i >= n - 3 else {})})
    run.finish()
    status, body = get(daemon, f"/api/projects/{P}/runs/long/history?format=csv")
    assert status == 200
    table = list(csv.DictReader(io.StringIO(body)))
    assert len(table) == n
    assert list(table[0]) == ["_step", "late", "loss", "_runtime", "_timestamp"]
    assert [int(r["_step"]) for r in table] == list(range(n))
    assert all(float(r["loss"]) == i / 7 for i, r in enumerate(table))  # repr round-trips
    assert [r["late"] for r in table[-4:]] == ["", "true", "true", "true"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/projects/nope/runs", 404, "not_found"),
        ("/api/projects/nope/tree", 404, "not_found"),
        (f"/api/projects/{P}/runs/ghost", 404, "not_found"),
        (f"/api/projects/{P}/runs/ghost/history", 404, "not_found"),
        (f"/api/projects/{P}/runs/base?run_no=999999", 404, "not_found"),
        (f"/api/projects/{P}/runs/base/history?min_step=x", 400, "bad_request"),
        (f"/api/projects/{P}/runs/base/history?min_step=-1", 400, "bad_request"),
        (f"/api/projects/{P}/runs/base/history?samples=1", 400, "bad_request"),
        (f"/api/projects/{P}/runs/base/history?limit=0", 400, "bad_request"),
        (f"/api/projects/{P}/runs/base/history?format=xml", 400, "bad_request"),
        (f"/api/projects/{P}/runs/base/history?include_parent=maybe", 400, "bad_request"),
        ("/api/projects/..%2Fetc/runs", 400, "bad_request"),
        ("/api/nothing-here", 404, "not_found"),
    ],
)
def test_errors_are_json_with_status_and_code(
    family: Daemon, path: str, status: int, code: str
) -> None:
    got, body = get(family, path)
    assert got == status, body
    assert body["error"]["code"] == code and body["error"]["message"], body


def test_openapi_describes_every_route(daemon: Daemon) -> None:
    spec = ok(daemon, "/api/openapi.json")
    assert spec == json.loads(json.dumps(openapi.SPEC))
    served = {
        r.resource.canonical
        for r in Http(SimpleNamespace(http_token=None)).app().router.routes()  # type: ignore[arg-type]
        if r.resource is not None and r.resource.canonical.startswith("/api/")
    }
    described = set(spec["paths"])
    assert served == described


def _events(resp: http.client.HTTPResponse) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs from a Server-Sent Events response, as they arrive."""
    event, data = "message", ""
    while True:
        line = resp.readline()
        if not line:
            return
        text = line.decode().rstrip("\n")
        if text == "":
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif text.startswith("event: "):
            event = text[7:]
        elif text.startswith("data: "):
            data += text[6:]


def test_stream_sends_rows_as_they_commit_then_the_state(daemon: Daemon) -> None:
    run = stepline.init(project=P, id="live", socket=str(daemon.socket))
    run.log({"loss": 0.0})
    run.flush()
    host, port = urllib.parse.urlsplit(daemon.http_url).netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", f"/api/projects/{P}/runs/live/stream?keys=loss")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    events = _events(resp)
    kind, first = next(events)
    assert kind == "state" and first["state"] == "running" and first["last_step"] == 0

    seen: list[int] = []
    for i in range(1, 400):
        run.log({"loss": float(i)})
        if i % 100 == 0:
            run.flush()  # commits in several batches, while the stream is open
    run.finish()
    final = None
    for kind, data in events:
        if kind == "rows":
            assert all(r["loss"] == float(r["_step"]) for r in data["rows"])
            seen.extend(r["_step"] for r in data["rows"])
        elif kind == "state" and data["state"] == "finished":
            final = data
            break
    conn.close()
    assert seen == list(range(1, 400)), "every row after the opening step, once, in order"
    assert final is not None and final["last_step"] == 399


def test_stream_resumes_after_a_step(family: Daemon) -> None:
    host, port = urllib.parse.urlsplit(family.http_url).netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", f"/api/projects/{P}/runs/kid/stream", headers={"Last-Event-ID": "140"})
    events = _events(conn.getresponse())
    assert next(events)[0] == "state"
    kind, data = next(events)
    assert kind == "rows" and [r["_step"] for r in data["rows"]] == list(range(141, 151))
    conn.close()


def test_dashboard_index_is_served(daemon: Daemon) -> None:
    status, body = get(daemon, "/")
    assert status == 200 and "<html" in body.lower()


# ------------------------------------------------------------ start-up options


def _spawn(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepline_daemon", "--data-dir", str(root / "d"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_http_off_serves_no_http(short_tmp: Path) -> None:
    d = Daemon(short_tmp)
    d.http = "off"
    d.start()
    try:
        assert d.info() is not None and d.info()["http"] is None  # type: ignore[index]
        with pytest.raises(RuntimeError):
            _ = d.http_url
    finally:
        assert d.stop() == 0


def test_a_taken_port_named_explicitly_stops_start_up(short_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _spawn(short_tmp, "--socket", str(short_tmp / "s"), "--http", f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in done.stderr


def test_http_binds_loopback_only(short_tmp: Path) -> None:
    done = _spawn(short_tmp, "--socket", str(short_tmp / "s"), "--http", "0.0.0.0:0")
    assert done.returncode == 2
    assert "loopback only" in done.stderr


def test_nan_json_parses_in_python_like_w_and_b(family: Daemon) -> None:
    # Python's json (and pandas) read bare NaN; check a real value survives.
    run = stepline.init(project=P, id="n", socket=str(family.socket))
    run.log({"v": float("nan")})
    run.finish()
    rows = ok(family, f"/api/projects/{P}/runs/n/history")["rows"]
    assert math.isnan(rows[0]["v"])


def test_sigterm_with_a_stream_open_stops_cleanly(family: Daemon) -> None:
    host, port = urllib.parse.urlsplit(family.http_url).netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", f"/api/projects/{P}/runs/kid/stream")
    events = _events(conn.getresponse())
    assert next(events)[0] == "state"
    assert family.stop(timeout=20) == 0  # the fixture checks the log for tracebacks
    assert list(events) == [], "the stream ends when the daemon stops"
    conn.close()


def test_requests_must_be_addressed_to_loopback(daemon: Daemon) -> None:
    """A page rebinding its DNS name to 127.0.0.1 gets nothing (no token set)."""
    port = urllib.parse.urlsplit(daemon.http_url).port
    for host, status in [
        (f"evil.example:{port}", 403),
        ("evil.example", 403),
        (f"localhost:{port}", 200),
        (f"[::1]:{port}", 200),
        (f"127.0.0.1:{port}", 200),
    ]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/projects", headers={"Host": host})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == status, (host, body)
        if status == 403:
            assert body["error"]["code"] == "forbidden_host"


def test_csv_of_an_unknown_run_is_a_404_not_a_truncated_200(daemon: Daemon) -> None:
    status, body = get(daemon, f"/api/projects/{P}/runs/ghost/history?format=csv&keys=loss")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_stream_prefers_last_event_id_and_validates_it(family: Daemon) -> None:
    host, port = urllib.parse.urlsplit(family.http_url).netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(
        "GET", f"/api/projects/{P}/runs/kid/stream?after=100", headers={"Last-Event-ID": "147"}
    )
    events = _events(conn.getresponse())
    assert next(events)[0] == "state"
    kind, data = next(events)
    assert kind == "rows" and [r["_step"] for r in data["rows"]] == [148, 149, 150]
    conn.close()
    status, body = get_with(family, f"/api/projects/{P}/runs/kid/stream", {"Last-Event-ID": "-5"})
    assert status == 400 and "Last-Event-ID" in body["error"]["message"]


def get_with(daemon: Daemon, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(daemon.http_url + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_stream_hears_of_a_rewind_at_once(daemon: Daemon) -> None:
    run = stepline.init(project=P, id="rw", socket=str(daemon.socket))
    for _ in range(10):
        run.log({"loss": 1.0})
    run.finish()
    host, port = urllib.parse.urlsplit(daemon.http_url).netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)  # well under the keepalive
    conn.request("GET", f"/api/projects/{P}/runs/rw/stream")
    events = _events(conn.getresponse())
    assert next(events)[1]["state"] == "finished"
    stepline.init(project=P, id="rw", resume_from="rw?_step=4", socket=str(daemon.socket)).finish()
    kind, data = next(events)
    assert kind == "state" and data["state"] == "archived" and data["archived_by"] is not None
    conn.close()
