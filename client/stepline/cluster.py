"""``Api(clickhouse=URL)``: reads of the cluster store, answered in this process.

The cluster has no daemon to ask: this channel answers each read op the way a
node's daemon would, through the same read ops and the cluster's
implementation of the daemon's read interface (``stepline_daemon.cluster``),
so ``Api``'s code is the same over both stores.
"""

from __future__ import annotations

import importlib
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

from stepline.errors import UsageError

SCAN_PAGE = 25_000  # rows per ClickHouse round trip of a scan
# Pages a scan reads ahead of its caller, at most.
AHEAD = 2
# A scan whose caller took no page for this long is dropped (its reader thread ends).
ABANDONED_S = 600.0

Page = tuple[int | None, Callable[[], Any]]  # (where the next page starts, the page)


class ClusterChannel:
    """Answers read requests from the cluster store; a stand-in for ``Channel``."""

    def __init__(self, url: str, timeout: float) -> None:
        # Loaded by name, as ``commands.daemon_main`` loads the daemon: an
        # optional extra the client never imports unless asked to.
        try:
            serving = importlib.import_module("stepline_daemon.cluster.serving")
        except ImportError as exc:
            raise UsageError(
                "Api(clickhouse=...) reads through the daemon's read model: "
                f"pip install 'stepline[daemon]' ({exc})"
            ) from None
        self._serving = serving
        self._client = serving.connect(url, timeout)
        self._rids = itertools.count(1)
        self._scans: dict[int, _ReadAhead] = {}

    def broken(self) -> bool:
        return False

    def close(self) -> None:
        for scan in self._scans.values():
            scan.stop()
        self._scans.clear()

    def request(self, msg: dict[str, Any], timeout: float | None) -> Any:
        if msg.get("op") == "status":
            return {"store": "cluster", "cluster": {"url": str(self._client.url)}}
        return self._serving.answer(self._client, msg["op"], msg)

    # A streamed scan, as ``Channel.start``/``result`` serve it: page by page.
    def start(self, msg: dict[str, Any]) -> int:
        rid = next(self._rids)
        scan = {k: v for k, v in msg.items() if k != "stream"}
        # Pages bound what a daemon holds for a socket reply; here each page is
        # a round trip to ClickHouse instead, and the rows are handed out one by
        # one anyway: read larger pages.
        scan["limit"] = max(scan.get("limit") or 0, SCAN_PAGE)
        reads = self._serving.ClusterReads.of(self._client)
        self._scans[rid] = _ReadAhead(lambda m: self._serving.page(reads, m), scan)
        return rid

    def result(self, rid: int, timeout: float | None) -> Any:
        nxt, page = self._scans[rid].take()
        if nxt is None:
            del self._scans[rid]
        return page()


class _ReadAhead:
    """A scan's pages, read by a thread of its own up to AHEAD pages before the
    caller takes them: ClickHouse answers the next pages while the caller
    decodes this one (a page is decoded by whoever takes it)."""

    def __init__(self, read: Callable[[dict[str, Any]], Page], msg: dict[str, Any]) -> None:
        self._read = read
        self._pages: queue.Queue[Page | BaseException] = queue.Queue(AHEAD)
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(dict(msg),), name="stepline-scan", daemon=True
        )
        self._thread.start()

    def _run(self, msg: dict[str, Any]) -> None:
        while not self._stopped.is_set():
            try:
                got: Page | BaseException = self._read(msg)
            except BaseException as exc:  # the caller's to raise, with the page it asked for
                got = exc
            if not self._put(got) or isinstance(got, BaseException) or got[0] is None:
                return
            msg["min_step"] = got[0]

    def _put(self, item: Page | BaseException) -> bool:
        """Hand ``item`` over, once there is room; False: the scan was dropped."""
        deadline = ABANDONED_S
        while deadline > 0 and not self._stopped.is_set():
            try:
                self._pages.put(item, timeout=1.0)
                return True
            except queue.Full:
                deadline -= 1.0
        return False

    def take(self) -> Page:
        got = self._pages.get()
        if isinstance(got, BaseException):
            raise got
        return got

    def stop(self) -> None:
        self._stopped.set()
