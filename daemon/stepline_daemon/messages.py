"""Write requests as small validated values, decoded from the wire's maps.

Every check that needs no store happens here, on the event loop, in the order
the daemon has always reported problems in; what needs the store (does the run
exist, may it be written) is the store's. No handler past this point reads a
raw request map.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from stepline import protocol
from stepline.errors import InvalidFork, InvalidResume, RequestError
from stepline.rows import STEP_MAX, plain_value_problem
from stepline_daemon import summary
from stepline_daemon.batches import Checked
from stepline_daemon.names import check_project, check_run_id


@dataclass(frozen=True)
class Token:
    """A request's idempotency token, and what the request asked for."""

    key: bytes
    fingerprint: bytes


@dataclass(frozen=True)
class Ref:
    run_id: str
    step: int


@dataclass(frozen=True)
class Origin:
    """The remote timeline a new local one continues, as the cluster store holds
    it (``cluster.heads``): ``init`` of a run this node lacks."""

    timeline: int  # its cluster timeline
    step: int  # the step the local timeline branches at (its view up to here)
    last_step: int  # the remote view's last step (a branch must not pass it)
    node: str
    cluster: str  # the cluster store's address (no password)
    root: int  # the root timeline of its fork tree: the sharding key
    record: dict[str, Any] = field(default_factory=dict)  # the remote record
    stats: summary.Stats = field(default_factory=dict)  # of its view up to ``step``

    def pointer(self) -> dict[str, Any]:
        """What the local record keeps: the parent pointer into the cluster."""
        return {
            "timeline": self.timeline,
            "step": self.step,
            "node": self.node,
            "cluster": self.cluster,
            "root": self.root,
        }


@dataclass(frozen=True)
class Init:
    project: str
    run_id: str | None
    config: dict[str, Any]
    name: str | None
    tags: list[str]
    resume: str | None
    peer: dict[str, Any] | None
    fork_from: Ref | None = None
    resume_from: Ref | None = None
    origin: Origin | None = None  # set when the run continues one in the cluster


@dataclass(frozen=True)
class Delete:
    project: str
    run_id: str
    purge: bool
    force: bool


@dataclass(frozen=True)
class Purge:
    """Remove the rows of every deleted timeline no live one reads."""


@dataclass(frozen=True)
class Batch:
    """What every batch has: the run it writes and its place in the client's order."""

    run_no: int
    seq: int


@dataclass(frozen=True)
class Log(Batch):
    rows: Checked = field(default=([], None, None))


@dataclass(frozen=True)
class SetConfig(Batch):
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetSummary(Batch):
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DefineMetric(Batch):
    name: str = ""
    mode: str = ""


@dataclass(frozen=True)
class Finish(Batch):
    exit_code: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class Disconnect:
    """The connection that wrote ``run_no`` went away without ``finish``."""

    run_no: int


@dataclass(frozen=True)
class Barrier:
    """Answered once everything queued before it is committed (shutdown)."""


@dataclass(frozen=True)
class Cursor:
    """The cluster acknowledged every change through entry ``seq`` (the shipper)."""

    seq: int
    logged: int


Write = Init | Delete | Purge | Batch | Disconnect | Barrier | Cursor


