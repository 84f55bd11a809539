"""The import rules of docs/architecture.md, checked on the source (no module is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("homeserver", "client_api", "admin_api", "federation", "media_repo", "push_gateway")
COMPOSITION = {
    "homeserver.app",
    "homeserver.routing",
    "homeserver.lifecycle",
    "homeserver.cli",
    "homeserver.__main__",
}


def _modules() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b`` counts ``a`` and, when it
    is a module, ``a.b``), including imports under TYPE_CHECKING."""
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


GRAPH = _modules()


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_nothing_outside_the_composition_root_imports_it() -> None:
    offenders = {
        m: sorted(i for i in imported if i in COMPOSITION)
        for m, imported in GRAPH.items()
        if m not in COMPOSITION and imported & COMPOSITION
    }
    assert offenders == {}


def test_services_do_not_import_routes() -> None:
    routes = ("client_api", "admin_api", "federation", "media_repo.routes", "push_gateway.app")
    offenders = {
        m: sorted(i for i in imported if _in(i, *routes))
        for m, imported in GRAPH.items()
        if _in(m, "homeserver") and m not in COMPOSITION and any(_in(i, *routes) for i in imported)
    }
    assert offenders == {}


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        ("homeserver.core", ("homeserver.core",)),
        ("homeserver.storage", ("homeserver.core", "homeserver.storage")),
        ("homeserver.wakeups", ("homeserver.core", "homeserver.wakeups")),
        ("homeserver.net", ("homeserver.core", "homeserver.net")),
    ],
)
def test_lower_layers_import_only_below_them(layer: str, allowed: tuple[str, ...]) -> None:
    offenders = {
        m: sorted(i for i in imported if not _in(i, *allowed))
        for m, imported in GRAPH.items()
        if _in(m, layer) and any(not _in(i, *allowed) for i in imported)
    }
    assert offenders == {}


def test_no_import_cycle_through_routes_or_the_composition_root() -> None:
    """Strongly connected components of more than one module may not hold a route module or
    the composition root."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan, recursive: the graph is a few hundred modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    bad = [
        c
        for c in cycles
        if any(
            _in(m, "client_api", "admin_api", "federation", "media_repo.routes", "homeserver.web")
            or m in COMPOSITION
            for m in c
        )
    ]
    assert bad == []
