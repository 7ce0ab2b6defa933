"""The sans-IO frame codec, fed the way a socket feeds it: whole, byte by byte,
with the next frame's first bytes attached, and many frames at once."""

from __future__ import annotations

import gc
import itertools
import math
import struct
import weakref
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepline.errors import ProtocolError
from stepline.protocol import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    Decoder,
    Message,
    encode,
    encode_log,
)
from tests import wire

NAN = float("nan")
INF = float("inf")

# One example of every message in the protocol.py docstring, optional fields
# included, with the kinds of values each really carries.
MESSAGES: dict[str, Message] = {
    "hello": {"op": "hello", "client": "c0ffee-1234", "version": 1},
    "init": {
        "op": "init",
        "rid": 7,
        "project": "proj",
        "id": "run-1",
        "name": "baseline",
        "config": {"lr": 0.001, "layers": [64, 64], "opt": {"name": "adam", "beta": 0.9}},
        "fork_from": "run-0?_step=10",
        "resume_from": None,
        "resume": "allow",
    },
    "init_minimal": {"op": "init", "rid": 1, "project": "p"},
    "log": {
        "op": "log",
        "run_no": 3,
        "seq": 41,
        "rows": [[0, {"loss": 1.5, "acc": 0.25}], [1, {"loss": NAN, "ok": True, "tag": None}]],
    },
    "config": {"op": "config", "run_no": 3, "seq": 42, "config": {"batch": 32, "name": "x"}},
    "summary": {"op": "summary", "run_no": 3, "seq": 43, "summary": {"best": 0.9, "inf": -INF}},
    "metric": {"op": "metric", "run_no": 3, "seq": 44, "name": "loss", "summary": "min"},
    "finish": {"op": "finish", "run_no": 3, "seq": 45, "exit_code": 0},
    "runs": {"op": "runs", "rid": 8, "project": "proj"},
    "info": {"op": "info", "rid": 9, "project": "proj", "id": "run-1"},
    "scan": {
        "op": "scan",
        "rid": 10,
        "project": "proj",
        "id": "run-1",
        "keys": ["loss", "acc"],
        "min_step": 0,
        "max_step": 2**63 - 1,
        "limit": 1000,
        "include_parent": True,
    },
    "scan_minimal": {
        "op": "scan",
        "rid": 11,
        "project": "proj",
        "id": "run-1",
        "min_step": 5,
        "limit": 10,
        "include_parent": False,
    },
    "history": {
        "op": "history",
        "rid": 12,
        "project": "proj",
        "id": "run-1",
        "keys": None,
        "min_step": 0,
        "max_step": 100,
        "samples": 500,
        "include_parent": True,
    },
    "welcome": {"op": "welcome", "version": 1, "server": "stepline 0.1.0"},
    "ok": {"op": "ok", "rid": 7, "result": {"run_no": 3, "id": "run-1", "start_step": 11}},
    "ack": {"op": "ack", "run_no": 3, "seq": 41},
    "error": {
        "op": "error",
        "code": "step_order",
        "message": "step 3 does not follow step 5",
        "rid": None,
        "run_no": 3,
        "seq": 41,
    },
    "error_minimal": {"op": "error", "code": "bad_frame", "message": "nope"},
}


def test_every_documented_op_has_an_example() -> None:
    documented = {
        "hello", "init", "log", "config", "summary", "metric", "finish", "runs",
        "info", "scan", "history", "welcome", "ok", "ack", "error",
    }  # fmt: skip
    assert {m["op"] for m in MESSAGES.values()} == documented


def same(a: Any, b: Any) -> bool:
    """Structural equality that is strict about types and compares floats bit for bit
    (so NaN equals itself and -0.0 differs from 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_same_helper_is_not_vacuous() -> None:
    assert same({"a": [1, NAN]}, {"a": [1, NAN]})
    assert not same(1, True)
    assert not same(0.0, -0.0)
    assert not same({"a": 1}, {"a": 2})
    assert not same([1, 2], [1])
    assert not same({"a": 1}, {"b": 1})


def norm(msg: Message) -> Message:
    """A decoded ``log`` message in row form, values decoded (``wire.log_rows``)."""
    if msg.get("op") == "log" and "steps" in msg:
        out = {k: v for k, v in msg.items() if k not in ("steps", "values")}
        out["rows"] = wire.log_rows(msg)
        return out
    return msg


def log_frame(run: int, seq: int, rows: list[tuple[int, dict[str, Any]]]) -> bytes:
    """The frame the client's sender makes for these rows."""
    return encode_log(run, seq, [s for s, _ in rows], [msgpack.packb(v) for _, v in rows])


