"""``stepline runs``, ``show`` and ``tree``: what is stored, as tables and lists."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from stepline import tables, tree
from stepline.api import Api, ApiRun
from stepline.commands import Command
from stepline.commands.common import (
    add_run,
    fail,
    guarded,
    open_api,
    parser,
    print_lines,
    width,
)

# -------------------------------------------------------------------- runs


def runs(argv: list[str]) -> int:
    ap = parser(
        "runs", "List the projects (with run counts), or the runs of one project.", reads=True
    )
    ap.add_argument("--project", "-p", help="list this project's runs")
    args = ap.parse_args(argv)
    api = open_api(args)
    try:
        if args.project is None:
            return _project_table(api)
        return _run_table(api, args.project)
    finally:
        api.close()


def _project_table(api: Api) -> int:
    rows = [[p["name"], str(p["runs"]), tables.timestamp(p["updated"])] for p in api.project_list()]
    if not rows:
        print("no projects yet", file=sys.stderr)
        return 0
    header = ["PROJECT", "RUNS", "UPDATED"]
    print_lines(tables.table(rows, header, width(), right={1}, flexible={0}))
    return 0


def _run_table(api: Api, project: str) -> int:
    found = sorted(api.runs(project), key=lambda r: (r.created, r.id))
    if not found:
        return fail(f"no project {project!r} (`stepline runs` lists them)")
    named = any(r.name != r.id for r in found)
    # Read from the cluster store, runs name the node they were logged on.
    nodes = any(r.node for r in found)
    header = ["ID", *(["NAME"] if named else []), "STATE", "STEP", "PARENT"]
    header += ["CREATED", "UPDATED", "TAGS", *(["NODE"] if nodes else [])]
    rows = [_run_row(r, named) + ([r.node or ""] if nodes else []) for r in found]
    flexible = {header.index(h) for h in ("NAME", "PARENT", "TAGS") if h in header}
    print_lines(
        tables.table(rows, header, width(), right={header.index("STEP")}, flexible=flexible)
    )
    return 0


def _run_row(r: ApiRun, named: bool) -> list[str]:
    parent = r.parent
    if parent is None:
        origin = ""
    elif parent[0] == r.id:
        origin = f"rewound @{parent[1]}"
    else:
        origin = f"{parent[0]} @{parent[1]}"
    return [
        r.id,
        *([tables.printable(r.name)] if named else []),
        r.state,
        str(r.last_step) if r.last_step >= 0 else "-",
        origin,
        tables.timestamp(r.created),
        tables.timestamp(r.updated),
        tables.printable(", ".join(r.tags)),
    ]


# -------------------------------------------------------------------- show


def show(argv: list[str]) -> int:
    ap = parser(
        "show", "One run: state, steps, times, lineage, rewinds, config, summary.", reads=True
    )
    add_run(ap)
    args = ap.parse_args(argv)
    api = open_api(args)
    try:
        run = api.run(args.run)
        fields = _fields(run)
        config, summary = run.config, run.summary
    finally:
        api.close()
    cols = width()
    out = tables.pairs(fields, cols)
    for title, items in (("config", _config_items(config)), ("summary", _summary_items(summary))):
        out += ["", title]
        out += tables.pairs(items, cols, indent="  ") if items else ["  (none)"]
    print_lines(out)
    return 0


def _fields(run: ApiRun) -> list[tuple[str, str]]:
    """The ``key  value`` lines about ``run``; a blank key continues the one above."""
    parent = run.parent
    out = [("run", f"{run.project}/{run.id}")]
    if run.name != run.id:
        out.append(("name", tables.printable(run.name)))
    out += [
        ("state", _state(run)),
        ("steps", _steps(run)),
        ("created", tables.timestamp(run.created)),
        ("updated", tables.timestamp(run.updated)),
    ]
    if run.dropped:
        out.append(("dropped", f"{run.dropped} rows (logged at a step already passed)"))
    if run.tags:
        out.append(("tags", tables.printable(", ".join(run.tags))))
    if parent is not None:
        rewind = " (this run's timeline before a rewind)" if parent[0] == run.id else ""
        out.append(("parent", f"{parent[0]} @ step {parent[1]}{rewind}"))
    origin = run.origin
    if origin is not None:
        out.append(
            (
                "continues",
                f"node {origin['node']} @ step {origin['step']}: earlier rows are in the "
                f"cluster {origin['cluster']} (timeline {origin['timeline']})",
            )
        )
    if run.duplicate_of is not None:
        out.append(("duplicate", f"of timeline {run.duplicate_of}: the same id made first there"))
    dups = [f"timeline {d['run_no']} on node {d['node']}" for d in run.duplicates]
    out += _listed("same id", dups)
    out += _listed("lineage", [_link(a) for a in run.lineage_refs])
    out += _listed("children", [_link(c) for c in run.children_refs])
    out += _listed("rewound", list(_rewinds(run)))
    return out


def _state(run: ApiRun) -> str:
    code = run.exit_code
    return run.state if code in (None, 0) else f"{run.state} (exit code {code})"


def _steps(run: ApiRun) -> str:
    steps = "no steps" if run.last_step < 0 else f"last step {run.last_step}"
    own = run.rows
    rows = f"{own} row" if own == 1 else f"{own} rows"
    parent = run.parent
    if parent is not None:
        rows += f" of its own, earlier ones inherited up to step {parent[1]}"
    return f"{steps}, {rows}"


def _link(d: dict[str, Any]) -> str:
    state = "archived by rewind" if d["state"] == "archived" else d["state"]
    return f"{d['id']} @{d['step']} ({state})"


def _listed(key: str, items: list[str]) -> list[tuple[str, str]]:
    return [(key if i == 0 else "", item) for i, item in enumerate(items)]


def _rewinds(run: ApiRun) -> Iterator[str]:
    """The timelines rewinds replaced, newest first, each readable by its number."""
    current = run
    while (old := current.rewound_from) is not None:
        at = current.parent[1] if current.parent else "?"
        when = tables.timestamp(current.created)
        yield f"at step {at} on {when}, replacing timeline {old.run_no} (to step {old.last_step})"
        current = old


def _flat(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _config_items(config: dict[str, Any]) -> list[tuple[str, str]]:
    return [(tables.printable(k), tables.cell(v, digits=None)) for k, v in _flat(config)]


def _summary_items(summary: dict[str, Any]) -> list[tuple[str, str]]:
    keys = sorted(summary, key=lambda k: (k.startswith("_"), k))
    out = []
    for k in keys:
        v = summary[k]
        if k == "_timestamp" and isinstance(v, (int, float)):
            out.append((k, tables.timestamp(v)))
        else:
            out.append((tables.printable(k), tables.cell(v)))
    return out


# -------------------------------------------------------------------- tree


def fork_tree(argv: list[str]) -> int:
    ap = parser(
        "tree",
        "The fork tree a run belongs to, from its root ancestor down; "
        "the run asked for is marked *, each branch shows its fork step.",
        reads=True,
    )
    add_run(ap)
    args = ap.parse_args(argv)
    api = open_api(args)
    try:
        run = api.run(args.run)
        root = tree.build(api, run)
    finally:
        api.close()
    cols = width()
    lines = tree.draw(root, mark=run.run_no)
    print_lines(lines if cols is None else (tables.cut(line, cols) for line in lines))
    return 0


COMMANDS: dict[str, Command] = {
    "runs": guarded(runs),
    "show": guarded(show),
    "tree": guarded(fork_tree),
}
