"""A run resumed on another node, described as one run: pure.

A node resumes a run it lacks as a new timeline whose parent is the run's
timeline on the node it left (``cluster.heads``). On one node a resume goes on
in the same timeline; so that the cluster describes a run the same wherever it
ran, a *resume link* (a child that resumed its parent, same id, at the parent's
last step) is no branch: the child's description counts the rows of the
timelines it resumed, takes its parent, lineage, children and creation time
from them, and lists none of them as archived. A link whose parent grew past
the resume step (rows a dead node shipped late) is a branch again: the parent
is then an archived timeline, as a rewind leaves one.
"""

from __future__ import annotations

from typing import Any

from stepline_daemon import describe
from stepline_daemon.describe import Record, Records


def resumes(child: Record, parent: Record) -> bool:
    """Whether ``child`` resumed ``parent`` on another node, with nothing since."""
    origin = child.get("origin")
    return (
        origin is not None
        and origin.get("how") == "resume"
        and origin["timeline"] == parent["run_no"]
        and child["id"] == parent["id"]
        and parent["last_step"] == origin["step"]
    )


def resumed(src: Records, rec: Record) -> list[Record]:
    """The timelines ``rec`` resumed, link after link, nearest first."""
    out: list[Record] = []
    cur = rec
    while cur["parent"] is not None:
        parent = src.record(cur["parent"][0])
        if not resumes(cur, parent):
            break
        out.append(parent)
        cur = parent
    return out


def head(src: Records, rec: Record) -> Record:
    """The timeline that resumed ``rec`` last (``rec`` itself if none did): its
    run's state is that one's."""
    while True:
        kids = (src.record(c) for c, _ in src.children(rec["run_no"]))
        child = next((k for k in kids if resumes(k, rec)), None)
        if child is None:
            return rec
        rec = child


def lineage(src: Records, rec: Record) -> list[dict[str, Any]]:
    """``describe.lineage`` with resume links passed over."""
    out = []
    cur, parent = rec, rec["parent"]
    while parent is not None:
        p = src.record(parent[0])
        if not resumes(cur, p):
            state = head(src, p)["state"]
            out.append({"id": p["id"], "run_no": p["run_no"], "step": parent[1], "state": state})
        cur, parent = p, p["parent"]
    return out


def archived(src: Records, rec: Record) -> list[dict[str, Any]]:
    """``describe.archived`` with resume links passed over."""
    out = []
    cur, parent = rec, rec["parent"]
    while parent is not None:
        p = src.record(parent[0])
        if p["id"] != rec["id"] or p["archived_by"] is None:
            break
        if not resumes(cur, p):
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
        cur, parent = p, p["parent"]
    return out


def view(src: Records, rec: Record, out: dict[str, Any], full: bool) -> dict[str, Any]:
    """``out`` (``describe.describe`` of ``rec``) as one run across its resumes."""
    chain = resumed(src, rec)
    base = chain[-1] if chain else rec
    if chain:
        out["rows"] = rec["rows"] + sum(r["rows"] for r in chain)
        out["dropped"] = rec["dropped"] + sum(r["dropped"] for r in chain)
        out["created"] = base["created"]
        parent = base["parent"]
        out["parent"] = None
        if parent is not None:
            p = src.record(parent[0])
            out["parent"] = {"id": p["id"], "run_no": p["run_no"], "step": parent[1]}
    if full:
        out["lineage"] = lineage(src, rec)
        out["archived"] = archived(src, rec)
        # Forks of every timeline the run went through, in the order made.
        kids = [c for r in (rec, *chain) for c in describe.children_of(src, r["run_no"])]
        own = {r["run_no"] for r in chain}
        kids = [c for c in kids if c["run_no"] not in own and c["run_no"] != rec["run_no"]]
        for c in kids:  # a fork resumed elsewhere since: its run's state
            c["state"] = head(src, src.record(c["run_no"]))["state"]
        out["children"] = sorted(
            kids, key=lambda c: (src.record(c["run_no"])["created"], c["run_no"])
        )
    return out
