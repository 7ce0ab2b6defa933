"""The wire protocol, without I/O: bytes in, messages out; messages in, bytes out.

A frame is a 4-byte big-endian length followed by one msgpack-encoded map. Every
map has an ``op`` key naming the message. The same module is used by the client
and the daemon, so neither side can drift from the other; tests feed it bytes one
at a time, which is where framing bugs hide.

Messages (client -> daemon); the daemon's op table (``stepline_daemon.ops``)
is the list it serves:
    hello    {client, version}
    status   {rid}
  writes, committed in order and synced before their reply:
    init     {rid, token?, project, id?, name?, tags?, config?, fork_from?,
              resume_from?, resume?}
    delete   {rid, token?, project, id, purge?, force?}
    purge    {rid, token?}
  batches, each with the run's number and the client's next seq for it:
    log      {run_no, seq, steps: [step, ...], values: [<packed {key: value}>, ...]}
             (or, from raw clients, rows: [[step, {key: value} or its bytes], ...])
    config   {run_no, seq, config}          merged into the run's config
    summary  {run_no, seq, summary}         explicit summary values (they win)
    metric   {run_no, seq, name, summary}   define_metric
    finish   {run_no, seq, exit_code, dropped?}
  reads; a run is named by {project, id}, or a timeline by {project, run_no}:
    projects      {rid}                     each project: name, runs, updated
    runs          {rid, project}            each run id's current timeline
    project_runs  {rid, project}            the same; an unknown project is an error
    tree          {rid, project}            every timeline, with parent pointers
    info          {rid, run, full?}         one timeline; full adds config and lineage
    state         {rid, run}                what a live view polls
    keys          {rid, run, include_parent?}
    scan, page    {rid, run, keys?, match?, min_step?, max_step?, limit?,
                   include_parent?, stream?} exact rows, a page at a time
    history       {rid, run, keys?, match?, min_step?, max_step?, samples?,
                   include_parent?}         a downsample, first and last rows kept
  admin:
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
    ack      {run_no, seq}                 the batch is committed and synced
    error    {code, message, rid?, run_no?, seq?}
"""

from __future__ import annotations

import os
import struct
from typing import Any, NoReturn

import msgpack

from stepline.errors import ProtocolError

# 2: the run number is ``run_no`` in every message (it was ``run`` in batches,
# acks and errors). The daemon turns away a client that says it speaks another.
PROTOCOL_VERSION = 2

# Largest frame either side accepts. A batch of a few thousand rows of ordinary
# metrics is well under a megabyte; 16 MiB leaves room for big config blobs while
# keeping one hostile length prefix from making a peer allocate gigabytes.
MAX_FRAME_SIZE = 16 * 1024 * 1024

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size

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
    return HEADER.pack(len(payload)) + payload


def encode_log(run: int, seq: int, steps: list[int], values: list[bytes]) -> bytes:
    """A ``log`` frame: ``steps`` and, for each, its values map packed on the
    caller's thread (``msgpack.packb(values)``).

    Columns, not rows: the sender frames a whole batch in one C call, holding
    the GIL only briefly, and the daemon checks all steps in a few C passes.
    """
    return encode({"op": "log", "run_no": run, "seq": seq, "steps": steps, "values": values})


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
        (length,) = HEADER.unpack_from(self._buf, self._pos)
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
