"""The layering, read from the source with `ast`: pages -> ui -> vit_core / vit_plots, nothing
pointing back up, and no import cycles inside a package.

Every import counts, at module level or inside a function: a lazy import hides a cycle from
the interpreter, not from a reader. Imports under `if TYPE_CHECKING:` or `if __name__ ==
"__main__":` never run when the module is imported, so they count for the layering but not for
cycles.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vit_core", "vit_plots", "ui")
# package -> top-level names it must never import
FORBIDDEN = {
    "vit_core": {"ui", "pages", "app", "vit_plots", "streamlit"},  # the library: torch, numpy, pillow
    "vit_plots": {"ui", "pages", "app", "vit_core", "streamlit"},  # figures from numpy arrays
    "ui": {"pages", "app"},
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "vit_core.checkpoints"
    target: str  # the imported module, e.g. "vit_core.pretrained" or "streamlit"
    line: int
    runs: bool  # False under `if TYPE_CHECKING:` and `if __name__ == "__main__":`


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `packages` under `root`."""
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import statement in a module, relative ones resolved; `from pkg import mod`
    names the submodule when `pkg.mod` is a known module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, runs: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _not_on_import(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, False)
                for stmt in child.orelse:
                    visit_stmt(stmt, runs)
            else:
                visit_stmt(child, runs)

    def visit_stmt(node: ast.AST, runs: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(name, a.name, node.lineno, runs) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append(Import(name, sub if sub in known else target, node.lineno, runs))
        else:
            visit(node, runs)

    visit(tree, True)
    return found


def _not_on_import(test: ast.expr) -> bool:
    """True for the tests of `if TYPE_CHECKING:` and `if __name__ == "__main__":`."""
    text = ast.unparse(test).replace("'", '"')
    return "TYPE_CHECKING" in text or text == '__name__ == "__main__"'


def import_graph(root: Path, packages: tuple[str, ...]) -> list[Import]:
    modules = package_modules(root, packages)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, set(modules))]


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself),
    among the imports that run and stay inside the scanned modules (Tarjan's algorithm)."""
    modules = {imp.source for imp in imports}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.runs and imp.target in modules:
            edges[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in edges[v]:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return cycles


def describe_cycle(component: list[str], imports: list[Import]) -> str:
    inside = set(component)
    lines = [f"{i.source} -> {i.target} (line {i.line})" for i in imports if i.runs and {i.source, i.target} <= inside]
    return "; ".join(dict.fromkeys(lines))


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return import_graph(ROOT, PACKAGES)


def test_the_walk_sees_the_packages(imports: list[Import]) -> None:
    """Guard against a vacuous pass: the walk finds modules of every package and known imports."""
    sources = {i.source for i in imports}
    assert {"vit_core", "vit_core.model", "vit_core.checkpoints", "vit_core.analysis", "ui.models"} <= sources
    assert any(i.source.startswith("vit_plots") for i in imports)
    pairs = {(i.source, i.target) for i in imports}
    assert ("vit_core.checkpoints", "vit_core.model") in pairs  # a relative import, resolved
    assert ("ui.models", "streamlit") in pairs


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_no_upward_imports(imports: list[Import], package: str) -> None:
    bad = [
        f"{i.source} imports {i.target} (line {i.line})"
        for i in imports
        if i.source.split(".")[0] == package and i.target.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: " + "; ".join(bad)


def test_no_import_cycles(imports: list[Import]) -> None:
    cycles = import_cycles(imports)
    assert not cycles, "import cycles: " + " | ".join(describe_cycle(c, imports) for c in cycles)


def test_a_lazy_cycle_is_found(tmp_path: Path) -> None:
    """The checker itself: a cycle closed by an import inside a function is still a cycle, and
    an import under TYPE_CHECKING is not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from pkg import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    (pkg / "d.py").write_text("from . import c\n")
    (pkg / "e.py").write_text("from . import d\nif __name__ == '__main__':\n    from .e import main\n")
    found = import_graph(tmp_path, ("pkg",))
    assert import_cycles(found) == [["pkg.a", "pkg.b"]]
    assert Import("pkg.c", "pkg.a", 3, False) in found
    assert Import("pkg.d", "pkg.c", 1, True) in found
    assert Import("pkg.e", "pkg.e", 3, False) in found  # a script's own entry point is no cycle
