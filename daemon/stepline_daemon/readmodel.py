"""The read interface every front end goes through, whatever store is behind it.

Socket ops, HTTP routes, ``stepline.Api`` and the CLI all ask a
:class:`ReadModel`; the node's LMDB store implements it (``store.reads``), and
a cluster store implements the same methods. Parameters are checked here, once,
so a bad request is a :class:`RequestError` naming the parameter whichever
front end it came through.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from stepline.errors import RequestError
from stepline.rows import STEP_MAX
from stepline_daemon import describe
from stepline_daemon.describe import Record
from stepline_daemon.names import check_project

# One page is bounded so a single request cannot build an unbounded reply.
MAX_PAGE = 100_000
MAX_SAMPLES = 100_000
# A page ends early past this many bytes of stored rows, well inside the
# protocol's frame limit (JSON-ish overhead on top of msgpack is small).
MAX_PAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RunRef:
    """A run by id (its current timeline), or a timeline by ``run_no``: the
    only way to reach one a rewind archived, which no id names any more."""

    project: Any
    run_id: Any = None
    run_no: int | None = None


@dataclass(frozen=True)
class RowQuery:
    """Which rows of a run's view: ``[min_step, max_step)``, at most ``limit``.

    ``keys``: only rows holding all of them (W&B's rule), or any of them with
    ``require_all`` False (charts, CSV); only those keys, and ``_step``.
    """

    keys: list[str] | None = None
    min_step: int = 0
    max_step: int | None = None
    limit: int = 1000
    include_parent: bool = True
    require_all: bool = True


def select_values(
    values: dict[str, Any], step: int, keys: list[str] | None, require_all: bool = True
) -> dict[str, Any] | None:
    """A stored row (``values`` at ``step``) as users see it, or None when it
    does not qualify for ``keys`` (see :class:`RowQuery`): every store's rule.

    With ``require_all`` (W&B's rule for keyed history) a row must hold every
    key; otherwise (charts) any one of them.
    """
    if keys is None:
        row = {"_step": step}
        row.update(values)  # a row stored with its own _step keeps it
        return row
    out: dict[str, Any] = {"_step": step}
    wanted = found = 0
    for k in keys:
        if k == "_step":
            continue
        wanted += 1
        if k in values:
            out[k] = values[k]
            found += 1
        elif require_all:
            return None
    return out if found or not wanted else None


@dataclass
class Rows:
    """A page of rows, and where the next page starts (None: the last page).

    Whole rows stay as stored (``packed``: (key, msgpack map) pairs, the key's
    last 8 bytes the big-endian step) so a socket reply splices them untouched;
    ``dicts`` decodes them for JSON and CSV. A store may hand over ``decode``
    instead: what makes the rows, called once, where they are used.
    """

    packed: list[tuple[bytes, bytes]] | None = None
    decoded: list[dict[str, Any]] | None = None
    decode: Callable[[], list[dict[str, Any]]] | None = None
    next: int | None = None
    # False for a sample: one whole answer, with no next page.
    paged: bool = True

    def dicts(self) -> list[dict[str, Any]]:
        if self.decoded is None and self.decode is not None:
            self.decoded = self.decode()
        if self.decoded is None:
            unpack = msgpack.unpackb
            self.decoded = [
                {"_step": int.from_bytes(k[8:], "big"), **unpack(v)} for k, v in self.packed or ()
            ]
        return self.decoded

    def plain(self) -> dict[str, Any]:
        """As a client decodes the reply: ``{"rows": [...], "next": step | None}``."""
        if not self.paged:
            return {"rows": self.dicts()}
        return {"rows": self.dicts(), "next": self.next}


class ReadModel(abc.ABC):
    """Every read a front end can make. Implementations raise ``RunNotFound``
    for what does not exist and ``RequestError`` for what cannot be asked."""

    @abc.abstractmethod
    def require(self, ref: RunRef) -> RunRef:
        """``ref``, once it is known to name a readable timeline; else RunNotFound
        (or RequestError for a malformed project or id)."""

    @abc.abstractmethod
    def projects(self) -> list[dict[str, Any]]:
        """Each project's name, run count and latest update, in name order."""

    @abc.abstractmethod
    def runs(self, project: str, must_exist: bool = False) -> list[dict[str, Any]]:
        """Each run id's current timeline, described (no lineage)."""

    @abc.abstractmethod
    def target(self, ref: RunRef) -> Record:
        """The record of the timeline a read names; else RunNotFound."""

    @abc.abstractmethod
    def describe(self, rec: Record, full: bool = False) -> dict[str, Any]:
        """A timeline as readers see it (``describe.describe`` over the store's records)."""

    def info(self, ref: RunRef, full: bool = True) -> dict[str, Any]:
        """One timeline described; ``full`` adds config, lineage, children and
        archived timelines (each a walk of the fork forest)."""
        return self.describe(self.target(ref), full)

    def state(self, ref: RunRef) -> dict[str, Any]:
        """What a live view polls: cheap, no summary or lineage."""
        return describe.state(self.target(ref))

    def keys(self, ref: RunRef, include_parent: bool = True) -> list[str]:
        """Every key a run's view holds: user keys in name order, then ``_`` ones."""
        return describe.keys(self.target(ref), include_parent)

    @abc.abstractmethod
    def tree(self, project: str) -> list[dict[str, Any]]:
        """Every timeline of a project with its parent pointer: the fork forest."""

    @abc.abstractmethod
    def rows(self, ref: RunRef, query: RowQuery) -> Rows:
        """One page of exact, fork-resolved history."""

    @abc.abstractmethod
    def sample(self, ref: RunRef, query: RowQuery, samples: int) -> Rows:
        """At most ``samples`` rows, always the first and the last: evenly
        spaced without keys, per bucket the extremes of each key with them."""


# ------------------------------------------------------------ parameters


def integer(msg: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = msg.get(name)
    if value is None:  # absent, or nil: the default
        return default
    if type(value) is not int or not lo <= value <= hi:
        raise RequestError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def key_list(msg: dict[str, Any]) -> list[str] | None:
    keys = msg.get("keys")
    if keys is None:
        return None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise RequestError("keys must be a list of strings")
    return keys


def run_ref(msg: dict[str, Any]) -> RunRef:
    run_no = msg.get("run_no")
    if run_no is not None and (type(run_no) is not int or not 0 <= run_no < 1 << 64):
        raise RequestError(f"run_no must be an integer in [0, 2**64), got {run_no!r}")
    return RunRef(msg.get("project"), msg.get("id"), run_no)


def _require_all(msg: dict[str, Any]) -> bool:
    match = msg.get("match", "all")
    if match not in ("all", "any"):
        raise RequestError(f"match must be 'all' or 'any', got {match!r}")
    return bool(match == "all")


def row_query(msg: dict[str, Any], always_match: bool = True) -> RowQuery:
    """The rows a ``scan`` or ``page`` asks for; ``match`` only matters with
    ``keys``, and only ``page`` checks it without them."""
    keys = key_list(msg)
    require_all = _require_all(msg) if keys is not None or always_match else True
    min_step = integer(msg, "min_step", 0, 0, STEP_MAX) or 0
    max_step = integer(msg, "max_step", None, 0, STEP_MAX + 1)
    limit = integer(msg, "limit", 1000, 1, MAX_PAGE)
    assert limit is not None
    include_parent = bool(msg.get("include_parent", True))
    return RowQuery(keys, min_step, max_step, limit, include_parent, require_all)


# ---------------------------------------------- the read ops (see ``ops``)


def read_page(model: ReadModel, msg: dict[str, Any]) -> Rows:
    """``page``, and ``scan`` with keys: one page of exact rows."""
    ref = model.require(run_ref(msg))  # an unknown run is what a caller hears of first
    return model.rows(ref, row_query(msg))


def read_scan(model: ReadModel, msg: dict[str, Any]) -> Rows:
    """``scan``: ``page``, but without keys ``match`` means nothing and is not checked."""
    ref = model.require(run_ref(msg))
    return model.rows(ref, row_query(msg, always_match=False))


def read_sample(model: ReadModel, msg: dict[str, Any]) -> Rows:
    """``history``: a downsample."""
    ref = model.require(run_ref(msg))
    keys = key_list(msg)
    min_step = integer(msg, "min_step", 0, 0, STEP_MAX) or 0
    max_step = integer(msg, "max_step", None, 0, STEP_MAX + 1)
    samples = integer(msg, "samples", 500, 2, MAX_SAMPLES)
    assert samples is not None
    include_parent = bool(msg.get("include_parent", True))
    require_all = _require_all(msg) if keys is not None else True
    query = RowQuery(keys, min_step, max_step, MAX_PAGE, include_parent, require_all)
    return model.sample(ref, query, samples)


def read_keys(model: ReadModel, msg: dict[str, Any]) -> dict[str, Any]:
    return {"keys": model.keys(run_ref(msg), bool(msg.get("include_parent", True)))}


def read_runs(model: ReadModel, msg: dict[str, Any]) -> dict[str, Any]:
    return {"runs": model.runs(check_project(msg.get("project")))}


def read_project_runs(model: ReadModel, msg: dict[str, Any]) -> dict[str, Any]:
    project = check_project(msg.get("project"))
    return {"project": project, "runs": model.runs(project, must_exist=True)}


def read_projects(model: ReadModel, msg: dict[str, Any]) -> dict[str, Any]:
    return {"projects": model.projects()}


def read_info(model: ReadModel, msg: dict[str, Any]) -> dict[str, Any]:
    return model.info(run_ref(msg), bool(msg.get("full", True)))


def read_state(model: ReadModel, msg: dict[str, Any]) -> dict[str, Any]:
    return model.state(run_ref(msg))


def read_tree(model: ReadModel, msg: dict[str, Any]) -> dict[str, Any]:
    return {"nodes": model.tree(check_project(msg.get("project")))}


def plain(result: Any) -> Any:
    """A result as a client decodes it."""
    return result.plain() if isinstance(result, Rows) else result
