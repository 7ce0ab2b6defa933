"""What the sender holds: queued entries, framed batches awaiting their ack,
and requests awaiting their reply. Plain data; the sender's lock guards it."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from stepline import protocol
from stepline.errors import Error
from stepline.spool import Ref

# A framed batch by (run_no, seq), oldest first: the order they were framed in.
Unacked = dict[tuple[int, int], "Out"]


@dataclass(eq=False, slots=True)
class Entry:
    run: int
    first: int  # tickets first..ticket are in this entry
    ticket: int
    steps: list[int] | None = None  # a log batch: steps and packed values ...
    values: list[bytes] | None = None
    nbytes: int = 0
    op: dict[str, Any] | None = None  # ... or a config/summary/metric/finish update

    def framed(self, seq: int) -> bytes:
        """This entry as the frame of its run's batch ``seq``."""
        if self.steps is not None:
            assert self.values is not None
            return protocol.encode_log(self.run, seq, self.steps, self.values)
        assert self.op is not None
        return protocol.encode({**self.op, "run_no": self.run, "seq": seq})


@dataclass(eq=False, slots=True)
class Out:
    """A framed batch awaiting its ack: in memory, or in the spool file."""

    first: int  # the first ticket it covers
    frame: bytes | None
    ref: Ref | None
    nbytes: int  # row bytes it holds in memory (0 once spooled)
    sent: bool = False


@dataclass(eq=False)
class Request:
    msg: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Error | None = None
    sent: bool = False
    # The last ticket queued before it: it is sent only after every batch up to
    # there (a fork goes after its parent's rows; a resend after theirs).
    after: int = 0


class ResendLater(Exception):
    """The daemon could not take a batch for a passing reason: reconnect, resend."""


def first_unsent(unacked: Unacked, unsent: int) -> int | None:
    """The first ticket of the oldest of the last ``unsent`` batches, if any."""
    if not unsent:
        return None
    oldest = next(itertools.islice(reversed(unacked.values()), unsent - 1, None))
    return oldest.first


def take_unsent(unacked: Unacked, unsent: int, send_bytes: int) -> list[Out]:
    """The last ``unsent`` batches, oldest first, up to about ``send_bytes``;
    marks them sent."""
    if not unsent:
        return []
    suffix = list(itertools.islice(reversed(unacked.values()), unsent))
    suffix.reverse()
    out: list[Out] = []
    size = 0
    for o in suffix:
        if out and size > send_bytes:
            break
        o.sent = True
        out.append(o)
        size += len(o.frame) if o.frame is not None else o.ref[1]  # type: ignore[index]
    return out
