"""A raw-protocol writer for the client-crash tests: big batches of known size.

``python crash_raw.py SOCKET PROJECT RUN_ID ROWS PAD MODE [HALF_AT]``

Batch ``b`` (seq ``b + 1``) holds ROWS rows at steps ``b*ROWS .. b*ROWS+ROWS-1``,
each ``{"b": b, "j": j, "pad": "x" * PAD}``. Prints ``run N`` once the run
exists, then ``ack SEQ`` for every ack it reads (stdout is line-buffered
into a file the test reads).

MODE ``stream``: sends batch after batch without waiting, as fast as the
daemon takes them, until killed: a kill at a random moment lands mid-frame
most of the time. MODE ``half``: sends batches ``0 .. HALF_AT-1``, waits for
their acks, sends the first half of batch HALF_AT's frame, prints ``half``
and waits to be killed: mid-frame by construction.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
from typing import Any

from stepline import protocol


def replies(sock: socket.socket, dec: protocol.Decoder) -> list[dict[str, Any]]:
    data = sock.recv(65536)
    if not data:
        raise SystemExit("the daemon closed the connection")
    dec.feed(data)
    return dec.messages()


def main() -> int:
    path, project, run_id, rows_s, pad_s, mode, *rest = sys.argv[1:]
    rows, pad = int(rows_s), "x" * int(pad_s)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    dec = protocol.Decoder()
    sock.sendall(protocol.encode({"op": "hello", "client": f"raw-{os.getpid()}"}))
    sock.sendall(protocol.encode({"op": "init", "rid": 1, "project": project, "id": run_id}))
    got: list[dict[str, Any]] = []
    while len(got) < 2:
        got += replies(sock, dec)
    assert got[0]["op"] == "welcome" and got[1]["op"] == "ok", got
    run = got[1]["result"]["run_no"]
    print(f"run {run}", flush=True)

    def frame(b: int) -> bytes:
        batch = [[b * rows + j, {"b": b, "j": j, "pad": pad}] for j in range(rows)]
        return protocol.encode({"op": "log", "run_no": run, "seq": b + 1, "rows": batch})

    def report_acks() -> None:
        while True:
            for msg in replies(sock, dec):
                if msg["op"] == "ack":
                    print(f"ack {msg['seq']}", flush=True)
                else:
                    print(f"unexpected {msg!r}", flush=True)

    if mode == "stream":
        threading.Thread(target=report_acks, daemon=True).start()
        for b in itertools.count():
            sock.sendall(frame(b))
    elif mode == "half":
        half_at = int(rest[0])
        for b in range(half_at):
            sock.sendall(frame(b))
            acks: list[dict[str, Any]] = []
            while not acks:
                acks = replies(sock, dec)
            assert acks == [{"op": "ack", "run_no": run, "seq": b + 1}], acks
            print(f"ack {b + 1}", flush=True)
        whole = frame(half_at)
        sock.sendall(whole[: len(whole) // 2])
        print("half", flush=True)
        sys.stdin.read()  # until killed
    return 0


if __name__ == "__main__":
    sys.exit(main())
