"""The architecture, enforced: one-way imports between layers, and explicit public names.

rpc/ knows nothing of cameras, operations or the API; cameras/ and imaging/ know nothing of
JSON-RPC; imaging/ does no I/O and knows no trio; library/ knows no trio, no cameras and no pipeline
(files and indexes only); pipeline/ (the night's batch steps) knows no trio and no JSON-RPC.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import phdserver

PACKAGE = Path(phdserver.__file__).parent

FORBIDDEN = {
    "rpc": ("phdserver.cameras", "phdserver.operations", "phdserver.api", "phdserver.imaging",
            "phdserver.library", "phdserver.app", "phdserver.config"),
    "cameras": ("phdserver.rpc", "phdserver.api", "phdserver.operations", "phdserver.app",
                "phdserver.library", "phdserver.imaging"),
    "imaging": ("phdserver.rpc", "phdserver.api", "phdserver.operations", "phdserver.app",
                "phdserver.cameras", "phdserver.library", "trio", "astropy", "pathlib",
                "socket", "io", "shutil", "tempfile"),
    "library": ("phdserver.rpc", "phdserver.api", "phdserver.operations", "phdserver.app",
                "phdserver.cameras", "phdserver.pipeline", "trio"),
    "pipeline": ("phdserver.rpc", "phdserver.api", "phdserver.operations", "phdserver.app",
                 "phdserver.cameras", "phdserver.cli", "trio"),
    "operations": ("phdserver.api", "phdserver.app"),
    "api": ("phdserver.app",),
}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """All nodes except those under ``if TYPE_CHECKING:`` (annotations cost no coupling)."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in imports_of(path):
            for banned in FORBIDDEN[layer]:
                if name == banned or name.startswith(banned + "."):
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_every_package_exports_what_it_lists() -> None:
    for info in pkgutil.iter_modules([str(PACKAGE)]):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"phdserver.{info.name}")
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"phdserver.{info.name} has no __all__"
        for name in exported:
            assert hasattr(module, name), f"phdserver.{info.name}.{name} listed but missing"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolved_imports(path: Path, module: str) -> set[str]:
    """Absolute names a module imports, relative imports resolved, ``from X import Y`` counted
    as an import of ``X.Y`` when that is a module (else of ``X``)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def test_no_import_cycles() -> None:
    """No module reaches itself through imports, lazy (function-level) ones included: a cycle
    ties two jobs together, and a lazy import only hides it."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {other for other in _resolved_imports(path, name)
                    if other in modules and other != name}
             for name, path in modules.items()}
    # A package's __init__ re-exporting its own modules is not a cycle of jobs: a module may
    # import a sibling, and its package's __init__ may import it.
    for name in graph:
        graph[name] = {o for o in graph[name] if not name.startswith(o + ".")}
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(sorted(c)) for c in cycles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components
