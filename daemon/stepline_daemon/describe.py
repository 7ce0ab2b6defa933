"""What reads say about runs, from run records alone, whatever store holds them.

The node's LMDB store and the cluster hold the same records (the cluster's
with timelines for run numbers), so describing a run, walking the fork forest
(the segments a view is made of, ancestors, children, archived timelines) and
listing a project's timelines is written once, over :class:`Records`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from stepline.rows import STEP_MAX
from stepline_daemon import summary

Record = dict[str, Any]
# (run_no, lo, hi): steps lo..hi (inclusive) of one timeline's own rows.
Span = tuple[int, int, int]


class Records(Protocol):
    """The run records of one store, read by run number."""

    def record(self, run_no: int) -> Record:
        """The record of ``run_no``, soft-deleted ones too; RunNotFound when
        there is none (never made, or purged)."""

    def children(self, run_no: int) -> Iterable[tuple[int, int]]:
        """(child run_no, fork step) of every timeline branching from
        ``run_no``, deleted ones too, by child run_no."""

    def timelines(self, project: str) -> Iterable[Record]:
        """Every record of ``project`` (archived and soft-deleted ones too), by run_no."""


def segments(src: Records, rec: Record, include_parent: bool = True) -> list[Span]:
    """The ordered pieces of history a run's view is made of, root first: each
    ancestor capped at the smallest fork step below it, the run's own last."""
    segs = [(rec["run_no"], 0, STEP_MAX)]
    if not include_parent:
        return segs
    cap = STEP_MAX
    parent = rec["parent"]
    while parent is not None:
        pno, step = parent
        cap = min(cap, step)
        segs.append((pno, 0, cap))
        parent = src.record(pno)["parent"]
    segs.reverse()
    return segs


def clip(spans: list[Span], min_step: int, max_step: int | None) -> list[Span]:
    """``spans`` within ``[min_step, max_step)``, the empty ones left out."""
    hi_limit = STEP_MAX if max_step is None else max_step - 1
    out = []
    for run_no, lo, hi in spans:
        lo, hi = max(lo, min_step), min(hi, hi_limit)
        if lo <= hi:
            out.append((run_no, lo, hi))
    return out


def lineage(src: Records, rec: Record) -> list[dict[str, Any]]:
    """Ancestors, nearest first: each with the step the view branches at."""
    out = []
    parent = rec["parent"]
    while parent is not None:
        p = src.record(parent[0])
        out.append({"id": p["id"], "run_no": p["run_no"], "step": parent[1], "state": p["state"]})
        parent = p["parent"]
    return out


def archived(src: Records, rec: Record) -> list[dict[str, Any]]:
    """Older timelines of this id that rewinds replaced, newest first; each with
    the step the newer timeline branched from it at."""
    out = []
    parent = rec["parent"]
    while parent is not None:
        p = src.record(parent[0])
        if p["id"] != rec["id"] or p["archived_by"] is None:
            break
        out.append(
            {
                "id": p["id"],
                "run_no": p["run_no"],
                "step": parent[1],
                "last_step": p["last_step"],
                "state": p["state"],
                "created": p["created"],
                "updated": p["updated"],
            }
        )
        parent = p["parent"]
    return out


def children_of(src: Records, run_no: int, deleted: bool = False) -> list[dict[str, Any]]:
    """Forks and rewinds branching from ``run_no``; deleted ones only if asked."""
    out = []
    for child_no, step in src.children(run_no):
        child = src.record(child_no)
        if child.get("deleted") and not deleted:
            continue
        out.append(
            {"id": child["id"], "run_no": child["run_no"], "step": step, "state": child["state"]}
        )
    return out


def timelines(src: Records, project: str) -> list[dict[str, Any]]:
    """Every timeline of a project, archived ones too: the fork forest's nodes."""
    out = []
    for rec in src.timelines(project):
        parent = rec["parent"]
        out.append(
            {
                "id": rec["id"],
                "run_no": rec["run_no"],
                "name": rec["name"],
                "state": rec["state"],
                "parent_run_no": None if parent is None else parent[0],
                "step": None if parent is None else parent[1],
                "archived_by": rec["archived_by"],
                "last_step": rec["last_step"],
                "created": rec["created"],
                "deleted": bool(rec.get("deleted")),
            }
        )
    return out


_DESCRIBED = (
    "id",
    "run_no",
    "project",
    "name",
    "tags",
    "state",
    "created",
    "updated",
    "last_step",
    "rows",
    "dropped",
    "exit_code",
    "archived_by",
)


def describe(src: Records, rec: Record, full: bool = False) -> dict[str, Any]:
    """One timeline as ``info`` and ``runs`` show it; ``full`` adds config,
    lineage, children and archived timelines (each a walk of the forest)."""
    out = {k: rec[k] for k in _DESCRIBED}
    out["parent"] = None
    out["summary"] = summary.render(
        summary.merge(rec["inherited"], rec["stats"]),
        rec["metrics"],
        rec["summary_set"],
        rec["last_step"],
    )
    parent = rec["parent"]
    if parent is not None:
        p = src.record(parent[0])
        out["parent"] = {"id": p["id"], "run_no": p["run_no"], "step": parent[1]}
    origin = rec.get("origin")
    if origin is not None:
        # Continued from a timeline of another node: where the history before
        # ``step`` lives (on a node, its own rows start after it).
        out["origin"] = {k: origin[k] for k in ("node", "cluster", "timeline", "step")}
    if full:
        out["client"] = rec["client"]  # who created (or last resumed) it
        out["peer"] = rec.get("peer")  # uid, gid, pid, host of that process
        out["config"] = rec["config"]
        out["metrics"] = rec["metrics"]
        out["lineage"] = lineage(src, rec)
        out["children"] = children_of(src, rec["run_no"])
        out["archived"] = archived(src, rec)
    return out


def state(rec: Record) -> dict[str, Any]:
    """What a live view polls: cheap, no summary or lineage."""
    return {
        "id": rec["id"],
        "run_no": rec["run_no"],
        "state": rec["state"],
        "last_step": rec["last_step"],
        "rows": rec["rows"],
        "archived_by": rec["archived_by"],
    }


def keys(rec: Record, include_parent: bool = True) -> list[str]:
    """Every key a run's view holds, from its running stats (no scan): user
    keys in name order, then ``_`` ones."""
    names = set(rec["stats"])
    if include_parent:
        names.update(rec["inherited"])
    names.discard("_step")
    return sorted(names, key=lambda k: (k.startswith("_"), k))