def drain_bytewise(data: bytes) -> list[Message]:
    dec = Decoder()
    out: list[Message] = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        out.extend(dec.messages())
    assert dec.buffered == 0
    return out


ALL = pytest.mark.parametrize("name", sorted(MESSAGES))


@ALL
def test_round_trip_fed_whole(name: str) -> None:
    msg = MESSAGES[name]
    frame = encode(msg)
    assert struct.unpack(">I", frame[:HEADER_SIZE])[0] == len(frame) - HEADER_SIZE
    dec = Decoder()
    dec.feed(frame)
    got = dec.messages()
    assert len(got) == 1
    assert same(got[0], msg)
    assert dec.buffered == 0
    assert dec.next_message() is None


@ALL
def test_round_trip_fed_byte_by_byte(name: str) -> None:
    msg = MESSAGES[name]
    frame = encode(msg)
    dec = Decoder()
    for i, b in enumerate(frame[:-1]):
        dec.feed(bytes((b,)))
        assert dec.next_message() is None, f"a message appeared after {i + 1} bytes"
        assert dec.buffered == i + 1
    dec.feed(frame[-1:])
    got = dec.next_message()
    assert got is not None
    assert same(got, msg)
    assert dec.next_message() is None
    assert dec.buffered == 0


@ALL
def test_round_trip_with_trailing_partial_frame(name: str) -> None:
    msg = MESSAGES[name]
    nxt = MESSAGES["ack"] if name != "ack" else MESSAGES["hello"]
    frame, frame2 = encode(msg), encode(nxt)
    # Cut the next frame inside its header, at its end, and inside its body.
    for cut in (1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, len(frame2) - 1):
        dec = Decoder()
        dec.feed(frame + frame2[:cut])
        got = dec.messages()
        assert len(got) == 1
        assert same(got[0], msg)
        assert dec.buffered == cut, "the partial next frame must stay buffered"
        assert dec.next_message() is None
        dec.feed(frame2[cut:])
        got2 = dec.messages()
        assert len(got2) == 1
        assert same(got2[0], nxt)
        assert dec.buffered == 0


def test_all_frames_concatenated_in_one_feed() -> None:
    msgs = [MESSAGES[k] for k in sorted(MESSAGES)] * 3
    blob = b"".join(encode(m) for m in msgs)
    dec = Decoder()
    dec.feed(blob)
    got = dec.messages()
    assert len(got) == len(msgs)
    assert all(same(g, m) for g, m in zip(got, msgs, strict=True))
    assert dec.buffered == 0


def test_all_frames_concatenated_fed_byte_by_byte() -> None:
    msgs = [MESSAGES[k] for k in sorted(MESSAGES)]
    got = drain_bytewise(b"".join(encode(m) for m in msgs))
    assert len(got) == len(msgs)
    assert all(same(g, m) for g, m in zip(got, msgs, strict=True))


def test_next_message_one_at_a_time_from_a_burst() -> None:
    msgs = [{"op": "ack", "run_no": 1, "seq": i} for i in range(50)]
    dec = Decoder()
    dec.feed(b"".join(encode(m) for m in msgs))
    for m in msgs:
        assert dec.next_message() == m
    assert dec.next_message() is None
    assert dec.buffered == 0


def test_empty_decoder_and_empty_feed() -> None:
    dec = Decoder()
    assert dec.next_message() is None
    dec.feed(b"")
    assert dec.messages() == []
    assert dec.buffered == 0


# ------------------------------------------------------------------ log frames


def _tiny_rows(n: int) -> list[tuple[int, dict[str, Any]]]:
    return [(i, {"x": i}) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 65535, 65536])
