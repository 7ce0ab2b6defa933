"""The cluster store through every front end a node has: the dashboard served by
``stepline serve --clickhouse`` in a real headless Chromium, a node's own
dashboard showing replication, the CLI read commands with ``--clickhouse``, and
a replicating node's ``/metrics``. Real daemons as nodes, a real
clickhouse-server, the real ``stepline`` command."""

from __future__ import annotations

import contextlib
import http.client
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

import stepline
import stepline.cluster
from stepline import cli
from stepline.errors import DaemonError
from stepline_daemon.cluster.client import ClickHouse
from stepline_daemon.cluster.url import ClusterUrl
from tests.clickhouse import ClickHouseServer, free_port
from tests.cluster_nodes import Node, database, wait_replicated
from tests.conftest import wait_for
from tests.integration import test_dashboard
from tests.integration.test_dashboard import (
    SERIES_JS,
    WAIT_MS,
    labels,
    open_view,
    series,
    series_full,
)

pytestmark = pytest.mark.timeout(120)

P = "fronts"
FORK_AT = 20
SERVE = [sys.executable, "-m", "stepline.cli", "serve"]
READY = re.compile(rb"^stepline serve: the cluster (\S+) on (http://\S+)$")

StartNode = Callable[..., Node]

browser = test_dashboard.browser  # its module-scoped headless Chromium, a fixture here too


@pytest.fixture
def url(clickhouse: ClickHouseServer) -> str:
    """A fresh, empty cluster database on the module's clickhouse."""
    return str(clickhouse.url(database()))


@pytest.fixture
def start_node(short_tmp: Path) -> Iterator[StartNode]:
    """Starts nodes (``http``: with the dashboard on a free port); each must stop
    with 0 on SIGTERM and log no traceback."""
    started: list[Node] = []

    def start(name: str, url: str, http: bool = False) -> Node:
        node = Node(short_tmp, name, url)
        if http:
            node.http = "127.0.0.1:0"
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        if node.alive:
            assert node.stop() == 0, node.log()
        assert "Traceback" not in node.log(), node.log()


def closed_url() -> str:
    """A cluster address where nothing listens."""
    return f"http://default@127.0.0.1:{free_port()}/{database()}"


def log_run(node: Node, run_id: str, steps: range, scale: float = 1.0, **kw: Any) -> stepline.Run:
    """A run on ``node`` with ``loss`` logged at ``steps``, left open."""
    run = stepline.init(project=P, id=run_id, socket=str(node.socket), **kw)
    for s in steps:
        run.log({"loss": scale / (s + 1)}, step=s, commit=True)
    run.flush()
    return run


@contextlib.contextmanager
def dashboard(chromium: Browser, base_url: str) -> Iterator[Page]:
    """A fresh page on the dashboard at ``base_url``; any console or page error
    fails the test (as in test_dashboard)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, base_url=base_url)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(f"console: {msg.text} at {msg.location}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    try:
        yield page
    finally:
        context.close()
    assert not errors, "\n".join(errors)


def badge(page: Page) -> tuple[str, str]:
    """The header's store badge, once it shows: (text, title)."""
    shown = page.locator("#store-badge:not([hidden])")
    shown.wait_for()
    return shown.inner_text(), shown.get_attribute("title") or ""


def node_column(page: Page) -> dict[str, str]:
    """The runs table's Node column: run id -> node."""
    column: dict[str, str] = page.evaluate(
        """() => {
            const heads = [...document.querySelectorAll('table.runs thead th')];
            const i = heads.findIndex((th) => th.dataset.key === 'node');
            if (i < 0) return null;
            const rows = document.querySelectorAll('table.runs tbody tr[data-run-id]');
            return Object.fromEntries([...rows].map((r) => [r.dataset.runId, r.cells[i].textContent]));
        }"""
    )
    assert column is not None, "the runs table has no Node column"
    return column


