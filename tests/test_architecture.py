"""The core's architecture holds: one-way layers, no import cycles, plugins on public modules only.

``lint-imports`` checks the import-linter contracts of pyproject.toml (layers
cli -> engine -> authoring kit -> assembly -> spec -> registry -> errors; the core
never imports the first-party plugins; plugins import public pretrain modules
only). The cycle check below also sees imports deferred into functions, which are
how a cycle hides; ``TYPE_CHECKING`` imports are annotations and do not count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
PLUGINS = ROOT / "plugins"


def _module_names(base: Path, package: str | None = None) -> dict[str, Path]:
    out = {}
    for path in base.rglob("*.py"):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if package is not None:
            parts = [package, *parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_imports(path: Path, name: str) -> set[str]:
    """Modules ``path`` imports at run time (any depth, TYPE_CHECKING blocks excluded)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            ):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in _runtime_imports(path, name):
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_deferred_import_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = _graph(_module_names(tmp_path))
    assert find_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_core_has_no_import_cycles() -> None:
    cycles = find_cycles(_graph(_module_names(CORE)))
    assert cycles == [], f"import cycles in core/pretrain: {cycles}"


def test_plugins_import_no_private_core_module() -> None:
    offenders = []
    for name, path in _module_names(PLUGINS, "pretrain_builtins").items():
        for target in _runtime_imports(path, name) | _type_checking_imports(path):
            parts = target.split(".")
            if parts[0] == "pretrain" and any(p.startswith("_") and p != "__future__" for p in parts[1:]):
                offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert offenders == []


def _type_checking_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.update(f"{node.module}.{a.name}" for a in node.names)
            out.add(node.module)
    return out


def test_import_linter_contracts_hold() -> None:
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install pretrain[test])")
    code = "import sys\nfrom importlinter.cli import lint_imports\nsys.exit(lint_imports(no_cache=True, no_logo=True))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_listing_imports_neither_torch_nor_pydantic() -> None:
    code = (
        "import sys\nfrom pretrain.cli import main\nmain(['list-components', '--json'])\n"
        "bad = [m for m in ('torch', 'pydantic') if m in sys.modules]\nassert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
