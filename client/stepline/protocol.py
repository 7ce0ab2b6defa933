"""The wire protocol, without I/O: bytes in, messages out; messages in, bytes out.

A frame is a 4-byte big-endian length followed by one msgpack-encoded map. Every
map has an ``op`` key naming the message. The same module is used by the client
and the daemon, so neither side can drift from the other; tests feed it bytes one
at a time, which is where framing bugs hide.

Messages (client -> daemon):
    hello    {client, version}
    init     {rid, token?, project, id?, name?, config?, fork_from?, resume_from?, resume?}
    log      {run, seq, steps: [step, ...], values: [<packed {key: value}>, ...]}
             (or, from raw clients, rows: [[step, {key: value} or its bytes], ...])
    config   {run, seq, config}            merged into the run's config
    summary  {run, seq, summary}           explicit summary values (they win)
    metric   {run, seq, name, summary}     define_metric
    finish   {run, seq, exit_code}
    runs     {rid, project}
    info     {rid, project, id}
    scan     {rid, project, id, keys?, min_step, max_step?, limit, include_parent}
    history  {rid, project, id, keys?, min_step?, max_step?, samples, include_parent}
    delete   {rid, token?, project, id, purge?, force?}
    purge    {rid, token?}
    backup   {rid, token?, dest}

``token`` makes a request that changes something safe to resend: the client
picks one per request (:func:`new_token`) and sends it again with every retry.
The daemon stores it with the request's outcome in the transaction that makes
the change, and answers a token it has seen with that outcome, so a reply lost
to a daemon crash costs nothing: the retry gets the run the first attempt made.
Batches (``log``, ``config``, ...) need no token: their per-run ``seq`` does
the same.

Messages (daemon -> client):
    welcome  {version, server}
    ok       {rid, result}
    ack      {run, seq}                    the batch is committed and synced
    error    {code, message, rid?, run?, seq?}
"""

from __future__ import annotations

import os
import struct
from typing import Any, NoReturn

import msgpack

from stepline.errors import ProtocolError

PROTOCOL_VERSION = 1

# Largest frame either side accepts. A batch of a few thousand rows of ordinary
# metrics is well under a megabyte; 16 MiB leaves room for big config blobs while
# keeping one hostile length prefix from making a peer allocate gigabytes.
MAX_FRAME_SIZE = 16 * 1024 * 1024

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size

Message = dict[str, Any]


# The longest ``token`` the daemon accepts; new_token() makes 32 characters.
MAX_TOKEN = 64


def new_token() -> str:
    """A fresh idempotency token for one request (and all its retries)."""
    return os.urandom(16).hex()


