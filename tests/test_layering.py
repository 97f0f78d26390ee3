"""The import graph of projects/ and sessions_app/ is a tree: no circles, projects never imports
sessions_app, the task module is the top and the enqueue module a leaf. Read from the source
(module-level and function-local imports alike), so a lazy import cannot hide a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("projects", "sessions_app")
# models -> config is a function-local import owned by the config-schema work; drop it from here
# once projects/models.py no longer reaches up into projects/config.py.
def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_no_import_circle_in_projects_and_sessions_app():
    assert _circles(_graph()) == []


def test_projects_never_imports_sessions_app():
    upward = {(s, t) for s, targets in _graph().items() for t in targets
              if s.startswith("projects") and t.startswith("sessions_app")}
    assert upward == set()


def test_tasks_are_the_top_and_enqueue_a_leaf():
    graph = _graph()
    assert [s for s, targets in graph.items() if "sessions_app.tasks" in targets] == []
    assert {t for t in graph["sessions_app.enqueue"] if t.startswith("sessions_app")} <= {"sessions_app.errors"}


def test_nothing_but_the_kinds_registry_names_a_session_kind():
    offenders = []
    for name, path in _modules().items():
        if name in ("sessions_app.kinds", "sessions_app.models") or ".migrations" in name:
            continue
        text = path.read_text()
        for needle in ("Kind.SYNC", "Kind.STREAM", "Kind.IMPORT", "kind=\"", "kind == ", "kind != "):
            if needle in text:
                offenders.append(f"{name}: {needle}")
    assert offenders == []