def test_encode_log_array_header_boundaries(n: int) -> None:
    rows = _tiny_rows(n)
    frame = log_frame(5, 99, rows)
    dec = Decoder()
    dec.feed(frame)
    got = dec.messages()
    assert len(got) == 1
    want = {"op": "log", "run_no": 5, "seq": 99, "rows": [[s, v] for s, v in rows]}
    assert norm(got[0]) == want
    assert list(got[0]) == ["op", "run_no", "seq", "steps", "values"]
    assert dec.buffered == 0
    # Independent of Decoder: the payload is exactly one msgpack value.
    assert norm(msgpack.unpackb(frame[HEADER_SIZE:], raw=False)) == want


def test_encode_log_matches_encode_byte_for_byte() -> None:
    rows = [(0, {"a": 1.0}), (1, {"b": "s", "c": None}), (7, {"d": True})]
    framed = log_frame(2, 3, rows)
    plain = encode(
        {
            "op": "log",
            "run_no": 2,
            "seq": 3,
            "steps": [s for s, _ in rows],
            "values": [msgpack.packb(v) for _, v in rows],
        }
    )
    assert framed == plain


def test_encode_log_with_big_run_and_seq() -> None:
    run, seq = 2**64 - 1, 2**63
    frame = log_frame(run, seq, [(2**63 - 1, {"v": -(2**63)})])
    assert [norm(m) for m in drain_bytewise(frame)] == [
        {"op": "log", "run_no": run, "seq": seq, "rows": [[2**63 - 1, {"v": -(2**63)}]]}
    ]


def test_encode_log_fed_byte_by_byte_with_next_frame() -> None:
    rows = _tiny_rows(20)
    frame = log_frame(1, 2, rows)
    got = [norm(m) for m in drain_bytewise(frame + encode(MESSAGES["ack"]))]
    assert got == [
        {"op": "log", "run_no": 1, "seq": 2, "rows": [[s, v] for s, v in rows]},
        MESSAGES["ack"],
    ]


def test_encode_log_over_maximum_raises() -> None:
    with pytest.raises(ProtocolError) as ei:
        log_frame(1, 1, [(0, {"s": "a" * MAX_FRAME_SIZE})])
    assert ei.value.code == "frame_too_large"


# ------------------------------------------------------------- special floats


@pytest.mark.parametrize("value", [NAN, INF, -INF, -0.0, 5e-324, 1.7976931348623157e308])
def test_special_floats_round_trip_exactly(value: float) -> None:
    bits = struct.pack(">d", value)
    msg = {"op": "summary", "run_no": 1, "seq": 1, "summary": {"v": value, "l": [value]}}
    (got,) = drain_bytewise(encode(msg))
    for v in (got["summary"]["v"], got["summary"]["l"][0]):
        assert type(v) is float
        assert struct.pack(">d", v) == bits
    (logged,) = map(norm, drain_bytewise(log_frame(1, 1, [(3, {"v": value})])))
    assert struct.pack(">d", logged["rows"][0][1]["v"]) == bits


def test_nan_and_infinities_keep_their_meaning() -> None:
    msg = {"op": "log", "run_no": 1, "seq": 1, "rows": [[0, {"n": NAN, "p": INF, "m": -INF}]]}
    (got,) = drain_bytewise(encode(msg))
    vals = got["rows"][0][1]
    assert math.isnan(vals["n"])
    assert math.isinf(vals["p"]) and vals["p"] > 0
    assert math.isinf(vals["m"]) and vals["m"] < 0


def test_nan_payload_bits_survive() -> None:
    # A NaN with a non-default payload and the sign bit set.
    weird = struct.unpack(">d", b"\xff\xf8\x00\x00\xde\xad\xbe\xef")[0]
    assert math.isnan(weird)
    (got,) = drain_bytewise(encode({"op": "x", "v": weird}))
    assert struct.pack(">d", got["v"]) == b"\xff\xf8\x00\x00\xde\xad\xbe\xef"


# ---------------------------------------------------------- oversized frames


def _header(length: int) -> bytes:
    return struct.pack(">I", length)


def test_length_above_max_raises_as_soon_as_header_is_seen() -> None:
    dec = Decoder()
    dec.feed(_header(MAX_FRAME_SIZE + 1)[:-1])
    assert dec.next_message() is None  # an incomplete header is not judged yet
    dec.feed(_header(MAX_FRAME_SIZE + 1)[-1:])
    with pytest.raises(ProtocolError) as ei:
        dec.next_message()
    assert ei.value.code == "frame_too_large"


def test_huge_length_prefix_raises_without_body() -> None:
    dec = Decoder()
    dec.feed(b"\xff\xff\xff\xff")
    with pytest.raises(ProtocolError) as ei:
        dec.messages()
    assert ei.value.code == "frame_too_large"


def test_small_max_frame_size_boundary() -> None:
    msg = {"op": "x", "s": "abc"}
    frame = encode(msg)
    size = len(frame) - HEADER_SIZE
    ok = Decoder(max_frame_size=size)
    ok.feed(frame)
    assert ok.messages() == [msg]

    dec = Decoder(max_frame_size=size - 1)
    dec.feed(frame[:HEADER_SIZE])  # the header alone is enough to refuse
    with pytest.raises(ProtocolError) as ei:
        dec.next_message()
    assert ei.value.code == "frame_too_large"


def test_oversized_frame_after_good_frames() -> None:
    dec = Decoder(max_frame_size=64)
    good = encode({"op": "ack", "run_no": 1, "seq": 1})
    dec.feed(good + _header(65) + b"\x00" * 10)
    assert dec.next_message() == {"op": "ack", "run_no": 1, "seq": 1}
    with pytest.raises(ProtocolError) as ei:
        dec.next_message()
    assert ei.value.code == "frame_too_large"


def test_decoder_stays_broken_after_frame_too_large() -> None:
    dec = Decoder(max_frame_size=16)
    dec.feed(_header(17))
    with pytest.raises(ProtocolError) as first:
        dec.next_message()
    assert first.value.code == "frame_too_large"
    # Even perfectly good bytes afterwards do not resynchronise the stream.
    dec.feed(b"\x00" * 17 + encode({"op": "ack"}))
    for _ in range(3):
        with pytest.raises(ProtocolError) as again:
            dec.next_message()
        assert again.value.code == "frame_too_large"
    with pytest.raises(ProtocolError):
        dec.messages()


class _Owner:
    """Stands for the daemon's connection: it owns a decoder and catches its errors."""

    def __init__(self) -> None:
        self.decoder = Decoder(max_frame_size=1 << 20)
        self.errors = 0

    def drain(self) -> None:
        try:
            self.decoder.next_message()
        except ProtocolError:
            self.errors += 1


@pytest.mark.parametrize("bad", ["bad_frame", "frame_too_large", "cut_short"])
def test_a_broken_decoder_keeps_no_cycle_alive(bad: str) -> None:
    """A decoder's stored error once held its traceback, and through it the
    frames that saw it: the bad payload and the connection owning the decoder.
    Only the cyclic GC freed them; the daemon's heap grew by frames of the
    maximum size until it ran (gauntlet: test_truncated_frames_...)."""
    owner = _Owner()
    payload = b"\xc1" * (1 << 20)
    if bad == "bad_frame":
        owner.decoder.feed(_frame(payload))
    elif bad == "frame_too_large":
        owner.decoder.feed(_header((1 << 20) + 1) + payload)
    else:
        owner.decoder.feed(_header(1 << 20) + payload[:1000])
    owner.drain()
    owner.drain()  # raised again from the stored error
    assert owner.errors == (0 if bad == "cut_short" else 2)
    if bad != "cut_short":
        assert owner.decoder.buffered == 0  # out of sync for good: nothing kept
    gone = weakref.ref(owner)
    gc.disable()
    try:
        del owner
        assert gone() is None, "the decoder's error keeps its owner alive"
    finally:
        gc.enable()


def test_encode_over_maximum_raises() -> None:
    with pytest.raises(ProtocolError) as ei:
        encode({"op": "config", "run_no": 1, "seq": 1, "config": {"blob": "a" * MAX_FRAME_SIZE}})
    assert ei.value.code == "frame_too_large"


def test_encode_exactly_at_maximum_is_accepted() -> None:
    base = len(msgpack.packb({"op": "x", "s": ""}, use_bin_type=True))
    # An empty str is a 1-byte fixstr; a long one has a 5-byte str32 header.
    fill = MAX_FRAME_SIZE - (base - 1 + 5)
    frame = encode({"op": "x", "s": "a" * fill})
    assert len(frame) == HEADER_SIZE + MAX_FRAME_SIZE
    dec = Decoder()
    dec.feed(frame)
    (got,) = dec.messages()
    assert len(got["s"]) == fill
    with pytest.raises(ProtocolError) as ei:
        encode({"op": "x", "s": "a" * (fill + 1)})
    assert ei.value.code == "frame_too_large"


# ----------------------------------------------------------- malformed frames


def _frame(payload: bytes) -> bytes:
    return _header(len(payload)) + payload


BAD_PAYLOADS = {
    "empty": b"",
    "reserved_byte": b"\xc1",
    "truncated_map": b"\x82\xa2op\xa3log",
    "trailing_garbage": msgpack.packb({"op": "x"}) + b"\x01",
    "invalid_utf8_str": b"\x81\xa2op\xa2\xff\xfe",
    "not_a_map_int": msgpack.packb(5),
    "not_a_map_list": msgpack.packb(["op", "log"]),
    "not_a_map_str": msgpack.packb("op"),
    "not_a_map_nil": msgpack.packb(None),
    "map_without_op": msgpack.packb({"run_no": 1, "seq": 2}),
    "empty_map": msgpack.packb({}),
    "op_is_int": msgpack.packb({"op": 1}),
    "op_is_nil": msgpack.packb({"op": None}),
    "op_is_bytes": msgpack.packb({"op": b"log"}, use_bin_type=True),
    "op_is_list": msgpack.packb({"op": ["log"]}),
}


@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_malformed_frame_is_bad_frame(name: str) -> None:
    payload = BAD_PAYLOADS[name]
    dec = Decoder()
    dec.feed(_frame(payload))
    with pytest.raises(ProtocolError) as ei:
        dec.next_message()
    assert ei.value.code == "bad_frame"
    # Broken for good: good frames after it are never decoded.
    dec.feed(encode({"op": "ack"}))
    with pytest.raises(ProtocolError) as again:
        dec.next_message()
    assert again.value.code == "bad_frame"


@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_malformed_frame_byte_by_byte_after_a_good_one(name: str) -> None:
    data = encode({"op": "ack", "run_no": 1, "seq": 1}) + _frame(BAD_PAYLOADS[name])
    dec = Decoder()
    got: list[Message] = []
    with pytest.raises(ProtocolError) as ei:
        for i in range(len(data)):
            dec.feed(data[i : i + 1])
            got.extend(dec.messages())
    assert ei.value.code == "bad_frame"
    assert got == [{"op": "ack", "run_no": 1, "seq": 1}]
    assert i == len(data) - 1, "the bad frame must be judged only once complete"


# --------------------------------------------------------------- properties

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
_messages = st.builds(
    lambda op, body: {**body, "op": op},
    st.text(max_size=10),
    st.dictionaries(st.text(max_size=8), _values, max_size=6),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(_messages, max_size=8), data=st.data())
def test_random_messages_random_chunks(msgs: list[Message], data: st.DataObject) -> None:
    blob = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=12), label="cuts"))
    bounds = [0, *cuts, len(blob)]
    dec = Decoder()
    got: list[Message] = []
    for lo, hi in itertools.pairwise(bounds):
        dec.feed(blob[lo:hi])
        got.extend(dec.messages())
    assert len(got) == len(msgs)
    for g, m in zip(got, msgs, strict=True):
        assert same(g, m), (g, m)
    assert dec.buffered == 0


@settings(deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 2**63 - 1),
            st.dictionaries(st.text(min_size=1, max_size=8), _scalars, max_size=4),
        ),
        max_size=40,
    ),
    run=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**64 - 1),
)
def test_encode_log_property(rows: list[tuple[int, dict[str, Any]]], run: int, seq: int) -> None:
    frame = log_frame(run, seq, rows)
    (got,) = drain_bytewise(frame)
    want = {"op": "log", "run_no": run, "seq": seq, "rows": [[s, v] for s, v in rows]}
    assert same(norm(got), want)
