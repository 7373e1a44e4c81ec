"""The project's layers, checked from the code's own imports (module-level and inside functions alike).

``catalog`` is at the bottom, ``recommender`` above it, and ``ml`` is a plain PyTorch library that
imports neither (docs/architecture.md). Arrows only point down, so:

* no import cycle crosses apps, and none exists inside ``ml``;
* ``catalog`` never imports ``recommender`` (it announces changes with ``catalog.signals``);
* ``ml`` never imports Django, ``catalog`` or ``recommender``.

Inside one Django app, a service <-> task pair (HackSoft Django-Styleguide) is allowed.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("catalog", "recommender", "ml")
#: Longest module allowed (lines), migrations excepted: a file longer than this does several jobs.
MAX_MODULE_LINES = 550


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "migrations" in rel.parts:
                continue
            name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            mods[name] = path
    return mods


def _imports(name: str, path: Path) -> set[str]:
    """Every absolute module name ``name`` imports, at any depth of its syntax tree."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(edges between the project's modules, every external top-level package each module imports)``."""
    mods = _modules()

    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    edges: dict[str, set[str]] = defaultdict(set)
    external: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for target in _imports(name, path):
            if target.split(".")[0] in PACKAGES:
                resolved = resolve(target)
                if resolved and resolved != name:
                    edges[name].add(resolved)
            else:
                external[name].add(target.split(".")[0])
    return edges, external


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """The graph's cycles as strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    nodes = set(edges) | {t for ts in edges.values() for t in ts}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_cycle_finder_finds_a_cycle():
    cycles = strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycles == [{"a", "b", "c"}]


def test_no_import_cycle_crosses_apps_or_lives_inside_ml(graph):
    edges, _ = graph
    bad = [
        sorted(c)
        for c in strongly_connected(edges)
        if len({m.split(".")[0] for m in c}) > 1 or any(m.startswith("ml") for m in c)
    ]
    assert bad == [], f"import cycles: {bad}"


def test_catalog_never_imports_recommender(graph):
    edges, _ = graph
    upward = sorted(
        f"{a} -> {b}"
        for a, bs in edges.items()
        if a.startswith("catalog")
        for b in bs
        if b.startswith("recommender")
    )
    assert upward == [], "catalog must announce changes with catalog.signals instead: " + ", ".join(upward)


def test_ml_imports_no_django_code(graph):
    edges, external = graph
    bad = sorted(
        f"{a} -> {b}" for a, bs in edges.items() if a.startswith("ml") for b in bs if not b.startswith("ml")
    )
    bad += sorted(
        f"{a} -> {x}"
        for a, xs in external.items()
        if a.startswith("ml")
        for x in xs
        if x in {"django", "rest_framework", "celery"}
    )
    assert bad == [], "ml is a plain PyTorch library: " + ", ".join(bad)


def test_no_module_does_several_jobs():
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"
