"""No import cycle between visionthink's subpackages (and top-level modules), read from the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import visionthink

ROOT = Path(visionthink.__file__).parent


def _unit(module: str) -> str | None:
    """The subpackage or top-level module of a `visionthink.*` name ("visionthink.eval.runner" -> "eval")."""
    parts = module.split(".")
    if parts[0] != "visionthink":
        return None
    return parts[1] if len(parts) > 1 else "visionthink"


def _imported(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (function-level imports included)."""
    relative = path.relative_to(ROOT.parent).with_suffix("").parts
    package = relative[:-1]  # a module's package; for __init__.py the package itself
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from visionthink import eval`
    return names


def import_graph() -> dict[str, set[str]]:
    """unit -> the other units it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("").parts
        source = relative[0] if len(relative) > 1 else ("visionthink" if relative[0] == "__init__" else relative[0])
        targets = {_unit(name) for name in _imported(path)}
        graph.setdefault(source, set()).update(t for t in targets if t and t != source and t != "visionthink")
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert {"grading", "protocol"} <= graph["rewards"]
    assert "rewards" in graph["eval"] and "grading" in graph["eval"]


def test_no_import_cycle_between_subpackages():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle between visionthink subpackages: " + " -> ".join(cycle)


def test_grading_depends_on_neither_rewards_nor_eval():
    assert import_graph()["grading"] <= {"protocol", "errors"}
