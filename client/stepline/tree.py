"""A run's fork tree: its root ancestor down through every descendant, as text.

:func:`build` reads the project's fork forest from the daemon in one request
(``tree``), archived timelines included (a rewind leaves the old timeline in
the tree, with the new one as its child). :func:`draw` is pure.
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
    def of(cls, node: dict[str, Any]) -> Node:
        """From a node of the daemon's ``tree`` reply."""
        return cls(node["id"], node["run_no"], node["state"], node["last_step"], node["step"])


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
    """The tree holding ``run``: from the root of its lineage, every timeline below
    (deleted ones left out)."""
    nodes = {n["run_no"]: n for n in api.tree(run.project) if not n.get("deleted")}
    top = run.run_no
    while (parent := nodes[top]["parent_run_no"]) is not None and parent in nodes:
        top = parent
    kids: dict[int, list[dict[str, Any]]] = {}
    for n in nodes.values():
        if n["parent_run_no"] is not None:
            kids.setdefault(n["parent_run_no"], []).append(n)
    root = Node.of({**nodes[top], "step": None})
    todo = [root]
    while todo:
        node = todo.pop()
        for kid in sorted(kids.get(node.run_no, []), key=lambda k: (k["step"], k["run_no"])):
            node.children.append(Node.of(kid))
            todo.append(node.children[-1])
    return root
