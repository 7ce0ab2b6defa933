"""A run's fork tree: its root ancestor down through every descendant, as text.

:func:`build` reads the tree from the daemon, one ``info`` request per
timeline, archived ones included (a rewind leaves the old timeline in the tree,
with the new one as its child). :func:`draw` is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepline.api import Api, ApiRun

TEE, LAST, PIPE, SPACE = "├── ", "└── ", "│   ", "    "


@dataclass
class Node:
    id: str
    run_no: int
    state: str
    last_step: int
    step: int | None = None  # the parent's step this timeline branches at; None at the root
    children: list[Node] = field(default_factory=list)

    @classmethod
    def of(cls, run: ApiRun, step: int | None = None) -> Node:
        return cls(run.id, run.run_no, run.state, run.last_step, step)


def label(node: Node, mark: int | None = None) -> str:
    """``id @step (state, last step N)``; `` *`` when ``node`` is timeline ``mark``."""
    at = "" if node.step is None else f" @{node.step}"
    state = "archived by rewind" if node.state == "archived" else node.state
    steps = "no steps" if node.last_step < 0 else f"last step {node.last_step}"
    star = " *" if node.run_no == mark else ""
    return f"{node.id}{at} ({state}, {steps}){star}"


def draw(root: Node, mark: int | None = None) -> list[str]:
    """The tree in box characters, children in fork-step order; depth costs no recursion."""
    lines = [label(root, mark)]
    stack: list[tuple[Node, str, bool]] = [
        (c, "", i == len(root.children) - 1) for i, c in enumerate(root.children)
    ][::-1]
    while stack:
        node, prefix, last = stack.pop()
        lines.append(prefix + (LAST if last else TEE) + label(node, mark))
        inner = prefix + (SPACE if last else PIPE)
        n = len(node.children)
        stack.extend((c, inner, i == n - 1) for i, c in reversed(list(enumerate(node.children))))
    return lines


def build(api: Api, run: ApiRun) -> Node:
    """The tree holding ``run``: from the root of its lineage, every timeline below."""
    lineage: list[dict[str, Any]] = run._full("lineage")
    top = api.timeline(run.project, lineage[-1]["run_no"]) if lineage else run
    root = Node.of(top)
    todo = [(top, root)]
    while todo:
        timeline, node = todo.pop()
        kids: list[dict[str, Any]] = timeline._full("children")
        for kid in sorted(kids, key=lambda k: (k["step"], k["run_no"])):
            child = api.timeline(run.project, kid["run_no"])
            node.children.append(Node.of(child, kid["step"]))
            todo.append((child, node.children[-1]))
    return root
