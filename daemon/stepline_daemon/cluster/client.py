"""A small blocking client for ClickHouse's HTTP interface: one POST per query.

Blocking on purpose: reads run on read threads, and the shipper will run its
inserts on one too, never on the event loop.
"""

from __future__ import annotations

import base64
import http.client
import urllib.error
import urllib.parse
import urllib.request

from stepline_daemon.cluster.url import ClusterUrl


class ClickHouseError(Exception):
    """The server refused a query; ``message`` is its own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"ClickHouse said ({status}): {message}")
        self.status = status
        self.message = message


class ClickHouseUnavailable(ClickHouseError):
    """No answer: the server is down, unreachable or too slow."""

    def __str__(self) -> str:
        return f"ClickHouse did not answer: {self.message}"


class ClickHouse:
    def __init__(self, url: ClusterUrl, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        token = base64.b64encode(f"{url.user}:{url.password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}

    def execute(self, sql: str, data: bytes = b"", **settings: int | str) -> bytes:
        """Run ``sql`` (with ``data`` after it, for an INSERT); the response body.
        ``settings``: ClickHouse settings for this query alone."""
        body = sql.encode() + (b"\n" + data if data else b"")
        query = urllib.parse.urlencode({"database": self.url.database, **settings})
        req = urllib.request.Request(
            self.url.endpoint + "?" + query,
            data=body,
            headers=self._headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                out: bytes = resp.read()
                return out
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace").strip()
            raise ClickHouseError(exc.code, text) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # The address is the caller's to add: it is in every status line.
            raise ClickHouseUnavailable(0, str(exc)) from None

    def query(self, sql: str) -> list[list[str]]:
        """Rows of a SELECT, as TabSeparated fields (unescaped).

        Behind Distributed tables, a subquery runs on each shard's own table: a
        fork tree, and so everything one read joins, lives on one shard.
        """
        text = self.execute(sql + " FORMAT TabSeparated", distributed_product_mode="local").decode()
        return [[unescape(f) for f in line.split("\t")] for line in text.splitlines()]


_UNTSV = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "'": "'"}


def unescape(field: str) -> str:
    """One TabSeparated field as the text it stands for."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        c = field[i]
        if c == "\\" and i + 1 < len(field):
            out.append(_UNTSV.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)
