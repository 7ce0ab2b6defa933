"""Where a run continues from when this node lacks it: its head in the cluster.

A job preempted on one node comes back on another. ``init`` with ``resume``,
``fork_from`` or ``resume_from`` naming a run this node has never held asks the
cluster store for that run's current timeline (``ClusterReads.target``): its
timeline, node, fork tree root, config and the summary statistics of its view
up to the step the new timeline branches at. The node then starts a local
timeline whose parent pointer names the remote one (``store.runs``); no row is
copied.
"""

from __future__ import annotations

import json

from stepline.errors import RunNotFound
from stepline_daemon import describe, summary
from stepline_daemon.cluster.reads import ClusterReads
from stepline_daemon.cluster.views import where
from stepline_daemon.messages import Init, Origin
from stepline_daemon.readmodel import RunRef


def continued(init: Init) -> tuple[str, int | None] | None:
    """The run (and step) ``init`` continues or branches from: None for a new run."""
    if init.fork_from is not None:
        return init.fork_from.run_id, init.fork_from.step
    if init.resume_from is not None:
        return init.resume_from.run_id, init.resume_from.step
    if init.resume in ("allow", "must") and init.run_id is not None:
        return init.run_id, None
    return None


def head(reads: ClusterReads, project: str, run_id: str, step: int | None) -> Origin | None:
    """``run_id``'s current timeline in the cluster, to branch at ``step`` (None:
    its last step); None when the cluster holds no such run."""
    try:
        rec = reads.target(RunRef(project, run_id))
    except RunNotFound:
        return None
    src = reads.records(project)
    segs = describe.segments(src, rec)
    last = rec["last_step"]
    at = last if step is None or step >= last else step
    if at >= last:
        stats = summary.merge(rec["inherited"], rec["stats"])
    else:
        stats = stats_upto(reads, project, describe.clip(segs, 0, at + 1))
    node = str(rec.get("node") or "")
    return Origin(rec["run_no"], at, last, node, reads.name, segs[0][0], rec, stats)


def stats_upto(reads: ClusterReads, project: str, spans: list[describe.Span]) -> summary.Stats:
    """``summary.Stats`` of a view's rows in ``spans``, computed in SQL over the
    narrow lines (each line once)."""
    if not spans:
        return {}
    fin = "num = 1 AND isFinite(f)"
    rows = reads.query(
        f"SELECT key, argMin(v, step), argMax(v, step), argMinIf(v, f, {fin}), "
        f"argMaxIf(v, f, {fin}), sumIf(f, {fin}), countIf({fin}) FROM ("
        f"SELECT key, step, num, f, v FROM {reads.db}.history "
        f"WHERE {where(project, spans, '1')} LIMIT 1 BY key, step) GROUP BY key"
    )
    out: summary.Stats = {}
    for key, first, last, lo, hi, total, count in rows:
        n = int(count)
        out[key] = [
            json.loads(first),
            json.loads(last),
            json.loads(lo) if n else None,
            json.loads(hi) if n else None,
            float(total) if n else 0,
            n,
        ]
    return out
