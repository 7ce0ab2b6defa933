"""The code's shape, checked: module and function sizes, import cycles, and
imports of other modules' private names, in ``client/`` and ``daemon/``.

Run alone to see the table: ``pytest -q -s tests/unit/test_layout_limits.py``.
A limit is raised only with a reason written beside it in ``EXCEPTIONS``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "stepline": ROOT / "client" / "stepline",
    "stepline_daemon": ROOT / "daemon" / "stepline_daemon",
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# "module" or "module:function" -> why it may be longer.
EXCEPTIONS: dict[str, str] = {}


def modules() -> dict[str, Path]:
    out = {}
    for package, path in PACKAGES.items():
        for file in sorted(path.rglob("*.py")):
            parts = file.relative_to(path).with_suffix("").parts
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__")] = file
    return out


def functions(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(qualified name, lines) of every function and method."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                assert child.end_lineno is not None
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                yield name, child.end_lineno - start + 1
                yield from walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")

    yield from walk(tree, "")


def imports(
    name: str, tree: ast.AST, known: dict[str, Path]
) -> Iterator[tuple[str, str | None, bool]]:
    """(imported module, imported name or None, at module level) for each import
    of one of our modules. Imports under ``if TYPE_CHECKING:`` are left out:
    they never run."""
    package = name if known[name].name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST, top: bool) -> Iterator[tuple[str, str | None, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (i for c in child.orelse for i in walk(c, top))
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in known:
                        yield alias.name, None, top
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if sub in known:
                        yield sub, None, top
                    elif base in known:
                        yield base, alias.name, top
            inner = not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from walk(child, top and inner)

    yield from walk(tree, True)


def survey() -> tuple[
    dict[str, int], dict[str, list[tuple[str, int]]], dict[str, set[str]], list[str]
]:
    known = modules()
    sizes, longest, graph, private = {}, {}, {}, []
    for name, file in known.items():
        text = file.read_text()
        tree = ast.parse(text)
        sizes[name] = len(text.splitlines())
        longest[name] = sorted(functions(tree), key=lambda f: -f[1])
        graph[name] = set()
        for target, symbol, _top in imports(name, tree, known):
            graph[name].add(target)
            if symbol is not None and symbol.startswith("_") and not symbol.startswith("__"):
                private.append(f"{name} imports {target}.{symbol}")
    return sizes, longest, graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_modules_and_functions_are_small_and_imports_form_no_cycle() -> None:
    sizes, longest, graph, private = survey()
    print(f"\n{'module':<40} {'lines':>6}  longest function")
    for name in sorted(sizes, key=lambda n: -sizes[n]):
        top = longest[name][0] if longest[name] else ("-", 0)
        print(f"{name:<40} {sizes[name]:>6}  {top[0]} ({top[1]})")
    found = cycles(graph)
    print("import cycles:", found or "none")
    problems = [
        f"{name} has {n} lines (limit {MAX_MODULE_LINES})"
        for name, n in sizes.items()
        if n > MAX_MODULE_LINES and name not in EXCEPTIONS
    ]
    problems += [
        f"{name}:{fn} has {n} lines (limit {MAX_FUNCTION_LINES})"
        for name, fns in longest.items()
        for fn, n in fns
        if n > MAX_FUNCTION_LINES and f"{name}:{fn}" not in EXCEPTIONS and name not in EXCEPTIONS
    ]
    problems += [f"import cycle: {' <-> '.join(group)}" for group in found]
    problems += private
    assert not problems, "\n".join(problems)


def test_the_check_finds_what_it_looks_for() -> None:
    """The survey must be able to fail: a cycle, a private import, a long function."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    tree = ast.parse(
        "def f():\n" + "    x = 1\n" * 70 + "\nclass C:\n    def g(self):\n        pass\n"
    )
    assert dict(functions(tree)) == {"f": 71, "C.g": 2}
    known = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py")}
    tree = ast.parse(
        "from p.b import _hidden, shown\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from p import b\n"
        "def f():\n    from p import a\n"
    )
    assert list(imports("p.a", tree, known)) == [
        ("p.b", "_hidden", True),
        ("p.b", "shown", True),
        ("p.a", None, False),
    ]


def test_every_package_is_in_the_wheel() -> None:
    """pyproject names packages one by one: a new subpackage left out of the
    list works in a checkout and is missing from an installed wheel."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert found == listed
