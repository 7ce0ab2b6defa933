"""The cluster read model answers as the node's does: a real LMDB store, written
into ClickHouse as a node ships it (every record with ``cluster_record``, every
row with ``packed_history_lines`` and ``packed_row_lines``, a second shipment on top of the first so
every batch lies there twice, merges stopped so the duplicates stay), then every
read op through ``ops.answer`` on ``LmdbReads`` and on ``ClusterReads``, on both
engines. Answers must be equal once the node's run numbers are mapped to
cluster timelines; downsamples of long ranges, which the two stores choose
differently, must keep their promises (at most ``samples``, first and last
included, only exact rows, each key's extremes).
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepline.errors import ClusterUnavailable, DaemonError, Error, RequestError, RunNotFound
from stepline.rows import STEP_MAX
from stepline_daemon import ops, readmodel
from stepline_daemon.cluster import schema
from stepline_daemon.cluster.client import ClickHouse
from stepline_daemon.cluster.encode import (
    cluster_record,
    packed_history_lines,
    packed_row_lines,
    runs_line,
)
from stepline_daemon.cluster.reads import ClusterReads
from stepline_daemon.cluster.url import ClusterUrl
from stepline_daemon.store import Store, history, layout
from stepline_daemon.store.history import Segment
from stepline_daemon.store.layout import U64
from stepline_daemon.store.reads import LmdbReads
from tests import storeops
from tests.clickhouse import ChdbEngine, ClickHouseServer

DB = "stepline"
STORE_ID = 3
NODE = "node-1"
CLIENT = "c1"
_TMP_ROOT = "/dev/shm" if Path("/dev/shm").is_dir() else None
# Values at the edges of what a row may hold, all under one key "x".
EDGES: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    -(2**63),
    2**63 - 1,
    2**64 - 1,
    2**63 + 5,
    -0.0,
    0,
    1e-300,
    True,
    "str\t'\n",
    None,
]


# ------------------------------------------------------------------ a node


class Node:
    """A node's LMDB store, written as the daemon writes it, and shipped to a
    ClickHouse as the node's shipper would."""

    def __init__(self, path: Path, store_id: int = STORE_ID) -> None:
        self.store = Store(path, map_size=256 * 1024 * 1024, snapshot_every=8)
        self.store_id = store_id
        self.seqs: dict[int, int] = {}
        self.purged: list[tuple[str, int]] = []
        self.roots: dict[int, int] = {}  # as last shipped

    def close(self) -> None:
        self.store.close()

    def _write(self, fn: Any) -> Any:
        with self.store.env.begin(write=True) as txn:
            return fn(txn)

    def init(self, project: str, run_id: str, **more: Any) -> int:
        msg = {"project": project, "id": run_id, **more}
        reply = self._write(lambda txn: storeops.init_run(self.store, txn, msg, CLIENT))
        return int(reply["run_no"])

    def log(self, run_no: int, rows: list[tuple[int, dict[str, Any]]]) -> None:
        seq = self.seqs[run_no] = self.seqs.get(run_no, 0) + 1
        self._write(lambda txn: storeops.append(self.store, txn, run_no, rows, CLIENT, seq))

    def finish(self, run_no: int) -> None:
        seq = self.seqs[run_no] = self.seqs.get(run_no, 0) + 1
        msg = {"run_no": run_no, "exit_code": 0}
        self._write(lambda txn: storeops.update_run(self.store, txn, "finish", msg, CLIENT, seq))

    def records(self) -> dict[int, dict[str, Any]]:
        with self.store.env.begin() as txn:
            return {
                (rec := layout.unpack(cast(bytes, raw)))["run_no"]: rec
                for raw in txn.cursor(db=self.store.runs).iternext(keys=False)
            }

    def delete(self, project: str, run_id: str, purge: bool = False) -> None:
        before = self.records()
        msg = {"project": project, "id": run_id, "purge": purge}
        self._write(lambda txn: storeops.delete_run(self.store, txn, msg))
        # A purge takes the run's records with it: the shipper sends it as gone.
        gone = before.keys() - self.records().keys()
        self.purged += [(before[n]["project"], n) for n in sorted(gone)]

    @contextmanager
    def reads(self) -> Iterator[LmdbReads]:
        with self.store.env.begin() as txn:
            yield LmdbReads(self.store, txn)

    def tl(self, run_no: int) -> int:
        return schema.timeline(self.store_id, run_no)

    def ship(self, engine: Any, version: int, db: str = DB) -> None:
        """Every record and every row, as TabSeparated inserts."""
        runs: list[str] = []
        lines: list[str] = []
        whole: list[bytes] = []
        records = self.records()
        for run_no in records:
            # The fork tree's root: the sharding key of a Distributed table.
            root = run_no
            while records[root]["parent"] is not None:
                root = records[root]["parent"][0]
            self.roots[run_no] = root
        with self.store.env.begin() as txn:
            for run_no, rec in records.items():
                project, tl, root = rec["project"], self.tl(run_no), self.tl(self.roots[run_no])
                named = txn.get(layout.name_key(project, rec["id"]), db=self.store.names)
                current = named is not None and U64.unpack(named)[0] == run_no
                crec = cluster_record(rec, self.store_id, NODE)
                runs.append(runs_line(project, tl, crec, NODE, current, version, root))
                own = [Segment(run_no, 0, STEP_MAX)]
                rows = list(history.iter_rows(self.store, txn, own))
                lines.extend(packed_history_lines(project, tl, rows, root))
                whole.extend(packed_row_lines(project, tl, rows, root))
        for project, run_no in self.purged:
            root = self.tl(self.roots[run_no])
            runs.append(runs_line(project, self.tl(run_no), None, NODE, False, version, root))
        engine.execute(f"INSERT INTO {db}.runs FORMAT TabSeparated", "".join(runs).encode())
        if lines:
            engine.execute(f"INSERT INTO {db}.history FORMAT TabSeparated", "".join(lines).encode())
        if whole:
            engine.execute(f"INSERT INTO {db}.rows FORMAT TabSeparated", b"".join(whole))


