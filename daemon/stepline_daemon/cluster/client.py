"""A small blocking client for ClickHouse's HTTP interface: one POST per query.

Blocking on purpose: reads run on read threads, and the shipper runs its
inserts on one too, never on the event loop.

HTTP/1.0, one connection per query: ClickHouse then sends an answer as it is,
where over HTTP/1.1 it sends it in chunks of a few KiB, each a read of its own
that must take the GIL back. A page of rows is a few MiB; a scan reading ahead
takes it in a few large reads while the caller decodes the page before.
"""

from __future__ import annotations

import base64
import http.client
import urllib.parse

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


class _Http10(http.client.HTTPConnection):
    _http_vsn = 10
    _http_vsn_str = "HTTP/1.0"


class _Https10(http.client.HTTPSConnection):
    _http_vsn = 10
    _http_vsn_str = "HTTP/1.0"


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
        kind = _Https10 if self.url.scheme == "https" else _Http10
        conn = kind(self.url.host, self.url.port, timeout=self.timeout)
        try:
            conn.request("POST", "/?" + query, body=body, headers=self._headers)
            resp = conn.getresponse()
            out: bytes = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            # The address is the caller's to add: it is in every status line.
            raise ClickHouseUnavailable(0, str(exc) or type(exc).__name__) from None
        finally:
            conn.close()
        if resp.status != 200:
            raise ClickHouseError(resp.status, out.decode("utf-8", "replace").strip())
        return out

    def select(self, sql: str) -> bytes:
        """A SELECT's answer, in the format ``sql`` names.

        Behind Distributed tables, a subquery runs on each shard's own table: a
        fork tree, and so everything one read joins, lives on one shard.
        """
        return self.execute(sql, distributed_product_mode="local")

    def query(self, sql: str) -> list[list[str]]:
        """Rows of a SELECT (as ``select``), as TabSeparated fields (unescaped)."""
        text = self.select(sql + " FORMAT TabSeparated").decode()
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