def plain_map(value: Any, what: str) -> dict[str, Any]:
    """A str-keyed map of plain data (nil is an empty map)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise RequestError(f"{what} must be a map with string keys")
    why = plain_value_problem(value)
    if why is not None:
        raise RequestError(f"{what}: {why}")
    return value


def token_of(msg: dict[str, Any]) -> Token | None:
    """The token of a request that changes something (``init``, ``delete``,
    ``purge``), read before the rest of it: see ``writer``."""
    token = msg.get("token")
    if token is None:
        return None
    if not isinstance(token, str) or not 0 < len(token) <= protocol.MAX_TOKEN:
        raise RequestError(f"token must be a 1-{protocol.MAX_TOKEN} character string")
    # What was asked, the same in every attempt (a resend is the same message,
    # re-encoded; only its rid changes).
    asked = {k: v for k, v in msg.items() if k not in ("rid", "token", "peer")}
    fingerprint = hashlib.blake2b(msgpack.packb(asked, use_bin_type=True), digest_size=16)
    return Token(token.encode("utf-8", "surrogatepass"), fingerprint.digest())


def _ref(ref: Any, what: str) -> Ref:
    if (
        not isinstance(ref, (list, tuple))
        or len(ref) != 2
        or not isinstance(ref[0], str)
        or type(ref[1]) is not int
    ):
        raise RequestError(f"{what} must be [run_id, step], got {ref!r}")
    run_id = check_run_id(ref[0])
    if not 0 <= ref[1] <= STEP_MAX:
        raise RequestError(f"{what} step {ref[1]} is not in [0, 2**63)")
    return Ref(run_id, ref[1])


def parse_init(msg: dict[str, Any]) -> Init:
    project = check_project(msg.get("project"))
    run_id = msg.get("id")
    if run_id is not None:
        check_run_id(run_id)
    config = plain_map(msg.get("config"), "config")
    name = msg.get("name")
    if name is not None and not isinstance(name, str):
        raise RequestError("name must be a string")
    tags = msg.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RequestError("tags must be a list of strings")
    resume = msg.get("resume")
    if resume not in (None, "allow", "must", "never"):
        raise RequestError(f"resume must be 'allow', 'must' or 'never', got {resume!r}")
    # Who asked, as the kernel saw it (SO_PEERCRED), set by the server.
    peer = plain_map(msg.get("peer"), "peer") or None
    init = Init(project, run_id, config, name, tags, resume, peer)
    return _branching(init, msg)


def _branching(init: Init, msg: dict[str, Any]) -> Init:
    """``fork_from`` or ``resume_from``, checked as far as the store is not needed."""
    fork_from, resume_from = msg.get("fork_from"), msg.get("resume_from")
    if fork_from is not None:
        if init.resume is not None or resume_from is not None:
            raise InvalidFork("fork_from cannot be combined with resume or resume_from")
        return _replace(init, fork_from=_ref(fork_from, "fork_from"))
    if resume_from is not None:
        if init.resume is not None:
            raise InvalidResume("resume_from cannot be combined with resume")
        ref = _ref(resume_from, "resume_from")
        if init.run_id is not None and init.run_id != ref.run_id:
            raise InvalidResume(
                f"resume_from names run {ref.run_id!r} but id is {init.run_id!r}; a rewind keeps "
                "the run's id (use fork_from to branch into a new run)"
            )
        return _replace(init, resume_from=ref)
    return init


def _replace(init: Init, **changes: Any) -> Init:
    return dataclasses.replace(init, **changes)


def parse_delete(msg: dict[str, Any]) -> Delete:
    project = check_project(msg.get("project"))
    return Delete(
        project, check_run_id(msg.get("id")), bool(msg.get("purge")), bool(msg.get("force"))
    )


def parse_purge(msg: dict[str, Any]) -> Purge:
    return Purge()


def batch_header(op: str, msg: dict[str, Any]) -> tuple[int, int]:
    """A batch's run and seq, which even a refused batch must have."""
    run_no, seq = msg.get("run_no"), msg.get("seq")
    if type(run_no) is not int or not 0 <= run_no < 1 << 64:
        raise RequestError(f"{op}: run_no must be a non-negative 64-bit integer")
    # Seqs start at 1: a 0 would read as a resend and be acked unstored.
    if type(seq) is not int or not 1 <= seq < 1 << 64:
        raise RequestError(f"{op}: seq must be an integer in [1, 2**64)")
    return run_no, seq


def parse_config(run_no: int, seq: int, msg: dict[str, Any]) -> SetConfig:
    return SetConfig(run_no, seq, plain_map(msg.get("config"), "config"))


def parse_summary(run_no: int, seq: int, msg: dict[str, Any]) -> SetSummary:
    return SetSummary(run_no, seq, plain_map(msg.get("summary"), "summary"))


def parse_metric(run_no: int, seq: int, msg: dict[str, Any]) -> DefineMetric:
    name, mode = msg.get("name"), msg.get("summary")
    if not isinstance(name, str) or not name:
        raise RequestError("define_metric: name must be a non-empty string")
    if type(mode) is not str or mode not in summary.MODES:
        raise RequestError(f"define_metric: summary must be one of {sorted(summary.MODES)}")
    return DefineMetric(run_no, seq, name, mode)


def parse_finish(run_no: int, seq: int, msg: dict[str, Any]) -> Finish:
    code = msg.get("exit_code", 0)
    dropped = msg.get("dropped", 0)
    if type(code) is not int or type(dropped) is not int:
        raise RequestError("finish: exit_code and dropped must be integers")
    if not -(2**31) <= code < 2**31 or not 0 <= dropped < 2**32:
        raise RequestError("finish: exit_code must fit 32 bits and dropped be in [0, 2**32)")
    return Finish(run_no, seq, code, dropped)
