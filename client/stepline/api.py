"""Reading runs back: ``stepline.Api()``, shaped like W&B's public API."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stepline import paths
from stepline.channel import Channel, Retry
from stepline.cluster import ClusterChannel
from stepline.errors import DaemonUnavailable, UsageError
from stepline.protocol import new_token

DEFAULT_TIMEOUT = 60.0


class Api:
    """Read access to the daemon's runs, over its socket (one connection, lazily opened).

    Every call retries while the daemon is away (a restart), until ``timeout``;
    only then does it raise :class:`~stepline.DaemonUnavailable`.
    """

    def __init__(
        self,
        socket: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clickhouse: str | None = None,
    ) -> None:
        """``clickhouse``: read the cluster store every node replicates into
        (``http://user:password@host:8123/database``) instead of this node's daemon.
        The same calls, the same answers; each run also names its ``node``, and
        ``run_no`` is a timeline id unique across the cluster. Read-only."""
        self._path = paths.resolve_socket(socket)
        self._timeout = timeout
        self._chan: Channel | None = None
        self._cluster = None if clickhouse is None else ClusterChannel(clickhouse, timeout)
        self._lock = threading.Lock()

    def _call(self, msg: dict[str, Any]) -> Any:
        retry = Retry(self._timeout)
        while True:
            try:
                return self._attempt(msg, retry)
            except DaemonUnavailable as exc:
                retry.pause(exc)

    def _attempt(self, msg: dict[str, Any], retry: Retry) -> Any:
        if self._cluster is not None:
            return self._cluster.request(msg, retry.left())
        with self._lock:
            try:
                if self._chan is not None and self._chan.broken():
                    self._drop()  # closed while idle: the daemon restarted
                if self._chan is None:
                    self._chan = Channel(self._path, retry.left())
                return self._chan.request(msg, retry.left())
            except DaemonUnavailable:
                self._drop()  # a broken connection is never reused
                raise

    def _drop(self) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None

    @contextlib.contextmanager
    def _reader(self, retry: Retry) -> Iterator[Channel | ClusterChannel]:
        """A connection of its own for a long scan, so other calls need not wait."""
        if self._cluster is not None:
            yield self._cluster
            return
        chan = Channel(self._path, retry.left())
        try:
            yield chan
        finally:
            chan.close()

    @property
    def socket(self) -> Path:
        return self._path

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._drop()
        if self._cluster is not None:
            self._cluster.close()  # scans reading ahead stop

    def status(self) -> dict[str, Any]:
        """The daemon's own report: pid, version, uptime, clients, rows, errors."""
        result: dict[str, Any] = self._call({"op": "status"})
        return result

    def delete(self, path: str, purge: bool = False, force: bool = False) -> dict[str, Any]:
        """Delete run ``project/id`` (all its timelines). Soft by default: the id is
        free again and reads no longer find it, while forks keep reading its rows.
        ``purge=True`` also removes the rows; refused (``InUse``) while a fork that is
        not deleted reads them. A run that crashed in the last minute (its process may
        be reconnecting) needs ``force=True``."""
        project, _, run_id = path.partition("/")
        result: dict[str, Any] = self._call(
            {
                "op": "delete",
                "token": new_token(),  # a retry after a lost reply gets this delete's outcome
                "project": project,
                "id": run_id,
                "purge": purge,
                "force": force,
            }
        )
        return result

    def purge(self) -> dict[str, Any]:
        """Remove for good the rows of every deleted run that no live fork reads."""
        result: dict[str, Any] = self._call({"op": "purge", "token": new_token()})
        return result

    def backup(self, dest: str) -> dict[str, Any]:
        """Have the daemon write a consistent, compacted copy of its store to ``dest``
        (an absolute directory, empty or new) while it keeps serving."""
        result: dict[str, Any] = self._call({"op": "backup", "token": new_token(), "dest": dest})
        return result

    def tree(self, project: str) -> list[dict[str, Any]]:
        """Every timeline of ``project`` (archived and deleted ones too, flagged)
        with its parent pointer: the fork forest, in one request."""
        nodes: list[dict[str, Any]] = self._call({"op": "tree", "project": project})["nodes"]
        return nodes

    def project_list(self) -> list[dict[str, Any]]:
        """Each project's name, number of runs and last update, in one request."""
        projects: list[dict[str, Any]] = self._call({"op": "projects"})["projects"]
        return projects

    def projects(self) -> list[str]:
        """The projects' names, in name order."""
        return [p["name"] for p in self.project_list()]

    def runs(self, project: str) -> list[ApiRun]:
        return [ApiRun(self, d) for d in self._call({"op": "runs", "project": project})["runs"]]

    def run(self, path: str) -> ApiRun:
        """``"project/run_id"``: the run's current timeline."""
        project, sep, run_id = path.partition("/")
        if not sep or not project or not run_id:
            raise UsageError(f"Api.run() takes 'project/run_id', got {path!r}")
        # Light: no lineage, children or config until asked for (see ApiRun).
        info = self._call({"op": "info", "project": project, "id": run_id, "full": False})
        return ApiRun(self, info)

    def timeline(self, project: str, run_no: int) -> ApiRun:
        """A timeline by its internal number, including ones a rewind archived."""
        info = self._call({"op": "info", "project": project, "run_no": run_no, "full": False})
        return ApiRun(self, info)


class ApiRun:
    """One run as stored: metadata, summary, config, lineage and history."""

    def __init__(self, api: Api, info: dict[str, Any]) -> None:
        self._api = api
        self._info = info

    def refresh(self) -> ApiRun:
        self._info = self._api._call({"op": "info", **self._ref()})
        return self

    def _ref(self) -> dict[str, Any]:
        # Address the timeline itself, so an archived one stays reachable.
        return {"project": self.project, "run_no": self.run_no}

    def _full(self, key: str) -> Any:
        if key not in self._info:
            self.refresh()
        return self._info[key]

    id = property(lambda self: self._info["id"])
    run_no = property(lambda self: self._info["run_no"])
    project = property(lambda self: self._info["project"])
    name = property(lambda self: self._info["name"])
    state = property(lambda self: self._info["state"])
    tags = property(lambda self: self._info["tags"])
    last_step = property(lambda self: self._info["last_step"])
    dropped = property(lambda self: self._info["dropped"])
    summary = property(lambda self: self._info["summary"])
    # A run continued from another node's (``init`` of a run this node lacked):
    # {"node", "cluster", "timeline", "step"}; the rows up to ``step`` live there.
    origin = property(lambda self: self._info.get("origin"))
    # The cluster store: the same id made on other nodes too ({"run_no", "node",
    # "created"} each), or, on such a later timeline, the run it duplicates.
    duplicates = property(lambda self: self._info.get("duplicates", []))
    duplicate_of = property(lambda self: self._info.get("duplicate_of"))
    config = property(lambda self: self._full("config"))

    @property
    def parent(self) -> tuple[str, int] | None:
        """``(run_id, step)`` this run's view branches from, or None."""
        p = self._info["parent"]
        return None if p is None else (p["id"], p["step"])

    @property
    def lineage(self) -> list[tuple[str, int]]:
        """Ancestors, nearest first, as ``(run_id, step)``."""
        return [(a["id"], a["step"]) for a in self._full("lineage")]

    @property
    def children(self) -> list[tuple[str, int]]:
        """Runs branching from this one (forks, and the timeline a rewind started)."""
        return [(c["id"], c["step"]) for c in self._full("children")]

    @property
    def archived(self) -> bool:
        """True for a timeline a rewind replaced; ``archived_by`` is the one that did."""
        return bool(self._info["state"] == "archived")

    @property
    def rewound_from(self) -> ApiRun | None:
        """For a rewound run, the archived timeline it replaced (same id), else None."""
        p = self._info["parent"]
        if p is None or p["id"] != self.id:
            return None
        return self._api.timeline(self.project, p["run_no"])

    def _msg(self, op: str, **params: Any) -> dict[str, Any]:
        msg = {"op": op, **self._ref()}
        msg.update({k: v for k, v in params.items() if v is not None})
        return msg

    def _query(self, op: str, **params: Any) -> dict[str, Any]:
        out: dict[str, Any] = self._api._call(self._msg(op, **params))
        return out

    def scan_history(
        self,
        keys: list[str] | None = None,
        page_size: int = 1000,
        min_step: int = 0,
        max_step: int | None = None,
        include_parent: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Every row in ``[min_step, max_step)``, exactly, page by page.

        With ``keys``, only rows that have all of them, holding only them (and
        ``_step``), as W&B does.
        """
        params = {
            "keys": keys,
            "limit": page_size,
            "max_step": max_step,
            "include_parent": include_parent,
        }
        start = min_step
        retry = Retry(self._api._timeout)
        while True:
            try:
                with self._api._reader(retry) as chan:
                    # One streamed request: the daemon reads the next page while
                    # this one is handed out.
                    rid = chan.start(self._msg("scan", min_step=start, stream=True, **params))
                    while True:
                        page = chan.result(rid, self._api._timeout)
                        retry = Retry(self._api._timeout)  # progress: a fresh allowance
                        nxt = page["next"]
                        yield from page["rows"]
                        if nxt is None:
                            return
                        start = nxt
            except DaemonUnavailable as exc:
                # The daemon went away mid-scan: carry on from the first row not
                # yet handed out, on a new connection, so the rows stay exact.
                retry.pause(exc)

    def history(
        self,
        keys: list[str] | None = None,
        samples: int = 500,
        min_step: int | None = None,
        max_step: int | None = None,
        pandas: bool = True,
        include_parent: bool = True,
    ) -> Any:
        """At most ``samples`` evenly spaced rows; always the first and the last.

        A pandas DataFrame when ``pandas`` is true and pandas imports, else a
        list of dicts.
        """
        rows = self._query(
            "history",
            keys=keys,
            samples=samples,
            min_step=min_step,
            max_step=max_step,
            include_parent=include_parent,
        )["rows"]
        if pandas:
            try:
                import pandas as pd
            except ImportError:
                return rows
            return pd.DataFrame(rows)
        return rows

    def __repr__(self) -> str:
        return f"<stepline.ApiRun {self.project}/{self.id} ({self.state})>"

    @property
    def created(self) -> float:
        """When this timeline was created, Unix time in seconds."""
        created: float = self._full("created")
        return created

    @property
    def updated(self) -> float:
        """When this timeline last changed, Unix time in seconds."""
        updated: float = self._full("updated")
        return updated

    @property
    def node(self) -> str | None:
        """The node the run was logged on, read from the cluster store; None
        from a node's own daemon (every run there is its own)."""
        node: str | None = self._info.get("node")
        return node

    @property
    def exit_code(self) -> int | None:
        """The exit code ``finish()`` reported; None until the run finishes (and after a crash)."""
        code: int | None = self._full("exit_code")
        return code

    @property
    def rows(self) -> int:
        """How many rows this timeline holds itself; rows inherited from a parent not counted."""
        rows: int = self._full("rows")
        return rows

    @property
    def lineage_refs(self) -> list[dict[str, Any]]:
        """``lineage`` with each ancestor's ``run_no`` and ``state`` too, as dicts."""
        return [dict(a) for a in self._full("lineage")]

    @property
    def children_refs(self) -> list[dict[str, Any]]:
        """``children`` with each one's ``run_no`` and ``state`` too, as dicts."""
        return [dict(c) for c in self._full("children")]