class Serve:
    """``stepline serve --clickhouse URL --http 127.0.0.1:0`` as a real process."""

    def __init__(self, url: str, root: Path) -> None:
        self.stderr_path = root / "serve.log"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*SERVE, "--clickhouse", url, "--http", "127.0.0.1:0"],
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,
            )
        self.cluster, self.http_url = self._ready(timeout=30.0)

    def _ready(self, timeout: float) -> tuple[str, str]:
        """Waits for the line saying it serves: (the cluster, the HTTP address)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"stepline serve did not start:\n{self.log()}")
            readable, _, _ = select.select([self.proc.stdout], [], [], left)
            if readable:
                line = self.proc.stdout.readline().rstrip(b"\n")
                if m := READY.match(line):
                    return m[1].decode(), m[2].decode()

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then its exit code (it must exit on its own, promptly)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def open_stream(http_url: str, path: str) -> Iterator[http.client.HTTPResponse]:
    """A live stream (Server-Sent Events) held open, its first event read."""
    where = urllib.parse.urlsplit(http_url)
    conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert resp.readline().startswith(b"event: state")
        yield resp
    finally:
        conn.close()


# ------------------------------------------------------------------ tests


def test_serve_shows_every_node_runs_and_a_fork_over_its_parent(
    url: str, start_node: StartNode, browser: Browser, short_tmp: Path
) -> None:
    a, b = start_node("node-a", url), start_node("node-b", url)
    log_run(a, "base", range(40)).finish()
    kid = log_run(a, "kid", range(FORK_AT + 1, 35), 0.5, fork_from=f"base?_step={FORK_AT}")
    log_run(b, "other", range(25), 2.0).finish()
    wait_replicated(a, b)

    serve = Serve(url, short_tmp)
    try:
        assert serve.cluster == url
        with dashboard(browser, serve.http_url) as page:
            open_view(page, f"#/p/{P}", "runs")
            assert node_column(page) == {"base": "node-a", "kid": "node-a", "other": "node-b"}
            text, title = badge(page)
            assert text == f"cluster · {url}"
            assert title == "Every node's runs, from the cluster store"

            # The fork drawn over its parent, as on a node's own dashboard.
            open_view(page, f"#/p/{P}/r/kid", "run")
            assert labels(page, "loss") == ["base", "kid"]
            base = series_full(page, "loss", "base")
            assert (base["first"], base["last"], base["n"], base["marker"]) == (0, 39, 40, [])
            drawn = series_full(page, "loss", "kid")
            assert (drawn["first"], drawn["last"], drawn["n"]) == (FORK_AT, 34, 15)
            assert drawn["marker"] == [FORK_AT]
            assert drawn["values"][0] == pytest.approx(1 / (FORK_AT + 1))  # the parent's row
            assert drawn["values"][1] == pytest.approx(0.5 / (FORK_AT + 2))  # its own

            # Live over the cluster: rows the node logs now reach the open chart.
            # The rows, then the end of the run once they show: the page stops
            # following at the end, and the stream (http.py's _follow reads rows,
            # then the state) can tell an end shipped between the two reads first.
            for s in range(35, 45):
                kid.log({"loss": 0.5 / (s + 1)}, step=s, commit=True)
            kid.flush()
            page.wait_for_function(f"() => ({SERIES_JS})(['loss', 'kid']).last === 44")
            assert series_full(page, "loss", "kid")["n"] == 25
            kid.finish()
            page.wait_for_selector(".page-head [data-role=state]:text-is('finished')")

        # Stopping, with a live stream still open: exit 0.
        with open_stream(serve.http_url, f"/api/projects/{P}/runs/base/stream"):
            assert serve.stop() == 0, serve.log()
        assert "Traceback" not in serve.log(), serve.log()
    finally:
        serve.close()


def test_a_node_dashboard_badge_shows_replication_or_an_unreachable_cluster(
    url: str, start_node: StartNode, browser: Browser
) -> None:
    ok = start_node("node-a", url, http=True)
    down = start_node("node-d", closed_url(), http=True)
    for node in (ok, down):
        log_run(node, "r", range(5)).finish()
    wait_replicated(ok)
    wait_for(lambda: down.replication()["last_error"] is not None, 30, "a failed shipping round")

    with dashboard(browser, ok.http_url) as page:
        open_view(page, f"#/p/{P}", "runs")
        assert badge(page) == ("replicating · lag 0 rows, 0.0 s", f"node node-a → {url}")
        # A node's runs carry no node: only the cluster's table has the column.
        assert page.locator("table.runs th[data-key=node]").count() == 0

    with dashboard(browser, down.http_url) as page:
        open_view(page, f"#/p/{P}", "runs")
        text, title = badge(page)
        assert re.fullmatch(r"cluster unreachable · lag 5 rows, \d+\.\d s", text), text
        assert "Connection refused" in title
        assert "store-late" in (page.locator("#store-badge").get_attribute("class") or "")


def sl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``stepline ARGS`` in-process: (exit code, stdout, stderr)."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_ids(table: str) -> list[str]:
    """The ID column of ``stepline runs -p``'s table."""
    lines = table.splitlines()
    assert lines[0].split()[0] == "ID", table
    return sorted(line.split()[0] for line in lines[1:])