def _row(i: int) -> dict[str, Any]:
    """Row ``i`` of the scenario's runs: some keys in some rows only."""
    row: dict[str, Any] = {"loss": 1.0 / (i + 1)}
    if i % 3 == 0:
        row["acc"] = i / 100
    if i % 5 == 0:
        row["s"] = f"text\t{i}'\n"
    if i % 7 == 0:
        row["flag"] = i % 2 == 0
    if i % 4 == 1:
        row["x"] = EDGES[(i // 4) % len(EDGES)]
    return row


def build(node: Node, engine: Any) -> dict[str, int]:
    """The scenario: forks, a rewind, an empty run, long and very sparse runs,
    soft deletes and a purge; shipped before and after the deletes."""
    n: dict[str, int] = {}
    n["a"] = node.init("p", "a", config={"lr": 0.1}, tags=["t1"])
    node.log(n["a"], [(i, _row(i)) for i in range(30)])
    n["b"] = node.init("p", "b", fork_from=["a", 12])
    node.log(n["b"], [(i, _row(i)) for i in range(13, 25, 2)])
    n["a1"] = n["a"]
    n["a"] = node.init("p", "a", resume_from=["a", 20])
    node.log(n["a"], [(i, {"loss": -float(i), "rare": i}) for i in range(21, 36)])
    n["c"] = node.init("p", "c", fork_from=["b", 15])
    node.log(n["c"], [(40, {"loss": 0.0})])
    node.finish(n["c"])
    n["long"] = node.init("p", "long")
    long_rows = [
        (2 * i, {"loss": math.sin(i / 9), "acc": (i * 7919) % 1000 / 7.0}) for i in range(700)
    ]
    for step, values in long_rows[::50]:
        values["rare"] = float(step % 13)
    for i, (_, values) in enumerate(long_rows):
        # Numbers, then nothing numeric: buckets a downsample shows by their first row.
        values["mixed"] = float(i % 11) if i < 350 else (math.nan if i % 2 else f"s{i}")
    node.log(n["long"], long_rows)
    node.finish(n["long"])
    n["odd"] = node.init("p", "odd")  # no step on the ladder: sampled from every row
    node.log(n["odd"], [(2 * i + 1, {"v": float(i % 7), "w": float(i)}) for i in range(300)])
    node.finish(n["odd"])
    n["huge"] = node.init("p", "huge")
    node.log(n["huge"], [(i * 2**55, {"v": float(i % 17), "w": -float(i)}) for i in range(200)])
    node.finish(n["huge"])
    for rid in ("d", "e", "only"):
        n[rid] = node.init("r" if rid == "only" else "p", rid)
        node.log(n[rid], [(i, _row(i)) for i in range(10)])
        node.finish(n[rid])
    n["f"] = node.init("p", "f", fork_from=["e", 5])
    node.log(n["f"], [(6, {"loss": 6.0}), (9, {"loss": 9.0})])
    n["g"] = node.init("p", "g", name="empty")
    n["z"] = node.init("q", "z")
    node.log(n["z"], [(0, {"a": 1}), (1, {"a": 2})])
    node.ship(engine, 1)
    node.log(n["a"], [(i, {"loss": float(i)}) for i in range(36, 41)])
    node.finish(n["a"])
    node.finish(n["b"])
    node.delete("p", "c")
    node.delete("p", "d", purge=True)
    node.delete("p", "e")  # f still reads its rows
    node.delete("r", "only")
    node.ship(engine, 2)  # every row a second time: duplicates to collapse
    return n


# ------------------------------------------------------------------ engines


def _fresh(engine: Any, db: str = DB) -> None:
    for stmt in schema.statements(db):
        engine.execute(stmt)
    for table in schema.TABLES:
        engine.execute(f"TRUNCATE TABLE {db}.{table}")
        # Duplicates must stay until reads collapse them, not a merge.
        engine.execute(f"SYSTEM STOP MERGES {db}.{table}")


@dataclass
class World:
    node: Node
    engine: Any
    runs: dict[str, int] = field(default_factory=dict)
    db: str = DB

    def fresh_cluster(self) -> ClusterReads:
        """One read model per request, as the front ends make them."""
        if isinstance(self.engine, ClickHouse):
            return ClusterReads.of(self.engine)
        return ClusterReads(self.engine, self.db)


@pytest.fixture(scope="module", params=["clickhouse-18.16", "chdb"])
def world(
    request: pytest.FixtureRequest, clickhouse: ClickHouseServer, chdb_engine: ChdbEngine
) -> Iterator[World]:
    if request.param == "chdb":
        engine: Any = chdb_engine
        _fresh(engine)
    else:
        _fresh(clickhouse.client("default"))  # the database may not exist yet
        engine = clickhouse.client(DB)
    root = Path(tempfile.mkdtemp(prefix="sl-cluster-", dir=_TMP_ROOT))
    node = Node(root / "data")
    try:
        yield World(node, engine, build(node, engine))
    finally:
        node.close()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ comparing


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN, -0.0 differs from 0.0 and 1 from 1.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def mapped(node: Node, answer: Any) -> Any:
    """An LMDB answer with every run number where the cluster has a timeline."""
    if isinstance(answer, list):
        return [mapped(node, a) for a in answer]
    if not isinstance(answer, dict):
        return answer
    out = dict(answer)
    for k in ("run_no", "archived_by", "parent_run_no"):
        if out.get(k) is not None:
            out[k] = node.tl(out[k])
    if isinstance(out.get("parent"), dict):
        out["parent"] = mapped(node, out["parent"])
    for k in ("lineage", "children", "archived", "runs", "nodes"):
        if isinstance(out.get(k), list):
            out[k] = mapped(node, out[k])
    return out


def unnoded(answer: Any) -> Any:
    """A cluster answer without the ``node`` every description carries."""
    if isinstance(answer, list):
        return [unnoded(a) for a in answer]
    if isinstance(answer, dict) and "summary" in answer:
        assert answer.get("node") == NODE, answer
        return {k: v for k, v in answer.items() if k != "node"}
    if isinstance(answer, dict) and isinstance(answer.get("runs"), list):
        return {**answer, "runs": unnoded(answer["runs"])}
    return answer


def ask(model: readmodel.ReadModel, op: str, msg: dict[str, Any]) -> Any:
    try:
        return readmodel.plain(ops.answer(model, op, msg))
    except Error as exc:
        return exc


def cluster_msg(node: Node, msg: dict[str, Any]) -> dict[str, Any]:
    run_no = msg.get("run_no")
    return {**msg, "run_no": node.tl(run_no)} if isinstance(run_no, int) else msg


def check(w: World, op: str, msg: dict[str, Any]) -> Any:
    """``op`` answers the same from both stores; the LMDB answer."""
    with w.node.reads() as lmdb_model:
        want = ask(lmdb_model, op, msg)
    got = ask(w.fresh_cluster(), op, cluster_msg(w.node, msg))
    if isinstance(want, Exception):
        assert type(got) is type(want), (op, msg, got, want)
        text = want.message
        if isinstance(msg.get("run_no"), int):
            text = text.replace(str(msg["run_no"]), str(w.node.tl(msg["run_no"])))
        assert got.message == text
        return want
    assert not isinstance(got, Exception), (op, msg, got)
    assert same(unnoded(got), mapped(w.node, want)), (op, msg, got, want)
    return want


def pages(model: readmodel.ReadModel, op: str, msg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of a paged read, following ``next``."""
    rows: list[dict[str, Any]] = []
    cursor = dict(msg)
    for _ in range(10_000):
        page = readmodel.plain(ops.answer(model, op, cursor))
        assert len(page["rows"]) <= cursor.get("limit", 1000)
        rows += page["rows"]
        if page["next"] is None:
            return rows
        assert not rows or page["next"] > rows[-1]["_step"]
        cursor["min_step"] = page["next"]
    raise AssertionError("paging did not end")


def check_rows(w: World, op: str, msg: dict[str, Any]) -> list[dict[str, Any]]:
    with w.node.reads() as lmdb_model:
        want = pages(lmdb_model, op, msg)
    got = pages(w.fresh_cluster(), op, cluster_msg(w.node, msg))
    assert same(got, want), (msg, len(got), len(want))
    return want


def check_sample(w: World, msg: dict[str, Any], samples: int) -> None:
    """A downsample equals LMDB's where both read the range whole, and keeps
    its promises where they choose differently."""
    msg = {**msg, "samples": samples}
    keys = msg.get("keys")
    plain = {k: v for k, v in msg.items() if k not in ("keys", "match", "samples")}
    with w.node.reads() as lmdb_model:
        want = ask(lmdb_model, "history", msg)
        if isinstance(want, Exception):
            check(w, "history", msg)
            return
        in_range = pages(lmdb_model, "scan", {**plain, "limit": 100_000})
        query = {**plain, "keys": keys, "match": msg.get("match", "all"), "limit": 100_000}
        exact = pages(lmdb_model, "page", query) if keys is not None else in_range
    got = ask(w.fresh_cluster(), "history", cluster_msg(w.node, msg))
    assert not isinstance(got, Exception), (msg, got)
    n = len(in_range)
    budget = samples * 4  # LmdbReads.READ_PER_SAMPLE, downsample.EXACT_PER_SAMPLE
    if keys is None:
        whole = n <= samples
    else:
        whole = n == 0 or n <= budget or in_range[-1]["_step"] - in_range[0]["_step"] < budget
    if whole:
        assert same(got, want), (msg, got, want)
        return
    promises(got["rows"], exact, keys, samples)


def promises(rows: list[dict[str, Any]], exact: list[dict[str, Any]], keys: Any, n: int) -> None:
    """At most ``n`` rows, all of them exact rows in step order, the first and
    the last among them, and with keys each key's extremes."""
    if not exact:
        assert rows == []
        return
    assert 2 <= len(rows) <= n or len(exact) == 1
    by_step = {r["_step"]: r for r in exact}
    steps = [r["_step"] for r in rows]
    assert steps == sorted(set(steps))
    assert all(same(r, by_step[r["_step"]]) for r in rows)
    assert steps[0] == exact[0]["_step"] and steps[-1] == exact[-1]["_step"]
    if keys is None:
        return
    # ``sampling.decimate``'s rule: per bucket of steps, each key's extremes.
    metrics = [k for k in keys if k != "_step"] or ["_step"]
    buckets = (n - 2) // (2 * len(metrics))
    first, width = exact[0]["_step"], exact[-1]["_step"] - exact[0]["_step"] + 1
    if buckets < 1 or (width - 1) * buckets >= 2**63:  # evenly, or by a stride
        return

    def numbers(among: list[dict[str, Any]], k: str) -> list[Any]:
        return [r[k] for r in among if type(r.get(k)) in (int, float) and r[k] == r[k]]

    by_bucket: dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for among, i in ((exact, 0), (rows, 1)):
        for r in among:
            by_bucket.setdefault((r["_step"] - first) * buckets // width, ([], []))[i].append(r)
    for b, (held, shown) in by_bucket.items():
        assert shown, f"bucket {b} holds rows but shows none"
        for k in metrics:
            if values := numbers(held, k):
                assert min(values) in numbers(shown, k), (b, k)
                assert max(values) in numbers(shown, k), (b, k)


# ------------------------------------------------------------------ tests


def test_the_tables_hold_every_line_twice_and_reads_collapse_them(world: World) -> None:
    e = world.engine
    for table, identity in (("history", "key"), ("rows", "level")):
        raw = int(e.query(f"SELECT count() FROM {DB}.{table}")[0][0])
        distinct = e.query(
            f"SELECT count() FROM (SELECT DISTINCT timeline, {identity}, step FROM {DB}.{table})"
        )
        assert raw > int(distinct[0][0]), table
    versions = e.query(f"SELECT count(), uniqExact(timeline) FROM {DB}.runs")
    assert int(versions[0][0]) > int(versions[0][1])
    rows = check_rows(world, "scan", {"project": "p", "id": "long", "limit": 100_000})
    assert len(rows) == 700


def test_projects_runs_and_trees_match(world: World) -> None:
    projects = check(world, "projects", {})
    assert [p["name"] for p in projects["projects"]] == ["p", "q"]  # r's only run was deleted
    for project in ("p", "q", "r", "nope", "bad name", 7):
        check(world, "runs", {"project": project})
        check(world, "project_runs", {"project": project})
        check(world, "tree", {"project": project})
    tree = check(world, "tree", {"project": "p"})["nodes"]
    assert {t["id"] for t in tree if t["deleted"]} == {"c", "e"}  # d was purged


def test_every_timeline_is_described_alike(world: World) -> None:
    w, n = world, world.runs
    records = w.node.records()
    for run_no, rec in records.items():
        ref = {"project": rec["project"], "run_no": run_no}
        for msg in (ref, {"project": rec["project"], "id": rec["id"]}):
            for full in (True, False):
                check(w, "info", {**msg, "full": full})
            check(w, "state", msg)
            for include_parent in (True, False):
                check(w, "keys", {**msg, "include_parent": include_parent})
    info = check(w, "info", {"project": "p", "id": "a"})
    assert [a["run_no"] for a in info["archived"]] == [n["a1"]]
    assert {c["id"] for c in info["children"]} == set()
    assert [c["id"] for c in check(w, "info", {"project": "p", "run_no": n["a1"]})["children"]] == [
        "b",
        "a",
    ]
    assert check(w, "info", {"project": "p", "id": "f"})["lineage"][0]["id"] == "e"


@pytest.mark.parametrize(
    "op, msg",
    [
        ("info", {"project": "p", "id": "ghost"}),
        ("info", {"project": "nope", "id": "a"}),
        ("info", {"project": "p", "id": "c"}),  # soft-deleted
        ("info", {"project": "bad name", "id": "a"}),
        ("info", {"project": "p", "id": "bad id!"}),
        ("state", {"project": "p", "id": None}),
        ("state", {"project": "p", "run_no": 999}),  # never made
        ("state", {"project": "p", "run_no": -1}),
        ("keys", {"project": 7, "run_no": "a"}),
        ("scan", {"project": "p", "id": "ghost"}),
        ("history", {"project": "p", "id": "a", "samples": 1}),
        ("page", {"project": "p", "id": "a", "match": "some", "keys": ["loss"]}),
        ("page", {"project": "p", "id": "a", "keys": "loss"}),
        ("page", {"project": "p", "id": "a", "limit": 0}),
    ],
)
def test_misses_and_bad_requests_fail_alike(world: World, op: str, msg: dict[str, Any]) -> None:
    assert isinstance(check(world, op, msg), RequestError)


def test_timelines_out_of_reach_fail_alike(world: World) -> None:
    n = world.runs
    for project, name in [("q", "a"), ("p", "d"), ("p", "c"), ("p", "z"), (7, "a"), ("r", "only")]:
        # another project's, purged, deleted, ...
        err = check(world, "info", {"project": project, "run_no": n[name]})
        assert isinstance(err, RunNotFound)


# Small limits on purpose: many pages, each boundary a chance to differ.
ROW_QUERIES: list[dict[str, Any]] = [
    {"limit": 7},
    {"limit": 1, "max_step": 4},
    {"min_step": 13, "max_step": 22, "limit": 4},
    {"include_parent": False, "limit": 11},
    {"max_step": 0},
    {"min_step": STEP_MAX},
    {"keys": ["loss"], "limit": 13},
    {"keys": ["acc", "s"], "limit": 3},
    {"keys": ["acc", "s"], "match": "any", "limit": 9, "min_step": 5},
    {"keys": ["x", "flag"], "match": "any", "limit": 6},
    {"keys": ["x"], "include_parent": False},
    {"keys": ["_step"], "limit": 40},
    {"keys": []},
    {"keys": ["nope"]},
    {"keys": ["rare", "nope"], "match": "any", "limit": 2},
    {"keys": ["loss", "loss", "_step"], "limit": 19},
    {"keys": [""]},
    {"keys": ["", "loss"], "match": "any", "limit": 25},
]


@pytest.mark.parametrize("run", ["a", "a1", "b", "f", "g", "z", "huge"])
def test_rows_match_page_by_page(world: World, run: str) -> None:
    rec = world.node.records()[world.runs[run]]
    for query in ROW_QUERIES:
        # scan and page differ only in checking ``match`` without keys
        op = "page" if "keys" in query else "scan"
        check_rows(world, op, {"project": rec["project"], "run_no": rec["run_no"], **query})
    check_rows(world, "scan", {"project": rec["project"], "id": rec["id"], "limit": 3})


def test_rows_of_a_long_run_match(world: World) -> None:
    ref = {"project": "p", "id": "long"}
    for query in ({"limit": 97}, {"keys": ["rare"], "limit": 3}, {"keys": ["acc"], "limit": 333}):
        check_rows(world, "page", {**ref, **query})
    # Starting between two rows.
    assert len(check_rows(world, "scan", {**ref, "limit": 100_000, "min_step": 1001})) == 199


SAMPLE_KEYS: list[dict[str, Any]] = [
    {},
    {"keys": ["loss"]},
    {"keys": ["loss", "acc"]},
    {"keys": ["acc", "s"], "match": "any"},
    {"keys": ["rare"]},
    {"keys": ["mixed"]},
    {"keys": ["acc", "rare"]},  # rows holding both: not every row holding acc
    {"keys": ["mixed", "rare", "loss"]},
    {"keys": ["_step"]},
    {"keys": ["v", "w", "v"]},
    {"keys": ["x"]},
    {"keys": []},
    {"keys": ["nope"]},
]


@pytest.mark.parametrize("samples", [4, 7, 10])
def test_a_long_view_downsamples_from_the_ladder(world: World, samples: int) -> None:
    """Keyless, over 128 steps a sample: the first and last rows, and rows on
    the ladder's rungs (steps multiples of 64 here) spread over the run."""
    ref = {"project": "p", "id": "long", "samples": samples}
    rows = ask(world.fresh_cluster(), "history", ref)["rows"]
    steps = [r["_step"] for r in rows]
    assert steps[0] == 0 and steps[-1] == 1398 and len(steps) == samples
    assert all(s % 64 == 0 for s in steps[1:-1]), steps
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert max(gaps) <= 2 * 1398 / (samples - 1) + 64, steps  # no rung far from even
    with world.node.reads() as lmdb_model:
        exact = {r["_step"]: r for r in pages(lmdb_model, "scan", {**ref, "limit": 100_000})}
    assert all(same(r, exact[r["_step"]]) for r in rows)


@pytest.mark.parametrize(
    "run, keys, samples",
    [
        ("long", SAMPLE_KEYS, (2, 7, 24, 1000)),
        ("huge", [*SAMPLE_KEYS[:3], *SAMPLE_KEYS[8:]], (3, 24)),
        ("odd", [{}, {"keys": ["v"]}], (4, 7, 1000)),
        ("a", SAMPLE_KEYS, (2, 1000)),
        ("b", SAMPLE_KEYS[:5], (5,)),
        ("g", SAMPLE_KEYS[:2], (2,)),
    ],
)
def test_downsamples_match_or_keep_their_promises(
    world: World, run: str, keys: list[dict[str, Any]], samples: tuple[int, ...]
) -> None:
    rec = world.node.records()[world.runs[run]]
    ref = {"project": rec["project"], "run_no": rec["run_no"]}
    for query, n in itertools.product(keys, samples):
        check_sample(world, {**ref, **query}, n)
    for window in ({"min_step": 20, "max_step": 900}, {"include_parent": False, "min_step": 3}):
        for query in keys[:3]:
            check_sample(world, {**ref, **window, **query}, 10)


# ------------------------------------------------- random forests, 18.16 only

HDB = "stepline_h"  # its own database: the scenario's projects stay as built
H_KEYS = ["loss", "acc", "x"]
H_VALUES = st.one_of(
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**64 - 1, -(2**63), "s", None, True]),
)
_examples = itertools.count(1)


def _script(data: st.DataObject, node: Node, project: str) -> None:
    """Creates, logs, forks and rewinds at random."""
    last: dict[str, int] = {}  # live run id -> its last step
    nos: dict[str, int] = {}  # live run id -> its current timeline
    for _ in range(data.draw(st.integers(2, 9), "ops")):
        kind = data.draw(st.sampled_from(["create", "log", "log", "fork", "rewind"]), "op")
        ids = sorted(last)
        with_rows = [i for i in ids if last[i] >= 0]
        if kind == "create" or not ids:
            run_id = f"r{len(last)}"
            nos[run_id], last[run_id] = node.init(project, run_id), -1
        elif kind == "log":
            run_id = data.draw(st.sampled_from(ids), "id")
            gaps = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=12), "gaps")
            steps = list(itertools.accumulate(gaps, initial=last[run_id]))[1:]
            row = st.dictionaries(st.sampled_from(H_KEYS), H_VALUES)
            node.log(nos[run_id], [(step, data.draw(row, "row")) for step in steps])
            last[run_id] = steps[-1]
        elif with_rows:
            parent = data.draw(st.sampled_from(with_rows), "parent")
            step = data.draw(st.integers(0, last[parent]), "step")
            if kind == "fork":
                child = f"r{len(last)}"
                nos[child] = node.init(project, child, fork_from=[parent, step])
                last[child] = step
            else:
                nos[parent] = node.init(project, parent, resume_from=[parent, step])
                last[parent] = step


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_forests_read_alike(clickhouse: ClickHouseServer, data: st.DataObject) -> None:
    admin = clickhouse.client("default")
    for stmt in schema.statements(HDB):
        admin.execute(stmt)
    engine = clickhouse.client(HDB)
    example = next(_examples)
    root = Path(tempfile.mkdtemp(prefix="sl-cluster-h-", dir=_TMP_ROOT))
    node = Node(root / "data", store_id=100 + example)
    try:
        project = f"h{example}"
        _script(data, node, project)
        node.ship(engine, 1, HDB)
        node.ship(engine, 2, HDB)
        w = World(node, engine, db=HDB)
        for run_no in sorted(node.records()):
            query: dict[str, Any] = {
                "project": project,
                "run_no": run_no,
                "limit": data.draw(st.integers(1, 6), "limit"),
                "min_step": data.draw(st.integers(0, 8), "min_step"),
                "include_parent": data.draw(st.booleans(), "include_parent"),
            }
            if data.draw(st.booleans(), "bounded"):
                query["max_step"] = data.draw(st.integers(0, 60), "max_step")
            keys = data.draw(st.none() | st.lists(st.sampled_from(H_KEYS), max_size=2), "keys")
            if keys is not None:
                query["keys"] = keys
                query["match"] = data.draw(st.sampled_from(["all", "any"]), "match")
            check_rows(w, "page", query)
            check(w, "info", {"project": project, "run_no": run_no})
            samples = data.draw(st.integers(2, 6), "samples")
            del query["limit"]
            check_sample(w, query, samples)
    finally:
        node.close()
        shutil.rmtree(root, ignore_errors=True)


def test_an_unreachable_cluster_is_a_typed_error(tmp_path: Path) -> None:
    gone = ClickHouseServer(tmp_path / "gone")  # a port nobody listens on
    url = ClusterUrl.parse(f"http://someone:secret@127.0.0.1:{gone.http}/{DB}")
    reads = ClusterReads(ClickHouse(url, timeout=2.0))
    with pytest.raises(ClusterUnavailable) as err:
        ops.answer(reads, "projects", {})
    assert isinstance(err.value, DaemonError) and isinstance(err.value, ConnectionError)
    assert f"127.0.0.1:{gone.http}" in err.value.message and "secret" not in err.value.message


def test_a_missing_database_is_a_daemon_error(clickhouse: ClickHouseServer) -> None:
    reads = ClusterReads.of(clickhouse.client("nothing_here"))
    with pytest.raises(DaemonError) as err:
        ops.answer(reads, "info", {"project": "p", "id": "a"})
    assert not isinstance(err.value, ClusterUnavailable)
