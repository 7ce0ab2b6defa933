"""Replication into ClickHouse, end to end: real daemons as nodes (each its own
data dir, socket and node name), a real clickhouse-server on loopback ports,
the real client; what ``Api(clickhouse=...)`` reads is compared with what each
node's own ``Api`` reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stepline
from stepline_daemon.cluster import schema
from stepline_daemon.cluster.client import ClickHouse
from stepline_daemon.cluster.url import ClusterUrl
from tests.clickhouse import ClickHouseServer, shards
from tests.cluster_nodes import Node, assert_same, database, plain, wait_replicated
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def two_nodes(clickhouse: ClickHouseServer, short_tmp: Path) -> Iterator[tuple[Node, Node, str]]:
    url = str(clickhouse.url(database())).replace("default@", "default:@")
    a, b = Node(short_tmp, "node-a", url).start(), Node(short_tmp, "node-b", url).start()
    yield a, b, url
    for n in (a, b):
        if n.alive:
            assert n.stop() == 0, n.log()
        assert "Traceback" not in n.log(), n.log()


def _values(i: int, kinds: str) -> dict[str, Any]:
    out: dict[str, Any] = {"loss": 1.0 / (i + 1)}
    if "s" in kinds:
        out["phase"] = f"p{i % 3}\t\n'\"\\"
    if "b" in kinds and i % 2:
        out["ok"] = bool(i % 4)
    if "n" in kinds:
        out["odd"] = [float("nan"), float("inf"), float("-inf"), -0.0, 2**63 - 1, -(2**63)][i % 6]
    if "u" in kinds and i % 5 == 0:
        out["big"] = 2**64 - 1 - i
    return out


# An action: (kind, node, rows, which earlier run, where in it, value kinds)
_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["new", "fork", "rewind", "delete"]),
        st.integers(0, 1),
        st.integers(0, 25),
        st.integers(0, 10),
        st.floats(0, 1),
        st.sampled_from(["", "s", "bn", "snu"]),
    ),
    min_size=1,
    max_size=7,
)


def _play(nodes: tuple[Node, Node], project: str, actions: list[Any]) -> None:
    """Run the actions with the real client: runs on either node; forks and
    rewinds on the node of the run they start from (across nodes is issue 14)."""
    made: list[tuple[str, int]] = []  # (id, node index), live ones
    last: dict[str, int] = {}
    for n, (kind, node_i, rows, pick, where, kinds) in enumerate(actions):
        if kind != "new" and not made:
            kind = "new"
        sock = str(nodes[node_i].socket)
        kw: dict[str, Any] = {"id": f"{nodes[node_i].name}-{n}"}
        if kind in ("fork", "rewind", "delete"):
            pid, node_i = made[pick % len(made)]
            sock = str(nodes[node_i].socket)
            if kind == "delete":
                with nodes[node_i].api() as api:
                    try:
                        api.delete(f"{project}/{pid}", purge=where > 0.5)
                    except stepline.InUse:
                        api.delete(f"{project}/{pid}")  # forks still read it: soft
                made.remove((pid, node_i))
                continue
            if last[pid] < 0:  # nothing to branch from: a new run on that node
                kind, kw = "new", {"id": f"{nodes[node_i].name}-{n}"}
            else:
                step = int(where * last[pid])
                if kind == "fork":
                    kw = {"id": f"{pid}-f{n}", "fork_from": f"{pid}?_step={step}"}
                else:
                    kw = {"id": pid, "resume_from": f"{pid}?_step={step}"}
        run = stepline.init(project=project, socket=sock, config={"n": n, "kinds": kinds}, **kw)
        for i in range(rows):
            run.log(_values(i, kinds))
        run.summary["best"] = rows
        run.finish()
        if (kw["id"], node_i) not in made:
            made.append((kw["id"], node_i))
        with nodes[node_i].api() as api:
            last[kw["id"]] = api.run(f"{project}/{kw['id']}").last_step


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=_ACTIONS)
def test_the_cluster_answers_what_each_node_answers(
    two_nodes: tuple[Node, Node, str], actions: list[Any]
) -> None:
    a, b, url = two_nodes
    project = f"p{time.monotonic_ns()}"
    _play((a, b), project, actions)
    wait_replicated(a, b)
    with stepline.Api(clickhouse=url) as cluster:
        for node in (a, b):
            assert_same(node, cluster, project)
        with a.api() as api_a, b.api() as api_b:
            ids = sorted(r.id for api in (api_a, api_b) for r in api.runs(project))
        assert sorted(r.id for r in cluster.runs(project)) == ids
        for r in cluster.runs(project):
            assert r._info["node"] == ("node-a" if r.id.startswith("node-a") else "node-b")


def test_purged_and_deleted_runs_vanish_from_the_cluster(two_nodes: tuple[Node, Node, str]) -> None:
    a, _, url = two_nodes
    for run_id in ("keep", "soft", "gone"):
        run = stepline.init(project="p", id=run_id, socket=str(a.socket))
        for i in range(5):
            run.log({"x": i})
        run.finish()
    wait_replicated(a)
    with a.api() as api:
        gone = schema.timeline(a.store_id(), api.run("p/gone")._info["run_no"])
        api.delete("p/soft")
        api.delete("p/gone", purge=True)
    wait_replicated(a)
    with stepline.Api(clickhouse=url) as cluster:
        assert [r.id for r in cluster.runs("p")] == ["keep"]
        with pytest.raises(stepline.RunNotFound):
            cluster.run("p/gone")
        assert_same(a, cluster, "p")
    # The rows themselves go too (a mutation ClickHouse applies in the background).
    engine = ClickHouse(ClusterUrl.parse(url))
    left = f"SELECT count() FROM history WHERE timeline = {gone}"
    wait_for(lambda: engine.query(left) == [["0"]], 30, "the purged rows to be removed")


def test_a_node_that_stops_replicating_ships_everything_when_it_starts_again(
    two_nodes: tuple[Node, Node, str],
) -> None:
    a, _, url = two_nodes
    run = stepline.init(project="p", id="r", socket=str(a.socket))
    run.log({"x": 0})
    run.finish()
    wait_replicated(a)
    assert a.stop() == 0
    a.args = ()  # alone for a while: no change index is kept
    a.start()
    with a.api() as api:
        api.delete("p/r", purge=True)
    more = stepline.init(project="p", id="s", socket=str(a.socket))
    for i in range(30):
        more.log({"y": i})
    more.finish()
    assert a.stop() == 0
    a.args = ("--clickhouse", url, "--node", a.name)
    a.start()
    wait_replicated(a)
    with stepline.Api(clickhouse=url) as cluster:
        assert [r.id for r in cluster.runs("p")] == ["s"]
        assert_same(a, cluster, "p")


def test_clickhouse_down_for_30s_costs_logging_nothing_and_loses_nothing(
    short_tmp: Path,
) -> None:
    ch = ClickHouseServer(short_tmp / "ch").start()
    url = str(ch.url(database()))
    a, b = Node(short_tmp, "node-a", url).start(), Node(short_tmp, "node-b", url).start()
    try:
        phase = ["before"]
        times: dict[str, list[float]] = {"before": [], "down": [], "after": []}
        stop = threading.Event()

        def writer(node: Node) -> None:
            run = stepline.init(project="p", id=node.name, socket=str(node.socket))
            while not stop.is_set():
                t0 = time.perf_counter()
                run.log({"loss": 0.5, "acc": 0.25})
                times[phase[0]].append(time.perf_counter() - t0)
                if len(times[phase[0]]) % 100 == 0:
                    stop.wait(0.05)  # a training job's pace (~2k steps/s), not synchronisation
            run.finish()

        threads = [threading.Thread(target=writer, args=(n,)) for n in (a, b)]
        for t in threads:
            t.start()
        wait_for(lambda: a.replication()["shipped_rows"] > 0, 30, "shipping to begin")
        phase[0] = "down"
        ch.stop(grace=0)
        down_until = time.monotonic() + 30
        wait_for(lambda: not a.replication()["connected"], 30, "the outage to show")
        wait_for(lambda: time.monotonic() > down_until, 40, "30 s of outage")
        assert a.replication()["lag_rows"] > 0
        phase[0] = "after"
        ch.start()
        stop.set()
        for t in threads:
            t.join(60)
        wait_replicated(a, b, timeout=120)
        with stepline.Api(clickhouse=url) as cluster:
            for node in (a, b):
                assert_same(node, cluster, "p")
        for name, ts in times.items():
            ts.sort()
            print(
                f"log() {name}: n={len(ts)} p50={ts[len(ts) // 2] * 1e6:.1f}us "
                f"p99={ts[int(len(ts) * 0.99)] * 1e6:.1f}us max={ts[-1] * 1e3:.2f}ms"
            )
        # log() never waits on the network: a blocked call would take seconds.
        assert max(times["down"]) < 0.25
        assert len(times["down"]) > 1000
    finally:
        for n in (a, b):
            if n.alive:
                n.stop()
        ch.stop()


def _steady_writer(node: Node, stop: threading.Event) -> threading.Thread:
    """Logs to a run and its fork, continuously, across daemon restarts."""

    def write() -> None:
        run = stepline.init(project="p", id="main", socket=str(node.socket), timeout=120)
        for i in range(200):
            run.log({"loss": 1 / (i + 1), "tag": f"s{i}"})
        run.finish(timeout=120)
        fork = stepline.init(
            project="p", id="fork", fork_from="main?_step=100", socket=str(node.socket), timeout=120
        )
        n = 0
        while not stop.is_set():
            fork.log({"loss": 0.1, "acc": 0.9})
            n += 1
            if n % 100 == 0:
                stop.wait(0.05)  # a training job's pace (~2k steps/s), not synchronisation
        fork.finish(timeout=120)

    t = threading.Thread(target=write)
    t.start()
    return t


def test_the_daemon_killed_10x_while_shipping_leaves_the_cluster_exact(
    clickhouse: ClickHouseServer, short_tmp: Path
) -> None:
    url = str(clickhouse.url(database()))
    a = Node(short_tmp, "node-a", url).start()
    stop = threading.Event()
    writer = _steady_writer(a, stop)
    try:
        for i in range(10):
            before = a.replication()["inserts"] if i % 3 == 0 else 0
            if i % 3 == 0:  # killed from outside, while inserts go on
                wait_for(lambda b=before: a.replication()["inserts"] > b + 1, 60, "inserts")
                a.kill()
                a.env = {}
            else:  # killed from inside: mid-batch, or acknowledged before the cursor moved
                point = "receive:ship" if i % 3 == 1 else "reply:ship"
                a.kill()
                a.env = {"STEPLINE_TESTS_ONLY_CRASH_AT": point}
                # Not start(): the first round may kill it before start() sees it serve.
                proc = a.spawn()
                wait_for(lambda p=proc: p.poll() is not None, 60, f"the crash point {point}")
                assert proc.returncode == -9, a.log()
                a.env = {}
            a.start()
        stop.set()
        writer.join(120)
        assert not writer.is_alive()
        wait_replicated(a)
        with stepline.Api(clickhouse=url) as cluster:
            assert_same(a, cluster, "p")
            assert plain(list(cluster.run("p/fork").scan_history()))[-1]["_step"] > 100
    finally:
        stop.set()
        if a.alive:
            a.stop()


def test_clickhouse_killed_3x_mid_insert_leaves_the_cluster_exact(short_tmp: Path) -> None:
    ch = ClickHouseServer(short_tmp / "ch").start()
    url = str(ch.url(database()))
    a = Node(short_tmp, "node-a", url).start()
    stop = threading.Event()
    writer = _steady_writer(a, stop)
    try:
        for _ in range(3):
            before = a.replication()["inserts"]
            wait_for(lambda b=before: a.replication()["inserts"] > b, 60, "an insert")
            ch.kill()
            ch.start()
        stop.set()
        writer.join(120)
        wait_replicated(a, timeout=120)
        with stepline.Api(clickhouse=url) as cluster:
            assert_same(a, cluster, "p")
    finally:
        stop.set()
        if a.alive:
            a.stop()
        ch.stop()


def test_two_shards_behind_a_distributed_table_read_exactly(short_tmp: Path) -> None:
    servers = [ClickHouseServer(short_tmp / f"ch{i}") for i in (1, 2)]
    for s in servers:
        s.extra = shards("pair", servers)
        s.start()
    db = database()
    try:
        for s in servers:
            engine = s.client()
            for stmt in schema.sharded_statements(db, "pair"):
                engine.execute(stmt)
        url = str(servers[0].url(db))
        a = Node(short_tmp, "node-a", url).start()
        try:
            # Trees until both shards hold some (the shard is a hash of the
            # root's timeline, and the store id in it is random), at least three.
            placed: set[str] = set()
            i = 0
            while len(placed) < 2 or i < 3:
                run = stepline.init(project="p", id=f"root{i}", socket=str(a.socket))
                for step in range(20):
                    run.log({"x": step * i, "s": f"r{i}"})
                run.finish()
                fork = stepline.init(
                    project="p", id=f"fork{i}", fork_from=f"root{i}?_step=9", socket=str(a.socket)
                )
                fork.log({"x": -1.0})
                fork.finish()
                with a.api() as api:
                    root = schema.timeline(a.store_id(), api.run(f"p/root{i}")._info["run_no"])
                engine = servers[0].client()
                placed.add(engine.query(f"SELECT intHash64(toUInt64({root})) % 2")[0][0])
                i += 1
            wait_replicated(a)
            with stepline.Api(clickhouse=url) as cluster:
                assert_same(a, cluster, "p")
            held = [
                {
                    int(tl): int(root)
                    for tl, root in s.client(db).query(
                        "SELECT DISTINCT timeline, root FROM history_local"
                    )
                }
                for s in servers
            ]
            assert all(held), "each shard holds some trees"
            roots = [set(h.values()) for h in held]
            assert not roots[0] & roots[1], "a fork tree lives on one shard"
            for h in held:
                assert {tl for tl in h} >= set(h.values())  # each tree's root is beside it
        finally:
            assert a.stop() == 0
    finally:
        for s in servers:
            s.stop()
