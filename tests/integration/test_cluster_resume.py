"""Runs that move between nodes: a preempted job resumed on another node, forks
and rewinds of another node's runs, rows a dead node ships late, one id made
on two nodes, and a cluster that cannot be asked. Real daemons as nodes, a real
clickhouse-server, real training processes."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import stepline
from stepline.errors import ClusterUnavailable
from tests.clickhouse import ClickHouseServer, free_port
from tests.cluster_nodes import Gate, Node, database, wait_replicated

pytestmark = pytest.mark.timeout(240)

P = "jobs"
# A training process: continues run argv[2] (resume="allow") on the daemon at
# argv[1]; each line on stdin "LO HI" logs steps LO..HI-1 (loss and the node's
# name), flushes and says "ok"; it then waits for more, until killed.
TRAINER = """
import sys, stepline
socket_path, run_id, where = sys.argv[1:4]
run = stepline.init(project="jobs", id=run_id, resume="allow", socket=socket_path)
print("start", run.start_step, flush=True)
for line in sys.stdin:
    lo, hi = map(int, line.split())
    for s in range(lo, hi):
        run.log({"loss": 1.0 / (s + 1), "where": where}, step=s, commit=True)
    run.flush()
    print("ok", flush=True)
"""

StartNode = Callable[..., Node]


@pytest.fixture
def start_node(short_tmp: Path) -> Iterator[StartNode]:
    started: list[Node] = []

    def start(name: str, url: str) -> Node:
        node = Node(short_tmp, name, url).start()
        started.append(node)
        return node

    yield start
    for node in started:
        if node.alive:
            assert node.stop() == 0, node.log()
        assert "Traceback" not in node.log(), node.log()


@pytest.fixture
def url(clickhouse: ClickHouseServer) -> str:
    return clickhouse.url(database())


class Trainer:
    """A training process on a node, driven step range by step range."""

    def __init__(self, node: Node, run_id: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRAINER, str(node.socket), run_id, node.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.start_step = int(self._line().split()[1])

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the trainer exited with {self.proc.wait()}"
        return line

    def log(self, lo: int, hi: int) -> None:
        """Steps lo..hi-1 logged and acknowledged by the daemon."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{lo} {hi}\n")
        self.proc.stdin.flush()
        assert self._line() == "ok\n"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def cli(*args: str) -> str:
    """What ``stepline`` prints; it must succeed."""
    wide = {**os.environ, "COLUMNS": "400"}  # no line cut to a terminal
    done = subprocess.run(
        [sys.executable, "-m", "stepline.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=wide,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def steps_and_nodes(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(r["_step"], r["where"]) for r in rows]


def test_a_preempted_job_resumes_on_another_node(url: str, start_node: StartNode) -> None:
    a, b = start_node("node-a", url), start_node("node-b", url)
    first = Trainer(a, "job")
    assert first.start_step == 0
    first.log(0, 5000)
    first.kill()  # preempted: SIGKILL, no finish
    wait_replicated(a)

    # Requeued on node B, which has never heard of the run.
    run = stepline.init(project=P, id="job", resume="must", socket=str(b.socket))
    assert run.start_step == 5000
    for s in range(5000, 10_000):
        run.log({"loss": 1.0 / (s + 1), "where": "node-b"}, step=s)
    run.finish()
    wait_replicated(b)

    with stepline.Api(clickhouse=url) as cluster:
        whole = cluster.run(f"{P}/job")
        rows = list(whole.scan_history())
        assert [r["_step"] for r in rows] == list(range(10_000))  # each once
        assert all(r["loss"] == 1.0 / (r["_step"] + 1) for r in rows)
        assert {r["where"] for r in rows[:5000]} == {"node-a"}
        assert {r["where"] for r in rows[5000:]} == {"node-b"}
        info = cluster._call({"op": "info", "project": P, "id": "job", "full": True})
        assert info["node"] == "node-b" and info["state"] == "finished"
        assert info["summary"]["loss"] == 1.0 / 10_000
        assert info["last_step"] == 9999
        # One run, as if it had run on one node: no branch where it moved.
        assert (info["rows"], info["lineage"], info["archived"]) == (10_000, [], [])
        history = whole.history(keys=["loss"], samples=100_000, pandas=False)
        assert [r["_step"] for r in history] == list(range(10_000))

    # Node B shows its part, and where the rest lives.
    with b.api() as mine:
        own = list(mine.run(f"{P}/job").scan_history())
        assert [r["_step"] for r in own] == list(range(5000, 10_000))
        origin = mine._call({"op": "info", "project": P, "id": "job"})["origin"]
        assert origin["node"] == "node-a" and origin["step"] == 4999
        assert origin["cluster"] == url
    shown = cli("show", f"{P}/job", "--socket", str(b.socket))
    assert f"continues  node node-a @ step 4999: earlier rows are in the cluster {url}" in shown


def test_a_job_back_on_its_first_node_goes_on_from_the_cluster(
    url: str, start_node: StartNode
) -> None:
    nodes = {"node-a": start_node("node-a", url), "node-b": start_node("node-b", url)}
    for leg, name in enumerate(["node-a", "node-b", "node-a"]):
        node = nodes[name]
        run = stepline.init(project=P, id="job", resume="allow", socket=str(node.socket))
        assert run.start_step == 100 * leg, name
        for s in range(100 * leg, 100 * leg + 100):
            run.log({"loss": float(s), "where": name}, step=s)
        run.finish()
        wait_replicated(node)

    with stepline.Api(clickhouse=url) as cluster:
        rows = steps_and_nodes(list(cluster.run(f"{P}/job").scan_history()))
        legs = ["node-a", "node-b", "node-a"]
        assert rows == [(s, legs[s // 100]) for s in range(300)]
        info = cluster._call({"op": "info", "project": P, "id": "job", "full": True})
        assert (info["rows"], info["lineage"], info["archived"]) == (300, [], [])
    with nodes["node-a"].api() as mine:  # node A: its new part, the old one archived
        info = mine._call({"op": "info", "project": P, "id": "job", "full": True})
        assert info["origin"]["node"] == "node-b" and info["origin"]["step"] == 199
        assert [r["_step"] for r in mine.run(f"{P}/job").scan_history()] == list(range(200, 300))
        tree = mine._call({"op": "tree", "project": P})["nodes"]
        [old] = [t for t in tree if t["archived_by"]]
        assert (old["last_step"], old["archived_by"]) == (99, info["run_no"])


def test_rows_a_dead_node_ships_late_become_an_archived_timeline(
    clickhouse: ClickHouseServer, url: str, start_node: StartNode
) -> None:
    db = url.rsplit("/", 1)[1]
    gate = Gate(clickhouse.http)
    try:
        a = start_node("node-a", gate.url(db))
        b = start_node("node-b", url)
        first = Trainer(a, "job")
        first.log(0, 1000)
        wait_replicated(a)
        gate.shut()  # A's rows from here on stay on A
        first.log(1000, 2000)
        a.kill()  # the node dies with them unshipped
        first.kill()

        run = stepline.init(project=P, id="job", resume="must", socket=str(b.socket))
        assert run.start_step == 1000  # the last step the cluster has, plus one
        for s in range(1000, 1500):
            run.log({"loss": 1.0 / (s + 1), "where": "node-b"}, step=s)
        run.finish()
        wait_replicated(b)

        gate.open()
        a.start()  # back: it ships its tail, late
        wait_replicated(a)
    finally:
        gate.close()

    with stepline.Api(clickhouse=url) as cluster:
        live = steps_and_nodes(list(cluster.run(f"{P}/job").scan_history()))
        assert live == [(s, "node-a") for s in range(1000)] + [
            (s, "node-b") for s in range(1000, 1500)
        ]
        info = cluster._call({"op": "info", "project": P, "id": "job", "full": True})
        assert info["node"] == "node-b"
        [old] = info["archived"]
        assert (old["step"], old["last_step"]) == (999, 1999)
        tail = steps_and_nodes(list(cluster.timeline(P, old["run_no"]).scan_history()))
        assert tail == [(s, "node-a") for s in range(2000)]  # nothing lost
        assert [r.id for r in cluster.runs(P)] == ["job"]


def test_forks_and_rewinds_of_another_nodes_run(url: str, start_node: StartNode) -> None:
    a, b = start_node("node-a", url), start_node("node-b", url)
    base = stepline.init(project=P, id="base", socket=str(a.socket), config={"lr": 0.1})
    for s in range(100):
        base.log({"loss": float(s), "where": "node-a"}, step=s)
    base.finish()
    wait_replicated(a)

    kid = stepline.init(project=P, id="kid", fork_from="base?_step=50", socket=str(b.socket))
    assert kid.start_step == 51
    kid.define_metric("loss", summary="max")
    for s in range(51, 80):
        kid.log({"loss": -float(s), "where": "node-b"}, step=s)
    kid.finish()
    again = stepline.init(project=P, id="base", resume_from="base?_step=30", socket=str(b.socket))
    assert again.start_step == 31 and again.config["lr"] == 0.1
    again.define_metric("loss", summary="mean")
    for s in range(31, 41):
        again.log({"loss": 100.0 + s, "where": "node-b"}, step=s)
    again.finish()
    with pytest.raises(stepline.errors.InvalidFork, match="beyond parent 'base'"):
        stepline.init(project=P, id="late", fork_from="base?_step=500", socket=str(b.socket))
    wait_replicated(a, b)

    with stepline.Api(clickhouse=url) as cluster:
        kid_rows = list(cluster.run(f"{P}/kid").scan_history())
        assert [(r["_step"], r["loss"]) for r in kid_rows] == [(s, float(s)) for s in range(51)] + [
            (s, -float(s)) for s in range(51, 80)
        ]
        base_rows = list(cluster.run(f"{P}/base").scan_history())
        assert [(r["_step"], r["loss"]) for r in base_rows] == [
            (s, float(s)) for s in range(31)
        ] + [(s, 100.0 + s) for s in range(31, 41)]
        # Statistics inherited at the branch step, from the cluster (base's
        # rows up to it), with the run's own: a kid's max is base's step 50;
        # base's mean is over 0..30 (computed in SQL, its view's middle) and 131..140.
        info = cluster._call({"op": "info", "project": P, "id": "kid", "full": True})
        assert info["summary"]["loss"] == 50.0
        assert [x["id"] for x in info["lineage"]] == ["base"]
        base_info = cluster._call({"op": "info", "project": P, "id": "base", "full": True})
        assert base_info["node"] == "node-b"
        mean = (sum(range(31)) + sum(100.0 + s for s in range(31, 41))) / 41
        assert base_info["summary"]["loss"] == pytest.approx(mean)
        assert [(x["step"], x["last_step"]) for x in base_info["archived"]] == [(30, 99)]
        keys = cluster._call({"op": "keys", "project": P, "id": "kid"})["keys"]
        assert {"loss", "where"} <= set(keys)
    with b.api() as mine:  # node B's own view: its rows, its summary, the origin
        kid_info = mine._call({"op": "info", "project": P, "id": "kid", "full": True})
        assert kid_info["origin"]["node"] == "node-a" and kid_info["parent"] is None
        assert kid_info["summary"]["loss"] == 50.0
        assert [r["_step"] for r in mine.run(f"{P}/kid").scan_history()] == list(range(51, 80))


def test_one_id_made_on_two_nodes_keeps_both_and_flags_the_later(
    url: str, start_node: StartNode
) -> None:
    a, b = start_node("node-a", url), start_node("node-b", url)
    first = stepline.init(project=P, id="dup", socket=str(a.socket))
    for s in range(10):
        first.log({"loss": float(s), "where": "node-a"}, step=s)
    first.finish()
    second = stepline.init(project=P, id="dup", socket=str(b.socket))  # before A shipped
    for s in range(5):
        second.log({"loss": -float(s), "where": "node-b"}, step=s)
    second.finish()
    wait_replicated(a, b)

    with stepline.Api(clickhouse=url) as cluster:
        [run] = cluster.runs(P)
        assert run.node == "node-a"
        info = cluster._call({"op": "info", "project": P, "id": "dup"})
        [dup] = info["duplicates"]
        assert dup["node"] == "node-b"
        later = cluster.timeline(P, dup["run_no"])
        rows = steps_and_nodes(list(later.scan_history()))
        assert rows == [(s, "node-b") for s in range(5)]  # nothing lost
        flagged = cluster._call({"op": "info", "project": P, "run_no": dup["run_no"]})
        assert flagged["duplicate_of"] == info["run_no"]
        assert len(list(cluster.run(f"{P}/dup").scan_history())) == 10
    shown = cli("show", f"{P}/dup", "--clickhouse", url)
    assert f"same id  timeline {dup['run_no']} on node node-b" in shown, shown
    with b.api() as mine:  # each node's own run stays as it was
        assert len(list(mine.run(f"{P}/dup").scan_history())) == 5


def test_an_unreachable_cluster_refuses_only_what_needs_it(start_node: StartNode) -> None:
    nowhere = f"http://default@127.0.0.1:{free_port()}/{database()}"
    node = start_node("node-a", nowhere)
    for how in ({"resume": "must"}, {"resume": "allow"}, {"fork_from": "gone?_step=3"}):
        with pytest.raises(ClusterUnavailable) as err:
            stepline.init(project=P, id="elsewhere", socket=str(node.socket), **how)
        message = str(err.value)
        assert "is not on this node" in message and "could not be asked" in message, message
        assert "Connection refused" in message
    # New runs, and runs this node holds, need no cluster.
    run = stepline.init(project=P, id="here", socket=str(node.socket))
    run.log({"loss": 1.0}, step=0)
    run.finish()
    again = stepline.init(project=P, id="here", resume="must", socket=str(node.socket))
    assert again.start_step == 1
    again.finish()


# ------------------------------------------------- one node or two, alike

# An action: (kind, which run, where in it, rows, node in the spread world)
_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["new", "resume", "fork", "rewind"]),
        st.integers(0, 5),
        st.floats(0, 1),
        st.integers(1, 12),
        st.integers(0, 1),
    ),
    min_size=2,
    max_size=7,
)
_VOLATILE = {"run_no", "archived_by", "parent_run_no", "created", "updated", "node"}
_VOLATILE |= {"origin", "peer", "client", "duplicates", "duplicate_of"}


def _plain(value: Any) -> Any:
    """An answer without what differs between two stores of the same history:
    timeline numbers, times, nodes; and rows without their wall-clock keys."""
    if isinstance(value, dict):
        return {
            k: _plain(v)
            for k, v in value.items()
            if k not in _VOLATILE and k not in ("_timestamp", "_runtime")
        }
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _everything(api: stepline.Api, project: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for run in api.runs(project):
        info = api._call({"op": "info", "project": project, "id": run.id, "full": True})
        out[run.id] = {
            "info": info,
            "rows": list(api.run(f"{project}/{run.id}").scan_history()),
            "sampled": api.run(f"{project}/{run.id}").history(samples=5, pandas=False),
        }
    return _plain(out)


@pytest.fixture(scope="module")
def worlds(clickhouse: ClickHouseServer) -> Iterator[tuple[Node, list[Node], str, str]]:
    """One node on one cluster database; two nodes on another."""
    root = Path(tempfile.mkdtemp(prefix="w-", dir="/tmp"))
    one_url, two_url = clickhouse.url(database()), clickhouse.url(database())
    alone = Node(root, "alone", one_url).start()
    pair = [Node(root, "node-a", two_url).start(), Node(root, "node-b", two_url).start()]
    yield alone, pair, one_url, two_url
    for node in (alone, *pair):
        assert node.stop() == 0, node.log()
        assert "Traceback" not in node.log(), node.log()
    shutil.rmtree(root, ignore_errors=True)


_EXAMPLES = itertools.count()


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a shrink costs minutes
)
@given(actions=_ACTIONS)
def test_runs_spread_over_two_nodes_read_as_on_one(
    worlds: tuple[Node, list[Node], str, str], actions: list[tuple[str, int, float, int, int]]
) -> None:
    alone, pair, one_url, two_url = worlds
    project = f"prop{next(_EXAMPLES)}"
    last: dict[str, int] = {}  # run id -> its view's last step, as both worlds hold it
    for i, (kind, which, where, rows, on) in enumerate(actions):
        ids = sorted(last)
        if kind != "new" and not ids:
            kind = "new"
        run_id = f"r{which}" if kind == "new" else ids[which % len(ids)]
        if kind == "new" and run_id in last:
            kind = "resume"
        step = int(where * max(last.get(run_id, 0), 0))
        how: dict[str, Any] = {}
        if kind == "resume":
            how = {"resume": "must"}
        elif kind == "fork":
            how = {"fork_from": f"{run_id}?_step={step}"}
            run_id = f"f{i}"
        elif kind == "rewind":
            how = {"resume_from": f"{run_id}?_step={step}"}
        for node in (alone, pair[on]):
            run = stepline.init(project=project, id=run_id, socket=str(node.socket), **how)
            first = run.start_step
            for s in range(first, first + rows):
                run.log({"loss": float(s * 100 + i), "act": i}, step=s, commit=True)
            run.finish()
            wait_replicated(node)
        last[run_id] = first + rows - 1
    with stepline.Api(clickhouse=one_url) as one, stepline.Api(clickhouse=two_url) as two:
        assert _everything(two, project) == _everything(one, project)