def test_cli_reads_the_cluster_as_each_node_reads_its_own(
    url: str,
    start_node: StartNode,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # no table cut to a terminal
    a, b = start_node("node-a", url), start_node("node-b", url)
    log_run(a, "base", range(40), config={"lr": 0.1}).finish()
    kid = log_run(a, "kid", range(FORK_AT + 1, 35), 0.5, fork_from=f"base?_step={FORK_AT}")
    kid.summary["best"] = 0.25
    kid.finish()
    log_run(b, "other", range(25), 2.0, tags=["b"]).finish()
    wait_replicated(a, b)

    code, out, err = sl(capsys, "runs", "--clickhouse", url, "-p", P)
    assert (code, err) == (0, "")
    assert run_ids(out) == ["base", "kid", "other"]
    for node, mine in ((a, ["base", "kid"]), (b, ["other"])):
        assert run_ids(sl(capsys, "runs", "-p", P, "--socket", str(node.socket))[1]) == mine

    for node, run_id in ((a, "kid"), (a, "base"), (b, "other")):
        for command in (["show", f"{P}/{run_id}"], ["history", f"{P}/{run_id}", "--csv"]):
            local = sl(capsys, *command, "--socket", str(node.socket))
            assert local[0] == 0 and local[1], local
            assert sl(capsys, *command, "--clickhouse", url) == local, command

    code, out, err = sl(capsys, "status", "--socket", str(a.socket))
    assert code == 0, err
    line = re.escape(f"{url} as node node-a: connected; lag 0 rows, ")
    assert re.search(rf"^cluster +{line}\d+\.\d s$", out, re.MULTILINE), out

    # A bad address, and one where nothing answers: a clear error, exit 1.
    code, out, err = sl(capsys, "runs", "--clickhouse", "ftp://127.0.0.1/db", "-p", P)
    assert (code, out) == (1, "")
    assert err.startswith("stepline: 'ftp://127.0.0.1/db': the ClickHouse address must start")
    nowhere = closed_url()
    code, out, err = sl(capsys, "show", "--clickhouse", nowhere, "--timeout", "2", f"{P}/kid")
    assert (code, out) == (1, "")
    assert err.startswith(f"stepline: cluster store {nowhere}:"), err
    assert "Connection refused" in err and "Traceback" not in err


def gauges(node: Node) -> dict[str, float]:
    """A node's ``/metrics``, name -> value (the unlabelled lines)."""
    with urllib.request.urlopen(f"{node.http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def test_metrics_of_a_replicating_node_give_the_lag(url: str, start_node: StartNode) -> None:
    ok = start_node("node-a", url, http=True)
    down = start_node("node-d", closed_url(), http=True)
    for node in (ok, down):
        log_run(node, "r", range(7)).finish()
    wait_replicated(ok)

    caught_up = gauges(ok)
    assert caught_up["stepline_replication_lag_rows"] == 0
    assert caught_up["stepline_replication_lag_seconds"] == 0
    assert caught_up["stepline_replication_shipped_rows"] == 7
    behind = gauges(down)
    assert behind["stepline_replication_lag_rows"] == 7  # fresh: read at the scrape
    assert behind["stepline_replication_lag_seconds"] > 0
    assert behind["stepline_replication_shipped_rows"] == 0


def test_an_api_scan_of_the_cluster_reads_ahead_and_stops_when_left(
    url: str, start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stepline.cluster, "SCAN_PAGE", 1)  # pages of page_size: many, read ahead
    a = start_node("node-a", url)
    log_run(a, "base", range(600)).finish()
    log_run(a, "kid", range(301, 900), 0.5, fork_from="base?_step=300").finish()
    wait_replicated(a)

    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "stepline-scan" and t.is_alive()]

    with a.api() as node_api, stepline.Api(clickhouse=url) as cluster:
        for run_id, rows in (("base", 600), ("kid", 900)):
            want = list(node_api.run(f"{P}/{run_id}").scan_history())
            got = list(cluster.run(f"{P}/{run_id}").scan_history(page_size=50))
            assert len(got) == rows and got == want, run_id
        # Left half way: the reader holds its pages ahead until the Api closes.
        left = cluster.run(f"{P}/kid").scan_history(page_size=50)
        assert [next(left)["_step"] for _ in range(120)] == list(range(120))
        assert readers()
        # A failure while reading ahead reaches the caller, typed, at its page.
        broken = cluster.run(f"{P}/base").scan_history(page_size=50, min_step=100)
        assert next(broken)["_step"] == 100
        cluster_url = ClusterUrl.parse(url)
        ClickHouse(cluster_url).execute(f"DROP TABLE {cluster_url.database}.rows")
        with pytest.raises(DaemonError, match="failed a read"):
            for _ in broken:
                pass
    wait_for(lambda: not readers(), 10, "the scan readers to stop once the Api closed")


def test_dashboards_say_where_a_moved_run_lives_and_flag_one_id_made_twice(
    url: str, start_node: StartNode, browser: Browser, short_tmp: Path
) -> None:
    a, b = start_node("node-a", url, http=True), start_node("node-b", url, http=True)
    log_run(a, "job", range(30)).finish()
    log_run(a, "dup", range(10)).finish()
    log_run(b, "dup", range(5), 2.0).finish()  # the same id, before A shipped it
    wait_replicated(a)
    moved = stepline.init(project=P, id="job", resume="must", socket=str(b.socket))
    for s in range(30, 40):
        moved.log({"loss": 1 / (s + 1)}, step=s, commit=True)
    moved.finish()
    wait_replicated(a, b)

    with dashboard(browser, b.http_url) as page:  # node B: its part, and where the rest is
        open_view(page, f"#/p/{P}/r/job", "run")
        origin = page.text_content(".meta .origin") or ""
        assert origin == " · continues node node-a @ step 29; earlier rows are in the cluster"
        assert series(page, "loss", "job") == {"first": 30, "last": 39, "n": 10}

    serve = Serve(url, short_tmp)
    try:
        with dashboard(browser, serve.http_url) as page:  # the cluster: the whole run
            open_view(page, f"#/p/{P}/r/job", "run")
            assert series(page, "loss", "job") == {"first": 0, "last": 39, "n": 40}
            open_view(page, f"#/p/{P}/r/dup", "run")
            flag = page.text_content(".meta .duplicate") or ""
            assert flag.startswith(" · same id also made on node node-b (timeline "), flag
            href = page.get_attribute(".meta .duplicate a", "href") or ""
            assert href.startswith(f"#/p/{P}/r/dup?run_no="), href
            open_view(page, href, "run")
            assert series(page, "loss", "dup (duplicate)") == {"first": 0, "last": 4, "n": 5}
            flagged = page.text_content(".meta .duplicate") or ""
            assert flagged.startswith(" · a duplicate: this id was made first as timeline "), (
                flagged
            )
        assert serve.stop() == 0, serve.log()
    finally:
        serve.close()
