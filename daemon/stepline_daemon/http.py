"""The HTTP side: JSON API, live streams and the dashboard, on the daemon's loop.

Handlers turn query parameters into the same read requests the socket serves
and run them in the read pool, rendering JSON or CSV there too: the event loop
only moves bytes, so a long read never delays a client's ack.

JSON carries NaN and infinities as bare ``NaN``, ``Infinity`` and
``-Infinity``, as W&B's API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from stepline.errors import ClusterUnavailable, DaemonError, Error, RequestError, RunNotFound
from stepline_daemon import openapi, render
from stepline_daemon.render import dumps

log = logging.getLogger("stepline.http")

STATIC = Path(__file__).parent / "static"
# Exact history pages: the default and the most rows one JSON reply holds.
PAGE_ROWS = 10_000
MAX_PAGE_ROWS = 100_000
CSV_PAGE_ROWS = 5_000
# A live stream sends a comment this often so proxies and browsers keep it open.
KEEPALIVE = 15.0
TOKEN_COOKIE = "stepline_token"
# The least time between two reads for one live stream.
STREAM_COALESCE = 0.1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(dumps({"error": {"code": code, "message": message}}), status)


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@web.middleware
async def _loopback_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Without a token, only requests addressed to a loopback name: a web page
    that rebinds its own DNS name to 127.0.0.1 gets no answer."""
    given = request.host or ""
    # "[::1]:port", or "name:port"
    host = given[1:].split("]", 1)[0] if given.startswith("[") else given.rsplit(":", 1)[0]
    if host.lower() not in _LOOPBACK_HOSTS:
        return _error(403, "forbidden_host", f"Host {given!r} is not a loopback address")
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as ``{"error": {"code", "message"}}`` with a fitting status."""
    try:
        return await handler(request)
    except RunNotFound as exc:
        return _error(404, exc.code, exc.message)
    except RequestError as exc:
        return _error(400, exc.code, exc.message)
    except ClusterUnavailable as exc:  # stepline serve: the cluster store is away
        return _error(503, exc.code, exc.message)
    except Error as exc:
        return _error(500, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api/"):
            return _error(exc.status, "not_found" if exc.status == 404 else "http", exc.reason)
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path_qs)
        return _error(500, DaemonError.code, "internal error")


def _token_guard(token: str) -> Any:
    """Every request must carry ``token``: ``Authorization: Bearer``, the cookie
    a first ``?token=`` visit sets (so the dashboard's own requests and its
    EventSource carry it), or ``?token=`` itself."""
    expected = token.encode()

    def matches(given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), expected)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:] if auth.startswith("Bearer ") else None
        from_query = request.query.get("token")
        # Cookies are not scoped by port: the name carries it, so another local
        # server's cookie never stands in for ours, nor ours for it.
        cookie = f"{TOKEN_COOKIE}_{request.url.port}"
        if not (matches(bearer) or matches(request.cookies.get(cookie)) or matches(from_query)):
            return _error(401, "unauthorized", "this daemon needs its HTTP token")
        resp = await handler(request)
        if matches(from_query) and not resp.prepared:
            resp.set_cookie(cookie, token, httponly=True, samesite="Strict")
        return resp

    return guard


# ------------------------------------------------------------------ parameters


def _int_param(request: web.Request, name: str, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _bool_param(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise RequestError(f"{name} must be true or false, got {raw!r}")


def _keys_param(request: web.Request) -> list[str] | None:
    raw = request.query.get("keys")
    if raw is None or raw.strip() == "":
        return None
    return [k.strip() for k in raw.split(",") if k.strip()]


def _run_msg(request: web.Request) -> dict[str, Any]:
    """The project, id and (for an archived timeline) run_no a URL names."""
    msg: dict[str, Any] = {
        "project": request.match_info["project"],
        "id": request.match_info["run"],
    }
    run_no = _int_param(request, "run_no", 0, 2**64 - 1)
    if run_no is not None:
        msg["run_no"] = run_no
    return msg


# ------------------------------------------------------------------ rendering


def _stream_start(request: web.Request, state: dict[str, Any]) -> int:
    """The last step a live stream's caller has: a reconnecting browser's
    Last-Event-ID, else ``after``, else the run's last step."""
    after = _int_param(request, "after", -1, 2**63 - 1)
    # A reconnecting browser's Last-Event-ID is newer than the `after` its
    # page was opened with: it wins.
    last_id = request.headers.get("Last-Event-ID", "").strip()
    if last_id:
        if not last_id.isdigit() or int(last_id) >= 2**63:
            raise RequestError(f"Last-Event-ID must be a step, got {last_id!r}")
        after = int(last_id)
    return state["last_step"] if after is None else after


