"""Serving the cluster store to the same front ends as a node: the HTTP routes
and dashboard (``stepline serve --clickhouse``), and ``stepline.Api`` and the
CLI in-process (``Api(clickhouse=...)``).

Both go through ``ops.answer`` on a :class:`ClusterReads`, the read model's
ClickHouse implementation: the same read ops, parameter checks and answers as
over a node's LMDB, not a second API.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stepline import __version__
from stepline.errors import RequestError
from stepline_daemon import ops, render
from stepline_daemon.cluster.client import ClickHouse
from stepline_daemon.cluster.reads import ClusterReads
from stepline_daemon.cluster.url import BadClusterUrl, ClusterUrl
from stepline_daemon.metrics import Metrics
from stepline_daemon.readmodel import Rows, plain

# A live view of a cluster run polls: nothing tells this process of commits on
# the nodes, and replication itself lags by about this much.
POLL = 1.0


def connect(url: str | ClusterUrl, timeout: float = 30.0) -> ClickHouse:
    """A client for the cluster at ``url``; a bad address is a RequestError."""
    if isinstance(url, str):
        try:
            url = ClusterUrl.parse(url)
        except BadClusterUrl as exc:
            raise RequestError(str(exc)) from None
    return ClickHouse(url, timeout=timeout)


def answer(client: ClickHouse, op: str, msg: dict[str, Any]) -> Any:
    """Read ``op`` answered from the cluster, as a client decodes it."""
    spec = ops.OPS.get(op)
    if spec is None or spec.read is None:
        raise RequestError(
            f"{op!r} is not a read; the cluster store is read-only (write through a node)"
        )
    # ClusterReads turns ClickHouse's failures into the typed errors themselves.
    return plain(ops.answer(ClusterReads.of(client), op, msg))


def page(reads: ClusterReads, msg: dict[str, Any]) -> tuple[int | None, Callable[[], Any]]:
    """A page of a paged read (``scan``, ``page``): where the next one starts,
    and what makes this one as a client decodes it. The rows are decoded there,
    by the caller, so a reader may ask for the next page first.

    ``reads`` may serve a read's every page: the run's records, read for its
    first page, then stand for the whole read (a rewind meanwhile does not
    switch it to the new timeline half way).
    """
    rows = ops.answer(reads, msg["op"], msg)
    if not isinstance(rows, Rows) or not rows.paged:
        raise RequestError(f"{msg['op']!r} is not a paged read")
    return rows.next, rows.plain


class ClusterSource:
    """What the HTTP front needs, over the cluster store; a node's Hub is the other."""

    def __init__(self, client: ClickHouse, http_token: str | None, threads: int = 4) -> None:
        self.client = client
        self.http_token = http_token
        self.reads = ThreadPoolExecutor(threads, thread_name_prefix="stepline-cluster-read")
        self.metrics_ = Metrics()
        self._watchers: set[asyncio.Event] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def read(self, op: str, msg: dict[str, Any], spec: render.Spec = ("json",)) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.reads, self._read_here, op, msg, spec)

    def _read_here(self, op: str, msg: dict[str, Any], spec: render.Spec) -> Any:
        result = ops.answer(ClusterReads.of(self.client), op, msg)
        return render.render(spec, result)

    @contextlib.contextmanager
    def watch(self, run_no: int) -> Iterator[asyncio.Event]:
        """An event set every ``POLL`` seconds: live views re-read and send what is new."""
        event = asyncio.Event()
        self._watchers.add(event)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        try:
            yield event
        finally:
            self._watchers.discard(event)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            for event in self._watchers:
                event.set()

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "store": "cluster",
            "cluster": {"url": str(self.client.url)},
            "uptime": time.time() - self.metrics_.started,
        }

    def metrics_text(self, streams: int) -> str:
        gauges = {
            "live_streams": ("Open HTTP live streams.", float(streams)),
            "uptime_seconds": ("Seconds since serving began.", time.time() - self.metrics_.started),
        }
        return self.metrics_.render(gauges)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self.reads.shutdown(wait=False, cancel_futures=True)
