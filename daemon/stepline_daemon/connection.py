"""The socket side: a thin asyncio adapter around the sans-IO codec.

``data_received`` feeds the decoder; each message is routed by the op table
and decoded into a typed request here, on the loop (cheap, and it lets a bad
request be refused without touching the store). Writes queue for the writer
thread; reads go through the hub's read model. A framing error gets an error
reply, then the connection closes; a bad request gets an error reply and the
connection keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any, cast

from stepline import protocol
from stepline.errors import DaemonError, Error, ProtocolError, RequestError
from stepline_daemon import batches, messages, replies
from stepline_daemon.hub import Hub
from stepline_daemon.messages import Disconnect, Log
from stepline_daemon.ops import OPS, Kind
from stepline_daemon.writer import WriteRequest

log = logging.getLogger("stepline.server")

_MAX_CLIENT_ID = 64
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
HOST = socket.gethostname()


def peer_credentials(sock: Any) -> dict[str, Any] | None:
    """The connecting process as the kernel saw it at connect time."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except (OSError, AttributeError):
        return None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return {"uid": uid, "gid": gid, "pid": pid, "host": HOST}


class Connection(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.decoder = protocol.Decoder(hub.settings.max_frame)
        self.transport: asyncio.Transport | None = None
        self.client: str | None = None
        self.owned: set[int] = set()
        self.peer: dict[str, Any] | None = None
        self.paused = False
        self.closed = False
        self.lost: asyncio.Future[None] = hub.loop.create_future()
        self.can_write = asyncio.Event()
        self.can_write.set()

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.hub.connections.add(self)
        self.peer = peer_credentials(transport.get_extra_info("socket"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.hub.connections.discard(self)
        self.hub.paused.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        self.can_write.set()  # ends a scan stream waiting to write
        reconnected = any(c.client == self.client for c in self.hub.connections)
        if self.client is not None and not self.hub.stopping and not reconnected:
            for run_no in self.owned:
                self.hub.writer.submit(
                    WriteRequest("disconnect", Disconnect(run_no), self.client, None)
                )

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        self._drain()

    def _drain(self) -> None:
        # A paused connection keeps its undecoded bytes: frames are decoded (and
        # grow several-fold in memory) only when the writer can take them.
        while not self.paused and not self.closed:
            try:
                msg = self.decoder.next_message()
            except ProtocolError as exc:
                log.warning("closing connection after a framing error: %s", exc)
                self.send(replies.error(exc, {}))
                assert self.transport is not None
                self.transport.close()
                return
            if msg is None:
                return
            try:
                self.handle(msg)
            except Error as exc:
                self.send(replies.error(exc, replies.echo_of(msg)))
            except Exception:  # a bug must cost this request, not the connection
                log.exception("handling %r failed", msg.get("op"))
                err = DaemonError("internal error handling the request")
                self.send(replies.error(err, replies.echo_of(msg)))

    def write_frame(self, frame: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(frame)

    def send(self, reply: dict[str, Any]) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(replies.frame(reply))

    def pause(self) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def resume(self) -> None:
        if self.paused and not self.closed and self.transport is not None:
            self.transport.resume_reading()
        self.paused = False
        self._drain()

    def stop_reading(self) -> None:
        """Shutdown, first step: take no more requests."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def close(self) -> asyncio.Future[None]:
        """Shutdown, last step: close; the future is done once the peer is gone."""
        if self.transport is not None:
            self.transport.close()
        return self.lost

    # ------------------------------------------------------------- requests

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if self.hub.crash:
            self.hub.crash.reached("receive", op)
        spec = OPS.get(op)
        if spec is None:
            raise ProtocolError("unknown_op", f"unknown op {op!r}")
        if spec.kind is Kind.WRITE:
            self._write(op, msg)
        elif spec.kind is Kind.READ:
            self._read(op, msg)
        elif spec.kind is Kind.ADMIN:
            self._reply_when(self.hub.backup(msg), op, msg)
        elif op == "hello":
            self._hello(msg)
        else:  # status
            self.send({"op": "ok", "rid": msg.get("rid"), "result": self.hub.status()})

    def _hello(self, msg: dict[str, Any]) -> None:
        client = msg.get("client")
        if not isinstance(client, str) or not 0 < len(client) <= _MAX_CLIENT_ID or "\0" in client:
            raise RequestError(f"hello: client must be a 1-{_MAX_CLIENT_ID} character string")
        version = msg.get("version")
        if version is not None and version != protocol.PROTOCOL_VERSION:
            raise RequestError(
                f"hello: this daemon speaks protocol {protocol.PROTOCOL_VERSION}, the client "
                f"{version!r}; install the same stepline version on both sides"
            )
        self.client = client
        self.send({"op": "welcome", "version": protocol.PROTOCOL_VERSION, "server": "stepline"})

    def _write(self, op: str, msg: dict[str, Any]) -> None:
        spec = OPS[op]
        if (spec.needs_seq or op == "init") and self.client is None:
            raise RequestError(f"{op}: send hello first")
        if op == "init":
            msg["peer"] = self.peer  # the kernel's word, never the client's
        cost = self.decoder.last_size
        req = WriteRequest(
            op,
            None,
            self.client or "",
            lambda r: self._on_write_reply(r, cost),
            replies.echo_of(msg),
        )
        # A bad run_no or seq is answered at once: there is no seq to record.
        header = messages.batch_header(op, msg) if spec.needs_seq else None
        try:
            if spec.savepointed:
                req.token = messages.token_of(msg)
            req.msg = self._decode(op, msg, header)
        except RequestError as exc:
            # Still goes through the writer, which answers in order (and records
            # a batch's seq). No traceback: it would hold this frame, and with it
            # the whole decoded batch, until the cyclic GC runs.
            req.refusal = exc.with_traceback(None)
            exc.__context__ = None  # an inner error's frames, the same
        if isinstance(req.msg, messages.Init) and self.hub.settings.clickhouse is not None:
            # It may continue a run only the cluster holds: asked off the loop,
            # then written. Logging (this connection's too) goes on meanwhile.
            self.hub.loop.create_task(self._init_via_cluster(req, cost))
            return
        self._submit(req, cost)

    async def _init_via_cluster(self, req: WriteRequest, cost: int) -> None:
        assert isinstance(req.msg, messages.Init)
        try:
            req.msg = await self.hub.continuing(req.msg)
        except Error as exc:
            req.refusal = exc.with_traceback(None)
            exc.__context__ = None
        self._submit(req, cost)

    def _submit(self, req: WriteRequest, cost: int) -> None:
        self.hub.admit(self, cost)
        self.hub.writer.submit(req)

    def _read(self, op: str, msg: dict[str, Any]) -> None:
        if op == "scan" and msg.get("stream"):
            self.hub.loop.create_task(self._stream(msg))
        else:
            self._reply_when(self.hub.read(op, msg, ("frame", msg.get("rid"))), op, msg)

    def _decode(
        self, op: str, msg: dict[str, Any], header: tuple[int, int] | None
    ) -> messages.Write:
        spec = OPS[op]
        if header is None:
            assert spec.parse is not None
            return spec.parse(msg)
        run_no, seq = header
        if op == "log":
            limits = self.hub.settings
            checked = batches.check_batch(msg, limits.max_keys_per_row, limits.max_value_len)
            return Log(run_no, seq, checked)
        assert spec.parse_batch is not None
        return spec.parse_batch(run_no, seq, msg)

    def _on_write_reply(self, reply: dict[str, Any], cost: int) -> None:
        self.hub.release(cost)
        # The runs this connection writes to are the ones it leaves crashed if it
        # vanishes, including runs it took over after reconnecting.
        if reply.get("op") == "ack":
            self.owned.add(reply["run_no"])
        elif reply.get("op") == "ok" and "run_no" in (reply.get("result") or {}):
            self.owned.add(reply["result"]["run_no"])  # an init
        self.send(reply)

    def _reply_when(self, work: Any, op: str, msg: dict[str, Any]) -> None:
        """Send the outcome of ``work`` (a frame, or a result) when it is done."""
        fut: asyncio.Future[Any] = asyncio.ensure_future(work)
        # A read's run_no names a timeline to read, not a batch's run: not echoed.
        echo = replies.echo_of(msg, ("rid", "seq"))

        def done(f: asyncio.Future[Any]) -> None:
            exc = f.exception()
            if exc is None:
                result = f.result()
                if isinstance(result, bytes):
                    self.write_frame(result)
                else:
                    self.send({"op": "ok", "rid": msg.get("rid"), "result": result})
            elif isinstance(exc, Error):
                self.send(replies.error(exc, echo))
            else:
                log.error("read %s failed", op, exc_info=exc)
                self.send(replies.internal(str(exc), echo))

        fut.add_done_callback(done)

    async def _stream(self, msg: dict[str, Any]) -> None:
        """A whole scan as consecutive page replies with one rid.

        The next page is read while the client takes in this one; the transport's
        write buffer is the flow control, so a slow reader holds at most about a
        page here.
        """
        page = dict(msg)
        echo = replies.echo_of(msg, ("rid", "seq"))
        try:
            while not self.closed:
                frame, nxt = await self.hub.read("scan", page, ("frame_page", msg.get("rid")))
                self.write_frame(frame)
                if nxt is None:
                    return
                page["min_step"] = nxt
                await self.can_write.wait()
        except Error as exc:
            self.send(replies.error(exc, echo))
        except Exception as exc:
            log.error("scan stream failed", exc_info=exc)
            self.send(replies.internal(str(exc), echo))