def _sse(event: str, data: bytes, event_id: int | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


# ------------------------------------------------------------------ the app


class Source(Protocol):
    """What the routes read from: a node's :class:`~stepline_daemon.hub.Hub`, or
    the cluster store (``cluster.serving.ClusterSource``)."""

    @property
    def http_token(self) -> str | None: ...

    async def read(self, op: str, msg: dict[str, Any], spec: render.Spec = ("json",)) -> Any: ...

    def watch(self, run_no: int) -> contextlib.AbstractContextManager[asyncio.Event]: ...

    def status(self) -> dict[str, Any]: ...

    def metrics_text(self, streams: int) -> str: ...


class Http:
    def __init__(self, hub: Source) -> None:
        self.hub = hub
        self.runner: web.AppRunner | None = None
        self.url: str | None = None
        self._streams: set[asyncio.Task[Any]] = set()

    async def _read(self, op: str, msg: dict[str, Any], spec: render.Spec = ("json",)) -> Any:
        return await self.hub.read(op, msg, spec)

    def app(self) -> web.Application:
        guards = (
            [_loopback_host] if self.hub.http_token is None else [_token_guard(self.hub.http_token)]
        )
        app = web.Application(middlewares=[*guards, _errors])
        r = app.router
        r.add_get("/api/openapi.json", self.spec)
        r.add_get("/api/projects", self.projects)
        r.add_get("/api/projects/{project}/runs", self.runs)
        r.add_get("/api/projects/{project}/tree", self.tree)
        r.add_get("/api/projects/{project}/runs/{run}", self.run)
        r.add_get("/api/projects/{project}/runs/{run}/history", self.history)
        r.add_get("/api/projects/{project}/runs/{run}/stream", self.stream)
        r.add_get("/api/status", self.status)
        r.add_get("/metrics", self.metrics)
        r.add_get("/", self.index)
        if STATIC.is_dir():
            r.add_static("/static", STATIC)
        return app

    async def start(self, host: str, port: int) -> str:
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        bound = self.runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        for task in list(self._streams):
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()

    # ------------------------------------------------------------- handlers

    async def spec(self, request: web.Request) -> web.Response:
        return _json(dumps(openapi.SPEC))

    async def projects(self, request: web.Request) -> web.Response:
        return _json(await self._read("projects", {}))

    async def runs(self, request: web.Request) -> web.Response:
        return _json(await self._read("project_runs", {"project": request.match_info["project"]}))

    async def tree(self, request: web.Request) -> web.Response:
        return _json(await self._read("tree", {"project": request.match_info["project"]}))

    async def run(self, request: web.Request) -> web.Response:
        return _json(await self._read("info", _run_msg(request)))

    async def history(self, request: web.Request) -> web.StreamResponse:
        msg = _run_msg(request)
        keys = _keys_param(request)
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "columns", "csv"):
            raise RequestError(f"format must be json, columns or csv, got {fmt!r}")
        for name, hi in (("min_step", 2**63 - 1), ("max_step", 2**63)):
            value = _int_param(request, name, 0, hi)
            if value is not None:
                msg[name] = value
        msg["include_parent"] = _bool_param(request, "include_parent", True)
        msg["match"] = "any"  # a chart wants every row holding any of its keys
        if keys is not None:
            msg["keys"] = keys
        samples = _int_param(request, "samples", 2, 100_000)
        if fmt == "csv":
            if samples is not None:
                msg["samples"] = samples
            return await self._csv(request, msg, keys)

        spec = ("rows", fmt, keys)
        if samples is not None:
            return _json(await self._read("history", {**msg, "samples": samples}, spec))
        limit = _int_param(request, "limit", 1, MAX_PAGE_ROWS) or PAGE_ROWS
        return _json(await self._read("page", {**msg, "limit": limit}, spec))

    async def _csv(
        self, request: web.Request, msg: dict[str, Any], keys: list[str] | None
    ) -> web.StreamResponse:
        """The whole (or sampled) history as CSV, a page at a time.

        Everything that can fail for a reason the caller should hear is checked
        before the response starts; a failure after that cuts the body short.
        """
        state = await self._read("state", msg, None)  # a 404 while one can be sent
        columns: list[str] = (
            [k for k in keys if k != "_step"]
            if keys is not None
            else (await self._read("keys", msg, None))["keys"]
        )
        if "samples" in msg:
            first, _ = await self._read("history", msg, ("csv", columns, True))
            pages: list[bytes] | None = [first]
        else:
            pages = None
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                # The stored id: validated, so safe inside the header.
                "Content-Disposition": f'attachment; filename="{state["id"]}.csv"',
            }
        )
        await resp.prepare(request)
        try:
            if pages is not None:
                await resp.write(pages[0])
            else:
                page = {**msg, "run_no": state["run_no"], "limit": CSV_PAGE_ROWS}
                header = True
                while True:
                    text, nxt = await self._read("page", page, ("csv", columns, header))
                    await resp.write(text)
                    header = False
                    if nxt is None:
                        break
                    page["min_step"] = nxt
        except Error as exc:
            # Headers are gone: end the body without its last chunk, so the
            # client sees a truncated download, not a complete-looking file.
            log.warning("CSV of %s stopped: %s", state["id"], exc)
            if request.transport is not None:
                request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """New rows of one timeline as Server-Sent Events, as they commit.

        ``after`` (or the ``Last-Event-ID`` a reconnecting browser sends) is the
        last step the caller has; by default, the run's last step when the stream
        opens: only rows committed later are sent.
        """
        msg = _run_msg(request)
        keys = _keys_param(request)
        state = await self._read("state", msg, None)
        after = _stream_start(request, state)
        base = {"project": msg["project"], "run_no": state["run_no"], "match": "any"}
        if keys is not None:
            base["keys"] = keys
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            await resp.write(_sse("state", dumps(state)))
            await self._follow(resp, base, state, after)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the browser went away, or the daemon is stopping
        except Error as exc:  # the run went away (deleted): say so, in the stream
            error = {"code": exc.code, "message": exc.message}
            with contextlib.suppress(ConnectionResetError):
                await resp.write(_sse("error", dumps(error)))
        finally:
            self._streams.discard(task)
        return resp

    async def _follow(
        self, resp: web.StreamResponse, base: dict[str, Any], state: dict[str, Any], after: int
    ) -> None:
        """Send rows past ``after`` and state changes, as commits happen, until
        the stream is cancelled."""
        with self.hub.watch(state["run_no"]) as changed:
            while True:
                changed.clear()  # before reading: a commit during the read re-arms it
                # The state before the rows, sent after them: a run that finished
                # between the two reads must not say so before its last rows (a
                # viewer stops listening at the end of a run).
                now = await self._read("state", base, None)
                page = {**base, "min_step": after + 1, "limit": CSV_PAGE_ROWS}
                result = await self._read("page", page, None)
                if result["rows"]:
                    after = result["rows"][-1]["_step"]
                    await resp.write(_sse("rows", dumps({"rows": result["rows"]}), after))
                if result["next"] is not None:
                    after = result["next"] - 1
                    continue
                if now != state:
                    state = now
                    await resp.write(_sse("state", dumps(state)))
                try:
                    await asyncio.wait_for(changed.wait(), KEEPALIVE)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                # Under load a run commits every few ms: gather those commits
                # into one read, so live viewers cost ingest little.
                await asyncio.sleep(STREAM_COALESCE)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format, from the store's front (a node's hub or the cluster)."""
        return web.Response(
            body=self.hub.metrics_text(len(self._streams)).encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def status(self, request: web.Request) -> web.Response:
        """What the dashboard's header shows: which store, and replication lag."""
        return _json(dumps(self.hub.status()))

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = STATIC / "index.html"
        if not page.is_file():
            return web.Response(
                text="stepline: the dashboard's files are not installed; the JSON API is at /api/",
                status=404,
            )
        return web.FileResponse(page)
