"""``Api(clickhouse=URL)``: reads of the cluster store, answered in this process.

The cluster has no daemon to ask: this channel answers each read op the way a
node's daemon would, through the same read ops and the cluster's
implementation of the daemon's read interface (``stepline_daemon.cluster``),
so ``Api``'s code is the same over both stores.
"""

from __future__ import annotations

import importlib
import itertools
from typing import Any

from stepline.errors import UsageError

SCAN_PAGE = 10_000  # rows per ClickHouse round trip of a scan


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
        self._scans: dict[int, dict[str, Any]] = {}

    def broken(self) -> bool:
        return False

    def close(self) -> None:
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
        self._scans[rid] = scan
        return rid

    def result(self, rid: int, timeout: float | None) -> Any:
        msg = self._scans[rid]
        page = self.request(msg, timeout)
        if page["next"] is None:
            del self._scans[rid]
        else:
            msg["min_step"] = page["next"]
        return page
