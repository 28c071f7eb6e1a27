"""The package's layers: imports run downward only, and no module imports itself back through others.

Read from the source (every import statement, including those inside functions), so a lazy import that
would close a circle or reach upward is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffclf"
MATH = ("diffclf.diffusion", "diffclf.strategies", "diffclf.models", "diffclf.metrics")
EVERYTHING = ("lightning", "diffclf.diffusion", "diffclf.strategies", "diffclf.models", "diffclf.metrics",
              "diffclf.data", "diffclf.tasks", "diffclf.cli")
# layer -> imports it must never make
FORBIDDEN = {
    **{m: ("lightning", "diffclf.data", "diffclf.tasks", "diffclf.cli") for m in MATH},
    "diffclf.data": ("diffclf.tasks", "diffclf.cli"),
    "diffclf.tasks": ("diffclf.cli",),
    "diffclf.configs": EVERYTHING,  # the presets' resolver: every layer may use it, so it uses none
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_the_graph_sees_the_package() -> None:
    graph = _graph()
    assert {"diffclf.tasks.base", "diffclf.cli", "diffclf.data.digits", "diffclf.diffusion.scoring"} <= set(graph)
    assert "diffclf.tasks.base" in graph["diffclf.tasks.diffusion"]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_run_downward_only(layer: str) -> None:
    bad = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name != layer and not name.startswith(layer + "."):
            continue
        for imported in _imports(path):
            if any(imported == f or imported.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{name} imports {imported}")
    assert not bad, bad


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_in_the_package() -> None:
    # A package's __init__ re-exporting its modules is not a circle: the modules never import it back.
    graph = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_circle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
