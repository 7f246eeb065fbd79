"""``server/`` has no import circle: adapters depend on ports, not on the hub."""

from __future__ import annotations

import ast
from pathlib import Path

import tether.server

SERVER = Path(tether.server.__file__).parent


def imports_within_server() -> dict[str, set[str]]:
    """Module -> the sibling modules it imports anywhere (type-checking and lazy ones too)."""
    graph: dict[str, set[str]] = {}
    for path in SERVER.glob("*.py"):
        if path.stem == "__init__":
            continue  # the package's front door re-exports; nothing inside imports it
        deps = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
    return graph


def test_server_modules_import_each_other_without_a_cycle() -> None:
    graph = imports_within_server()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert "hub" not in graph["app"] | graph["fastws"] | graph["links"] | graph["metrics"]