def _unpack(payload: bytes) -> Message:
    try:
        # strict_map_key=False: row maps are validated by the receiver, which can
        # then say *which* key was wrong instead of a generic decode failure.
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError("bad_frame", f"frame is not valid msgpack: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolError("bad_frame", "frame must be a msgpack map with a string 'op'")
    return msg


def encode(msg: Message) -> bytes:
    """One message as one frame."""
    payload: bytes = msgpack.packb(msg, use_bin_type=True)
    if len(payload) > MAX_FRAME_SIZE:
        raise ProtocolError(
            "frame_too_large", f"frame of {len(payload)} bytes exceeds {MAX_FRAME_SIZE}"
        )
    return _HEADER.pack(len(payload)) + payload


def _header(n: int, fix: int, wide: bytes) -> bytes:
    """A msgpack array (``fix`` 0x90) or map (0x80) header for ``n`` items;
    ``wide`` holds the 16- and 32-bit type bytes."""
    if n < 16:
        return bytes((fix | n,))
    if n < 1 << 16:
        return wide[:1] + n.to_bytes(2, "big")
    return wide[1:] + n.to_bytes(4, "big")


def _array_header(n: int) -> bytes:
    return _header(n, 0x90, b"\xdc\xdd")


def _map_header(n: int) -> bytes:
    return _header(n, 0x80, b"\xde\xdf")


def log_rows(msg: Message) -> list[list[Any]]:
    """The ``[step, values]`` rows of a decoded ``log`` message, values decoded."""
    if "steps" in msg:
        return [
            [step, msgpack.unpackb(v, raw=False, strict_map_key=False)]
            for step, v in zip(msg["steps"], msg["values"], strict=True)
        ]
    return [decode_row(r) for r in msg["rows"]]


def decode_row(row: Any) -> Any:
    """``[step, values]`` with the values map decoded if it came as bytes."""
    if isinstance(row, list) and len(row) == 2 and isinstance(row[1], bytes):
        return [row[0], msgpack.unpackb(row[1], raw=False, strict_map_key=False)]
    return row


def encode_log(run: int, seq: int, steps: list[int], values: list[bytes]) -> bytes:
    """A ``log`` frame: ``steps`` and, for each, its values map packed on the
    caller's thread (``msgpack.packb(values)``).

    Columns, not rows: the sender frames a whole batch in one C call, holding
    the GIL only briefly, and the daemon checks all steps in a few C passes.
    """
    return encode({"op": "log", "run_no": run, "seq": seq, "steps": steps, "values": values})


def _uint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 1 << 8:
        return b"\xcc" + bytes((n,))
    if n < 1 << 16:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


_STEP_KEY = b"\xa5_step"


def step_row_parts(step: int, packed_map: bytes) -> tuple[bytes, bytes, bytes, memoryview]:
    """A stored row (a packed map) as the parts of that map with ``_step`` first.

    Lets the daemon answer a scan without decoding and re-encoding every row.
    """
    b0 = packed_map[0]
    if b0 & 0xF0 == 0x80:
        n, skip = b0 & 0x0F, 1
    elif b0 == 0xDE:
        n, skip = int.from_bytes(packed_map[1:3], "big"), 3
    elif b0 == 0xDF:
        n, skip = int.from_bytes(packed_map[1:5], "big"), 5
    else:
        raise ValueError("a stored row is not a msgpack map")
    return _map_header(n + 1), _STEP_KEY, _uint(step), memoryview(packed_map)[skip:]


def encode_rows_result(rid: Any, row_parts: list[Any], count: int, next_step: int | None) -> bytes:
    """``{"op": "ok", "rid": rid, "result": {"rows": [...], "next": next_step}}``
    from rows already encoded (see :func:`step_row_parts`)."""
    head: bytes = msgpack.packb({"op": "ok", "rid": rid}, use_bin_type=True)
    tail: bytes = msgpack.packb(next_step)
    payload = b"".join(
        [
            bytes((head[0] + 1,)),
            head[1:],
            b"\xa6result\x82\xa4rows",
            _array_header(count),
            *row_parts,
            b"\xa4next",
            tail,
        ]
    )
    if len(payload) > MAX_FRAME_SIZE:
        raise ProtocolError(
            "frame_too_large", f"reply of {len(payload)} bytes exceeds {MAX_FRAME_SIZE}"
        )
    return _HEADER.pack(len(payload)) + payload


class Decoder:
    """Incremental frame decoder: ``feed`` bytes, then drain ``next_message``.

    After a :class:`ProtocolError` the stream is out of sync and the decoder stays
    broken; the owner replies with an error and closes the connection.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = max_frame_size
        # (code, message), never the exception itself: its traceback would hold
        # the frames that saw it (the bad payload, and the connection that called
        # us, which holds this decoder), a cycle that kept up to two frames of the
        # maximum size alive per closed connection until the cyclic GC ran.
        self._broken: tuple[str, str] | None = None
        self.last_size = 0  # bytes of the frame next_message() returned last

    def feed(self, data: bytes) -> None:
        if self._broken is None:
            self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_message(self) -> Message | None:
        """The next complete message, or None when more bytes are needed."""
        if self._broken is not None:
            raise ProtocolError(*self._broken)
        avail = len(self._buf) - self._pos
        if avail < HEADER_SIZE:
            self._compact()
            return None
        (length,) = _HEADER.unpack_from(self._buf, self._pos)
        if length > self._max:
            # Refused from the header alone: nothing of it is buffered or awaited.
            self._break(
                "frame_too_large", f"frame of {length} bytes exceeds the maximum of {self._max}"
            )
        if avail < HEADER_SIZE + length:
            self._compact()
            return None
        start = self._pos + HEADER_SIZE
        payload = bytes(self._buf[start : start + length])
        self._pos = start + length
        self.last_size = HEADER_SIZE + length
        try:
            return _unpack(payload)
        except ProtocolError as exc:
            code, message = exc.code, exc.message
        del payload
        self._break(code, message)

    def _break(self, code: str, message: str) -> NoReturn:
        self._broken = (code, message)
        # The stream is out of sync for good: what is buffered is never read.
        self._buf = bytearray()
        self._pos = 0
        raise ProtocolError(code, message)

    def messages(self) -> list[Message]:
        out = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out

    def _compact(self) -> None:
        # Drop consumed bytes only when waiting for more, so a burst of small
        # frames is decoded without repeated copying.
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
