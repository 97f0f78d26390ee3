"""The import graph of `projects` is a tree: no module imports one that (directly or through
others) imports it back, and nothing in `projects` imports `sessions_app`, which sits above it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "projects"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}


def imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from projects import config` imports the module projects.config.
        return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names]
    return []


def imports_of(path: Path, everywhere: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree) if everywhere else tree.body
    return {name for node in nodes for name in imported(node)}


def test_projects_modules_import_each_other_without_cycles():
    graph = {name: imports_of(path, everywhere=True) & set(MODULES) for name, path in MODULES.items()}

    def cycle_from(start: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph[start]):
            if nxt in path:
                return path[path.index(nxt):] + (nxt,)
            found = cycle_from(nxt, path + (nxt,))
            if found:
                return found
        return None

    cycles = [c for name in sorted(graph) if (c := cycle_from(name, (name,)))]
    assert cycles == []


def test_projects_does_not_import_sessions_app_at_module_level():
    offenders = {name for name, path in MODULES.items()
                 if any(i.split(".")[0] == "sessions_app" for i in imports_of(path, everywhere=False))}
    assert offenders == set()
