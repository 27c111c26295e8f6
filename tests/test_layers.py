"""The package's structure: subpackages in layers, every import pointing down (or within its own
subpackage), no module importing itself through others. Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "threeregime"
# bottom to top; subpackages on one layer are siblings and must not import each other
LAYERS = [
    {"registry"},
    {"config"},
    {"io"},
    {"compute", "analysis"},
    {"views"},
    {"stages"},
    {"cli", "api"},
    {"__main__", "__init__"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """The threeregime modules a file imports (``from threeregime.x import y`` counts as x.y when
    x.y is a module, else x)."""
    modules = _modules()
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("threeregime"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                names.add(candidate if candidate in modules else node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("threeregime")}
    return names


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    group = _group(module)
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def test_every_module_belongs_to_a_layer():
    for module in _modules():
        assert any(_group(module) in layer for layer in LAYERS), f"{module}: put it in a layer"


def test_imports_point_down_or_stay_in_their_subpackage():
    upward = []
    for module, path in _modules().items():
        for imported in _imports(path):
            same = _group(imported) == _group(module)
            if not same and _layer(imported) >= _layer(module) and imported != "threeregime":
                upward.append(f"{module} -> {imported}")
    assert upward == [], "imports that run up or sideways between layers:\n" + "\n".join(upward)


def test_no_module_imports_itself_through_others():
    graph = {module: _imports(path) - {module} for module, path in _modules().items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(module: str, trail: list[str]) -> bool:
        state[module] = 1
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == 1:
                cycle.extend(trail[trail.index(nxt) :] + [nxt] if nxt in trail else [module, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, trail + [nxt]):
                return True
        state[module] = 2
        return False

    for module in graph:
        if state.get(module) is None and visit(module, [module]):
            break
    assert cycle == [], " -> ".join(cycle)


def structure_drawing() -> str:
    """The subpackages and which import which, as a Mermaid flowchart (bottom to top: every
    arrow points down, from the importer to what it imports)."""
    edges = set()
    for module, path in _modules().items():
        for imported in _imports(path):
            a, b = _group(module), _group(imported)
            if a != b and b != "__init__":
                edges.add((a, b))
    order = [name for layer in LAYERS for name in sorted(layer) if any(name in e for e in edges)]
    lines = ["```mermaid", "flowchart BT"]
    ranked = sorted(edges, key=lambda edge: (order.index(edge[0]), order.index(edge[1])))
    lines += [f"  {a} --> {b}" for a, b in ranked]
    return "\n".join(lines + ["```"])


def test_the_internals_page_shows_the_current_structure():
    page = (REPO / "docs" / "internals.md").read_text()
    drawing = structure_drawing()
    assert drawing in page, "docs/internals.md: replace the structure drawing with\n" + drawing
