"""Nodes that replicate into a cluster store, for tests: real daemons with
``--clickhouse``, and the comparison of what the cluster answers with what each
node answers for its own runs."""

from __future__ import annotations

import math
import secrets
import socket
import threading
from pathlib import Path
from typing import Any

import stepline
from stepline_daemon.cluster.schema import timeline
from tests.conftest import Daemon, wait_for


def database() -> str:
    """A fresh database name: each test's cluster store starts empty."""
    return f"t_{secrets.token_hex(6)}"


class Node(Daemon):
    """A daemon that replicates to ``url`` as node ``name``."""

    def __init__(self, root: Path, name: str, url: str) -> None:
        super().__init__(root / name)
        self.name = name
        self.http = "off"
        self.args = ("--clickhouse", url, "--node", name)

    def api(self, timeout: float = 30.0) -> stepline.Api:
        return stepline.Api(socket=str(self.socket), timeout=timeout)

    def replication(self) -> dict[str, Any]:
        with self.api() as api:
            status: dict[str, Any] = api.status()["cluster"]
        return status

    def store_id(self) -> int:
        return int(self.replication()["store_id"])

    def caught_up(self) -> bool:
        c = self.replication()
        return c["lag_entries"] == 0 and c["lag_rows"] == 0


def wait_replicated(*nodes: Node, timeout: float = 90.0) -> None:
    """Until every change each node committed is in the cluster."""
    for node in nodes:
        wait_for(node.caught_up, timeout, f"node {node.name} to ship everything")


# ------------------------------------------------------------ comparison

_RUN_NOS = ("run_no", "archived_by", "parent_run_no")


def as_cluster(value: Any, store_id: int) -> Any:
    """A node's answer with each run_no made the cluster's timeline id, and NaN
    made comparable."""
    if isinstance(value, dict):
        return {
            k: (
                timeline(store_id, v)
                if k in _RUN_NOS and type(v) is int
                else as_cluster(v, store_id)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [as_cluster(v, store_id) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def plain(value: Any) -> Any:
    """A cluster answer without the ``node`` each run carries there, NaN comparable."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "node"}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def views(api: stepline.Api, project: str, ids: list[str]) -> dict[str, Any]:
    """Everything a reader can ask of ``ids``: records, lineage, archived
    timelines, rows (paged, keyed, sampled)."""
    out: dict[str, Any] = {}
    for run_id in ids:
        info = api._call({"op": "info", "project": project, "id": run_id, "full": True})
        run = api.run(f"{project}/{run_id}")
        keys = [k for k in sorted(info["summary"]) if not k.startswith("_")][:2]
        timelines = [run] + [api.timeline(project, a["run_no"]) for a in info["archived"]]
        page = 7 if info["rows"] < 1000 else 2000  # many page edges, in bounded time
        out[run_id] = {
            "info": info,
            "keys": api._call({"op": "keys", "project": project, "id": run_id}),
            "rows": [list(t.scan_history(page_size=page)) for t in timelines],
            "own": list(run.scan_history(include_parent=False)),
            "keyed": list(run.scan_history(keys=keys)) if keys else [],
            "window": list(run.scan_history(min_step=3, max_step=11)),
        }
        if info["rows"] <= 10_000:  # every row: no sampling, so the answer is exact
            out[run_id]["all"] = run.history(samples=100_000, pandas=False)
            out[run_id]["sampled_keys"] = (
                run.history(keys=keys, samples=100_000, pandas=False) if keys else []
            )
    return out


def assert_same(node: Node, cluster: stepline.Api, project: str) -> None:
    """The cluster answers exactly what ``node`` answers, for the node's runs."""
    sid = node.store_id()
    with node.api() as api:
        ids = [r.id for r in api.runs(project)]
        mine = as_cluster(views(api, project, ids), sid)
        tree = as_cluster(_tree(api, project), sid)
    theirs = plain(views(cluster, project, ids))
    for run_id in ids:
        for part, want in mine[run_id].items():
            got = theirs[run_id][part]
            assert got == want, f"{project}/{run_id}: {part} differs in the cluster: " + _diff(
                got, want
            )
    if tree is None:
        return  # no live run here; the cluster may hold other nodes' runs of it
    lo, hi = timeline(sid, 0), timeline(sid + 1, 0)
    cluster_tree = [t for t in plain(cluster.tree(project)) if lo <= t["run_no"] < hi]
    assert cluster_tree == tree


def _tree(api: stepline.Api, project: str) -> list[dict[str, Any]] | None:
    """The project's fork forest; None where the project has no live run."""
    try:
        return api.tree(project)
    except stepline.RunNotFound:
        return None


def _diff(got: Any, want: Any) -> str:
    """Where two answers first part, briefly."""
    if isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            return f"{len(got)} items, not {len(want)}"
        i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
        return f"item {i}: " + _diff(got[i], want[i])
    if isinstance(got, dict) and isinstance(want, dict):
        keys = sorted(set(got) | set(want))
        k = next(k for k in keys if got.get(k) != want.get(k))
        return f"[{k!r}]: " + _diff(got.get(k), want.get(k))
    return f"{got!r} != {want!r}"


class Gate:
    """A TCP relay to a ClickHouse server that a test can shut for one node:
    while shut it refuses every connection, as a server that is down."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._open = threading.Event()
        self._open.set()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, name="gate", daemon=True).start()

    def url(self, database: str) -> str:
        return f"http://default@127.0.0.1:{self.port}/{database}"

    def shut(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._open.is_set():
                conn.close()
                continue
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
        except OSError:
            conn.close()
            return

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(1 << 16):
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        back = threading.Thread(target=pump, args=(up, conn), daemon=True)
        back.start()
        pump(conn, up)
        back.join(60)
        conn.close()
        up.close()
