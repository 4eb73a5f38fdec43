"""The architecture as a test: layers only point down, and no module imports another that
imports it back (DESIGN.md, "Layers").

Folders, top to bottom: ``api`` (the package ``diffda`` itself: the Python API) ->
``cycler`` (with its CLI ``cycler/cli``) -> ``observations`` and ``emulators`` (side by
side, neither imports the other) -> ``core``. Every ``import`` counts, also those inside
functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "emulators", "observations", "cycler", "api")
#: What each folder may import (besides itself).
ALLOWED = {
    "core": set(),
    "emulators": {"core"},
    "observations": {"core"},
    "cycler": {"core", "emulators", "observations"},
    "api": {"core", "emulators", "observations", "cycler"},
}
#: The module of each file's folder (``api/`` is the package ``diffda`` itself).
FOLDER_OF: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    folder = parts[0]
    if folder == "api":
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    name = ".".join(["diffda", *parts])
    FOLDER_OF[name] = folder
    return name


def project_imports() -> dict[str, set[str]]:
    """``{module: {imported project modules}}`` over the package folders."""
    modules = {module_name(p): p for f in FOLDERS for p in (ROOT / f).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                names = [f"{base}.{a.name}" for a in node.names]
                targets |= {n for n in names if n in modules} or ({base} & modules.keys())
                if base in modules:
                    targets.add(base)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = {t for t in targets if t != name}
    return graph


def folder_of(module: str) -> str:
    return FOLDER_OF[module]


def test_layers_point_down_and_nothing_imports_the_cli():
    graph = project_imports()
    assert len(graph) > 50  # the walk found the package
    for module, targets in graph.items():
        for target in targets:
            src, dst = folder_of(module), folder_of(target)
            assert src == dst or dst in ALLOWED[src], f"{module} imports {target}"
            if target.startswith("diffda.cycler.cli"):
                assert module.startswith("diffda.cycler.cli"), f"{module} imports the CLI"


def test_no_import_cycles():
    graph = project_imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles
