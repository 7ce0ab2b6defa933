"""``stepline serve --clickhouse URL --http HOST:PORT``: the HTTP API and the
dashboard over the cluster store, the same routes a node's daemon serves."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from stepline_daemon import logs
from stepline_daemon.cluster.client import ClickHouse, ClickHouseError
from stepline_daemon.cluster.serving import ClusterSource
from stepline_daemon.cluster.url import BadClusterUrl, ClusterUrl
from stepline_daemon.settings import parse_http

log = logging.getLogger("stepline.serve")
DEFAULT_HTTP = "127.0.0.1:7760"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stepline serve",
        description="Serve the HTTP API and dashboard over the cluster store (read-only).",
    )
    p.add_argument(
        "--clickhouse",
        metavar="URL",
        help="the cluster: http://user:password@host:8123/database (env STEPLINE_CLICKHOUSE)",
    )
    p.add_argument("--http", default=DEFAULT_HTTP, help=f"HOST:PORT (default {DEFAULT_HTTP})")
    p.add_argument(
        "--http-token",
        help="required from every HTTP client; lets HTTP bind beyond loopback "
        "(env STEPLINE_HTTP_TOKEN)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    url_text = args.clickhouse or os.environ.get("STEPLINE_CLICKHOUSE")
    if not url_text:
        p.error("--clickhouse URL is required (or STEPLINE_CLICKHOUSE)")
    token = args.http_token or os.environ.get("STEPLINE_HTTP_TOKEN") or None
    try:
        url = ClusterUrl.parse(url_text)
        http = parse_http(args.http, token=token is not None)
    except (BadClusterUrl, ValueError) as exc:
        p.error(str(exc))
    if http is None:
        p.error("--http off: serve exists to serve HTTP")
    logs.configure("INFO", "text")
    try:
        asyncio.run(_serve(url, http, token))
    except OSError as exc:
        print(f"stepline serve: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(url: ClusterUrl, http: tuple[str, int], token: str | None) -> None:
    from stepline_daemon.http import Http

    client = ClickHouse(url)
    try:
        client.execute("SELECT 1")
    except ClickHouseError as exc:
        log.warning("the cluster does not answer yet (%s); serving anyway", exc)
    source = ClusterSource(client, token)
    front = Http(source)
    where = await front.start(*http)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"stepline serve: the cluster {url} on {where}", flush=True)
    await stop.wait()
    await front.stop()
    await source.close()
