"""lib/replab has no import circle: every ``import`` of a replab module, at module level or
inside a function (or under ``TYPE_CHECKING``), is an edge; a cycle among them fails, named
module by module with the lines that import.

A function-local import only postpones a circle to the first call: it still ties the two
modules together for whoever reads or changes them, so it counts here as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"
PACKAGE = "replab"

#: circles known and owned elsewhere: {frozenset of its modules: why it is still here}. An
#: entry whose circle is gone fails the test, so that it is removed with the fix.
KNOWN: dict[frozenset, str] = {}


def modules(lib: Path = LIB) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package (a package is its __init__)."""
    out = {}
    for path in sorted((lib / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(lib).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from ..lab import x`` -> replab.lab)."""
    if not node.level:
        return node.module or ""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(mods: dict[str, Path]) -> dict[str, dict[str, list[int]]]:
    """``{importer: {imported: [line, ...]}}`` among the package's own modules. ``from p
    import x`` is an edge to ``p.x`` when that is a module, else to ``p``."""
    graph: dict[str, dict[str, list[int]]] = {m: {} for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path, node)
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                plain = [a for a in node.names if f"{base}.{a.name}" not in mods]
                targets = subs + ([base] if plain or not subs else [])
            for target in targets:
                while target and target not in mods:  # import replab.x.y.z names replab.x.y
                    target = target.rpartition(".")[0]
                if target and target != name and target.split(".")[0] == PACKAGE:
                    graph[name].setdefault(target, []).append(node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) for each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_in(graph, set(g), g[0]) for g in groups]


def _path_in(graph, group: set[str], start: str) -> list[str]:
    """A shortest cycle through ``start`` inside ``group`` (breadth first)."""
    prev: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w in group and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle of {sorted(group)}")


def describe(graph, cycle: list[str], mods: dict[str, Path]) -> str:
    hops = [f"  {a} ({mods[a].relative_to(LIB.parent)}:{','.join(map(str, graph[a][b]))}) "
            f"imports {b}" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join(cycle) + "\n" + "\n".join(hops)


def test_no_import_cycle():
    mods = modules()
    graph = edges(mods)
    found = [c for c in cycles(graph) if frozenset(c) not in KNOWN]
    gone = [sorted(k) for k in KNOWN if k not in {frozenset(c) for c in cycles(graph)}]
    assert not gone, f"these circles are gone: remove them from KNOWN: {gone}"
    assert not found, ("import circles in lib/replab (move what both sides need into a "
                       "lower module that neither imports back):\n"
                       + "\n".join(describe(graph, c, mods) for c in found))


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The walker finds a circle made of a function-local ``from . import``, a module-level
    ``from .x import``, ``import replab.x`` and a TYPE_CHECKING import, and names it."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from .sub.c import thing\n")
    (pkg / "sub" / "c.py").write_text("import replab.d\nthing = 1\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .a import f\n")
    (pkg / "e.py").write_text("from .a import f\n")  # on no circle
    mods = modules(tmp_path)
    graph = edges(mods)
    assert graph["replab.a"] == {"replab.b": [2]}
    assert graph["replab.b"] == {"replab.sub.c": [1]}
    assert graph["replab.sub.c"] == {"replab.d": [1]}
    assert graph["replab.d"] == {"replab.a": [3]}
    assert cycles(graph) == [["replab.a", "replab.b", "replab.sub.c", "replab.d", "replab.a"]]
